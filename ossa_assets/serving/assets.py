"""Serving stage.

Inputs: every domain's int8 engine and the document index. Output: `serving/deployment`, the
desired state of the inference server (route -> model version, engine path, lineage id; the
search collection), written atomically to `<data root>/serving/deployment.json`. A running
`ossa serve` process notices the new file on its next request and swaps engines without a
restart.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset
from ossa_assets.keys import DEPLOYMENT, DOCUMENT_INDEX, INT8_MODEL
from ossa_assets.lib.artifacts import Artifact, atomic_write_text, lineage_id_for, sha256_json
from ossa_assets.serving.server import ROUTES
from resources.qdrant import QdrantResource
from resources.storage import ArtifactStore


def deployment_state_path(store: ArtifactStore):
    return store.path("serving", "deployment.json")


@artifact_asset(
    kind="Deployment",
    key=DEPLOYMENT,
    ins={"engines": dg.AssetIn(INT8_MODEL), "index": dg.AssetIn(DOCUMENT_INDEX)},
    group_name="serving",
    kinds={"fastapi", "onnx"},
    owners=["team:serving"],
)
def deployment(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    qdrant: QdrantResource,
    engines: dict,
    index: Artifact,
) -> StageResult:
    """The inference server's desired state: which engine serves each route, and the search index."""
    by_domain: dict[str, Artifact] = engines
    missing = sorted(set(ROUTES.values()) - set(by_domain))
    if missing:
        raise ValueError(f"no int8 engine for domains {missing}")
    routes = {
        route: {
            "domain": domain,
            "model_version": f"{domain}-{by_domain[domain].data_version[:12]}",
            "engine_path": by_domain[domain].path,
            "model_file": by_domain[domain].meta.get("model_file", "model.int8.onnx"),
            "engine": by_domain[domain].meta.get("engine", "onnxruntime-int8"),
            "lineage_id": by_domain[domain].lineage_id,
        }
        for route, domain in ROUTES.items()
    }
    search = {
        "collection": index.meta.get("alias") or index.meta["collection"],
        "url": qdrant.url,
        "path": qdrant.path,
        # the search route must embed queries with the model that embedded the documents
        "embedding_model_path": index.meta.get("model_path"),
        "max_seq_length": index.meta.get("max_seq_length"),
        "lineage_id": index.lineage_id,
    }
    version = sha256_json({"routes": routes, "search": search})
    state = {
        "version": version[:16],
        "lineage_id": lineage_id_for("Deployment", DEPLOYMENT.to_user_string(), None, version),
        "routes": routes,
        "search": search,
        "declared_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dagster_run_id": context.run.run_id,
    }
    path = deployment_state_path(store)
    atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True))
    return StageResult(
        Artifact(
            kind="Deployment",
            path=str(path),
            data_version=version,
            meta={"serves": {r: s["lineage_id"] for r, s in routes.items()}},
        ),
        metadata={
            "routes": dg.JsonMetadataValue({r: s["model_version"] for r, s in routes.items()}),
            "search_collection": search["collection"],
            "state_file": dg.PathMetadataValue(str(path)),
        },
    )
