"""Releases (lib/release.py, serving/release, `ossa release`): one pointer per route says what is
live; it moves by compare-and-set, audited; MLflow's aliases and the deployment follow it.

The engines here are directories of files that hash like a published engine (the release checks
files and content hashes, it never loads a model); the server tests load real ones
(tests/serving/test_release_serving.py). MLflow is the real local store, Postgres the real
server on 127.0.0.1:5432."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from ossa_assets.lib import release as rl
from ossa_assets.lib.artifacts import Artifact
from ossa_assets.lib.deployment import RouteSpec

ROUTE, DOMAIN = "/api-model/v1", "api_spec"


def _engine(root: Path, tag: str) -> RouteSpec:
    """A published engine directory (content-versioned, as quantize/int8_model publishes it)."""
    from ossa_assets.lib.artifacts import hash_dir

    d = root / f"engine-{tag}"
    d.mkdir(parents=True)
    for f in ("model.int8.onnx", "model_kv.int8.onnx", "tokenizer.json"):
        (d / f).write_text(f"{tag}:{f}")
    v = hash_dir(d)
    return RouteSpec(domain=DOMAIN, model_version=f"{DOMAIN}-{v[:12]}", engine_path=str(d),
                     lineage_id=f"quantize/int8_model[{DOMAIN}]@{v[:16]}", kv_model_file="model_kv.int8.onnx",
                     content_version=v)


def _variant(spec: RouteSpec, **kw) -> rl.Variant:
    return rl.Variant(name=spec.model_version, role=rl.CHALLENGER, weight=0.0, spec=spec, **kw)


def _offer(store, spec, canary=0.1, who="test"):
    return rl.move(store, ROUTE, lambda cur: rl.offer(cur, ROUTE, _variant(spec), canary_weight=canary,
                                                      moved_by=who, reason="eligible"))


# -- the transitions ----------------------------------------------------------------------------


def test_transitions_champion_challenger_promote_rollback_pin(tmp_path):
    a, b, c = (_engine(tmp_path, t) for t in "abc")
    r1 = rl.offer(None, ROUTE, _variant(a), canary_weight=0.1, moved_by="t", reason="first")
    assert r1.version == 1 and r1.champion.name == a.model_version and r1.champion.weight == 1.0
    assert r1.challenger is None and r1.previous is None
    r2 = rl.offer(r1, ROUTE, _variant(b), canary_weight=0.1, moved_by="t", reason="canary")
    assert (r2.version, r2.previous) == (2, 1)
    assert [(v.name, v.role, v.weight) for v in r2.variants] == [
        (a.model_version, "champion", pytest.approx(0.9)), (b.model_version, "challenger", 0.1)]
    assert rl.offer(r2, ROUTE, _variant(b), canary_weight=0.1, moved_by="t", reason="again") is None
    promoted = rl.promote(r2, moved_by="sensor:rollback", reason="healthy", evidence={"n": 500})
    assert [(v.name, v.role, v.weight) for v in promoted.variants] == [(b.model_version, "champion", 1.0)]
    assert promoted.evidence == {"n": 500} and promoted.moved_by == "sensor:rollback"
    rolled = rl.rollback(r2, moved_by="sensor:rollback", reason="errors")
    assert [v.name for v in rolled.variants] == [a.model_version] and rolled.champion.weight == 1.0
    assert rolled.rejected == (b.model_version,) and rolled.evidence["rolled_back"] == b.model_version
    # a rolled-back variant is never offered again...
    assert rl.offer(rolled, ROUTE, _variant(b), canary_weight=0.1, moved_by="t", reason="retry") is None
    # ...unless a person pins it, which is recorded as theirs
    pinned = rl.pin(rolled, ROUTE, _variant(b), person="ana", reason="incident 42: known good")
    assert pinned.champion.name == b.model_version and pinned.champion.pinned_by == "ana"
    assert pinned.moved_by == "person:ana" and b.model_version not in pinned.rejected
    # a canary of 1.0 promotes at once
    assert rl.offer(r1, ROUTE, _variant(c), canary_weight=1.0, moved_by="t", reason="x").champion.name == c.model_version
    for bad, needle in ((lambda: rl.promote(r1, moved_by="t", reason="x"), "no challenger"),
                        (lambda: rl.rollback(None, moved_by="t", reason="x"), "no challenger"),
                        (lambda: rl.pin(r1, ROUTE, _variant(b), person="", reason="x"), "--by"),
                        (lambda: rl.offer(r1, ROUTE, _variant(b), canary_weight=0, moved_by="t", reason="x"),
                         "canary_weight")):
        with pytest.raises(rl.ReleaseError, match=needle):
            bad()


def test_a_release_that_cannot_be_served_is_refused_with_the_field(tmp_path):
    a, b = _engine(tmp_path, "a"), _engine(tmp_path, "b")
    good = rl.offer(rl.offer(None, ROUTE, _variant(a), canary_weight=0.1, moved_by="t", reason="x"),
                    ROUTE, _variant(b), canary_weight=0.25, moved_by="t", reason="x")
    assert rl.Release.from_json(good.to_json()) == good  # round trip
    d = json.loads(good.to_json())
    cases = [
        ({**d, "route": "/nope/v1"}, "unknown route"),
        ({**d, "version": 0}, "positive integer"),
        ({**d, "variants": [{**v, "role": "champion"} for v in d["variants"]]}, "exactly one champion"),
        ({**d, "variants": [{**d["variants"][0], "weight": 0.5}, d["variants"][1]]}, "sum to 1"),
        ({**d, "variants": [{**d["variants"][0], "spec": {**d["variants"][0]["spec"], "domain": "devops_workflow"}},
                            d["variants"][1]]}, "serves domain"),
        ({**d, "variants": [{**d["variants"][0], "spec": {"domain": DOMAIN}}, d["variants"][1]]},
         "variants\\[0\\].spec"),
    ]
    for doc, needle in cases:
        with pytest.raises(rl.ReleaseError, match=needle):
            rl.Release.from_dict(doc)


def test_a_missing_or_corrupt_engine_is_refused(tmp_path):
    a = _engine(tmp_path, "a")
    rl.verify_engine(a)
    with pytest.raises(rl.ReleaseError, match="does not exist"):
        rl.verify_engine(replace(a, engine_path=str(tmp_path / "gone")))
    (Path(a.engine_path) / "model_kv.int8.onnx").unlink()
    with pytest.raises(rl.ReleaseError, match="missing"):
        rl.verify_engine(a)
    b = _engine(tmp_path, "b")
    (Path(b.engine_path) / "model.int8.onnx").write_text("flipped bits")
    with pytest.raises(rl.ReleaseError, match="corrupt"):
        rl.verify_engine(b)


# -- the stores: compare-and-set ----------------------------------------------------------------


@pytest.fixture(params=["file", "postgres"])
def store_location(request, tmp_path):
    if request.param == "file":
        return str(tmp_path / "releases")
    return request.getfixturevalue("pg_url")


def test_store_compare_and_set_refuses_a_stale_move(store_location, tmp_path):
    store = rl.open_store(store_location)
    a, b, c = (_engine(tmp_path, t) for t in "abc")
    assert store.get(ROUTE) is None and store.versions() == {}
    r1 = _offer(store, a)
    seen = store.get(ROUTE)
    assert seen == r1 and store.versions() == {ROUTE: 1}
    # two movers read v1; the first write wins, the second is refused, not interleaved
    first = rl.offer(seen, ROUTE, _variant(b), canary_weight=0.1, moved_by="one", reason="x")
    second = rl.offer(seen, ROUTE, _variant(c), canary_weight=0.1, moved_by="two", reason="x")
    store.put(first, seen.version)
    with pytest.raises(rl.ReleaseConflict):
        store.put(second, seen.version)
    with pytest.raises(rl.ReleaseConflict):  # a second "first release" of the route
        store.put(r1, None)
    assert store.get(ROUTE).challenger.name == b.model_version
    assert [r.version for r in store.history(ROUTE)] == [1, 2]
    assert [r.moved_by for r in store.history(ROUTE)] == ["test", "one"]


def _race(location: str, specs: list, who: str, results) -> None:
    store = rl.open_store(location)
    won = 0
    for spec in specs:
        for _ in range(50):  # re-read and decide again on a conflict
            try:
                if _offer(store, spec, who=who) is not None:
                    won += 1
                break
            except rl.ReleaseConflict:
                continue
    results.put((who, won))


def test_concurrent_moves_from_several_processes_never_interleave(store_location, tmp_path):
    """Four processes each offer their own five engines at once: every accepted move is one
    version, the history is gap-free, and no move is lost or applied twice."""
    engines = {w: [_engine(tmp_path, f"{w}{i}") for i in range(5)] for w in "wxyz"}
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(store_location, engines[w], w, results)) for w in engines]
    [p.start() for p in procs]
    [p.join(120) for p in procs]
    won = dict(results.get(timeout=10) for _ in procs)
    store = rl.open_store(store_location)
    hist = store.history(ROUTE)
    assert [r.version for r in hist] == list(range(1, len(hist) + 1))
    assert sum(won.values()) == len(hist) == 20  # each engine entered exactly once
    assert all(r.previous == (r.version - 1 or None) for r in hist)
    assert store.get(ROUTE).version == 20


# -- the serving/release asset, the deployment and the CLI --------------------------------------


def _resources(releases: str | None = None) -> dict:
    """The local resources a release run needs (no lineage graph server)."""
    from resources import build_resources
    from resources.release import ReleaseStoreResource

    res = {k: v for k, v in build_resources("local").items() if k in ("io_manager", "store", "mlflow", "qdrant",
                                                                      "releases")}
    if releases:
        res["releases"] = ReleaseStoreResource(location=releases)
    return res


def _registered(client, name: str, eligible: bool | None) -> str:
    from ossa_assets.lib.promotion import ELIGIBLE_TAG
    from resources.mlflow import register_version

    exp = client.get_experiment_by_name("ossa").experiment_id
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id)
    v = register_version(client, name, f"runs:/{run.info.run_id}/adapter", run.info.run_id,
                         tags={"ossa.gates": "passed"})
    if eligible is not None:
        client.set_model_version_tag(name, v, ELIGIBLE_TAG, "true" if eligible else "false")
        client.set_model_version_tag(name, v, "promotion", "held-out loss 1.0 <= champion" if eligible
                                     else "held-out loss 9.9 worse than champion 1.0")
    return v


class EngineConfig(dg.Config):
    path: str
    registry_version: str = ""


def _stand_in_engine():
    """quantize/int8_model as it publishes: its engine artifact for the run's config."""
    from ossa_assets.artifact_asset import artifact_asset
    from ossa_assets.corpora.partitions import domain_partitions
    from ossa_assets.keys import INT8_MODEL
    from ossa_assets.lib.artifacts import hash_dir

    @artifact_asset(kind="Engine", key=INT8_MODEL, partitions_def=domain_partitions)
    def int8_model(context: dg.AssetExecutionContext, config: EngineConfig) -> Artifact:
        return Artifact(kind="Engine", path=config.path, data_version=hash_dir(Path(config.path)),
                        meta={"domain": context.partition_key, "model_file": "model.int8.onnx",
                              "kv_model_file": "model_kv.int8.onnx", "engine": "onnxruntime-int8",
                              "registered_model": f"ossa-{context.partition_key}-adapter" if config.registry_version else None,
                              "registry_version": config.registry_version or None})

    return int8_model


def test_release_asset_serves_only_what_passed_and_mlflow_mirrors_it(data_root, tmp_path, capsys):
    from ossa_assets.cli import main
    from ossa_assets.serving.assets import release
    from resources.mlflow import registry_alias_version

    res = _resources()
    instance = dg.DagsterInstance.ephemeral()
    client = res["mlflow"].client()
    name = f"ossa-{DOMAIN}-adapter"
    engine = _stand_in_engine()
    store = res["releases"].open()

    def run(spec_dir: Path, version: str, canary: float = 0.1):
        out = dg.materialize([engine, release], partition_key=DOMAIN, resources=res, instance=instance,
                             raise_on_error=False,
                             run_config={"ops": {"quantize__int8_model": {"config": {"path": str(spec_dir),
                                                                                     "registry_version": version}},
                                                 "serving__release": {"config": {"canary_weight": canary}}}})
        mats = out.asset_materializations_for_node("serving__release")
        return out, (mats[0].metadata if mats else None)

    def alias(role):
        mv = registry_alias_version(client, name, role)
        return str(mv.version) if mv else None

    e1, e2, e3, e4 = (Path(_engine(tmp_path, t).engine_path) for t in ("e1", "e2", "e3", "e4"))
    v1 = _registered(client, name, eligible=True)
    out, md = run(e1, v1)
    assert out.success and md["release_version"].value == 1 and "entered as champion" in md["decision"].value
    rel = store.get(ROUTE)
    assert rel.champion.registry_version == v1 and (alias("champion"), alias("challenger")) == (v1, None)
    assert json.loads(md["ossa/derived_from"].value) == [rel.champion.spec.lineage_id]
    assert md["ossa/lineage_id"].value == rel.lineage_id
    # an eligible second version is a 10 % canary; MLflow says so too
    v2 = _registered(client, name, eligible=True)
    out, md = run(e2, v2)
    rel = store.get(ROUTE)
    assert out.success and [(v.registry_version, v.role, v.weight) for v in rel.variants] == [
        (v1, "champion", pytest.approx(0.9)), (v2, "challenger", 0.1)]
    assert (alias("champion"), alias("challenger")) == (v1, v2)
    assert sorted(json.loads(md["ossa/derived_from"].value)) == sorted(v.spec.lineage_id for v in rel.variants)
    # one that lost to the champion offline is never served: the release does not move, and
    # its engine is not in the release's lineage
    v3 = _registered(client, name, eligible=False)
    out, md = run(e3, v3)
    assert out.success and store.get(ROUTE).version == 2
    assert "not offered" in md["decision"].value and "worse than champion" in md["decision"].value
    assert all(v.registry_version != v3 for v in store.get(ROUTE).variants)
    assert not any(str(e3.name) in x for x in json.loads(md["ossa/derived_from"].value))
    # nor one with no registered version (its adapter failed a gate)
    out, md = run(e4, "")
    assert out.success and store.get(ROUTE).version == 2 and "no registered version" in md["decision"].value
    # a corrupt engine fails the asset before anything moves; the old release keeps serving
    v5 = _registered(client, name, eligible=True)
    out = _publish_then_corrupt(instance, res, engine, release, tmp_path / "e5", v5)
    assert not out.success and store.get(ROUTE).version == 2
    failure = next(e for e in out.all_events if e.event_type_value == "STEP_FAILURE"
                   and e.step_key == "serving__release")
    error = str(failure.event_specific_data.error)
    assert "refused before it could go live" in error and "corrupt" in error and "stays at v2" in error
    assert all(v.registry_version != v5 for v in store.get(ROUTE).variants)

    # the aliases mirror the release; moved by hand, the check says so (and fails)
    from ossa_assets.serving.assets import registry_drift, registry_mirrors_release

    assert registry_drift(store, client) == []
    client.set_registered_model_alias(name, "champion", v3)
    drift = registry_drift(store, client)
    assert drift == [f"{ROUTE} release v2: {name}@champion is {v3}, the release says {v1}"]
    checked = dg.materialize([engine.to_source_asset(), release, registry_mirrors_release], resources=res,
                             selection=dg.AssetSelection.checks(registry_mirrors_release), instance=instance,
                             raise_on_error=False)
    evaluation = checked.get_asset_check_evaluations()[0]
    assert not evaluation.passed and f"is {v3}" in evaluation.description
    from resources.mlflow import mirror_release

    mirror_release(client, store.get(ROUTE))
    assert registry_drift(store, client) == []

    # by hand: roll the canary back (audited), then a person pins the version that lost offline
    capsys.readouterr()
    assert main(["release", "rollback", ROUTE, "--by", "ana", "--reason", "p99 doubled"]) == 0
    rel = store.get(ROUTE)
    assert rel.version == 3 and rel.moved_by == "person:ana" and rel.reason == "p99 doubled"
    assert rel.challenger is None and (alias("champion"), alias("challenger")) == (v1, None)
    assert main(["release", "pin", ROUTE, "--engine", str(e3), "--by", "ana"]) == 2  # no reason: refused
    assert main(["release", "pin", ROUTE, "--engine", str(e3), "--by", "ana", "--reason", "needs x"]) == 0
    rel = store.get(ROUTE)
    assert rel.champion.pinned_by == "ana" and rel.champion.spec.engine_path == str(e3.resolve())
    v2_name = store.history(ROUTE)[1].challenger.name  # rolled back at v3
    assert main(["release", "pin", ROUTE, "--variant", v2_name, "--by", "bo", "--reason", "back"]) == 0
    assert store.get(ROUTE).champion.registry_version == v2
    capsys.readouterr()
    assert main(["release", "show", ROUTE, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)[ROUTE]
    assert shown["version"] == 5 and shown["variants"][0]["pinned_by"] == "bo"
    assert main(["release", "promote", ROUTE, "--by", "ana", "--reason", "x"]) == 1  # no challenger
    assert "no challenger" in capsys.readouterr().err

    # the lineage graph holds the moves: the route resolves to its live release, each release
    # REPLACED the one before, the rollback is a ROLLED_BACK_FROM edge
    from ossa_assets.lib.graph_store import queries
    from resources import build_resources

    hist = store.history(ROUTE)
    g = build_resources("local")["graph"].open()
    try:
        assert queries.resolve(g, ROUTE) == hist[-1].lineage_id
        assert queries.previous(g, hist[-1].lineage_id) == hist[-2].lineage_id
        assert g.backend.read("MATCH (a:Artifact)-[:ROLLED_BACK_FROM]->(b:Artifact) RETURN a.id, b.id", {}) == [
            [hist[2].lineage_id, hist[1].lineage_id]]
        shown = queries.render(g.upstream(hist[-1].lineage_id, documents=0)).splitlines()[0]
        assert shown.startswith(f"Release        {hist[-1].lineage_id}  (v5: champion {v2_name} 100%"), shown
        assert "moved by person:bo" in shown
    finally:
        g.close()


def _publish_then_corrupt(instance, res, engine, release, engine_dir: Path, version: str):
    """Publish the engine (its content hash taken), then corrupt a file before the release
    reads it: what bit rot or a partial copy leaves between quantize and release."""
    engine_dir.mkdir()
    for f in ("model.int8.onnx", "model_kv.int8.onnx", "tokenizer.json"):
        (engine_dir / f).write_text(f"published:{f}")
    first = dg.materialize([engine], partition_key=DOMAIN, resources=res, instance=instance,
                           run_config={"ops": {"quantize__int8_model": {"config": {"path": str(engine_dir),
                                                                                   "registry_version": version}}}})
    assert first.success
    (engine_dir / "model.int8.onnx").write_text("bit rot")
    return dg.materialize([engine.to_source_asset(), release], selection=[release], partition_key=DOMAIN,
                          resources=res, instance=instance, raise_on_error=False)


def test_the_deployment_is_derived_from_the_releases(data_root, tmp_path):
    """serving/deployment serves each route's champion from the store (a move since the release
    materialized is the truth) and names the store the servers follow."""
    from ossa_assets.corpora.partitions import domain_partitions
    from ossa_assets.keys import RELEASE, VECTOR_INDEX
    from ossa_assets.lib.deployment import read_state
    from ossa_assets.lib.domains import REGISTRY
    from ossa_assets.serving.assets import deployment

    res = _resources()
    store = res["releases"].open()
    for d in REGISTRY:
        e = _engine(tmp_path / d.name, "a")
        spec = replace(e, domain=d.name, model_version=f"{d.name}-{e.content_version[:12]}")
        rl.move(store, d.route, lambda cur, spec=spec, route=d.route: rl.offer(
            cur, route, _variant(spec), canary_weight=0.1, moved_by="t", reason="x"))

    @dg.asset(key=RELEASE, partitions_def=domain_partitions)
    def rel_stand_in(context) -> Artifact:
        return Artifact(kind="Release", path="x", data_version="1" * 64,
                        lineage_id=f"serving/release[{context.partition_key}]@1")

    @dg.asset(key=VECTOR_INDEX, partitions_def=dg.StaticPartitionsDefinition(["docs"]))
    def idx_stand_in() -> Artifact:
        return Artifact(kind="VectorIndex", path="x", data_version="2" * 64, lineage_id="embeddings/vector_index[docs]@2",
                        meta={"collection": "docs-1", "alias": "docs-live"})

    instance = dg.DagsterInstance.ephemeral()
    for key in [d.name for d in REGISTRY]:
        assert dg.materialize([rel_stand_in], partition_key=key, resources=res, instance=instance).success
    assert dg.materialize([idx_stand_in], partition_key="docs", resources=res, instance=instance).success
    deploy = [rel_stand_in.to_source_asset(), idx_stand_in.to_source_asset(), deployment]
    # a route with no release yet: nothing is declared (the server keeps what it serves)
    empty = _resources(releases=str(tmp_path / "no-releases"))
    out = dg.materialize(deploy, selection=[deployment], resources=empty, instance=instance, raise_on_error=False)
    assert not out.success and not (Path(data_root) / "serving" / "deployment.json").exists()
    assert "no release for routes" in str(next(e for e in out.all_events if e.event_type_value == "STEP_FAILURE")
                                          .event_specific_data.error)
    # a person pinned another engine on one route after the release materialized
    other = _engine(tmp_path / "pinned", "p")
    rl.move(store, ROUTE, lambda cur: rl.pin(cur, ROUTE, _variant(other), person="ana", reason="hotfix"))
    out = dg.materialize(deploy, selection=[deployment], resources=res, instance=instance)
    assert out.success
    state = read_state(Path(data_root) / "serving" / "deployment.json")
    assert state.routes[ROUTE].model_version == other.model_version
    assert state.release_store == res["releases"].location and state.releases[ROUTE] == 2
    assert set(state.releases) == {d.route for d in REGISTRY}


def test_the_release_lineage_id_is_the_one_its_materialization_carries():
    from ossa_assets.keys import RELEASE
    from ossa_assets.lib.artifacts import lineage_id_for

    assert rl.RELEASE_ASSET == RELEASE.to_user_string()
    spec = RouteSpec(domain=DOMAIN, model_version="m", engine_path="/x", lineage_id="e")
    rel = rl.offer(None, ROUTE, _variant(spec), canary_weight=0.1, moved_by="t", reason="x")
    assert rel.lineage_id == lineage_id_for("Release", "serving/release", DOMAIN, rel.data_version)
    # who moved it and when are not what is served
    assert replace(rel, moved_by="other", at="later").lineage_id == rel.lineage_id
    assert rl.promote(rl.offer(rel, ROUTE, _variant(replace(spec, model_version="n")), canary_weight=0.5,
                               moved_by="t", reason="x"), moved_by="t", reason="x").lineage_id != rel.lineage_id


def test_two_releases_diff_as_releases(tmp_path):
    """`ossa lineage diff` on a route compares its release with the one it replaced: the variants
    that came, went or changed weight, and what changed upstream of a new champion."""
    from ossa_assets.lib.canary import Move, record_move
    from ossa_assets.lib.graph_store import EmbeddedFalkorDB, GraphStore, queries

    a, b = _engine(tmp_path, "a"), _engine(tmp_path, "b")
    backend = EmbeddedFalkorDB(tmp_path / "graph")
    g = GraphStore(backend)
    try:
        # two engines of the route, built from different checkpoints
        g.upsert_nodes([{"id": "ckpt@1", "kind": "Checkpoint", "asset_key": "finetune/domain_checkpoint",
                         "partition": DOMAIN, "data_version": "1", "code_version": "c1"},
                        {"id": "ckpt@2", "kind": "Checkpoint", "asset_key": "finetune/domain_checkpoint",
                         "partition": DOMAIN, "data_version": "2", "code_version": "c2"},
                        *[{"id": s.lineage_id, "kind": "Engine", "asset_key": "quantize/int8_model",
                           "partition": DOMAIN, "data_version": s.content_version} for s in (a, b)]])
        g.upsert_edges([(a.lineage_id, "DERIVED_FROM", "ckpt@1", {}), (b.lineage_id, "DERIVED_FROM", "ckpt@2", {})])
        r1 = rl.offer(None, ROUTE, _variant(a), canary_weight=0.1, moved_by="t", reason="x")
        r2 = rl.offer(r1, ROUTE, _variant(b), canary_weight=0.1, moved_by="t", reason="x")
        r3 = rl.promote(r2, moved_by="sensor:canary_judge", reason="healthy")
        record_move(g, Move(ROUTE, "offer", r1, r2, None))
        record_move(g, Move(ROUTE, "promote", r2, r3, None))
        assert queries.resolve(g, ROUTE) == r3.lineage_id
        assert queries.previous(g, r3.lineage_id) == r2.lineage_id
        d = queries.diff(g, r2.lineage_id, r3.lineage_id)
        assert d["kind"] == "release" and d["champion"] == {"a": a.lineage_id, "b": b.lineage_id}
        assert [(c["variant"], c["a"]["role"], c["b"]) for c in d["variants"] if c["variant"] == a.model_version] == [
            (a.model_version, "champion", None)]
        assert [c["asset"] for c in d["champion_upstream"]["changed"]] == [
            f"finetune/domain_checkpoint[{DOMAIN}]", f"quantize/int8_model[{DOMAIN}]"]
        text = queries.render_diff(d)
        assert f"{a.model_version}: champion 90% -> absent" in text
        assert f"{b.model_version}: challenger 10% -> champion 100%" in text
        assert "upstream of the champion:" in text and "code changed" in text
    finally:
        g.close()
        backend.stop()
