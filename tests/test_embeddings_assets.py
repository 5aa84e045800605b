"""The embeddings stage through Dagster, on the shipped sample, real MiniLM, real local Qdrant and
MLflow: a model that fails the eval gate never reaches an index; a new model version fills a new
collection and the live alias moves only when its recall check passes; re-materializing with the
same model embeds nothing; a withdrawn document leaves the live collection."""

from __future__ import annotations

import dagster as dg
import pytest

from tests.conftest import copy_sample, curate_all, tiny_resources

KIND = "capability"  # the quickest of the three to train on the sample
FAST = {"max_steps": 4}


def _cfg(model=None, evaluation=None, index=None) -> dict:
    ops = {}
    for op, cfg in (("embeddings__embedding_model", model), ("embeddings__embedding_eval", evaluation),
                    ("embeddings__vector_index", index)):
        if cfg:
            ops[op] = {"config": cfg}
    return {"ops": ops}


def _materialize(resources, instance, run_config, selection=None):
    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.embeddings.assets import embedding_eval, embedding_model, embedding_pairs, vector_index

    assets = [embedding_pairs, embedding_model, embedding_eval, vector_index]
    chosen = selection or assets
    return dg.materialize(
        [*chosen, *[a.to_source_asset() for a in assets if a not in chosen], curated_corpus.to_source_asset()],
        partition_key=KIND, resources=resources, instance=instance, run_config=run_config, raise_on_error=False,
    )


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _index_md(result) -> dict:
    mats = [m for m in result.get_asset_materialization_events()
            if m.asset_key == dg.AssetKey(["embeddings", "vector_index"])]
    assert mats, "vector_index did not materialize"
    return {k: v.value for k, v in mats[-1].materialization.metadata.items()}


@pytest.fixture
def env(tmp_path, data_root):
    corpus = copy_sample(tmp_path / "corpus")
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    curate_all(instance, resources)
    return resources, instance, corpus


def test_gates_and_blue_green_alias(env):
    from ossa_assets.lib import embeddings as lib

    resources, instance, corpus = env
    # v1: becomes live
    r1 = _materialize(resources, instance, _cfg(model=FAST))
    assert r1.success and _checks(r1) == {"not_worse_than_base": True, "live_collection_recall": True}
    md1 = _index_md(r1)
    v1 = md1["collection"]
    assert md1["alias"] == f"capability-live -> {v1}" and md1["embedded"] == md1["points"] > 100

    # same model again: nothing re-embedded, the alias stays
    again = _materialize(resources, instance, _cfg(model=FAST))
    md = _index_md(again)
    assert md["collection"] == v1 and md["embedded"] == 0 and md["unchanged"] == md1["points"]

    # a model trained into the ground fails the eval gate: no index step runs in that run...
    bad = _materialize(resources, instance, _cfg(model={**FAST, "learning_rate": 0.05}))
    assert _checks(bad) == {"not_worse_than_base": False}
    assert not [m for m in bad.get_asset_materialization_events()
                if m.asset_key == dg.AssetKey(["embeddings", "vector_index"])]
    # MLflow tells the same story: the good model is a registered version that passed its gate, the
    # bad one a FAILED run that was never registered
    client = resources["mlflow"].client()

    def model_run(result):
        (mat,) = [m for m in result.get_asset_materialization_events()
                  if m.asset_key == dg.AssetKey(["embeddings", "embedding_model"])]
        return client.get_run(mat.materialization.metadata["mlflow_run_id"].value)

    good_run, bad_run = model_run(r1), model_run(bad)
    assert good_run.info.status == "FINISHED" and good_run.data.tags["ossa.gates"] == "passed"
    assert bad_run.info.status == "FAILED" and bad_run.data.tags["ossa.failed_checks"] == "not_worse_than_base"
    versions = {v.run_id: v for v in client.search_model_versions("name='ossa-embed-capability'")}
    assert good_run.info.run_id in versions and bad_run.info.run_id not in versions
    assert versions[good_run.info.run_id].tags["ossa.gates"] == "passed"

    # ...nor in a later one
    from ossa_assets.embeddings.assets import vector_index

    later = _materialize(resources, instance, {}, selection=[vector_index])
    assert not later.success
    failure = later.get_step_failure_events()[0].step_failure_data.error
    assert "failed not_worse_than_base" in str(failure)

    # v2 (another seed): a new collection is filled, but its recall check is made to fail, so the
    # alias keeps serving v1
    r2 = _materialize(resources, instance, _cfg(model={**FAST, "seed": 1}, index={"min_recall_at_10": 1.01}))
    assert _checks(r2) == {"not_worse_than_base": True, "live_collection_recall": False}
    v2 = _index_md(r2)["collection"]
    assert v2 != v1
    with resources["qdrant"].client() as client:
        assert lib.alias_target(client, "capability-live") == v1
        assert client.collection_exists(v2)

    # v2 again with a passable check: the alias moves to it in one step; v1 stays for rollback
    r3 = _materialize(resources, instance, _cfg(model={**FAST, "seed": 1}))
    assert _checks(r3)["live_collection_recall"], _checks(r3)
    md3 = _index_md(r3)
    assert md3["collection"] == v2 and md3["embedded"] == 0 and md3["alias"] == f"capability-live -> {v2}"
    with resources["qdrant"].client() as client:
        assert lib.alias_target(client, "capability-live") == v2 and client.collection_exists(v1)
        # a reader of the alias learns from the collection which model embeds its queries
        meta = lib.collection_metadata(client, "capability-live")
        hits = lib.search(client, lib.load_embedder(meta["model_path"], meta["max_seq_length"]),
                          "capability-live", "Submit a job", limit=3, domain="api_spec")
    assert hits and {h["domain"] for h in hits} == {"api_spec"}
    assert {h["model_version"] for h in hits} == {meta["model_version"]}


def test_withdrawn_document_leaves_the_live_collection(env):
    from ossa_assets.corpora.assets import curated_corpus, source_documents

    resources, instance, corpus = env
    r1 = _materialize(resources, instance, _cfg(model=FAST))
    assert r1.success
    md1 = _index_md(r1)
    # withdraw one OpenAPI document from the source and re-curate
    victim = corpus / "openapi" / "internal" / "job-scheduler.yaml"
    victim.unlink()
    key = dg.MultiPartitionKey({"domain": "api_spec", "source": "openapi"})
    assert dg.materialize([source_documents], partition_key=key, resources=resources, instance=instance).success
    assert dg.materialize([curated_corpus, source_documents.to_source_asset()], selection=[curated_corpus],
                          partition_key="api_spec", resources=resources, instance=instance).success
    # the index follows the corpus with the live model (retraining is its own decision: new pairs
    # would make a new model version and a new collection)
    from ossa_assets.embeddings.assets import vector_index

    r2 = _materialize(resources, instance, {}, selection=[vector_index])
    assert r2.success
    md2 = _index_md(r2)
    assert md2["collection"] == md1["collection"]
    assert md2["deleted"] >= 1 and md2["embedded"] == 0 and md2["points"] == md1["points"] - md2["deleted"]
    with resources["qdrant"].client() as client:
        paths = {p.payload["path"] for p in client.scroll("capability-live", limit=10_000)[0]}
    assert paths and str(victim.relative_to(corpus / "openapi")) not in paths
