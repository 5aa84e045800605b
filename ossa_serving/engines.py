"""The engines behind the routes, and the deployment watcher that swaps them.

Generation is batched at the decoding step (continuous batching, as vLLM and TGI do): one
inference thread per engine runs one forward pass for every active sequence, appends each
one's next token, lets finished sequences leave and queued requests join between steps. The
engines export the decoding step with its KV cache (lib/onnx_export.py export_onnx_kv): the
running batch's cache stays in memory, joiners are prefilled together and merged in
(KVGenerationEngine). An engine without that file (built before it existed) falls back to
recomputing every active context each step (GenerationEngine): right-padded, each row's
logits read at its own last real token (the model is causal, so padding after it cannot
change it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ossa_assets.lib.onnx_runtime import merge_caches, pad_right, select_rows
from ossa_serving.batching import Batcher, DeadlineExceeded, Job, JobQueue

log = logging.getLogger("ossa.serving")


@dataclass
class GenParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenResult:
    tokens: list[int]
    text: str
    finish_reason: str  # length | eos | stop


@dataclass
class _Seq:
    job: Job
    ids: list[int]
    params: GenParams
    rng: Any
    new: list[int] = field(default_factory=list)


def choose_token(logits, params: GenParams, rng) -> int:
    """Greedy at temperature 0; otherwise temperature + nucleus (top_p) sampling with the
    request's own generator, so a seed gives the same tokens whatever else is in the batch."""
    import numpy as np

    if params.temperature <= 0:
        return int(logits.argmax())
    z = logits.astype(np.float64) / params.temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, params.top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


class GenerationEngine:
    """An ONNX causal LM behind a bounded queue and one decoding thread."""

    def __init__(self, name: str, lm: Any, tokenizer: Any, *, max_batch: int, max_batch_tokens: int,
                 max_delay_ms: float, max_queue: int, metrics: Any = None, after_tick: Any = None):
        self.name, self.lm, self.tokenizer = name, lm, tokenizer
        self.after_tick = after_tick  # a worker process sends the tick's results in one message
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.max_delay_s = max_delay_ms / 1000
        self.queue = JobQueue(name, max_queue)
        self.metrics = metrics
        self.eos = tokenizer.eos_token_id
        self.active: list[_Seq] = []
        self._thread = threading.Thread(target=self._loop, name=f"decode-{name}", daemon=True)
        self._thread.start()

    @property
    def window(self) -> int | None:
        return self.lm.max_positions

    @property
    def kv_cache(self) -> bool:
        return False

    def busy(self) -> bool:
        return bool(len(self.queue) or self.active)

    def at_capacity(self) -> bool:
        return len(self.queue) >= self.queue.max_queue

    def submit(self, ids: list[int], params: GenParams, timeout_s: float):
        return self.queue.put(Job((ids, params), len(ids) + params.max_new_tokens, time.monotonic() + timeout_s))

    def _admit(self, block: bool) -> None:
        import numpy as np

        room = self.max_batch - len(self.active)
        if room <= 0:
            return
        used = sum(len(s.ids) + s.params.max_new_tokens for s in self.active)
        jobs = self.queue.take(room, max(self.max_batch_tokens - used, 1), self.max_delay_s, block=block)
        now = time.monotonic()
        if jobs and self.metrics:
            self.metrics.batch(self.name, len(jobs), [now - j.enqueued for j in jobs], len(self.queue))
        for j in jobs:
            ids, params = j.payload
            self.active.append(_Seq(j, list(ids), params, np.random.default_rng(params.seed)))

    def _finish(self, s: _Seq, reason: str, text: str | None = None) -> None:
        if text is None:
            text = self.tokenizer.decode(s.new, skip_special_tokens=True)
        if not s.job.future.done():
            s.job.future.set_result(GenResult(s.new, text, reason))

    def _accept(self, s: _Seq, logits_row, greedy: int) -> bool:
        """Choose the row's next token (`greedy`: the row's argmax, computed for the whole
        batch at once); False when the sequence finished with it."""
        tok = greedy if s.params.temperature <= 0 else choose_token(logits_row, s.params, s.rng)
        s.new.append(tok)
        if self.eos is not None and tok == self.eos:
            self._finish(s, "eos")
            return False
        if s.params.stop:
            text = self.tokenizer.decode(s.new, skip_special_tokens=True)
            cut = min((text.find(x) for x in s.params.stop if x in text), default=-1)
            if cut >= 0:
                self._finish(s, "stop", text[:cut])
                return False
        if len(s.new) >= s.params.max_new_tokens:
            self._finish(s, "length")
            return False
        return True

    def _live(self, s: _Seq, now: float) -> bool:
        if s.job.future.cancelled() or s.job.future.done():
            return False
        if now > s.job.deadline:
            s.job.future.set_exception(DeadlineExceeded(f"{self.name}: deadline passed while generating"))
            return False
        return True

    def step(self) -> None:
        """One forward pass over every active sequence."""

        window = self.window
        ctx = [(s.ids + s.new)[-window:] if window else s.ids + s.new for s in self.active]
        logits = self.lm.logits(*pad_right(ctx))
        if self.metrics:
            self.metrics.tokens(self.name, len(ctx))
        now = time.monotonic()
        last = logits[range(len(ctx)), [len(c) - 1 for c in ctx]]
        greedy = last.argmax(axis=-1).tolist()
        self.active = [s for r, s in enumerate(self.active)
                       if self._live(s, now) and self._accept(s, last[r], greedy[r])]

    def _tick(self) -> None:
        """Admit what the queue holds (waiting for it when idle), then one step."""
        self._admit(block=not self.active)
        if self.active:
            self.step()

    def _loop(self) -> None:
        while not self.queue.closed:
            try:
                self._tick()
            except Exception as e:  # a failed step fails its sequences; the engine keeps serving
                log.exception("%s: decoding step failed", self.name)
                self._fail_all(e)
            if self.after_tick is not None:
                self.after_tick()

    def _fail_all(self, e: Exception) -> None:
        for s in self.active:
            if not s.job.future.done():
                s.job.future.set_exception(e)
        self.active = []

    def close(self) -> None:
        self.queue.close()
        self._thread.join(timeout=5)


class KVGenerationEngine(GenerationEngine):
    """Continuous batching over a KV-cached decoder: the running batch's cache stays in
    memory between steps; joiners are prefilled (one call for all of them) and merged in,
    finished rows leave, and each step feeds one token per row."""

    @property
    def kv_cache(self) -> bool:
        return True

    def __init__(self, *args, **kwargs):
        self.cache: list = []
        self.mask = None
        self.pending: list[int] = []  # per active row: the token chosen but not yet in the cache
        super().__init__(*args, **kwargs)

    def step(self) -> None:
        now = time.monotonic()
        keep: list[int] = []
        if self.active and self.mask is not None and len(self.pending) == len(self.active):
            logits, self.cache, self.mask = self.lm.decode(self.pending, self.cache, self.mask)
            if self.metrics:
                self.metrics.tokens(self.name, len(self.active))
            greedy = logits.argmax(axis=-1).tolist()
            for r, s in enumerate(self.active):
                if self._live(s, now) and self._accept(s, logits[r], greedy[r]):
                    keep.append(r)
            self.active = [self.active[r] for r in keep]
            self.pending = [s.new[-1] for s in self.active]
            if self.active:
                self.cache, self.mask = select_rows(self.cache, self.mask, keep)
            else:
                self.cache, self.mask = [], None

    # Joining costs a prefill call and a cache merge whatever the number of joiners (measured:
    # ~3 ms for 1-8 prompts against ~1 ms for a decoding step of 32 rows), so a busy batch
    # takes joiners in groups: when a quarter of its slots are free, or when the oldest
    # waiting request has waited max_join_wait_s. An idle or half-empty batch joins at once.
    max_join_wait_s = 0.010

    def _should_join(self) -> bool:
        room = self.max_batch - len(self.active)
        if room <= 0 or not len(self.queue):
            return False
        if len(self.active) < self.max_batch // 2 or room >= max(1, self.max_batch // 4):
            return True
        return self.queue.oldest_wait() >= self.max_join_wait_s

    def _tick(self) -> None:
        before = len(self.active)
        if not self.active or self._should_join():
            self._admit(block=not self.active)
        joiners = self.active[before:]
        self.active = self.active[:before]
        if joiners:
            self._prefill(joiners)  # they join the running batch with their cache
        if self.active:
            self.step()

    def _fail_all(self, e: Exception) -> None:
        super()._fail_all(e)
        self.pending, self.cache, self.mask = [], [], None

    def _prefill(self, joiners: list[_Seq]) -> None:
        logits, cache, mask = self.lm.prefill([s.ids for s in joiners])
        if self.metrics:
            self.metrics.tokens(self.name, len(joiners))
        now = time.monotonic()
        greedy = logits.argmax(axis=-1).tolist()
        rows = [r for r, s in enumerate(joiners) if self._live(s, now) and self._accept(s, logits[r], greedy[r])]
        if not rows:
            return
        cache, mask = select_rows(cache, mask, rows)
        if self.mask is None:
            self.cache, self.mask = cache, mask
        else:
            self.cache, self.mask = merge_caches((self.cache, self.mask), (cache, mask))
        self.active += [joiners[r] for r in rows]
        self.pending += [joiners[r].new[-1] for r in rows]


def session_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads  # the cores this engine's one thread owns
    so.inter_op_num_threads = 1
    return so


def build_engine(cfg: Any, metrics: Any = None, *, max_queue: int, after_tick: Any = None):
    """Load and warm one engine (one forward pass before it takes traffic): the KV-cached one
    when the engine directory has its graph. (engine, context window)."""
    from ossa_assets.lib.modeling import load_tokenizer
    from ossa_assets.lib.onnx_runtime import KVCausalLM, OnnxCausalLM

    engine_dir = Path(cfg.engine_dir)
    tokenizer = load_tokenizer(engine_dir)
    token_id = tokenizer.convert_tokens_to_ids(cfg.domain_token)
    so = session_options(cfg.intra_op_threads)
    if cfg.kv_model_file and (engine_dir / cfg.kv_model_file).is_file():
        lm, cls = KVCausalLM(engine_dir / cfg.kv_model_file, session_options=so), KVGenerationEngine
        lm.prefill([[token_id]])  # warm: the first run allocates
    else:
        lm, cls = OnnxCausalLM(engine_dir / cfg.model_file, session_options=so), GenerationEngine
        lm.logits([[token_id]])
    engine = cls(cfg.name, lm, tokenizer, max_batch=cfg.max_batch, max_batch_tokens=cfg.max_batch_tokens,
                 max_delay_ms=cfg.max_delay_ms, max_queue=max_queue, metrics=metrics, after_tick=after_tick)
    return engine, lm.max_positions


@dataclass
class LoadedRoute:
    route: str
    domain: str
    model_version: str
    lineage_id: str
    engine: Any  # GenerationEngine, or workers.EngineProcess
    tokenizer: Any
    domain_token_id: int


def load_route(route: str, spec: Any, settings: Any, metrics: Any = None) -> LoadedRoute:
    """One route's engine, loaded and warmed: in a process of its own by default
    (settings.engine_processes), else a thread of this process."""
    from ossa_assets.lib.domains import domain
    from ossa_assets.lib.modeling import load_tokenizer
    from ossa_serving.workers import EngineConfig, EngineProcess

    token = domain(spec.domain).token
    cfg = EngineConfig(name=f"{route}@{spec.model_version}", engine_dir=str(spec.engine_path),
                       model_file=spec.model_file, kv_model_file=spec.kv_model_file, domain_token=token,
                       intra_op_threads=settings.intra_op_threads, max_batch=settings.max_batch,
                       max_batch_tokens=settings.max_batch_tokens, max_delay_ms=settings.max_queue_delay_ms)
    tokenizer = load_tokenizer(Path(spec.engine_path))  # the front tokenizes prompts
    if settings.engine_processes:
        engine = EngineProcess(cfg, max_queue=settings.max_queue, metrics=metrics)
    else:
        engine, _ = build_engine(cfg, metrics, max_queue=settings.max_queue)
    return LoadedRoute(route, spec.domain, spec.model_version, spec.lineage_id, engine, tokenizer,
                       tokenizer.convert_tokens_to_ids(token))


@dataclass(frozen=True)
class Served:
    """One variant of a route's release, loaded: what a request is sent to."""

    name: str
    role: str  # champion | challenger | "deployed" (no release: the state file's route)
    weight: float
    loaded: LoadedRoute
    spec: Any  # lib.deployment.RouteSpec: the engine files (a restart reloads them)
    release: str | None  # the release's lineage id (serving/release[<domain>]@...); None: no release
    pinned_by: str | None = None


def _sticky_u(route: str, key: str) -> float:
    """A caller's fixed point in [0, 1) for a route: the same key sees the same variant for as
    long as the weights stay."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"{route}\x00{key}".encode(), digest_size=8).digest(), "big") / 2.0**64


class DeploymentWatcher:
    """Holds the live engines; reloads when the deployment state file or a route's release moves.

    Each route serves its release's variants (lib/release.py) when the state names a release
    store (or OSSA_RELEASE_URL does): a background thread polls the store's versions, so every
    replica following one store switches on the same move, a rollback or a pin included. New
    engines load (and verify) beside the old ones and are swapped in whole; the old ones finish
    what they have queued before they close. A state or a release that fails to load leaves the
    previous engines serving and is reported on /health and /ready."""

    def __init__(self, settings: Any, metrics: Any = None):
        self.settings = settings
        self.state_path = Path(settings.state_path)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self.state = None  # lib.deployment.DeploymentState
        self.routes: dict[str, LoadedRoute] = {}  # each route's champion (or its only engine)
        self.variants: dict[str, tuple[Served, ...]] = {}
        self.releases: dict[str, Any] = {}  # route -> lib.release.Release being served
        self.release_errors: dict[str, str] = {}
        self.last_error: str | None = None
        self.reloads = 0
        self._restarting: str | None = None
        self._restart_after = 0.0
        self._loading = False
        self._store = None
        self._store_loc: str | None = None
        self._follow: threading.Thread | None = None
        self._closed = threading.Event()

    # -- what a request is sent to --------------------------------------------------------

    def pick(self, route: str, key: str) -> Served | None:
        """The variant serving this caller: sticky by `key`, in proportion to the weights."""
        served = self.variants.get(route)
        if not served:
            return None
        if len(served) == 1:
            return served[0]
        u, acc = _sticky_u(route, key), 0.0
        for s in served:
            acc += s.weight
            if u < acc:
                return s
        return served[-1]

    # -- following the state file and the release store -----------------------------------

    def poll(self) -> None:
        """The request path's check (one stat): a changed state file loads in a background
        thread while the current engines keep serving, and is swapped in when warm; a dead
        engine is restarted the same way. Loading a route starts a process (seconds): never
        on the event loop."""
        if self._restarting is None and time.monotonic() >= self._restart_after:
            for ss in self.variants.values():
                dead = next((s.loaded for s in ss if getattr(s.loaded.engine, "gone", None)), None)
                if dead is not None:
                    self._restart(dead)
                    break
        try:
            mtime = self.state_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime or self._loading:
            return
        self._loading = True

        def load():
            try:
                self.refresh()
            finally:
                self._loading = False

        threading.Thread(target=load, name="deployment-reload", daemon=True).start()

    def release_store(self, state):
        """The store `state` names; OSSA_RELEASE_URL (settings) wins: a replica elsewhere."""
        loc = getattr(self.settings, "release_store", None) or (state.release_store if state else None)
        if loc is None:
            return None
        if self._store is None or self._store_loc != loc:
            from ossa_assets.lib.release import open_store

            self._store, self._store_loc = open_store(loc), loc
        return self._store

    def refresh(self) -> None:
        """Load the state file now if it changed (start-up, and poll's background thread)."""
        from ossa_assets.lib.deployment import read_state

        try:
            mtime = self.state_path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime is None and not getattr(self.settings, "release_store", None):
            return
        if mtime is not None and mtime == self._mtime:
            return
        with self._lock:
            if mtime is not None and mtime == self._mtime:
                return
            try:
                state = read_state(self.state_path) if mtime is not None else None
                releases = self._read_releases(self.release_store(state))
                variants = self._load(state, releases)
            except Exception as e:  # keep serving the previous deployment
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("deployment reload failed; previous engines stay live")
                self._mtime = mtime  # don't retry a broken file on every request
                return
            self.state, self._mtime = state, mtime
            self.last_error = None
            self._swap(variants, releases)
            if state is not None:
                log.info("deployment %s live: %s", state.version, sorted(self.routes))
        if self._store is not None and self._follow is None:
            self._follow = threading.Thread(target=self._follow_releases, name="release-follow", daemon=True)
            self._follow.start()

    def _read_releases(self, store) -> dict[str, Any]:
        if store is None:
            return {}
        from ossa_assets.lib.domains import ROUTES

        return {r: rel for r in ROUTES if (rel := store.get(r)) is not None}

    def _follow_releases(self) -> None:
        """Poll the release store's versions; a moved route loads its new variants."""
        poll_s = getattr(self.settings, "release_poll_s", 0.5)
        while not self._closed.wait(poll_s):
            store = self._store
            try:
                versions = store.versions()
            except Exception as e:  # the store is unreachable: keep serving what is loaded
                self.release_errors["*"] = f"release store unreachable: {type(e).__name__}: {e}"
                continue
            self.release_errors.pop("*", None)
            if all(self.releases.get(r) is not None and self.releases[r].version == v for r, v in versions.items()):
                continue
            with self._lock:
                try:
                    releases = self._read_releases(store)
                    variants = self._load(self.state, releases)
                except Exception as e:
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.exception("release reload failed; previous engines stay live")
                    continue
                self._swap(variants, releases)

    def _load(self, state, releases: dict[str, Any]) -> dict[str, tuple[Served, ...]]:
        """Every route's variants, loaded: a route's new release that fails to verify or load
        keeps the route's current variants (and release), with the error kept for /ready."""
        from ossa_assets.lib.release import verify_engine

        current = {s.loaded.model_version: s.loaded for ss in self.variants.values() for s in ss}
        out: dict[str, tuple[Served, ...]] = {}
        routes = set(state.routes if state else ()) | set(releases)
        for route in sorted(routes):
            rel = releases.get(route)
            if rel is None:
                spec = state.routes[route]
                lr = current.get(spec.model_version) or load_route(route, spec, self.settings, self.metrics)
                out[route] = (Served(spec.model_version, "deployed", 1.0, lr, spec, None),)
                continue
            old = self.releases.get(route)
            if old is not None and old.version == rel.version and route in self.variants:
                out[route] = self.variants[route]
                continue
            try:
                served = []
                for v in sorted(rel.variants, key=lambda v: v.role != "champion"):
                    lr = current.get(v.spec.model_version)
                    if lr is None:
                        verify_engine(v.spec)
                        lr = load_route(route, v.spec, self.settings, self.metrics)
                        current[v.spec.model_version] = lr
                    served.append(Served(v.name, v.role, v.weight, lr, v.spec, rel.lineage_id, v.pinned_by))
                out[route] = tuple(served)
                self.release_errors.pop(route, None)
            except Exception as e:
                msg = f"{route}: release v{rel.version} refused: {type(e).__name__}: {e}"
                log.error("%s; the route keeps serving what it served", msg)
                self.release_errors[route] = msg
                releases[route] = old
                if route in self.variants:
                    out[route] = self.variants[route]
                elif old is None:
                    releases.pop(route, None)
        return out

    def _swap(self, variants: dict[str, tuple[Served, ...]], releases: dict[str, Any]) -> None:
        old = {id(s.loaded): s.loaded for ss in self.variants.values() for s in ss}
        keep = {id(s.loaded) for ss in variants.values() for s in ss}
        self.variants = variants
        self.releases = {r: rel for r, rel in releases.items() if rel is not None}
        self.routes = {r: ss[0].loaded for r, ss in variants.items()}
        self.reloads += 1
        for k, lr in old.items():
            if k not in keep:
                threading.Thread(target=_drain_and_close, args=(lr.engine,), daemon=True).start()
        if self.metrics:
            self.metrics.model_info(self.state, self.variants)
        log.info("serving %s", {r: [f"{s.name}:{s.role}:{s.weight:g}" for s in ss] for r, ss in variants.items()})

    def _restart(self, gone: LoadedRoute) -> None:
        """An engine process that died is started again in the background (its requests got
        503 meanwhile); the route's other state is unchanged."""
        self._restarting = gone.route
        self.last_error = f"{gone.engine.gone}; restarting it"

        def run():
            try:
                served = next((s for ss in self.variants.values() for s in ss if s.loaded is gone), None)
                spec = served.spec if served else self.state.routes[gone.route]
                fresh = load_route(gone.route, spec, self.settings, self.metrics)
                with self._lock:
                    ss = self.variants.get(gone.route, ())
                    if any(s.loaded is gone for s in ss):
                        new = tuple(replace(s, loaded=fresh) if s.loaded is gone else s for s in ss)
                        self.variants = {**self.variants, gone.route: new}
                        self.routes = {**self.routes, gone.route: new[0].loaded}
                        self.last_error = None
                        log.warning("%s: engine restarted", gone.route)
                    else:  # a new deployment replaced it meanwhile
                        fresh.engine.close()
                gone.engine.close()
            except Exception as e:
                self.last_error = f"{gone.route}: restart failed: {type(e).__name__}: {e}"
                self._restart_after = time.monotonic() + 10.0  # not on every request
                log.exception("engine restart failed")
            finally:
                self._restarting = None

        threading.Thread(target=run, name=f"restart {gone.route}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for lr in {id(s.loaded): s.loaded for ss in self.variants.values() for s in ss}.values():
            lr.engine.close()


def _drain_and_close(engine: Any, grace_s: float = 30.0) -> None:
    deadline = time.monotonic() + grace_s
    while engine.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.close()


def build_embedder(cfg: Any, metrics: Any = None, *, max_queue: int, after_batch: Any = None):
    """Load and warm one embedding model behind a batcher: its ONNX graph (exported once per
    model version into the cache, int8 where it keeps cosine >= 0.99 to fp32:
    lib/embedding_onnx.py), or the torch model with backend "torch". (batcher, info)."""
    from ossa_assets.lib import embedding_onnx, embeddings

    seq = cfg.max_seq_length or 256
    if cfg.backend not in ("onnx", "torch"):
        raise ValueError(f"embedder backend {cfg.backend!r}: use 'onnx' or 'torch'")
    if cfg.backend == "onnx":
        path = cfg.model_path or embeddings.packaged_minilm_path()
        out = Path(cfg.onnx_cache_dir) / embeddings.model_version(path) / str(seq)
        if embedding_onnx.read_meta(out) is None:
            log.info("exporting embedder %s to ONNX (once per model version): %s", path, out)
            embedding_onnx.export_embedder(path, out, seq)
        model = embedding_onnx.OnnxEmbedder(out, seq, session_options=session_options(cfg.intra_op_threads))
        info = {"backend": f"onnx:{model.file}", **(embedding_onnx.read_meta(out) or {})}
    else:
        st = embeddings.load_embedder(cfg.model_path, cfg.max_seq_length)

        class _Torch:
            def encode(self, texts):
                return st.encode(list(texts), normalize_embeddings=True, batch_size=max(len(texts), 1))

        model, info = _Torch(), {"backend": "torch"}
    model.encode(["warm"])

    def run(batch: list[list[str]]) -> list[Any]:
        flat = [t for texts in batch for t in texts]
        vecs = model.encode(flat)
        out, i = [], 0
        for texts in batch:
            out.append(vecs[i: i + len(texts)])
            i += len(texts)
        return out

    batcher = Batcher(cfg.name, run, max_batch=cfg.max_batch, max_cost=cfg.max_cost, max_delay_ms=cfg.max_delay_ms,
                      max_queue=max_queue, metrics=metrics, after_batch=after_batch)
    return batcher, info


class EmbedderPool:
    """One batched embedder per model path, shared by /v1/embeddings and /v1/search: in a
    process of its own (settings.engine_processes), else a thread of this one. get() returns
    a handle whose submit(texts, cost, timeout_s) gives a future of the vectors."""

    def __init__(self, settings: Any, metrics: Any = None):
        self.settings, self.metrics = settings, metrics
        self._by_path: dict[str | None, Any] = {}
        self.backends: dict[str, str] = {}  # model path -> what serves it (/v1/models)
        self._lock = threading.Lock()

    def loaded(self, model_path: str | None) -> Any:
        """The live handle if this model is loaded (no lock, no thread hop: the request path)."""
        handle = self._by_path.get(model_path)
        return None if handle is None or getattr(handle, "gone", None) else handle

    def get(self, model_path: str | None, max_seq_length: int | None) -> Any:
        with self._lock:
            handle = self._by_path.get(model_path)
            if handle is not None and getattr(handle, "gone", None):  # its process died: start another
                log.warning("embedder %s: %s; starting it again", model_path, handle.gone)
                del self._by_path[model_path]
                threading.Thread(target=handle.close, daemon=True).start()
            if model_path not in self._by_path:
                from ossa_serving.workers import EmbedderConfig, EngineProcess

                s = self.settings
                cfg = EmbedderConfig(name=f"embed:{Path(model_path or 'minilm').name}", model_path=model_path,
                                     max_seq_length=max_seq_length, backend=s.embedder_backend,
                                     onnx_cache_dir=str(s.onnx_cache_dir), intra_op_threads=s.embed_intra_op_threads,
                                     max_batch=s.max_batch, max_cost=max(s.max_batch * 8, 256),
                                     max_delay_ms=s.max_queue_delay_ms)
                if s.engine_processes:
                    handle = EngineProcess(cfg, max_queue=s.max_queue, metrics=self.metrics, start_timeout_s=600)
                    info = handle.info
                else:
                    handle, info = build_embedder(cfg, self.metrics, max_queue=s.max_queue)
                self.backends[str(model_path)] = info["backend"]
                self._by_path[model_path] = handle
            return self._by_path[model_path]

    def close(self) -> None:
        for b in self._by_path.values():
            b.close()
