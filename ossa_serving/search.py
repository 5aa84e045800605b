"""/v1/search without reopening the store per request, and without blocking a rebuild.

Production (a Qdrant server by URL): one long-lived client; aliases are re-read at most every
`search_poll_s`. Local mode admits one process at a time, and the materialization that rebuilds
an index is another process: the server therefore serves from its own in-memory copy of each
live collection. A background thread watches the store's files (stat only, no open); when the
alias file or a live collection changed, it opens the store briefly (retrying while a
materialization holds it), copies the collection the alias now names, closes the store and
swaps the copy in. Requests never wait for the store: they read the copy they find.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ossa.serving.search")


class SearchUnavailable(Exception):
    pass


@dataclass
class LiveIndex:
    kind: str
    collection: str
    meta: dict[str, Any]
    client: Any  # a MatrixCopy (local mode) or the shared server client
    lineage_id: str  # the deployment's for its collection, else the embedding model's


def _open_retrying(spec, timeout_s: float = 10.0):
    from ossa_assets.lib.embeddings import open_qdrant

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return open_qdrant(url=spec.url, path=spec.path, api_key=os.environ.get("OSSA_QDRANT_API_KEY"))
        except RuntimeError as e:
            if "already accessed" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class MatrixCopy:
    """A local-mode collection's read-only copy as one matrix: exact cosine search (what local
    Qdrant computes, by brute force in Python per point) as one matrix-vector product, with
    the payload filters as precomputed row masks. 1,000 x 384-d: ~0.1 ms per query, against
    ~3 ms through an in-memory QdrantClient (measured on the serving bench)."""

    def __init__(self, ids: list[str], vectors, payloads: list[dict[str, Any]]):
        import numpy as np

        v = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1) if ids else np.zeros((0, 1), np.float32)
        self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.ids, self.payloads = ids, payloads
        self._masks: dict[tuple[str, Any], Any] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, key: str, value: Any):
        import numpy as np

        m = self._masks.get((key, value))
        if m is None:
            m = self._masks[(key, value)] = np.array([p.get(key) == value for p in self.payloads], dtype=bool)
        return m

    def query(self, vector, limit: int, filters: dict[str, Any]) -> list[dict[str, Any]]:
        import numpy as np

        if not self.ids:
            return []
        q = np.asarray(vector, dtype=np.float32)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        scores = self.vectors @ q
        rows = None
        for k, v in filters.items():
            m = self._mask(k, v)
            rows = m if rows is None else rows & m
        if rows is not None:
            scores = np.where(rows, scores, -np.inf)
        k = min(limit, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [{"id": self.ids[i], "score": float(scores[i]), **self.payloads[i]} for i in top
                if scores[i] != -np.inf]


def _copy_collection(src, name: str) -> MatrixCopy:
    """The points (vectors + payloads) of `name`, read once into a matrix (the index's
    collections are cosine: lib/embeddings.ensure_collection)."""
    from qdrant_client import models

    distance = src.get_collection(name).config.params.vectors.distance
    if distance != models.Distance.COSINE:
        raise SearchUnavailable(f"{name}: {distance} distance; the local copy serves cosine collections")
    ids, vectors, payloads = [], [], []
    offset = None
    while True:
        points, offset = src.scroll(name, limit=2048, offset=offset, with_payload=True, with_vectors=True)
        for p in points:
            ids.append(str(p.id))
            vectors.append(p.vector)
            payloads.append(dict(p.payload or {}))
        if offset is None:
            break
    return MatrixCopy(ids, vectors, payloads)


class SearchBackend:
    def __init__(self, watcher: Any, embedders: Any, settings: Any):
        self.watcher, self.embedders, self.settings = watcher, embedders, settings
        self.live: dict[str, LiveIndex] = {}
        self._signature: Any = None
        self._server_client = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._poll, name="search-sync", daemon=True)
        self._thread.start()

    # -- keeping the copies current ------------------------------------------------------

    def _files_signature(self, state) -> Any:
        spec = state.search
        if spec.url:
            return (state.version, int(time.monotonic() / max(self.settings.search_poll_s, 0.1)))
        root = Path(spec.path or "")
        stamps = []
        for f in [root / "meta.json", *[root / "collection" / c for c in self._collections()]]:
            try:
                stamps.append((str(f), f.stat().st_mtime_ns,
                               max((p.stat().st_mtime_ns for p in f.glob("*")), default=0) if f.is_dir() else 0))
            except FileNotFoundError:
                stamps.append((str(f), None, None))
        return (state.version, tuple(stamps))

    def _collections(self) -> list[str]:
        return [li.collection for li in self.live.values()]

    def sync(self) -> None:
        """Bring every live index up to date with the store (called by the poller)."""
        from ossa_assets.lib import embeddings

        state = self.watcher.state
        if state is None or not state.search.indexes:
            return
        sig = self._files_signature(state)
        if sig == self._signature:
            return
        spec = state.search
        if spec.url:
            if self._server_client is None:
                self._server_client = _open_retrying(spec)
            client, close = self._server_client, False
        else:
            client, close = _open_retrying(spec), True
        try:
            live = {}
            for kind, idx in state.search.indexes.items():
                name = idx.alias or idx.collection
                collection = embeddings.alias_target(client, name) or name
                if not client.collection_exists(collection):
                    continue
                meta = embeddings.collection_metadata(client, collection)
                # something under the store changed (the signature): copy what the alias names now
                copy = client if spec.url else _copy_collection(client, collection)
                lineage = idx.lineage_id if collection == idx.collection else meta.get("model_lineage_id")
                live[kind] = LiveIndex(kind, collection, meta, copy, lineage)
                # load the query embedder now, not on the first request
                self.embedders.get(meta.get("model_path"), meta.get("max_seq_length"))
        finally:
            if close:
                client.close()
        with self._lock:
            self.live = live
        self._signature = self._files_signature(state)
        self.last_error = None

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.search_poll_s):
            try:
                self.sync()
            except Exception as e:  # the previous copies keep serving
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("search index sync failed: %s", self.last_error)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._server_client is not None:
            self._server_client.close()

    # -- answering --------------------------------------------------------------------------

    def index(self, kind: str) -> LiveIndex:
        state = self.watcher.state
        if state is None or kind not in state.search.indexes:
            raise SearchUnavailable(f"no {kind} index deployed yet: materialize serving/deployment")
        li = self.live.get(kind)
        if li is None:
            raise SearchUnavailable(f"the {kind} index is not loaded yet (or not in Qdrant): retry shortly")
        return li

    def inline(self, li: LiveIndex) -> bool:
        """Cheap enough to answer on the event loop (~0.1 ms at 1,000 x 384; 50,000 rows is
        ~2 ms): larger copies and a Qdrant server go to a thread."""
        return isinstance(li.client, MatrixCopy) and len(li.client) <= 50_000

    def query(self, li: LiveIndex, vector: Any, limit: int, domain: str | None,
              source: str | None) -> list[dict[str, Any]]:
        if isinstance(li.client, MatrixCopy):
            return li.client.query(vector, limit, {k: v for k, v in (("domain", domain), ("source", source)) if v})
        from qdrant_client import models

        if not isinstance(vector, list):
            vector = vector.tolist()
        must = [models.FieldCondition(key=k, match=models.MatchValue(value=v))
                for k, v in (("domain", domain), ("source", source)) if v]
        res = li.client.query_points(li.collection, query=vector, limit=limit,
                                     query_filter=models.Filter(must=must) if must else None, with_payload=True)
        return [{"id": str(p.id), "score": float(p.score), **(p.payload or {})} for p in res.points]
