"""The pre-batching inference server, kept runnable as the benchmarks' naive baseline
(`python -m ossa_serving --naive`): each request runs the model alone in a thread, search
opens the store per request. What serves is ossa_serving.app.

It serves whatever the deployment asset last declared, without restarts.

The `serving/deployment` asset writes a desired-state file (route -> engine path, model version,
lineage id). This process checks the file's mtime on every request and, when it changed, loads
the new engines beside the old ones and swaps them in under a lock: a new deployment is live
with the next request, and a broken one leaves the previous engines serving.

Routes: POST /api-model/v1, /protocol-model/v1, /devops-model/v1 (generate); POST /v1/search
(Qdrant); GET /v1/models (capability discovery); GET /health. Bad requests get a 4xx with a
message; internal errors a 500 with a short message, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ossa.serving")

from ossa_assets.lib.domains import ROUTES  # noqa: E402

MAX_PROMPT_CHARS = 8000
MAX_NEW_TOKENS = 256


class GenerateRequest(BaseModel):
    model_config = {"extra": "forbid"}

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Text to continue.")
    max_new_tokens: int = Field(default=32, ge=1, le=MAX_NEW_TOKENS)


class SearchRequest(BaseModel):
    model_config = {"extra": "forbid"}

    query: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    limit: int = Field(default=5, ge=1, le=50)
    index: Literal["docs", "code", "capability"] = Field(
        default="docs", description="docs: every curated document; code: specs, NodeSets, pipelines; "
        "capability: operations, OPC UA methods and CI jobs an agent can call.")
    domain: Optional[str] = Field(default=None, max_length=100)
    source: Optional[str] = Field(default=None, max_length=200)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


@dataclass
class LoadedRoute:
    route: str
    domain: str
    model_version: str
    lineage_id: str
    engine: Any
    tokenizer: Any
    domain_token_id: int


class DeploymentWatcher:
    """Holds the live engines; reloads when the desired-state file changes."""

    def __init__(self, state_path: Path):
        self.state_path = Path(state_path)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self.state: dict[str, Any] = {}
        self.routes: dict[str, LoadedRoute] = {}
        self.last_error: str | None = None
        self.reloads = 0

    def refresh(self) -> None:
        try:
            mtime = self.state_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        with self._lock:
            if mtime == self._mtime:
                return
            try:
                state = json.loads(self.state_path.read_text())
                routes = self._load_routes(state)
            except Exception as e:  # keep serving the previous deployment
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("deployment reload failed; previous engines stay live")
                self._mtime = mtime  # don't retry a broken file on every request
                return
            self.state, self.routes, self._mtime = state, routes, mtime
            self.last_error = None
            self.reloads += 1
            log.info("deployment %s live: %s", state.get("version"), sorted(routes))

    def _load_routes(self, state: dict[str, Any]) -> dict[str, LoadedRoute]:
        from ossa_assets.lib.modeling import DOMAIN_TOKENS, load_tokenizer
        from ossa_assets.lib.onnx_runtime import OnnxCausalLM

        loaded: dict[str, LoadedRoute] = {}
        for route, spec in state.get("routes", {}).items():
            current = self.routes.get(route)
            if current and current.model_version == spec["model_version"]:
                loaded[route] = current  # unchanged: no reload
                continue
            engine_dir = Path(spec["engine_path"])
            tokenizer = load_tokenizer(engine_dir)
            engine = OnnxCausalLM(engine_dir / spec.get("model_file", "model.int8.onnx"))
            loaded[route] = LoadedRoute(
                route=route,
                domain=spec["domain"],
                model_version=spec["model_version"],
                lineage_id=spec["lineage_id"],
                engine=engine,
                tokenizer=tokenizer,
                domain_token_id=tokenizer.convert_tokens_to_ids(DOMAIN_TOKENS[spec["domain"]]),
            )
        return loaded


class SearchBackend:
    """Qdrant search through each model's live alias, embedding the query with the model the
    alias's collection was built with (its metadata names it; loaded once per model)."""

    def __init__(self, watcher: DeploymentWatcher):
        self.watcher = watcher
        self._embedders: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _embedder(self, meta: dict[str, Any]):
        from ossa_assets.lib import embeddings

        path = meta.get("model_path")
        if path not in self._embedders:
            self._embedders[path] = embeddings.load_embedder(path, meta.get("max_seq_length"))
        return self._embedders[path]

    def search(self, req: SearchRequest) -> dict[str, Any]:
        from ossa_assets.lib import embeddings

        spec = self.watcher.state.get("search") or {}
        index = (spec.get("indexes") or {}).get(req.index)
        if not index:
            raise ApiError(503, f"no {req.index} index deployed yet: materialize serving/deployment")
        name = index.get("alias") or index["collection"]
        with self._lock:
            client = _open_qdrant_retrying(spec)
            try:
                collection = embeddings.alias_target(client, name) or name
                if not client.collection_exists(collection):
                    raise ApiError(503, f"the {req.index} index ({name}) is not in Qdrant: re-materialize "
                                        "embeddings/vector_index")
                meta = embeddings.collection_metadata(client, collection)
                hits = embeddings.search(client, self._embedder(meta), collection, req.query, req.limit,
                                         req.domain, req.source)
            finally:
                client.close()
        return {
            "index": req.index,
            "collection": collection,
            "model_version": meta.get("model_version"),
            # the deployed index's lineage id while its collection is the live one; after a
            # later alias move, the embedding model's (the collection records it)
            "lineage_id": index["lineage_id"] if collection == index["collection"] else meta.get("model_lineage_id"),
            "hits": hits,
        }


def _open_qdrant_retrying(spec: dict[str, Any], timeout_s: float = 10.0):
    """Local-mode Qdrant admits one process at a time; a materialization may hold it briefly."""
    from ossa_assets.lib.embeddings import open_qdrant

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return open_qdrant(
                url=spec.get("url"), path=spec.get("path"), api_key=os.environ.get("OSSA_QDRANT_API_KEY")
            )
        except RuntimeError as e:
            if "already accessed" not in str(e) or time.monotonic() > deadline:
                raise ApiError(503, "search index is busy (being rebuilt); retry shortly") from e
            time.sleep(0.1)


def create_app(state_path: str | Path, cache_url: str | None = None,
               graph_factory: Callable[[], Any] | None = None) -> FastAPI:
    """`graph_factory` opens the lineage graph store for the /v1/lineage routes (None: those
    routes answer 503)."""
    from ossa_assets.lib.cache import cache_key, make_cache

    watcher = DeploymentWatcher(Path(state_path))
    searcher = SearchBackend(watcher)
    cache = make_cache(cache_url)
    app = FastAPI(title="ossa inference", version="1")
    app.state.watcher = watcher

    @app.middleware("http")
    async def _refresh(request: Request, call_next):
        watcher.refresh()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        msgs = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": msgs}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    def _generate(route: str, req: GenerateRequest) -> dict[str, Any]:
        loaded = watcher.routes.get(route)
        if loaded is None:
            raise ApiError(503, f"{route} has no deployed model yet: materialize serving/deployment")
        key = cache_key(loaded.model_version, route, req.model_dump())
        hit = cache.get(key)
        if hit is not None:
            return {**hit, "cached": True}
        ids = [loaded.domain_token_id, *loaded.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]]
        t0 = time.perf_counter()
        new = loaded.engine.generate(ids, req.max_new_tokens, eos_token_id=loaded.tokenizer.eos_token_id)
        body = {
            "route": route,
            "domain": loaded.domain,
            "model_version": loaded.model_version,
            "lineage_id": loaded.lineage_id,
            "completion": loaded.tokenizer.decode(new, skip_special_tokens=True),
            "prompt_tokens": len(ids),
            "completion_tokens": len(new),
            "latency_ms": round((time.perf_counter() - t0) * 1000, 2),
        }
        cache.set(key, body)
        return {**body, "cached": False}

    def _route_handler(route: str):
        # sync handlers run in FastAPI's thread pool, so a generation never blocks the loop
        def handler(req: GenerateRequest) -> dict[str, Any]:
            return _generate(route, req)

        return handler

    for route in ROUTES:
        app.post(route, name=f"generate {route}")(_route_handler(route))

    @app.post("/v1/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        return searcher.search(req)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        state = watcher.state
        return {
            "deployment_version": state.get("version"),
            "deployment_lineage_id": state.get("lineage_id"),
            "models": [
                {
                    "route": r.route,
                    "domain": r.domain,
                    "model_version": r.model_version,
                    "lineage_id": r.lineage_id,
                    "engine": state["routes"][r.route].get("engine"),
                    "capabilities": ["generate"],
                }
                for r in sorted(watcher.routes.values(), key=lambda r: r.route)
            ],
            "search": {
                kind: {k: v for k, v in idx.items() if k in ("alias", "collection", "model_version", "lineage_id")}
                for kind, idx in ((state.get("search") or {}).get("indexes") or {}).items()
            },
        }

    def _lineage(fn):
        if graph_factory is None:
            raise ApiError(503, "no lineage graph configured for this server")
        from ossa_assets.lib.graph_store import queries

        try:
            store = graph_factory()
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

    # Lineage: every answer above carries a lineage_id; these resolve it (or a route, an asset
    # key, doc:<hash>, source:<name>) to what it was made from and what was made from it.
    @app.get("/v1/lineage/upstream")
    def lineage_upstream(id: str = Query(min_length=1, max_length=500),
                         documents: int = Query(default=20, ge=0, le=1000)) -> dict[str, Any]:
        return _lineage(lambda store, q: q.as_json(store.upstream(_resolve(store, q, id), documents=documents)))

    @app.get("/v1/lineage/downstream")
    def lineage_downstream(id: str = Query(min_length=1, max_length=500)) -> dict[str, Any]:
        return _lineage(lambda store, q: q.as_json(store.downstream(_resolve(store, q, id))))

    @app.get("/v1/lineage/diff")
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
    def health() -> JSONResponse:
        ok = bool(watcher.routes)
        return JSONResponse(
            {
                "status": "ok" if ok else "waiting_for_deployment",
                "deployment_version": watcher.state.get("version"),
                "routes": sorted(watcher.routes),
                "last_reload_error": watcher.last_error,
            },
            status_code=200 if ok else 503,
        )

    return app


class TorchGenerateRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=20_000)
    max_new_tokens: int = Field(default=32, ge=1, le=256)


def create_torch_app(model_dir: str | Path) -> FastAPI:
    """The other naive baseline (`python -m ossa_serving --naive-torch DIR`): the PyTorch
    checkpoint behind every generation route, `model.generate` per request in a thread, no
    batching, no ONNX — what a first FastAPI + transformers server looks like."""
    import torch
    from transformers import AutoModelForCausalLM

    from ossa_assets.lib.domains import ROUTES, domain
    from ossa_assets.lib.modeling import load_tokenizer

    tok = load_tokenizer(Path(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    app = FastAPI(title="ossa naive torch baseline")
    app.state.runtime = {"draining": False, "in_flight": 0}

    def handler(route: str):
        token_id = tok.convert_tokens_to_ids(domain(ROUTES[route]).token)

        def generate(req: TorchGenerateRequest) -> dict[str, Any]:
            ids = [token_id, *tok(req.prompt, add_special_tokens=False)["input_ids"]]
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=req.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.eos_token_id)
            new = out[0, len(ids):].tolist()
            return {"route": route, "completion": tok.decode(new, skip_special_tokens=True),
                    "completion_tokens": len(new), "latency_ms": round((time.perf_counter() - t0) * 1000, 2)}

        return generate

    for route in ROUTES:
        app.post(route)(handler(route))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
