"""Ctrl-C and SIGTERM on `ossa materialize`: the current run is canceled cleanly (steps stopped,
run CANCELED, slots freed, nothing half-written published) and the command stops instead of
going on to the next run; a second Ctrl-C exits at once. Real CLI processes and signals.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import psutil
import pytest

from tests import chaos
from tests.conftest import ROOT, SAMPLE, SHARED_CORPORA

pytestmark = pytest.mark.slow


def _home(base: Path, corpus: Path) -> SimpleNamespace:
    home = base / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "OSSA_DATA_ROOT": str(base / "data"),
           "OSSA_CORPUS_ROOT": str(corpus), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return SimpleNamespace(home=home, data=base / "data", env=env, inst=chaos.instance_at(home), base=base)


def _manifests(data: Path, stage: str, artifact: str) -> list[Path]:
    return sorted((data / "manifests").glob(f"{stage}*{artifact}*/*.json"))


def _staging(data: Path) -> list[Path]:
    from ossa_assets.lib.artifacts import leftover_staging

    return leftover_staging(data)


def _assert_canceled_and_clean(h, run) -> None:
    assert run.status == dg.DagsterRunStatus.CANCELED, run.status
    _assert_clean(h)


def _assert_clean(h) -> None:
    """No slot held or awaited, no run left in progress."""
    info = h.inst.event_log_storage.get_concurrency_info("gpu") if "gpu" in h.inst.event_log_storage.get_concurrency_keys() else None
    assert info is None or (not info.claimed_slots and not info.pending_steps)
    assert not h.inst.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED,
                                                                 dg.DagsterRunStatus.STARTING]))


@pytest.mark.skipif(not SHARED_CORPORA.is_dir(), reason="needs ../shared/corpora for a curation step that lasts")
def test_ctrl_c_during_curation_cancels_the_run_and_stops(tmp_path):
    h = _home(tmp_path, SHARED_CORPORA)
    log = tmp_path / "out.log"
    proc = chaos.start(h.env, "--job", "curate_sources", "--job", "curate_corpora", log=log)
    chaos.wait_for_step(h.inst, proc, "corpora__source_documents", timeout=120, settle=1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=60)
    out = log.read_text()
    assert rc == 130, out[-3000:]
    assert time.monotonic() - t0 < 20
    runs = h.inst.get_runs()
    assert len(runs) == 1, "it went on to the next partition"  # the bug this guards
    _assert_canceled_and_clean(h, runs[0])
    assert "CANCELED by SIGINT" in out and "no further runs started" in out
    assert not _manifests(h.data, "corpora", "source_documents")
    assert not _staging(h.data)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    h = _home(tmp_path_factory.mktemp("interrupts"), SAMPLE)
    done = subprocess.run([sys.executable, "-m", "ossa_assets.cli", "materialize", "--job", "curate_sources",
                           "--job", "curate_corpora"], cwd=ROOT, env=h.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield h
    subprocess.run([sys.executable, "-m", "ossa_assets.cli", "store", "stop"], cwd=ROOT, env=h.env,
                   capture_output=True, timeout=60)


def _start_training(h, name: str) -> tuple[subprocess.Popen, Path, list[psutil.Process]]:
    """`ossa materialize --job build_embeddings`, returned once a GPU-pool training step runs."""
    log = h.base / f"{name}.log"
    proc = chaos.start(h.env, "--job", "build_embeddings", log=log)
    chaos.wait_for_step(h.inst, proc, "embeddings__embedding_model", timeout=300, settle=2.0)
    return proc, log, psutil.Process(proc.pid).children(recursive=True)


def test_sigterm_during_a_training_step_stops_the_step_and_the_command(curated):
    before = {r.run_id for r in curated.inst.get_runs()}
    proc, log, children = _start_training(curated, "sigterm")
    assert children, "the step runs in child processes"
    proc.send_signal(signal.SIGTERM)  # `kill PID`: the command only, as a service manager would
    rc = proc.wait(timeout=90)
    out = log.read_text()
    assert rc == 130, out[-3000:]
    new = [r for r in curated.inst.get_runs() if r.run_id not in before]
    assert len(new) == 1, "one run per embedding model: it must not start the next"
    _assert_canceled_and_clean(curated, new[0])
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"step processes outlived the command: {[p.pid for p in alive]}"
    assert not _manifests(curated.data, "embeddings", "embedding_model")
    assert not _staging(curated.data)
    assert "CANCELED by SIGTERM" in out


def test_a_second_ctrl_c_exits_at_once_and_doctor_recovers_the_rest(curated):
    before = {r.run_id for r in curated.inst.get_runs()}
    proc, log, children = _start_training(curated, "twice")
    proc.send_signal(signal.SIGINT)
    # as a person does: the second once the first is acknowledged (two signals sent back to back
    # to a process the training steps keep off the cores arrive as one); the run is then still
    # winding down, which takes ~0.3 s here
    deadline = time.monotonic() + 20
    while "canceling the current run" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=30)
    out = log.read_text()
    assert rc == 130, out[-3000:]
    assert time.monotonic() - t0 < 5, "the second Ctrl-C must not wait for the run to wind down"
    assert "second interrupt: exiting now" in out
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    repaired = subprocess.run([sys.executable, "-m", "ossa_assets.cli", "doctor", "--repair"], cwd=ROOT,
                              env=curated.env, capture_output=True, text=True, timeout=120)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    new = [r for r in curated.inst.get_runs() if r.run_id not in before]
    assert len(new) == 1
    # CANCELED when the first Ctrl-C's cancel request landed before the second, else FAILED
    assert new[0].status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
    _assert_clean(curated)
    assert not _manifests(curated.data, "embeddings", "embedding_model")
    assert not _staging(curated.data), "doctor --repair removes what the killed step staged"
