"""Serving stage.

Inputs: every domain's int8 engine and every embedding model's vector index. Output:
`serving/deployment`, the desired state of the inference server (route -> model version, engine
path, lineage id; the search indexes and their live aliases), written atomically to `<data root>/serving/deployment.json`. A running
`ossa serve` process notices the new file on its next request and swaps engines without a
restart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset
from ossa_assets.keys import DEPLOYMENT, INT8_MODEL, VECTOR_INDEX
from ossa_assets.lib.artifacts import Artifact, lineage_id_for, sha256_json
from ossa_assets.lib.deployment import DeploymentState, RouteSpec, SearchIndex, SearchSpec, state_path, write_state
from ossa_assets.lib.domains import ROUTES
from resources.qdrant import QdrantResource
from resources.storage import ArtifactStore


def deployment_state_path(store: ArtifactStore):
    return state_path(store.root)


@artifact_asset(
    kind="Deployment",
    key=DEPLOYMENT,
    ins={"engines": dg.AssetIn(INT8_MODEL),
         "indexes": dg.AssetIn(VECTOR_INDEX, partition_mapping=dg.AllPartitionMapping())},
    group_name="serving",
    kinds={"fastapi", "onnx"},
    owners=["team:serving"],
)
def deployment(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    qdrant: QdrantResource,
    engines: dict,
    indexes: dict,
) -> StageResult:
    """The inference server's desired state: which engine serves each route, and the search index."""
    by_domain: dict[str, Artifact] = engines
    missing = sorted(set(ROUTES.values()) - set(by_domain))
    if missing:
        raise ValueError(f"no int8 engine for domains {missing}")
    routes = {
        route: RouteSpec(
            domain=domain,
            model_version=f"{domain}-{by_domain[domain].data_version[:12]}",
            engine_path=by_domain[domain].path,
            model_file=by_domain[domain].meta.get("model_file", "model.int8.onnx"),
            engine=by_domain[domain].meta.get("engine", "onnxruntime-int8"),
            kv_model_file=by_domain[domain].meta.get("kv_model_file"),
            lineage_id=by_domain[domain].lineage_id,
        )
        for route, domain in ROUTES.items()
    }
    # the search route reads each model's live alias; the collection behind it names the model
    # that must embed the query (a later blue/green move needs no new deployment)
    search = SearchSpec(
        url=qdrant.url,
        path=qdrant.path,
        indexes={
            kind: SearchIndex(
                alias=art.meta.get("alias"),
                collection=art.meta["collection"],
                model_version=art.meta.get("model_version"),
                lineage_id=art.lineage_id,
            )
            for kind, art in sorted(indexes.items())
        },
    )
    version = sha256_json({"routes": {r: asdict(s) for r, s in routes.items()}, "search": asdict(search)})
    state = DeploymentState(
        version=version[:16],
        lineage_id=lineage_id_for("Deployment", DEPLOYMENT.to_user_string(), None, version),
        routes=routes,
        search=search,
        declared_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        dagster_run_id=context.run.run_id,
    )
    path = write_state(deployment_state_path(store), state)
    return StageResult(
        Artifact(
            kind="Deployment",
            path=str(path),
            data_version=version,
            meta={"serves": {r: s.lineage_id for r, s in routes.items()}},
        ),
        metadata={
            "routes": dg.JsonMetadataValue({r: s.model_version for r, s in routes.items()}),
            "search": dg.JsonMetadataValue({k: v.alias or v.collection for k, v in search.indexes.items()}),
            "state_file": dg.PathMetadataValue(str(path)),
        },
    )
