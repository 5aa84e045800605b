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
from tests.conftest import assert_same_tensors, probe_losses

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
    s = TrainSettings(max_steps=60, batch_size=4, learning_rate=3e-3, save_steps=5, seed=0)
    s = replace(s, **settings)
    return TrainJobSpec(
        base_dir=str(base), tokenized_dir=str(tokenized), domain="api_spec", out_dir=str(tmp / "out"),
        work_dir=str(tmp / "work"), checkpoint_dir=str(tmp / "ckpt"), report_path=str(tmp / "report.json"),
        settings=s.to_dict(),
    )


def _start(spec_path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ossa_assets.lib.train_job", str(spec_path)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV)


def test_only_marked_checkpoints_count_and_torn_ones_are_removed(tmp_path):
    """A checkpoint directory without the completion marker (a save cut short) is never resumed from."""
    for step, marked in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text("{")
        if marked:
            (d / COMPLETE_MARKER).write_text(str(step))
    (tmp_path / "checkpoint-x").mkdir()  # not ours: left alone
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-20"
    assert not (tmp_path / "checkpoint-30").exists() and (tmp_path / "checkpoint-x").is_dir()
    assert latest_complete_checkpoint(tmp_path / "missing") is None


@pytest.fixture(scope="module")
def single_process_report(tmp_path_factory, prepared):
    root = tmp_path_factory.mktemp("one")
    one = _spec(root, prepared, batch_size=8, save_steps=0)
    one.save(root / "spec.json")
    single = subprocess.run([sys.executable, "-m", "ossa_assets.lib.train_job", str(root / "spec.json")],
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    return json.loads(Path(one.report_path).read_text())


def _reproduces(spec: TrainJobSpec, prepared, loss: float) -> None:
    """The saved model is whole: loaded in one plain process it gives the reported validation loss."""
    from ossa_assets.lib import modeling
    from ossa_assets.lib.finetune import load_blocks
    from ossa_assets.lib.training import evaluate

    model = modeling.load_causal_lm(spec.out_dir)
    tok = modeling.load_tokenizer(spec.out_dir)
    base = modeling.load_causal_lm(prepared[0])
    assert modeling.parameter_count(model) == modeling.parameter_count(base)
    assert evaluate(model, load_blocks(prepared[1], "validation"), tok.pad_token_id).loss == pytest.approx(loss, rel=1e-4)


def test_ddp_under_torchrun_matches_one_process(tmp_path, prepared, single_process_report):
    """2 processes x batch 4 (gloo on CPU) against 1 process x batch 8: same effective batch."""
    from ossa_assets.lib import train_job

    two = _spec(tmp_path, prepared, batch_size=4, save_steps=0, distributed="ddp")
    report2 = train_job.launch(two, tmp_path / "spec.json", nproc=2, log_path=tmp_path / "torchrun.log")
    report1 = single_process_report
    assert report2["world_size"] == 2 and report1["world_size"] == 1
    # what ran, read off the Trainer's wrapped model: DDP replicas, not a silent fallback
    assert report2["strategy"] == "ddp" and report1["strategy"] == "single"
    a, b = report1["final_val"]["val_loss"], report2["final_val"]["val_loss"]
    assert b < report2["initial_val"]["val_loss"] - 1.0
    # different shuffles of the same data: the trained models agree to within 5 %
    assert abs(a - b) / a < 0.05, (a, b)
    _reproduces(two, prepared, b)


def _workers_of(spec_path: Path) -> list[int]:
    """Live processes running this spec (torchrun's ranks), from /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            stat = (cmdline.parent / "stat").read_text()
        except OSError:
            continue
        if str(spec_path).encode() in args and stat.split(") ", 1)[1][0] not in "ZX":
            found.append(int(cmdline.parent.name))
    return found


def _dcp_state(ckpt: Path, out: Path) -> dict:
    """A sharded (torch.distributed.checkpoint) checkpoint read back whole, flattened like the probe."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(ckpt / "dcp"), str(out))
    state = torch.load(out, weights_only=True)
    flat = {f"model/{k}": v for k, v in state["model"].items()}
    for fqn, st in state["optim"]["state"].items():
        flat.update({f"optim/{fqn}/{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return flat


def test_fsdp_shards_resumes_exactly_and_saves_the_whole_model(tmp_path, prepared, single_process_report):
    """FSDP for real under torchrun (gloo): every rank holds half the parameters while training; a
    run killed at a random point resumes from the exact tensors of its last complete checkpoint and
    continues the same loss curve; rank 0 gathers the whole model, which one process can load."""
    import random

    from safetensors.torch import load_file

    from ossa_assets.lib import train_job
    from ossa_assets.lib.training import PROBE_ENV

    spec = _spec(tmp_path, prepared, batch_size=4, save_steps=10, distributed="fsdp")
    spec.save(tmp_path / "spec.json")
    ckpt = Path(spec.checkpoint_dir)
    log = tmp_path / "first.log"
    command = train_job.torchrun_command(tmp_path / "spec.json", 2)  # what the step runs
    first = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             env={**ENV, PROBE_ENV: str(tmp_path / "probe1")})
    kill_after = random.Random(11).randint(13, 38)  # a random step past the first checkpoint (10)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            logged = tmp_path / "probe1" / "losses.jsonl"
            if logged.exists() and max(probe_losses(tmp_path / "probe1"), default=0) >= kill_after:
                break
            time.sleep(0.02)
        assert first.poll() is None, "training finished before it could be killed:\n" + log.read_text()[-2000:]
    finally:
        first.send_signal(signal.SIGKILL)  # the launcher only: its ranks must not outlive it
        first.wait()
    workers = _workers_of(tmp_path / "spec.json")
    deadline = time.time() + 10
    while workers and time.time() < deadline:
        time.sleep(0.1)
        workers = _workers_of(tmp_path / "spec.json")
    assert not workers, f"torchrun's ranks outlived it: {workers}"
    assert not Path(spec.out_dir).exists() and not Path(spec.report_path).exists()
    complete = sorted(int(d.name.split("-")[1]) for d in ckpt.glob("checkpoint-*") if (d / COMPLETE_MARKER).exists())
    resume_at = complete[-1]
    saved = _dcp_state(ckpt / f"checkpoint-{resume_at}", tmp_path / "saved.pt")
    killed_curve = probe_losses(tmp_path / "probe1")
    assert max(killed_curve) > resume_at, "the killed run went past its last checkpoint"

    second = subprocess.run(command, env={**ENV, PROBE_ENV: str(tmp_path / "probe2")},
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    report = json.loads(Path(spec.report_path).read_text())

    # sharded for real: every parameter a DTensor split on dim 0, each rank holding its half
    assert report["strategy"] == "fsdp2" and report["world_size"] == 2
    shards = report["sharding"]
    assert [s["rank"] for s in shards] == [0, 1]
    full = shards[0]["full_numel"]
    assert all(s["dtensor_params"] == s["params"] > 0 and s["placements"] == ["S(0)"] for s in shards)
    assert all(s["local_numel"] < full for s in shards) and sum(s["local_numel"] for s in shards) == full
    assert all(s["sharded_blocks"] == ARCH["num_hidden_layers"] for s in shards)

    # resumed from the exact parameters and optimizer moments of the last complete checkpoint
    assert report["resumed_from_step"] == resume_at
    assert_same_tensors(load_file(str(tmp_path / "probe2" / f"start-{resume_at}.safetensors")), saved)
    # ... and continued the killed run's loss curve step for step
    resumed_curve = probe_losses(tmp_path / "probe2")
    assert sorted(resumed_curve) == list(range(resume_at + 1, 61))
    overlap = [s for s in resumed_curve if s in killed_curve]
    assert overlap, "the killed run logged steps past its checkpoint"
    for s in overlap:
        assert resumed_curve[s] == pytest.approx(killed_curve[s], rel=1e-5), s

    # the same effective batch as one process x 8: a model of the same quality
    a, b = single_process_report["final_val"]["val_loss"], report["final_val"]["val_loss"]
    assert b < report["initial_val"]["val_loss"] - 1.0
    assert abs(a - b) / a < 0.05, (a, b)
    _reproduces(spec, prepared, b)


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
