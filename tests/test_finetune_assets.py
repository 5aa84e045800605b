"""The finetune assets: a killed step resumes on re-materialization; MLflow runs end with the step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from resources.mlflow import MlflowResource
from tests.conftest import ROOT, copy_sample, curate_all, tiny_resources

DOMAIN = "devops_workflow"
# long enough to be killed mid-run; a lower rate so 150 steps on the small sample do not overfit
RUN_CONFIG = {"ops": {"finetune__domain_checkpoint": {"config": {"max_steps": 150, "save_steps": 10,
                                                                 "learning_rate": 0.001}}}}


def test_killed_step_resumes_when_rematerialized(tmp_path, data_root):
    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.finetune.assets import base_model, domain_checkpoint, tokenized_corpus
    from ossa_assets.keys import DOMAIN_CHECKPOINT
    from ossa_assets.lib.training import COMPLETE_MARKER

    corpus = copy_sample(tmp_path / "corpus")
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    curate_all(instance, resources)
    assert dg.materialize([base_model, curated_corpus.to_source_asset()], selection=[base_model],
                          resources=resources, instance=instance).success
    assert dg.materialize([tokenized_corpus, base_model.to_source_asset(), curated_corpus.to_source_asset()],
                          selection=[tokenized_corpus], partition_key=DOMAIN, resources=resources,
                          instance=instance).success

    # attempt 1 in its own process (another Dagster instance: only the data root is shared)
    script = textwrap.dedent(f"""
        import dagster as dg
        from pathlib import Path
        from tests.conftest import tiny_resources
        from ossa_assets.finetune.assets import base_model, domain_checkpoint, tokenized_corpus
        resources = tiny_resources(Path({str(data_root)!r}), Path({str(corpus)!r}))
        dg.materialize([domain_checkpoint, base_model.to_source_asset(), tokenized_corpus.to_source_asset()],
                       selection=[domain_checkpoint], partition_key={DOMAIN!r}, resources=resources,
                       instance=dg.DagsterInstance.ephemeral(), run_config={RUN_CONFIG!r})
    """)
    log = tmp_path / "attempt1.log"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    work = data_root / "work" / "finetune" / "domain_checkpoint" / DOMAIN
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if any((d / COMPLETE_MARKER).exists() for d in work.glob("*/checkpoints/checkpoint-*")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "attempt 1 ended before it could be killed:\n" + log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # nothing was published by the killed attempt
    assert resources["store"].load_manifest(DOMAIN_CHECKPOINT, DOMAIN) is None
    published = data_root / "artifacts" / "finetune" / "domain_checkpoint" / DOMAIN
    assert not published.exists() or not [p for p in published.iterdir() if not p.name.startswith(".tmp-")]
    saved = max(int(d.name.split("-")[1]) for d in work.glob("*/checkpoints/checkpoint-*")
                if (d / COMPLETE_MARKER).exists())

    # attempt 2: a plain re-materialization continues where attempt 1's last checkpoint left off
    res = dg.materialize([domain_checkpoint, base_model.to_source_asset(), tokenized_corpus.to_source_asset()],
                         selection=[domain_checkpoint], partition_key=DOMAIN, resources=resources,
                         instance=instance, run_config=RUN_CONFIG)
    assert res.success
    md = {k: v.value for k, v in res.asset_materializations_for_node("finetune__domain_checkpoint")[0].metadata.items()}
    assert md["resumed_from_step"] >= saved >= 10 and md["steps"] == 150
    art = res.output_for_node("finetune__domain_checkpoint")
    assert (Path(art.path) / "model.safetensors").is_file()
    report = json.loads((Path(art.path) / "ossa_train_report.json").read_text())
    assert len(report["step_losses"]) == 150 - md["resumed_from_step"]
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


def test_adapter_promotion_challenger_and_champion(tmp_path, data_root):
    """A new adapter is always `challenger`; `champion` only if it passes its checks and is not
    worse than the champion on the held-out set."""
    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.finetune.assets import base_model, domain_checkpoint, tokenized_corpus
    from ossa_assets.lora.assets import multitask_adapter

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
        return md["registered_model"].value.rsplit("v", 1)[1], md["promotion"].value

    client = resources["mlflow"].client()
    name = f"ossa-{DOMAIN}-adapter"
    v1, p1 = adapter()
    assert "champion" in p1 and str(client.get_model_version_by_alias(name, "champion").version) == v1
    # a diverged adapter fails its blocking check: challenger only, the champion stays
    v2, p2 = adapter(learning_rate=0.5)
    assert "challenger: blocking checks failed" in p2
    assert str(client.get_model_version_by_alias(name, "challenger").version) == v2
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    # a sound one is compared with the champion on the same held-out documents
    v3, p3 = adapter(seed=1)
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    assert str(client.get_model_version_by_alias(name, "challenger").version) == v3
    assert p3.startswith(f"v{v3} {'champion' if champion == v3 else 'challenger'}:"), p3
    assert "held-out loss" in p3 and f"v{v1}" not in p3  # compared with the champion's loss
