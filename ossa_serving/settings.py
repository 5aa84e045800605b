"""The server's own settings, from the environment: it never builds Dagster resources."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _half_the_cores() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


@dataclass
class Settings:
    state_path: Path
    cache_url: str | None = None  # Redis; None: in-process LRU
    # dynamic batching (Triton's rule): a batch goes when full or when its oldest request has
    # waited max_queue_delay_ms
    max_batch: int = 32
    max_batch_tokens: int = 8192
    max_queue_delay_ms: float = 2.0
    # per engine, waiting beyond the running batch; beyond it: 429 + Retry-After. 32 measured
    # better than 128 under 2x overload on 2 cores: admitted p50 124 vs 333 ms, answered 797
    # vs 619 req/s (bench_serving)
    max_queue: int = 32
    request_timeout_s: float = 10.0  # per-request deadline: 504 when missed
    # 413 beyond it, before the body is read; above the largest valid body (64 embedding
    # inputs of 2000 characters, each escaped to up to 12 bytes)
    max_body_bytes: int = 2 * 1024 * 1024
    body_timeout_s: float = 10.0  # the whole body must arrive within it: 408 otherwise
    # onnxruntime threads per engine: half the cores, the rest for the HTTP process (on 2 cores
    # two spinning ORT threads beside the front halved throughput: bench_serving)
    intra_op_threads: int = field(default_factory=lambda: _half_the_cores())
    # each generation engine in a process of its own (workers.py: no GIL shared with the HTTP
    # loop); False: a thread of the server process
    engine_processes: bool = True
    # an embedder is one big matmul chain per batch: all the cores (1 -> 2 threads measured
    # +29 % req/s on 2 cores, where the decoders lost throughput with 2)
    embed_intra_op_threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # embedders: "onnx" (exported once per model version into onnx_cache_dir) or "torch"
    embedder_backend: str = "onnx"
    onnx_cache_dir: Path = field(default_factory=lambda: Path(os.environ.get(
        "OSSA_SERVE_ONNX_CACHE", Path.home() / ".cache" / "ossa" / "embedders")))
    search_poll_s: float = 1.0  # how often the search copy checks for a moved alias
    # the release store to follow (lib/release.py); None: the one the deployment state names.
    # Set on a replica that shares no file system with the deployment (a postgresql:// URL)
    release_store: str | None = None
    release_poll_s: float = 0.5  # how often the release versions are checked
    # the live judgement's inputs (lib/canary.py): a generation slower than this counts as
    # "slow"; this share of generations is judged by the domain's curator (valid | invalid)
    slow_request_s: float = 1.0
    validity_sample_rate: float = 0.02
    graph_factory: Callable[[], Any] | None = None

    @classmethod
    def from_env(cls, state_path: str | Path | None = None, **overrides: Any) -> Settings:
        root = Path(os.environ.get("OSSA_DATA_ROOT", ".ossa_data")).resolve()
        from ossa_assets.lib.deployment import state_path as default_state_path

        s = cls(
            state_path=Path(state_path) if state_path else default_state_path(root),
            cache_url=os.environ.get("OSSA_REDIS_URL") or None,
            max_batch=_int("OSSA_SERVE_MAX_BATCH", 32),
            max_batch_tokens=_int("OSSA_SERVE_MAX_BATCH_TOKENS", 8192),
            max_queue_delay_ms=_float("OSSA_SERVE_MAX_QUEUE_DELAY_MS", 2.0),
            max_queue=_int("OSSA_SERVE_MAX_QUEUE", 32),
            request_timeout_s=_float("OSSA_SERVE_TIMEOUT_S", 10.0),
            body_timeout_s=_float("OSSA_SERVE_BODY_TIMEOUT_S", 10.0),
            intra_op_threads=_int("OSSA_SERVE_INTRA_OP_THREADS", _half_the_cores()),
            embed_intra_op_threads=_int("OSSA_SERVE_EMBED_INTRA_OP_THREADS", max(1, os.cpu_count() or 1)),
            embedder_backend=os.environ.get("OSSA_SERVE_EMBEDDER_BACKEND", "onnx"),
            engine_processes=os.environ.get("OSSA_SERVE_ENGINE_PROCESSES", "1") not in ("0", "false", "no"),
            graph_factory=graph_factory_from_env(root),
            release_store=os.environ.get("OSSA_RELEASE_URL") or None,
            release_poll_s=_float("OSSA_SERVE_RELEASE_POLL_S", 0.5),
            slow_request_s=_float("OSSA_SERVE_SLOW_REQUEST_S", 1.0),
            validity_sample_rate=_float("OSSA_SERVE_VALIDITY_SAMPLE_RATE", 0.02),
        )
        for k, v in overrides.items():
            setattr(s, k, v)
        return s


def graph_factory_from_env(root: Path) -> Callable[[], Any]:
    """The lineage graph: a Bolt server when OSSA_NEO4J_URI is set, else the embedded store
    under the data root (what `ossa materialize` syncs)."""
    from ossa_assets.lib.graph_store import open_graph_store

    uri = os.environ.get("OSSA_NEO4J_URI")
    if uri:
        return lambda: open_graph_store("bolt", uri=uri, user=os.environ.get("OSSA_NEO4J_USER"),
                                        password=os.environ.get("OSSA_NEO4J_PASSWORD"))
    return lambda: open_graph_store("embedded", data_dir=root / "graph")
