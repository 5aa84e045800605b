"""The training entry point: resume after a kill, DDP under torchrun (gloo), evaluation, promotion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ossa_assets.lib import finetune
from ossa_assets.lib.train_job import TrainJobSpec
from ossa_assets.lib.training import COMPLETE_MARKER, TrainSettings, latest_complete_checkpoint

TEXTS = [
    f"openapi: 3.0.3\ninfo:\n  title: Service {i}\n  version: '{i}.0'\npaths:\n  /items/{{id}}:\n"
    f"    get:\n      summary: Get item {i}\n      responses:\n        '200':\n          description: ok\n"
    for i in range(80)
]
ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=128)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    base = root / "base"
    base.mkdir()
    finetune.build_base(base, TEXTS, pretrained_path=None, vocab_size=300, arch=ARCH,
                        tokenizer_max_chars=10**6, seed=0)
    tokenized = root / "tok"
    finetune.tokenize_corpus(base, {"train": TEXTS[:70], "validation": TEXTS[70:]}, "api_spec", tokenized,
                             seq_len=64, max_eval_blocks=8)
    return base, tokenized


def _spec(tmp: Path, prepared, **settings) -> TrainJobSpec:
    base, tokenized = prepared
    s = TrainSettings(max_steps=40, batch_size=4, learning_rate=3e-3, save_steps=5, seed=0)
    s = replace(s, **settings)
    return TrainJobSpec(
        base_dir=str(base), tokenized_dir=str(tokenized), domain="api_spec", out_dir=str(tmp / "out"),
        work_dir=str(tmp / "work"), checkpoint_dir=str(tmp / "ckpt"), report_path=str(tmp / "report.json"),
        settings=s.to_dict(),
    )


def _start(spec_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ossa_assets.lib.train_job", str(spec_path)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV)


def test_killed_training_resumes_from_its_last_complete_checkpoint(tmp_path, prepared):
    spec = _spec(tmp_path, prepared, max_steps=400, save_steps=10)
    spec.save(tmp_path / "spec.json")
    proc = _start(tmp_path / "spec.json", tmp_path / "first.log")
    ckpt = Path(spec.checkpoint_dir)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            done = [d for d in ckpt.glob("checkpoint-*") if (d / COMPLETE_MARKER).exists()]
            if any(int(d.name.split("-")[1]) >= 20 for d in done):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished before it could be killed:\n" + (tmp_path / "first.log").read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # killed: nothing was published, the report does not exist
    assert not Path(spec.out_dir).exists() and not Path(spec.report_path).exists()
    resume_at = int(latest_complete_checkpoint(ckpt).name.split("-")[1])
    assert 20 <= resume_at < 400
    # a checkpoint torn by the kill (no marker) would be removed, never resumed from
    torn = ckpt / "checkpoint-9999"
    torn.mkdir()
    (torn / "trainer_state.json").write_text("{")
    assert latest_complete_checkpoint(ckpt).name == f"checkpoint-{resume_at}" and not torn.exists()

    proc = _start(tmp_path / "spec.json", tmp_path / "second.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    report = json.loads(Path(spec.report_path).read_text())
    assert report["resumed_from_step"] == resume_at
    # the resumed attempt logged only the remaining steps, and the artifact is complete
    assert len(report["step_losses"]) == 400 - resume_at
    assert (Path(spec.out_dir) / "model.safetensors").is_file()
    assert report["final_val"]["val_loss"] < report["initial_val"]["val_loss"]


@pytest.fixture(scope="module")
def single_process_report(tmp_path_factory, prepared):
    root = tmp_path_factory.mktemp("one")
    one = _spec(root, prepared, batch_size=8, save_steps=0)
    one.save(root / "spec.json")
    single = subprocess.run([sys.executable, "-m", "ossa_assets.lib.train_job", str(root / "spec.json")],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    return json.loads(Path(one.report_path).read_text())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(tmp_path, prepared, single_process_report, strategy):
    """2 processes x batch 4 (gloo on CPU) against 1 process x batch 8: same effective batch."""
    from ossa_assets.lib import modeling, train_job
    from ossa_assets.lib.finetune import load_blocks
    from ossa_assets.lib.training import evaluate

    two = _spec(tmp_path, prepared, batch_size=4, save_steps=0, distributed=strategy)
    report2 = train_job.launch(two, tmp_path / "spec.json", nproc=2, log_path=tmp_path / "torchrun.log")
    report1 = single_process_report
    assert report2["world_size"] == 2 and report1["world_size"] == 1
    a, b = report1["final_val"]["val_loss"], report2["final_val"]["val_loss"]
    assert b < report2["initial_val"]["val_loss"] - 1.0
    # different shuffles of the same data: the trained models agree to within 5 %
    assert abs(a - b) / a < 0.05, (a, b)
    # rank 0 saved the whole model (not a shard): it reproduces the reported loss
    model = modeling.load_causal_lm(two.out_dir)
    tok = modeling.load_tokenizer(two.out_dir)
    got = evaluate(model, load_blocks(prepared[1], "validation"), tok.pad_token_id).loss
    assert got == pytest.approx(b, rel=1e-4)


def test_torchrun_failure_raises_with_the_trainers_error(tmp_path, prepared):
    from ossa_assets.lib import train_job

    bad = _spec(tmp_path, prepared)
    bad.tokenized_dir = str(tmp_path / "missing")
    with pytest.raises(RuntimeError, match="torchrun exited"):
        train_job.launch(bad, tmp_path / "spec.json", nproc=2, log_path=tmp_path / "log")


def test_format_validity_judges_with_the_curators():
    from ossa_assets.lib.evaluation import is_valid_document

    spec = ("openapi: 3.0.3\ninfo:\n  title: S\n  version: '1'\npaths:\n  /items:\n    get:\n"
            "      responses:\n        '200':\n          description: ok\n")
    assert is_valid_document("api_spec", spec) == (True, "valid")
    # a path parameter that is never declared: the validator rejects it
    assert is_valid_document("api_spec", TEXTS[0]) == (False, "invalid_openapi")
    assert is_valid_document("api_spec", "openapi: 3.0.3\ninfo: {}\n")[0] is False
    ci = "stages: [build]\nbuild:\n  stage: build\n  script:\n    - make\n"
    assert is_valid_document("devops_workflow", ci) == (True, "valid")
    gha = "on: push\njobs:\n  b:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make\n"
    assert is_valid_document("devops_workflow", gha) == (True, "valid")
    assert is_valid_document("devops_workflow", "build: [[[")[0] is False
    nodeset = ('<?xml version="1.0"?><UANodeSet xmlns="http://opcfoundation.org/UA/2011/03/UANodeSet.xsd">'
               '<NamespaceUris><Uri>urn:x</Uri></NamespaceUris><UAObject NodeId="ns=1;i=1" BrowseName="1:Pump">'
               '<DisplayName>Pump</DisplayName></UAObject></UANodeSet>')
    assert is_valid_document("industrial_protocol", nodeset) == (True, "valid")
    assert is_valid_document("industrial_protocol", "<UANodeSet><broken")[0] is False


def test_promotion_rule():
    from ossa_assets.lib.promotion import decide

    assert decide(True, 2.0, None).promote
    assert not decide(False, 1.0, 2.0).promote
    assert decide(True, 1.9, 2.0).promote
    assert not decide(True, 2.1, 2.0).promote
    assert decide(True, 2.01, 2.0, tolerance=0.01).promote
    assert not decide(True, float("nan"), 2.0).promote
