"""The finetune assets: a killed step resumes on re-materialization; MLflow runs end with the step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from resources.mlflow import MlflowResource
from tests.conftest import ROOT, assert_same_tensors, copy_sample, curate_all, probe_losses, tiny_resources

DOMAIN = "devops_workflow"
# long enough to be killed mid-run; a lower rate so 150 steps on the small sample do not overfit
RUN_CONFIG = {"ops": {"finetune__domain_checkpoint": {"config": {"max_steps": 150, "save_steps": 10,
                                                                 "learning_rate": 0.001}}}}


ATTEMPT = """
import io, os, signal, sys
from pathlib import Path
import dagster as dg
import pytest
import torch
from tests.conftest import tiny_resources
from ossa_assets.finetune.assets import base_model, domain_checkpoint, tokenized_corpus
data_root, corpus, torn_at, run_config = sys.argv[1], sys.argv[2], int(sys.argv[3]), eval(sys.argv[4])
if torn_at:
    # the fault: killed halfway through writing checkpoint-<torn_at>'s optimizer state
    _save = torch.save
    def torn(obj, f, *a, **k):
        if str(f).endswith(f"checkpoint-{torn_at}/optimizer.pt"):
            buf = io.BytesIO()
            _save(obj, buf, *a, **k)
            Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return _save(obj, f, *a, **k)
    torch.save = torn
dg.materialize([domain_checkpoint, base_model.to_source_asset(), tokenized_corpus.to_source_asset()],
               selection=[domain_checkpoint], partition_key="devops_workflow",
               resources=tiny_resources(Path(data_root), Path(corpus)), instance=dg.DagsterInstance.ephemeral(),
               run_config=run_config)
"""


def _complete(work: Path) -> list[int]:
    from ossa_assets.lib.training import COMPLETE_MARKER

    return sorted(int(d.name.split("-")[1]) for d in work.glob("*/checkpoints/checkpoint-*")
                  if (d / COMPLETE_MARKER).exists())


def _checkpoint_state(work: Path, step: int) -> dict:
    """The Trainer checkpoint on disk, flattened as the training probe writes a run's start state."""
    import torch
    from safetensors.torch import load_file

    (ckpt,) = work.glob(f"*/checkpoints/checkpoint-{step}")
    flat = {f"model/{k}": v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)  # our own file, tensors only
    for idx, st in optim["state"].items():
        flat.update({f"optim/{idx}/{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return flat


def _nothing_published(data_root: Path, resources) -> None:
    from ossa_assets.keys import DOMAIN_CHECKPOINT

    assert resources["store"].load_manifest(DOMAIN_CHECKPOINT, DOMAIN) is None
    published = data_root / "artifacts" / "finetune" / "domain_checkpoint" / DOMAIN
    assert not published.exists() or not [p for p in published.iterdir() if not p.name.startswith(".tmp-")]


def test_killed_step_resumes_exactly_when_rematerialized(tmp_path, data_root, monkeypatch):
    """The step is killed for real, twice: at a random step, then halfway through writing a
    checkpoint. Each re-materialization starts from the exact parameters and optimizer state of the
    last complete checkpoint (tensors compared with the files on disk), continues the killed
    attempt's loss curve step for step, never loads the torn checkpoint, and nothing is published
    until the run completes."""
    import random

    from safetensors.torch import load_file

    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.finetune.assets import base_model, domain_checkpoint, tokenized_corpus
    from ossa_assets.lib.training import PROBE_ENV

    corpus = copy_sample(tmp_path / "corpus")
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    curate_all(instance, resources)
    assert dg.materialize([base_model, curated_corpus.to_source_asset()], selection=[base_model],
                          resources=resources, instance=instance).success
    assert dg.materialize([tokenized_corpus, base_model.to_source_asset(), curated_corpus.to_source_asset()],
                          selection=[tokenized_corpus], partition_key=DOMAIN, resources=resources,
                          instance=instance).success
    work = data_root / "work" / "finetune" / "domain_checkpoint" / DOMAIN
    rng = random.Random(5)

    def attempt(n: int, torn_at: int = 0, kill_at_step: int = 0) -> Path:
        probe = tmp_path / f"probe{n}"
        log = tmp_path / f"attempt{n}.log"
        proc = subprocess.Popen(
            [sys.executable, "-c", ATTEMPT, str(data_root), str(corpus), str(torn_at), repr(RUN_CONFIG)],
            cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", PROBE_ENV: str(probe)})
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None:
                if kill_at_step and max(probe_losses(probe), default=0) >= kill_at_step:
                    proc.send_signal(signal.SIGKILL)
                time.sleep(0.02)
            assert proc.wait(timeout=30) == -signal.SIGKILL, "attempt was not killed:\n" + log.read_text()[-3000:]
        finally:
            proc.kill()
            proc.wait()
        _nothing_published(data_root, resources)
        return probe

    # attempt 1: killed at a random step past the first checkpoint
    kill_at = rng.randint(12, 60)
    probe1 = attempt(1, kill_at_step=kill_at)
    saved1 = _complete(work)[-1]
    assert 10 <= saved1 <= kill_at
    state1 = _checkpoint_state(work, saved1)
    curve1 = probe_losses(probe1)

    # attempt 2: resumes, then dies halfway through writing a later checkpoint
    torn_at = saved1 + 10 * rng.randint(2, 4)
    probe2 = attempt(2, torn_at=torn_at)
    assert_same_tensors(load_file(str(probe2 / f"start-{saved1}.safetensors")), state1)
    curve2 = probe_losses(probe2)
    assert min(curve2) == saved1 + 1 and max(curve2) == torn_at
    for step in set(curve1) & set(curve2):  # the killed attempt's curve, continued exactly
        assert curve2[step] == pytest.approx(curve1[step], rel=1e-6), step
    (torn,) = work.glob(f"*/checkpoints/checkpoint-{torn_at}")
    assert (torn / "optimizer.pt").is_file() and not (torn / "ossa_checkpoint_complete").exists()
    saved2 = _complete(work)[-1]
    assert saved2 == torn_at - 10
    state2 = _checkpoint_state(work, saved2)

    # attempt 3: a plain re-materialization in this process finishes the job
    monkeypatch.setenv(PROBE_ENV, str(tmp_path / "probe3"))
    res = dg.materialize([domain_checkpoint, base_model.to_source_asset(), tokenized_corpus.to_source_asset()],
                         selection=[domain_checkpoint], partition_key=DOMAIN, resources=resources,
                         instance=instance, run_config=RUN_CONFIG)
    assert res.success
    md = {k: v.value for k, v in res.asset_materializations_for_node("finetune__domain_checkpoint")[0].metadata.items()}
    assert md["resumed_from_step"] == saved2  # the torn checkpoint-<torn_at> was never loaded
    assert_same_tensors(load_file(str(tmp_path / "probe3" / f"start-{saved2}.safetensors")), state2)
    curve3 = probe_losses(tmp_path / "probe3")
    assert sorted(curve3) == list(range(saved2 + 1, 151))
    for step in set(curve2) & set(curve3):
        assert curve3[step] == pytest.approx(curve2[step], rel=1e-6), step
    art = res.output_for_node("finetune__domain_checkpoint")
    assert (Path(art.path) / "model.safetensors").is_file()
    report = json.loads((Path(art.path) / "ossa_train_report.json").read_text())
    assert report["step_losses"] == pytest.approx([curve3[s] for s in sorted(curve3)])
    assert not work.exists() or not any(work.iterdir()), "resume state is removed once published"


def test_mlflow_run_ends_with_the_steps_status(tmp_path, data_root):
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{data_root / 'mlflow.db'}",
                            artifact_root=str(data_root / "mlflow-artifacts"))

    @dg.asset
    def fails(context, mlflow: MlflowResource):
        with mlflow.start_run(context, run_name="fails") as run:
            for step in range(3):
                run.log_metrics({"train_loss": 3.0 - step}, step)
            raise RuntimeError("diverged")

    @dg.asset
    def succeeds(context, mlflow: MlflowResource):
        with mlflow.start_run(context, run_name="succeeds") as run:
            run.log_metrics({"train_loss": 1.0}, 0)

    assert not dg.materialize([fails], resources={"mlflow": mlflow}, raise_on_error=False).success
    assert dg.materialize([succeeds], resources={"mlflow": mlflow}).success
    client = mlflow.client()
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("ossa").experiment_id])}
    assert runs["fails"].info.status == "FAILED" and runs["succeeds"].info.status == "FINISHED"
    # buffered per-step metrics were flushed before the run ended, failed or not
    assert [m.value for m in client.get_metric_history(runs["fails"].info.run_id, "train_loss")] == [3.0, 2.0, 1.0]


def test_adapter_release_eligibility(tmp_path, data_root):
    """A registered adapter is judged offline: eligible for its route's release only if it passed
    its checks and is not worse than the live champion on the held-out set. No alias moves here:
    the aliases mirror the release (tests/test_release.py)."""
    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.finetune.assets import base_model, domain_checkpoint, tokenized_corpus
    from ossa_assets.lib.promotion import ELIGIBLE_TAG
    from ossa_assets.lora.assets import multitask_adapter
    from resources.mlflow import registry_alias_version

    corpus = copy_sample(tmp_path / "corpus")
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    curate_all(instance, resources)
    src = [curated_corpus.to_source_asset()]
    assert dg.materialize([base_model, *src], selection=[base_model], resources=resources, instance=instance).success
    for asset, deps in ((tokenized_corpus, [base_model]), (domain_checkpoint, [base_model, tokenized_corpus])):
        assert dg.materialize([asset, *[d.to_source_asset() for d in deps], *src], selection=[asset],
                              partition_key=DOMAIN, resources=resources, instance=instance).success

    def adapter(**config):
        res = dg.materialize([multitask_adapter, domain_checkpoint.to_source_asset(), *src],
                             selection=[multitask_adapter], partition_key=DOMAIN, resources=resources,
                             instance=instance, raise_on_error=False,
                             run_config={"ops": {"lora__multitask_adapter": {"config": config}}})
        md = res.asset_materializations_for_node("lora__multitask_adapter")[0].metadata
        run = client.get_run(res.asset_materializations_for_node("lora__multitask_adapter")[0]
                             .metadata["mlflow_run_id"].value)
        return md["registered_model"].value.rsplit("v", 1)[-1], md["promotion"].value, run, res.success

    client = resources["mlflow"].client()
    name = f"ossa-{DOMAIN}-adapter"
    v1, p1, run1, ok1 = adapter()
    assert ok1 and p1.startswith(f"v{v1} eligible for release: no champion yet"), p1
    assert client.get_model_version(name, v1).tags[ELIGIBLE_TAG] == "true"
    assert run1.info.status == "FINISHED" and run1.data.tags["ossa.gates"] == "passed"
    # a diverged adapter fails its blocking check: Dagster fails the step, MLflow says FAILED, and
    # no version is registered, so no release can ever name it
    _, p2, run2, ok2 = adapter(learning_rate=0.5)
    assert not ok2 and p2.startswith("not registered: blocking check failed")
    assert run2.info.status == "FAILED" and run2.data.tags["ossa.gates"] == "failed"
    assert run2.data.tags["ossa.failed_checks"] == "adapter_not_worse_than_checkpoint"
    assert not client.search_model_versions(f"name='{name}' and run_id='{run2.info.run_id}'")
    assert registry_alias_version(client, name, "champion") is None  # judging moves no alias
    # with a live champion (the release asset mirrors it into the alias), a sound one is
    # compared with it on the same held-out documents
    client.set_registered_model_alias(name, "champion", v1)
    v3, p3, run3, ok3 = adapter(seed=1)
    assert ok3 and run3.info.status == "FINISHED" and int(v3) == int(v1) + 1
    eligible = client.get_model_version(name, v3).tags[ELIGIBLE_TAG]
    assert p3.startswith(f"v{v3} {'eligible' if eligible == 'true' else 'not eligible'} for release:"), p3
    assert "held-out loss" in p3 and f"v{v1}" in p3  # compared with the champion's loss
    assert str(registry_alias_version(client, name, "champion").version) == v1


def test_an_alias_never_names_a_version_that_failed_its_gates(data_root):
    """The one way ossa moves an alias refuses a version not tagged as having passed its gates
    (one registered by hand, or by an older release), whatever the caller believes."""
    from resources.mlflow import register_version, set_alias

    mlflow = MlflowResource(tracking_uri=f"sqlite:///{data_root / 'mlflow.db'}",
                            artifact_root=str(data_root / "mlflow-artifacts"))
    client = mlflow.client()
    run = client.create_run(client.get_experiment_by_name("ossa").experiment_id)
    client.create_registered_model("m")
    failed = client.create_model_version("m", "/nowhere", run_id=run.info.run_id, tags={"ossa.gates": "failed"})
    untagged = client.create_model_version("m", "/nowhere", run_id=run.info.run_id)
    for v in (failed.version, untagged.version):
        with pytest.raises(ValueError, match="did not pass its blocking checks"):
            set_alias(client, "m", "champion", v)
    good = register_version(client, "m", "/somewhere", run.info.run_id)
    set_alias(client, "m", "champion", good)
    assert str(client.get_model_version_by_alias("m", "champion").version) == good
