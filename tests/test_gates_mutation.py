"""The standing proof that the gates can fail: for every blocking check in the definitions, the
fault it exists for is injected into a real tiny pipeline, the check must fail, and no asset
downstream may consume the failed artifact (each direct consumer is materialized and must refuse
it). The cases are enumerated from the definitions: a new blocking check without a fault case
here fails `test_every_blocking_check_has_a_fault_case`.

One healthy pipeline is built per module (sample corpus, one domain's model chain, one embedding
model); each case starts from its manifests, injects one fault, and leaves the healthy state to
be restored for the next.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dagster as dg
import pytest

from tests.conftest import copy_sample, curate_all, tiny_resources

DOMAIN = "devops_workflow"
MODEL = "capability"
OTHER_DOMAINS = ("api_spec", "industrial_protocol")
OTHER_MODELS = ("code", "docs")
FAST_EMBED = {"max_steps": 3, "batch_size": 8}


def _defs():
    from ossa_assets.definitions import defs

    return defs


def blocking_checks() -> list[str]:
    return sorted(f"{s.asset_key.to_user_string()}:{s.name}"
                  for a in _defs().assets for s in a.check_specs if s.blocking)


@dataclass
class Pipeline:
    root: Path
    corpus: Path
    resources: dict
    instance: dg.DagsterInstance

    @property
    def data(self) -> Path:
        return self.root / "data"

    def assets_def(self, key: dg.AssetKey) -> dg.AssetsDefinition:
        return next(a for a in _defs().assets if key in a.keys)

    def materialize(self, key: dg.AssetKey, partition: str | None, config: dict | None = None,
                    resources: dict | None = None) -> dg.ExecuteInProcessResult:
        """One asset, its parents read from their manifests (as a later run reads them)."""
        graph = _defs().resolve_asset_graph()
        parents = [self.assets_def(p).to_source_asset(p) for p in graph.get(key).parent_keys if p != key]
        asset = self.assets_def(key)
        op = "__".join(key.path)
        return dg.materialize(
            [asset, *parents], selection=[key], partition_key=partition, instance=self.instance,
            resources=resources or self.resources, raise_on_error=False,
            run_config={"ops": {op: {"config": config}}} if config else None,
        )

    def manifest(self, key: dg.AssetKey, partition: str | None) -> Path:
        from resources.storage import manifest_path

        return manifest_path(self.data, key, partition)

    def snapshot(self) -> None:
        shutil.copytree(self.data / "manifests", self.root / "healthy-manifests")

    def restore(self) -> None:
        shutil.rmtree(self.data / "manifests")
        shutil.copytree(self.root / "healthy-manifests", self.data / "manifests")


def _partition_for(key: dg.AssetKey) -> str | None:
    pdef = _defs().resolve_asset_graph().get(key).partitions_def
    if pdef is None:
        return None
    keys = pdef.get_partition_keys()
    return DOMAIN if DOMAIN in keys else MODEL if MODEL in keys else keys[0]


def _check(result: dg.ExecuteInProcessResult, name: str):
    found = [e.asset_check_evaluation_data for e in result.all_events
             if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.asset_check_evaluation_data.check_name == name]
    assert found, f"check {name} was not evaluated: " + _failure(result)
    return found[-1]


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return " | ".join(str(e.step_failure_data.error.message) for e in result.get_step_failure_events())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The healthy tiny pipeline every fault is injected into."""
    from ossa_assets.keys import (
        BASE_MODEL,
        DOMAIN_CHECKPOINT,
        EMBEDDING_EVAL,
        EMBEDDING_MODEL,
        EMBEDDING_PAIRS,
        INT8_MODEL,
        MULTITASK_ADAPTER,
        ONNX_MODEL,
        RELEASE,
        TOKENIZED_CORPUS,
        VECTOR_INDEX,
    )

    root = tmp_path_factory.mktemp("gates")
    corpus = copy_sample(root / "corpus")
    p = Pipeline(root, corpus, tiny_resources(root / "data", corpus), dg.DagsterInstance.ephemeral())
    for _srcs, corp in curate_all(p.instance, p.resources).values():
        assert corp.success
    steps = [(BASE_MODEL, None, None), (TOKENIZED_CORPUS, DOMAIN, None), (DOMAIN_CHECKPOINT, DOMAIN, None),
             (MULTITASK_ADAPTER, DOMAIN, None), (ONNX_MODEL, DOMAIN, None), (INT8_MODEL, DOMAIN, None),
             (RELEASE, DOMAIN, None),
             (EMBEDDING_PAIRS, MODEL, None), (EMBEDDING_MODEL, MODEL, FAST_EMBED), (EMBEDDING_EVAL, MODEL, None),
             (VECTOR_INDEX, MODEL, None)]
    for key, partition, config in steps:
        res = p.materialize(key, partition, config)
        assert res.success, f"healthy {key.to_user_string()}: {_failure(res)}"
    # The fan-in consumer (serving/deployment reads every domain's release and every model's
    # index) loads all its inputs before the gate refuses the failed one: the other partitions
    # are copies of the healthy ones, never read past that refusal.
    for key, others, built in ((RELEASE, OTHER_DOMAINS, DOMAIN), (VECTOR_INDEX, OTHER_MODELS, MODEL)):
        for other in others:
            shutil.copy(p.manifest(key, built), p.manifest(key, other))
    p.snapshot()
    return p


# -- the faults, one per blocking check ---------------------------------------------------------


def _recurate(p: Pipeline, corpus: Path) -> dg.ExecuteInProcessResult:
    """The devops source re-curated from `corpus`, then the devops corpus."""
    from ossa_assets.corpora.assets import curated_corpus, source_documents
    from resources.corpus import CorpusSources

    resources = {**p.resources, "corpus": CorpusSources(config_path=p.resources["corpus"].config_path,
                                                        corpus_root=str(corpus))}
    spec = next(s for s in resources["corpus"].specs() if s.domain == DOMAIN)
    key = dg.MultiPartitionKey({"domain": DOMAIN, "source": spec.name})
    assert dg.materialize([source_documents], partition_key=key, resources=resources, instance=p.instance).success
    return dg.materialize([curated_corpus, source_documents.to_source_asset()], selection=[curated_corpus],
                          partition_key=DOMAIN, resources=resources, instance=p.instance, raise_on_error=False)


def _faulty_corpus(p: Pipeline, name: str) -> Path:
    dest = p.root / f"corpus-{name}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(p.corpus, dest)
    return dest


def too_few_documents(p: Pipeline):
    corpus = _faulty_corpus(p, "few")
    pipelines = sorted(f for f in (corpus / "cicd").rglob("*") if f.is_file())
    for f in pipelines[3:]:  # three pipelines left: under the tiny profile's minimum of ten
        f.unlink()
    return _recurate(p, corpus)


def mostly_invalid_files(p: Pipeline):
    corpus = _faulty_corpus(p, "invalid")
    for i in range(60):  # broken YAML and pipelines that fail GitLab's lint
        d = corpus / "cicd" / "broken" / f"p{i}"
        d.mkdir(parents=True)
        body = f"stages: [build\nbuild{i}:\n  script: [make" if i % 2 else f"build{i}:\n  stage: nowhere\n  script: 7\n"
        (d / ".gitlab-ci.yml").write_text(body)
    return _recurate(p, corpus)


def mostly_duplicates(p: Pipeline):
    corpus = _faulty_corpus(p, "dups")
    original = next(f for f in sorted((corpus / "cicd").rglob(".gitlab-ci.yml")))
    for i in range(60):  # the same pipeline committed under many projects
        d = corpus / "cicd" / "copies" / f"p{i}"
        d.mkdir(parents=True)
        shutil.copy(original, d / ".gitlab-ci.yml")
    return _recurate(p, corpus)


def _checkpoint(p: Pipeline, config: dict):
    from ossa_assets.keys import DOMAIN_CHECKPOINT

    return p.materialize(DOMAIN_CHECKPOINT, DOMAIN, config)


def diverged_checkpoint(p: Pipeline):
    # a learning rate that throws training off the cliff: held-out loss ends above the untrained model's
    return _checkpoint(p, {"learning_rate": 0.9, "max_steps": 12})


def undertrained_checkpoint(p: Pipeline):
    # one optimizer step: below the untrained loss, far above what a trained model reaches
    return _checkpoint(p, {"max_steps": 1})


def unstable_checkpoint(p: Pipeline):
    # too high a learning rate: the loss recovers somewhat, next-token accuracy does not
    return _checkpoint(p, {"learning_rate": 0.5})


def worse_adapter(p: Pipeline):
    from ossa_assets.keys import MULTITASK_ADAPTER

    return p.materialize(MULTITASK_ADAPTER, DOMAIN, {"learning_rate": 0.5})


def corrupted_int8_weights(p: Pipeline, monkeypatch):
    """The quantizer writes an engine whose int8 weights are scrambled (a bad kernel, a bad copy)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from ossa_assets.keys import INT8_MODEL
    from ossa_assets.quantize import assets as quantize_assets

    real = quantize_assets.lib.quantize_int8

    def scrambled(src, dst, **kw):
        info = real(src, dst, **kw)
        model = onnx.load(str(dst))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype in (np.int8, np.uint8) and w.size > 64:
                init.CopyFrom(numpy_helper.from_array(rng.permutation(w.reshape(-1)).reshape(w.shape), init.name))
        onnx.save(model, str(dst))
        return info

    monkeypatch.setattr(quantize_assets.lib, "quantize_int8", scrambled)
    return p.materialize(INT8_MODEL, DOMAIN)


def _embedding_artifact(p: Pipeline):
    from ossa_assets.keys import EMBEDDING_MODEL
    from ossa_assets.lib.artifacts import Artifact

    return Artifact.from_json(p.manifest(EMBEDDING_MODEL, MODEL).read_text())


def _save_model_variant(p: Pipeline, name: str, change: Callable) -> None:
    """A copy of the healthy embedding model, changed by `change(model)`, as the latest embedding_model."""
    import torch

    from ossa_assets.keys import EMBEDDING_MODEL
    from ossa_assets.lib.embeddings import load_embedder

    art = _embedding_artifact(p)
    model = load_embedder(art.path, art.meta["max_seq_length"])
    with torch.no_grad():
        change(model)
    out = p.root / f"model-{name}"
    shutil.rmtree(out, ignore_errors=True)
    model.save(str(out))
    art.path, art.data_version = str(out), f"{name}-{art.data_version}"[:64]
    art.meta["mlflow_run_id"] = None  # made here, not by a training run
    p.manifest(EMBEDDING_MODEL, MODEL).write_text(art.to_json())


def collapsed_embedding_model(p: Pipeline):
    """Every text embeds to the same point (the projection collapsed)."""
    from ossa_assets.keys import EMBEDDING_EVAL

    def collapse(model):
        dense = next(m for m in model if type(m).__name__ == "Dense").linear
        dense.weight.zero_()
        dense.bias.fill_(0.5)

    _save_model_variant(p, "collapsed", collapse)
    return p.materialize(EMBEDDING_EVAL, MODEL)


def collection_with_wrong_vectors(p: Pipeline, monkeypatch):
    """A new model version passes its evaluation, but its collection is filled with the vectors of
    another (untrained) encoder: held-out anchors no longer find their units."""
    import torch

    from ossa_assets.keys import EMBEDDING_EVAL, EMBEDDING_MODEL, VECTOR_INDEX
    from ossa_assets.lib import embeddings

    assert p.materialize(EMBEDDING_MODEL, MODEL, {**FAST_EMBED, "seed": 1}).success
    assert p.materialize(EMBEDDING_EVAL, MODEL).success
    real_sync = embeddings.sync_collection

    def wrong_vectors(client, embedder, *args, **kw):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in embedder[0].auto_model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
        return real_sync(client, embedder, *args, **kw)

    monkeypatch.setattr(embeddings, "sync_collection", wrong_vectors)
    return p.materialize(VECTOR_INDEX, MODEL)


# check -> (fault, what it must leave unchanged beyond Dagster). Every blocking check of the
# definitions is here; a fault may need pytest's monkeypatch (the injected bug).
FAULTS: dict[str, Callable] = {
    "corpora/curated_corpus:enough_valid_documents": too_few_documents,
    "corpora/curated_corpus:invalid_rate_bound": mostly_invalid_files,
    "corpora/curated_corpus:duplicate_rate_bound": mostly_duplicates,
    "finetune/domain_checkpoint:val_loss_below_untrained": diverged_checkpoint,
    "finetune/domain_checkpoint:val_loss_threshold": undertrained_checkpoint,
    "finetune/domain_checkpoint:token_accuracy_threshold": unstable_checkpoint,
    "lora/multitask_adapter:adapter_not_worse_than_checkpoint": worse_adapter,
    "quantize/int8_model:int8_top1_agreement": corrupted_int8_weights,
    "embeddings/embedding_eval:not_worse_than_base": collapsed_embedding_model,
    "embeddings/vector_index:live_collection_recall": collection_with_wrong_vectors,
}
# Blocking only in production: the active profile reports them informationally (with the reason).
INFORMATIONAL_IN_TINY = {"finetune/domain_checkpoint:format_validity_threshold"}


def test_every_blocking_check_has_a_fault_case():
    from ossa_assets.configs import active_profile_name, informational_checks

    checks = blocking_checks()
    assert checks, "no blocking checks found in the definitions"
    missing = sorted(set(checks) - set(FAULTS))
    assert not missing, f"blocking checks without a fault case in {__file__}: {missing}"
    assert not set(FAULTS) - set(checks), "fault cases for checks that are not blocking"
    if active_profile_name() == "tiny":
        assert set(informational_checks()) == INFORMATIONAL_IN_TINY


def _consumers(key: dg.AssetKey) -> list[dg.AssetKey]:
    graph = _defs().resolve_asset_graph()
    return sorted((c for c in graph.get(key).child_keys if c != key), key=lambda k: k.to_user_string())


@pytest.mark.parametrize("check", blocking_checks())
def test_the_fault_fails_the_gate_and_nothing_consumes_the_artifact(check, pipeline, monkeypatch):
    import inspect

    from ossa_assets.artifact_asset import FAILED_GATES
    from ossa_assets.lib.artifacts import Artifact

    asset_name, name = check.split(":")
    key = dg.AssetKey(asset_name.split("/"))
    fault = FAULTS[check]
    pipeline.restore()
    try:
        args = (pipeline, monkeypatch) if "monkeypatch" in inspect.signature(fault).parameters else (pipeline,)
        result = fault(*args)
        monkeypatch.undo()  # the injected bug ends with the faulty artifact
        evaluation = _check(result, name)
        print(f"FAULT {check}: {fault.__name__}: {evaluation.description}")  # pytest -s shows the figures
        assert not evaluation.passed, f"{check} passed on its fault: {evaluation.description}"
        assert not result.success, "a failed blocking check fails its step"
        art = Artifact.from_json(pipeline.manifest(key, _partition_for(key)).read_text())
        assert name in art.meta.get(FAILED_GATES, [])
        _mlflow_agrees(pipeline, art, name)

        consumers = _consumers(key)
        assert consumers, f"{asset_name} has no consumers to protect"
        for child in consumers:
            res = pipeline.materialize(child, _partition_for(child))
            why = _failure(res)
            assert not res.success and "failed their blocking checks" in why and name in why, \
                f"{child.to_user_string()} consumed {asset_name} that failed {name}: {why or 'it succeeded'}"
            assert not res.get_asset_materialization_events(), f"{child.to_user_string()} materialized"
        if name == "live_collection_recall":
            _alias_stayed(pipeline)
    finally:
        pipeline.restore()


def _mlflow_agrees(p: Pipeline, art, check: str) -> None:
    """A model that failed a gate is a FAILED MLflow run and no registered version."""
    run_id = art.meta.get("mlflow_run_id")
    if art.kind == "Evaluation":  # the embedding eval passes its verdict to the model's run
        run_id = _embedding_artifact(p).meta.get("mlflow_run_id")
    if not run_id:  # a stage without MLflow, or an injected model that no training run made
        return
    client = p.resources["mlflow"].client()
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and check in run.data.tags["ossa.failed_checks"].split(",")
    assert not client.search_model_versions(f"run_id='{run_id}'"), "a failed model was registered"


def _alias_stayed(p: Pipeline) -> None:
    from ossa_assets.lib import embeddings as lib
    from ossa_assets.lib.artifacts import Artifact

    healthy = Artifact.from_json((p.root / "healthy-manifests" / "embeddings" / "vector_index" / f"{MODEL}.json")
                                 .read_text())
    with p.resources["qdrant"].client() as client:
        assert lib.alias_target(client, f"{MODEL}-live") == healthy.meta["collection"]


def test_an_informational_check_reports_without_gating(pipeline):
    """In the tiny profile a 1 M-parameter model writes no valid document: format validity is
    reported (failing at production's threshold) but does not gate, and says why."""
    from ossa_assets.artifact_asset import FAILED_GATES
    from ossa_assets.keys import DOMAIN_CHECKPOINT, MULTITASK_ADAPTER

    (spec,) = [s for a in _defs().assets for s in a.check_specs
               if s.asset_key == DOMAIN_CHECKPOINT and s.name == "format_validity_threshold"]
    assert not spec.blocking and "Informational in the tiny profile" in spec.description
    pipeline.restore()
    try:
        res = _checkpoint(pipeline, {"min_format_validity": 0.8})
        evaluation = _check(res, "format_validity_threshold")
        assert not evaluation.passed and res.success
        art = res.output_for_node("finetune__domain_checkpoint")
        assert "format_validity_threshold" not in art.meta.get(FAILED_GATES, [])
        assert pipeline.materialize(MULTITASK_ADAPTER, DOMAIN).success
    finally:
        pipeline.restore()


def test_an_index_refuses_a_model_its_evaluation_did_not_judge(pipeline):
    """A model re-materialized after its evaluation has no verdict: the index must not take it."""
    from ossa_assets.keys import EMBEDDING_MODEL, VECTOR_INDEX

    pipeline.restore()
    try:
        assert pipeline.materialize(EMBEDDING_MODEL, MODEL, {**FAST_EMBED, "seed": random.Random(3).randint(2, 99)}).success
        res = pipeline.materialize(VECTOR_INDEX, MODEL)
        assert not res.success and "not the model" in _failure(res)
    finally:
        pipeline.restore()
