"""Serving stage.

- `serving/release[domain]`: the route's release pointer (lib/release.py): the variants serving
  it and their traffic weights. A new int8 engine enters only if its registry version passed its
  gates and the offline judgement (`ossa.release_eligible`, lora/multitask_adapter) and its files
  verify; then as the champion of an empty route, else as the challenger at `canary_weight`.
  The MLflow aliases are written from the release after it moved.
- `serving/deployment`: the inference server's desired state, derived from the releases (each
  route's champion, the release store the servers follow for the variants) and the search
  indexes, written atomically to `<data root>/serving/deployment.json`. A running `ossa serve`
  follows the release store (a rollback or a pin needs no Dagster run) and the state file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

import dagster as dg
from pydantic import Field

from ossa_assets.artifact_asset import StageResult, artifact_asset
from ossa_assets.corpora.partitions import domain_partitions
from ossa_assets.keys import DEPLOYMENT, INT8_MODEL, RELEASE, VECTOR_INDEX
from ossa_assets.lib.artifacts import Artifact, lineage_id_for, sha256_json
from ossa_assets.lib.deployment import DeploymentState, RouteSpec, SearchIndex, SearchSpec, state_path, write_state
from ossa_assets.lib.domains import ROUTES, domain
from resources.mlflow import MlflowResource
from resources.qdrant import QdrantResource
from resources.release import ReleaseStoreResource
from resources.storage import ArtifactStore


class ReleaseConfig(dg.Config):
    canary_weight: float = Field(
        default=0.1, gt=0.0, le=1.0,
        description="Traffic share of a new challenger beside the live champion (1.0: promote at once).")


def engine_spec(engine: Artifact) -> RouteSpec:
    """The route spec of an int8 engine artifact (versioned by its content hash)."""
    from ossa_assets.lib.release import engine_spec as spec_of

    return spec_of(engine.meta.get("domain") or engine.partition, engine.path, engine.data_version,
                   engine.lineage_id, model_file=engine.meta.get("model_file", "model.int8.onnx"),
                   kv_model_file=engine.meta.get("kv_model_file"),
                   engine=engine.meta.get("engine", "onnxruntime-int8"))


def release_eligibility(client, registered_model: str | None, registry_version: str | None) -> tuple[bool, str]:
    """May this registry version enter the release? Only if it passed its gates and the offline
    judgement against the live champion (tags written by lora/multitask_adapter)."""
    from ossa_assets.lib.promotion import ELIGIBLE_TAG
    from resources.mlflow import GATES_TAG

    if not registered_model or not registry_version:
        return False, "its adapter has no registered version (it failed a gate, or predates the registry)"
    tags = client.get_model_version(registered_model, str(registry_version)).tags or {}
    if tags.get(GATES_TAG) != "passed":
        return False, f"{registered_model} v{registry_version} did not pass its gates"
    if tags.get(ELIGIBLE_TAG) != "true":
        return False, (f"{registered_model} v{registry_version} is not eligible: "
                       f"{tags.get('promotion', 'no offline judgement recorded')}")
    return True, f"{registered_model} v{registry_version}: {tags.get('promotion', 'eligible')}"


@artifact_asset(
    kind="Release",
    key=RELEASE,
    ins={"engine": dg.AssetIn(INT8_MODEL)},
    partitions_def=domain_partitions,
    group_name="serving",
    kinds={"mlflow"},
    owners=["team:serving"],
)
def release(
    context: dg.AssetExecutionContext,
    config: ReleaseConfig,
    releases: ReleaseStoreResource,
    mlflow: MlflowResource,
    engine: Artifact,
) -> StageResult:
    """The route's release pointer: which variants serve it, with what share of the traffic."""
    from ossa_assets.lib import release as rl
    from resources.mlflow import mirror_release

    d = context.partition_key
    route = domain(d).route
    store = releases.open()
    spec = engine_spec(engine)
    client = mlflow.client()
    try:
        rl.verify_engine(spec)
    except rl.ReleaseError as e:  # the live release is untouched: the old engine keeps serving
        cur = store.get(route)
        raise dg.Failure(description=f"{route}: engine refused before it could go live: {e}"
                                     + (f" (release stays at v{cur.version})" if cur else "")) from None
    eligible, why = release_eligibility(client, engine.meta.get("registered_model"), engine.meta.get("registry_version"))
    candidate = rl.Variant(name=spec.model_version, role=rl.CHALLENGER, weight=0.0, spec=spec,
                           registered_model=engine.meta.get("registered_model"),
                           registry_version=engine.meta.get("registry_version"))
    before = store.get(route)
    moved = None
    if eligible:
        step = lambda cur: rl.offer(cur, route, candidate, canary_weight=config.canary_weight,  # noqa: E731
                                    moved_by=f"asset:{RELEASE.to_user_string()} run {context.run.run_id}",
                                    reason=why, evidence={"engine": engine.lineage_id})
        for attempt in range(3):  # a concurrent move: re-read and decide again
            try:
                moved = rl.move(store, route, step)
                break
            except rl.ReleaseConflict:
                if attempt == 2:
                    raise
    cur = store.get(route)
    if cur is None:
        raise dg.Failure(description=f"{route}: nothing to serve: {candidate.name} is not eligible ({why})")
    if moved is not None:
        decision = f"v{cur.version}: {candidate.name} entered as {cur.variant_named(candidate.name).role}"
    elif not eligible:
        decision = f"v{cur.version} unchanged: {candidate.name} not offered ({why})"
    elif candidate.name in cur.rejected:
        decision = f"v{cur.version} unchanged: {candidate.name} was rolled back before"
    else:
        decision = f"v{cur.version} unchanged: {candidate.name} already serving"
    aliases = mirror_release(client, cur)
    context.log.info(f"{route}: {decision}")
    return StageResult(
        Artifact(
            kind="Release",
            path=store.where(route),
            data_version=cur.data_version,  # so its lineage id is cur.lineage_id
            derived_from=[v.spec.lineage_id for v in cur.variants],
            meta={"route": route, "domain": d, "release": cur.lineage_id, "version": cur.version,
                  "moved_by": cur.moved_by, "reason": cur.reason,
                  # the release this move replaced (a REPLACED edge in the lineage graph)
                  **({"previous_release": before.lineage_id} if moved is not None and before is not None else {}),
                  "variants": {v.name: {"role": v.role, "weight": v.weight, "lineage_id": v.spec.lineage_id}
                               for v in cur.variants}},
        ),
        metadata={
            "decision": decision,
            "release_version": cur.version,
            "variants": dg.TableMetadataValue(
                records=[dg.TableRecord({"variant": v.name, "role": v.role, "weight": v.weight,
                                         "registry": f"{v.registered_model} v{v.registry_version}"
                                         if v.registered_model else "-",
                                         "pinned_by": v.pinned_by or "-"}) for v in cur.variants],
                schema=dg.TableSchema(columns=[dg.TableColumn(c) for c in
                                               ("variant", "role", "weight", "registry", "pinned_by")]),
            ),
            "moved_by": cur.moved_by,
            "reason": cur.reason,
            "mlflow_aliases": dg.JsonMetadataValue(aliases),
        },
        lineage_from_inputs=False,
    )


def deployment_state_path(store: ArtifactStore):
    return state_path(store.root)


def registry_drift(store, client) -> list[str]:
    """Where MLflow's aliases disagree with the releases (which are the truth): each route's
    champion and challenger versus `champion`/`challenger` on its registered model."""
    from resources.mlflow import registry_alias_version

    drift = []
    for route in ROUTES:
        rel = store.get(route)
        if rel is None:
            continue
        names = {v.registered_model for v in rel.variants if v.registered_model}
        for name in sorted(names):
            for role in ("champion", "challenger"):
                want = next((str(v.registry_version) for v in rel.variants
                             if v.role == role and v.registered_model == name and v.registry_version), None)
                mv = registry_alias_version(client, name, role)
                have = str(mv.version) if mv is not None else None
                if want != have:
                    drift.append(f"{route} release v{rel.version}: {name}@{role} is {have or 'unset'}, "
                                 f"the release says {want or 'none'}")
    return drift


@dg.asset_check(asset=RELEASE, name="registry_mirrors_release",
                description="MLflow's champion/challenger aliases name what each route's release serves "
                            "(the release is the truth; a disagreement means someone moved an alias by hand).")
def registry_mirrors_release(releases: ReleaseStoreResource, mlflow: MlflowResource) -> dg.AssetCheckResult:
    drift = registry_drift(releases.open(), mlflow.client())
    return dg.AssetCheckResult(passed=not drift, description="; ".join(drift) or "every alias mirrors its release",
                               metadata={"disagreements": len(drift)})


@artifact_asset(
    kind="Deployment",
    key=DEPLOYMENT,
    ins={"released": dg.AssetIn(RELEASE),
         "indexes": dg.AssetIn(VECTOR_INDEX, partition_mapping=dg.AllPartitionMapping())},
    group_name="serving",
    kinds={"fastapi", "onnx"},
    owners=["team:serving"],
)
def deployment(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    qdrant: QdrantResource,
    releases: ReleaseStoreResource,
    released: dict,
    indexes: dict,
) -> StageResult:
    """The inference server's desired state: each route's release (the server follows the
    release store for its variants) and the search indexes."""
    rstore = releases.open()
    # the store, not the inputs' materializations: a rollback or a pin since then is the truth
    current = {route: rstore.get(route) for route in ROUTES}
    missing = sorted(r for r, rel in current.items() if rel is None)
    if missing:
        raise ValueError(f"no release for routes {missing}: materialize serving/release for their domains")
    routes = {route: rel.champion.spec for route, rel in current.items()}
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
    release_versions = {r: rel.version for r, rel in current.items()}
    version = sha256_json({"routes": {r: asdict(s) for r, s in routes.items()}, "search": asdict(search),
                           "releases": release_versions})
    state = DeploymentState(
        version=version[:16],
        lineage_id=lineage_id_for("Deployment", DEPLOYMENT.to_user_string(), None, version),
        routes=routes,
        search=search,
        declared_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        dagster_run_id=context.run.run_id,
        release_store=releases.location,
        releases=release_versions,
    )
    path = write_state(deployment_state_path(store), state)
    return StageResult(
        Artifact(
            kind="Deployment",
            path=str(path),
            data_version=version,
            meta={"serves": {r: s.lineage_id for r, s in routes.items()},
                  "releases": {r: rel.lineage_id for r, rel in current.items()}},
        ),
        metadata={
            "routes": dg.JsonMetadataValue({r: {v.name: v.weight for v in rel.variants} for r, rel in current.items()}),
            "releases": dg.JsonMetadataValue({r: rel.lineage_id for r, rel in current.items()}),
            "search": dg.JsonMetadataValue({k: v.alias or v.collection for k, v in search.indexes.items()}),
            "state_file": dg.PathMetadataValue(str(path)),
        },
    )
