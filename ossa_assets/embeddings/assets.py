"""Embeddings stage.

Inputs: every domain's curated corpus. Output: `embeddings/document_index`, a Qdrant collection
named after the embedding model version (`docs-<model version>`), one point per curated
document with a deterministic id (uuid5 of content hash and model version) and payload
(doc_id, domain, source, path, data_version, model_version); payload indexes on domain and
source. Qdrant is local mode under `<data root>/qdrant` by default, a server by URL in production.
Gate: sampled documents must find themselves as nearest neighbour before the `docs-live` alias
(read by the serving search route) moves to the collection.
"""

from __future__ import annotations

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, gate
from ossa_assets.embeddings.config import DocumentIndexConfig
from ossa_assets.keys import CURATED_CORPUS, DOCUMENT_INDEX
from ossa_assets.lib import embeddings as lib
from ossa_assets.lib.artifacts import Artifact, sha256_json
from ossa_assets.lib.curation import corpus as corpora_lib
from resources.qdrant import QdrantResource


@artifact_asset(
    kind="Collection",
    key=DOCUMENT_INDEX,
    ins={"corpora": dg.AssetIn(CURATED_CORPUS)},
    group_name="embeddings",
    kinds={"qdrant"},
    owners=["team:search"],
    check_specs=[
        gate(
            "nearest_neighbour_is_self",
            DOCUMENT_INDEX,
            "Sampled documents retrieve themselves first; else the live alias stays put.",
        )
    ],
)
def document_index(
    context: dg.AssetExecutionContext,
    config: DocumentIndexConfig,  # type: ignore[valid-type]
    qdrant: QdrantResource,
    corpora: dict,
) -> StageResult:
    """Curated documents embedded with MiniLM and indexed in a Qdrant collection."""
    docs = []
    for domain, art in sorted(corpora.items()):
        for split in ("train", "validation"):
            for r in corpora_lib.load_split_texts(art.path, split):
                docs.append({**r, "data_version": art.data_version})
    if not docs:
        raise ValueError("no curated documents to index")
    embedder = lib.load_embedder(config.model_path, config.max_seq_length)
    model_ver = lib.model_version(config.model_path)
    collection = f"docs-{model_ver[:12]}"
    version = sha256_json(
        {"model": model_ver, "docs": sorted(d["doc_id"] for d in docs), "seq": config.max_seq_length}
    )
    # a deterministic sample: every n-th document across domains
    step = max(1, len(docs) // config.check_sample)
    sample = sorted(docs, key=lambda d: d["doc_id"])[::step][: config.check_sample]
    with qdrant.client() as client:
        result = lib.index_documents(client, embedder, collection, docs, model_ver, config.batch_size)
        rate, misses = lib.self_retrieval_rate(client, embedder, collection, sample, model_ver)
        passed = rate >= config.min_self_retrieval
        if passed:
            lib.point_alias(client, config.alias, collection)
        else:
            context.log.warning(f"self-retrieval {rate:.2f}: alias {config.alias} left where it was")
        count = client.count(collection, exact=True).count
    check = dg.AssetCheckResult(
        check_name="nearest_neighbour_is_self",
        passed=passed,
        description=f"{rate:.1%} of {len(sample)} sampled documents are their own nearest neighbour",
        metadata={"self_retrieval": rate, "misses": dg.JsonMetadataValue(misses[:10])},
    )
    return StageResult(
        Artifact(
            kind="Collection",
            path=f"qdrant://{collection}",
            data_version=version,
            meta={
                "collection": collection,
                "alias": config.alias if passed else None,
                "model_version": model_ver,
                "model_path": config.model_path,
                "max_seq_length": config.max_seq_length,
                "points": count,
            },
        ),
        metadata={
            "collection": collection,
            "points": count,
            "dimension": result.dim,
            "embed_index_seconds": dg.FloatMetadataValue(round(result.seconds, 2)),
            "docs_per_second": dg.FloatMetadataValue(round(len(docs) / max(result.seconds, 1e-9), 1)),
            "self_retrieval": dg.FloatMetadataValue(round(rate, 4)),
            "model_version": model_ver[:16],
        },
        checks=[check],
    )
