"""The HTTP app: routes, validation, backpressure, lifecycle, metrics.

Routes: POST /api-model/v1, /protocol-model/v1, /devops-model/v1 (generate, one per domain in
lib/domains.py); POST /v1/embeddings (OpenAI shape); POST /v1/search; GET /v1/models,
/v1/lineage/{upstream,downstream,diff}; GET /health (liveness), /ready (a deployment loaded and
warm), /metrics (Prometheus). Every answer is JSON; every error a JSON body with a message.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import gc
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ossa_serving.batching import DeadlineExceeded, QueueFull
from ossa_serving.schemas import (
    EmbeddingsRequest,
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    GenerateRequest,
    GenerateResponse,
    SearchRequest,
)
from ossa_serving.settings import Settings
from ossa_serving.workers import EngineGone

log = logging.getLogger("ossa.serving")
access = logging.getLogger("ossa.serving.access")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        self.status, self.message, self.headers = status, message, headers


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


COMMON_ERRORS = {
    400: _err("The body is not UTF-8 JSON"),
    408: _err("The body did not arrive within the server's body timeout (a trickling client)"),
    413: _err("Body larger than the server accepts (refused before it is read)"),
    415: _err("Content-Type is not application/json"),
    422: _err("Invalid JSON or a field out of range"),
    429: _err("The model's queue is full: retry after the Retry-After header's seconds"),
    503: _err("Nothing deployed on this route yet, or the server is draining"),
    504: _err("The request's deadline passed before its answer was ready"),
}


def create_app(state_path: str | Path | None = None, cache_url: str | None = None,
               graph_factory: Callable[[], Any] | None = None, settings: Settings | None = None) -> FastAPI:
    from ossa_assets.lib.cache import cache_key, make_cache
    from ossa_assets.lib.domains import ROUTES
    from ossa_serving.engines import DeploymentWatcher, EmbedderPool, GenParams
    from ossa_serving.metrics import Metrics
    from ossa_serving.search import SearchBackend, SearchUnavailable

    if settings is None:
        settings = Settings.from_env(state_path)
        settings.cache_url = cache_url or settings.cache_url
        if graph_factory is not None:
            settings.graph_factory = graph_factory
    metrics = Metrics()
    watcher = DeploymentWatcher(settings, metrics)
    embedders = EmbedderPool(settings, metrics)
    cache = make_cache(settings.cache_url)
    runtime: dict[str, Any] = {"draining": False, "in_flight": 0, "search": None}
    # request id -> the variant that answered it, for POST /v1/feedback (bounded: oldest out)
    answered: collections.OrderedDict[str, tuple[str, str, str, bool]] = collections.OrderedDict()
    judge = _Judge(metrics, settings.validity_sample_rate)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        # load and warm before taking traffic: /ready turns 200 when this is done
        await run_in_threadpool(watcher.refresh)
        runtime["search"] = search = SearchBackend(watcher, embedders, settings)
        with contextlib.suppress(Exception):
            await run_in_threadpool(search.sync)
        # what start-up loaded (torch, transformers, the models: millions of objects) never
        # becomes garbage: out of the collector's sight, a full collection no longer stalls
        # the event loop for hundreds of milliseconds under load (seen as p99 spikes)
        gc.collect()
        gc.freeze()
        yield
        search.close()
        embedders.close()
        watcher.close()

    app = FastAPI(title="ossa inference", version="2", lifespan=lifespan)
    app.state.watcher, app.state.runtime, app.state.metrics = watcher, runtime, metrics

    # a plain ASGI middleware: Starlette's BaseHTTPMiddleware costs a task and a stream per
    # request, measured as the event loop's bottleneck under load
    app.add_middleware(_Front, runtime=runtime, watcher=watcher, metrics=metrics, settings=settings,
                       known=lambda: _KNOWN)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(EngineGone)
    async def _engine_gone(_: Request, exc: EngineGone):
        # an engine process died (at submit or while the request waited): restarted meanwhile
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        msgs = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": msgs}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        # keeps the exception's headers: a 405 says what is Allowed
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    async def _await(fut, timeout_s: float):
        if isinstance(fut, concurrent.futures.Future):  # an in-process engine or batcher
            fut = asyncio.wrap_future(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except (asyncio.TimeoutError, DeadlineExceeded):
            fut.cancel()
            raise ApiError(504, f"no answer within the request deadline ({timeout_s:g}s)") from None

    def _refuse(e: QueueFull):
        raise ApiError(429, str(e), {"Retry-After": str(e.retry_after_s)})

    async def _generate(route: str, req: GenerateRequest, request: Request) -> JSONResponse:
        rid = request.state.request_id
        # sticky A/B: one caller (X-Ossa-Key) sees one variant; without a key, each request draws
        served = watcher.pick(route, request.headers.get("x-ossa-key") or rid)
        if served is None:
            raise ApiError(503, f"{route} has no deployed model yet: materialize serving/deployment")
        loaded = served.loaded
        # the front attributes this request's outcome (a 504 or 503 included) to the variant
        request.state.served = (loaded.model_version, served.role, loaded.lineage_id)
        key = cache_key(loaded.model_version, route, req.model_dump())
        # a sampled answer without a seed is a fresh draw each time: never served from the cache
        cacheable = req.temperature == 0 or req.seed is not None
        hit = cache.get(key) if cacheable else None
        variant = {"variant": served.name, "variant_role": served.role, "release": served.release}
        headers = {"x-model-version": loaded.model_version, "x-lineage-id": loaded.lineage_id,
                   "x-ossa-variant": served.role}
        if hit is not None:
            _answered(rid, route, loaded.model_version, served.role)
            return JSONResponse({**hit, **variant, "cached": True, "request_id": rid}, headers=headers)
        prompt = loaded.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        ids = [loaded.domain_token_id, *prompt]
        window = loaded.engine.window
        truncated = False
        if window and len(ids) + req.max_new_tokens > window:
            # keep the domain token and the prompt's end; room for the new tokens
            keep = max(window - req.max_new_tokens - 1, 1)
            ids, truncated = [loaded.domain_token_id, *prompt[-keep:]], True
        t0 = time.perf_counter()
        params = GenParams(req.max_new_tokens, req.temperature, req.top_p, req.seed, tuple(req.stop))
        try:
            fut = loaded.engine.submit(ids, params, settings.request_timeout_s)
        except QueueFull as e:
            _refuse(e)
        out = await _await(fut, settings.request_timeout_s)
        body = {
            "route": route, "domain": loaded.domain, "model_version": loaded.model_version,
            "lineage_id": loaded.lineage_id, "completion": out.text, "finish_reason": out.finish_reason,
            "prompt_tokens": len(ids), "prompt_truncated": truncated, "completion_tokens": len(out.tokens),
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
        }
        if cacheable:
            cache.set(key, body)
        _answered(rid, route, loaded.model_version, served.role)
        judge.maybe(route, loaded.domain, loaded.model_version, served.role, req.prompt + out.text)
        return JSONResponse({**body, **variant, "cached": False, "request_id": rid}, headers=headers)

    def _answered(rid: str, route: str, model_version: str, role: str) -> None:
        answered[rid] = (route, model_version, role, False)
        answered.move_to_end(rid)
        while len(answered) > 100_000:
            answered.popitem(last=False)

    @app.post("/v1/feedback", responses={404: _err("No recent generation has this request_id"),
                                         409: _err("Feedback for this request was already recorded"),
                                         **{k: v for k, v in COMMON_ERRORS.items() if k in (400, 408, 413, 415, 422)}})
    async def feedback(req: FeedbackRequest) -> FeedbackResponse:
        """A caller's verdict on one answer: counted for the variant that gave it (the live
        judgement's feedback signal)."""
        seen = answered.get(req.request_id)
        if seen is None:
            raise ApiError(404, f"no recent generation has request_id {req.request_id!r} "
                                "(feedback is kept for the last 100000 answers)")
        route, model_version, role, given = seen
        if given:
            raise ApiError(409, f"feedback for request {req.request_id!r} was already recorded")
        answered[req.request_id] = (route, model_version, role, True)
        metrics.outcome(route, model_version, role, f"feedback_{req.rating}")
        return FeedbackResponse(recorded=True, request_id=req.request_id, route=route, variant=model_version,
                                variant_role=role)

    def _route_handler(route: str):
        async def handler(req: GenerateRequest, request: Request) -> GenerateResponse:
            return await _generate(route, req, request)

        return handler

    for route in ROUTES:
        app.post(route, name=f"generate {route}", response_model=GenerateResponse,
                 responses=COMMON_ERRORS)(_route_handler(route))

    async def _embed(kind: str, texts: list[str]):
        search = runtime["search"]
        if search is None:
            raise ApiError(503, "the server is starting")
        try:
            li = search.index(kind)
        except SearchUnavailable as e:
            raise ApiError(503, str(e)) from None
        embedder = embedders.loaded(li.meta.get("model_path")) or await run_in_threadpool(
            embedders.get, li.meta.get("model_path"), li.meta.get("max_seq_length"))
        try:
            fut = embedder.submit(texts, len(texts), settings.request_timeout_s)
        except QueueFull as e:
            _refuse(e)
        return li, await _await(fut, settings.request_timeout_s)

    @app.post("/v1/embeddings", responses=COMMON_ERRORS)
    async def embeddings_route(req: EmbeddingsRequest) -> dict[str, Any]:
        import numpy as np

        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        li, vecs = await _embed(req.model, texts)
        dim = int(vecs.shape[1])
        if req.dimensions is not None and req.dimensions < dim:
            vecs = vecs[:, : req.dimensions]
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return {
            "object": "list", "model": req.model, "model_version": li.meta.get("model_version"),
            "dimensions": int(vecs.shape[1]),
            "lineage_id": li.meta.get("model_lineage_id") or li.lineage_id,
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                     for i, v in enumerate(vecs.round(7))],
            "usage": {"prompt_tokens": sum(len(t.split()) for t in texts), "total_tokens": sum(len(t.split()) for t in texts)},
        }

    @app.post("/v1/search", responses=COMMON_ERRORS)
    async def search_route(req: SearchRequest) -> dict[str, Any]:
        li, vecs = await _embed(req.index, [req.query])
        search = runtime["search"]
        if search.inline(li):  # a small in-memory copy: one matrix-vector product, no thread hop
            hits = search.query(li, vecs[0], req.limit, req.domain, req.source)
        else:
            hits = await run_in_threadpool(search.query, li, vecs[0], req.limit, req.domain, req.source)
        return {"index": req.index, "collection": li.collection, "model_version": li.meta.get("model_version"),
                "lineage_id": li.lineage_id, "hits": hits}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        state = watcher.state
        search = runtime["search"]
        return {
            "deployment_version": state.version if state else None,
            "deployment_lineage_id": state.lineage_id if state else None,
            # the live variants, from the release each route follows (not the state at deploy time)
            "models": [
                {"route": route, "domain": s.loaded.domain, "model_version": s.loaded.model_version,
                 "lineage_id": s.loaded.lineage_id, "variant": s.name, "variant_role": s.role,
                 "weight": s.weight, "release": s.release,
                 "pinned_by": s.pinned_by, "engine": s.spec.engine, "kv_cache": s.loaded.engine.kv_cache,
                 "capabilities": ["generate"]}
                for route, served in sorted(watcher.variants.items()) for s in served
            ],
            "search": {
                kind: {"alias": idx.alias, "collection": idx.collection, "model_version": idx.model_version,
                       "lineage_id": idx.lineage_id,
                       "serving": (search.live[kind].collection if search and kind in search.live else None)}
                for kind, idx in (state.search.indexes.items() if state else [])
            },
            "embedders": dict(embedders.backends),  # model path -> onnx:<file> | torch
        }

    def _lineage(fn):
        if settings.graph_factory is None:
            raise ApiError(503, "no lineage graph configured for this server")
        from ossa_assets.lib.graph_store import queries

        try:
            store = settings.graph_factory()
        except Exception as e:
            raise ApiError(503, f"lineage graph unavailable ({type(e).__name__})") from e
        try:
            return fn(store, queries)
        finally:
            store.close()

    def _resolve(store, queries, target: str) -> str:
        node = queries.resolve(store, target)
        if node is None:
            raise ApiError(404, f"nothing in the lineage graph matches {target!r}")
        return node

    lineage_errors = {404: _err("Nothing in the lineage graph matches"), 503: _err("No lineage graph")}

    # Lineage: every answer above carries a lineage_id; these resolve it (or a route, an asset
    # key, doc:<hash>, source:<name>) to what it was made from and what was made from it.
    @app.get("/v1/lineage/upstream", responses=lineage_errors)
    def lineage_upstream(id: str = Query(min_length=1, max_length=500),
                         documents: int = Query(default=20, ge=0, le=1000)) -> dict[str, Any]:
        return _lineage(lambda store, q: q.as_json(store.upstream(_resolve(store, q, id), documents=documents)))

    @app.get("/v1/lineage/downstream", responses=lineage_errors)
    def lineage_downstream(id: str = Query(min_length=1, max_length=500)) -> dict[str, Any]:
        return _lineage(lambda store, q: q.as_json(store.downstream(_resolve(store, q, id))))

    @app.get("/v1/lineage/diff", responses=lineage_errors)
    def lineage_diff(b: str = Query(min_length=1, max_length=500),
                     a: Optional[str] = Query(default=None, max_length=500,
                                              description="default: the version of b's asset before b")) -> dict[str, Any]:
        def run(store, q):
            new = _resolve(store, q, b)
            old = _resolve(store, q, a) if a else q.previous(store, new)
            if old is None:
                raise ApiError(404, f"no earlier version of {new} to compare with: pass a=")
            return q.diff(store, old, new)

        return _lineage(run)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness: the process answers. Whether it can serve is /ready."""
        state = watcher.state
        return {"status": "draining" if runtime["draining"] else "ok",
                "deployment_version": state.version if state else None, "routes": sorted(watcher.routes),
                "last_reload_error": watcher.last_error}

    @app.get("/ready", responses={503: _err("No deployment loaded yet, or draining")})
    def ready() -> JSONResponse:
        ok = bool(watcher.routes) and not runtime["draining"]
        search = runtime["search"]
        return JSONResponse({"ready": ok, "routes": sorted(watcher.routes),
                             "releases": {r: rel.version for r, rel in sorted(watcher.releases.items())},
                             "search": sorted(search.live) if search else [],
                             "last_reload_error": watcher.last_error,
                             # a release that was refused (missing or corrupt engine): the route
                             # keeps serving its previous variants
                             "release_errors": dict(watcher.release_errors),
                             "search_error": search.last_error if search else None},
                            status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response)
    def metrics_route() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    _KNOWN = {r.path for r in app.routes if hasattr(r, "path")}
    return app


async def _send_json(send, status: int, body: dict[str, Any], rid: str, close: bool = False,
                     retry_after: int | None = None) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
               (b"x-request-id", rid.encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:  # the rest of an unread body would be taken for the next request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


class _Front:
    """Request ids, draining (503), body limits (413/415) before the body is read, deployment
    refresh, in-flight count for the drain, per-route metrics and the access log."""

    def __init__(self, app, runtime, watcher, metrics, settings, known):
        self.app, self.runtime, self.watcher, self.metrics, self.settings = app, runtime, watcher, metrics, settings
        self.known = known

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        rid = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        path, method = scope["path"], scope["method"]
        t0 = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "version": "", "lineage": "-", "variant": "-"}
        if self.runtime["draining"] and path not in ("/health", "/metrics"):
            seen["status"] = 503
            await _send_json(send, 503, {"error": "server is shutting down; retry on another replica"}, rid)
        elif method == "POST" and (problem := _body_problem(headers, self.settings.max_body_bytes)):
            seen["status"] = problem[0]
            await _send_json(send, problem[0], {"error": problem[1]}, rid)
        elif method == "POST" and (full := self._at_capacity(path)):
            # refused before the body is parsed or tokenized: under overload a refusal must
            # cost the front far less than an answer, or refusing is what saturates it. The
            # (small, size-checked) body is drained so the connection stays open: closing it
            # made every refused caller reconnect
            seen["status"] = 429
            body = await _read_body(receive, self.settings.max_body_bytes, self.settings.body_timeout_s)
            await _send_json(send, 429, {"error": full}, rid, close=isinstance(body, tuple), retry_after=1)
        else:
            self.watcher.poll()

            async def send_with_id(msg):
                if msg["type"] == "http.response.start":
                    seen["status"] = msg["status"]
                    hs = list(msg.get("headers", []))
                    for k, v in hs:
                        if k == b"x-model-version":
                            seen["version"] = v.decode()
                        elif k == b"x-lineage-id":
                            seen["lineage"] = v.decode()
                        elif k == b"x-ossa-variant":
                            seen["variant"] = v.decode()
                    msg = {**msg, "headers": [*hs, (b"x-request-id", rid.encode())]}
                await send(msg)

            self.runtime["in_flight"] += 1
            try:
                if method == "POST":
                    # read the body here, bounded in size and time: a chunked body past the limit
                    # gets its 413 after limit bytes, never read whole; a client trickling its
                    # body gets 408 and never reaches a model queue
                    body = await _read_body(receive, self.settings.max_body_bytes, self.settings.body_timeout_s)
                    if isinstance(body, tuple):
                        seen["status"] = body[0]
                        await _send_json(send, body[0], {"error": body[1]}, rid, close=True)
                        return
                    receive = _replay(body, receive)
                await self.app(scope, receive, send_with_id)
            finally:
                self.runtime["in_flight"] -= 1
                served = scope["state"].get("served")
                if served:  # also for an error answer, which carries no model headers
                    seen["version"], seen["variant"], seen["lineage"] = served
                self._record(method, path, seen, t0, rid)
            return
        self._record(method, path, seen, t0, rid)

    def _at_capacity(self, path: str) -> str | None:
        lr = self.watcher.routes.get(path)
        if lr is None or not lr.engine.at_capacity():
            return None
        return f"{lr.engine.name} is at capacity; retry after 1s"

    def _record(self, method: str, path: str, seen: dict[str, Any], t0: float, rid: str) -> None:
        seconds = time.perf_counter() - t0
        if seen["variant"] != "-":  # a model answered (or failed to): judged for its variant
            status = seen["status"]
            if status >= 500:
                self.metrics.outcome(path, seen["version"], seen["variant"], "error")
            elif status == 200:
                self.metrics.outcome(path, seen["version"], seen["variant"],
                                     "slow" if seconds > self.settings.slow_request_s else "ok")
        self.metrics.request(path if path in self.known() else "other", seen["version"], seen["status"], seconds,
                             seen["variant"])
        if access.isEnabledFor(logging.INFO):
            access.info("%s %s %d %.1fms request_id=%s lineage_id=%s variant=%s", method, path, seen["status"],
                        seconds * 1000, rid, seen["lineage"], seen["variant"])


class _Judge:
    """The domain curator's verdict on a sampled share of generations (prompt + completion as
    one document), off the event loop in one thread; skipped when it falls behind."""

    def __init__(self, metrics, rate: float):
        import random

        self.metrics, self.rate, self._rng = metrics, rate, random.Random()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="judge") if rate > 0 else None
        self._pending = 0

    def maybe(self, route: str, domain: str, model_version: str, role: str, text: str) -> None:
        if self._pool is None or self._pending >= 8 or self._rng.random() >= self.rate:
            return
        self._pending += 1

        def run():
            from ossa_assets.lib.evaluation import is_valid_document

            try:
                ok, _ = is_valid_document(domain, text)
                self.metrics.outcome(route, model_version, role, "valid" if ok else "invalid")
            except Exception:  # a curator bug must not count against the variant
                log.exception("validity judgement failed")
            finally:
                self._pending -= 1

        self._pool.submit(run)


async def _read_body(receive, limit: int, timeout_s: float) -> bytes | tuple[int, str]:
    chunks: list[bytes] = []
    n = 0
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            msg = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            return 408, f"the request body did not arrive within {timeout_s:g}s"
        if msg["type"] == "http.disconnect":
            return 400, "the client disconnected before its body arrived"
        chunk = msg.get("body", b"")
        n += len(chunk)
        if n > limit:
            return 413, f"body is over the {limit}-byte limit"
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later reads: disconnect detection

    return replay


def _body_problem(headers: dict[bytes, bytes], limit: int) -> tuple[int, str] | None:
    """413 from the declared length, before anything is read; 415 for a non-JSON body."""
    length = headers.get(b"content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            return 400, "invalid Content-Length"
        if n > limit:
            return 413, f"body of {n} bytes is over the {limit}-byte limit"
        if n == 0:
            return None
    ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        return 415, f"Content-Type {ctype!r} is not supported: send application/json"
    return None
