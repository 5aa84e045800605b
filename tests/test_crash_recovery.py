"""A killed run never wedges the next one: orphaned runs are failed with the reason and their
pool slots freed (by `ossa_assets.recovery`, by the daemon's run monitoring through
resources/run_launcher.py, and by a step that waits on them), and a step waiting for a slot
says what it waits for, sleeps, and gives up at its deadline naming the holder.

Real processes, a real SQLite instance with the project's dagster.yaml, a one-step job in the
`gpu` pool on the project's executors (tests/crash_jobs.py); processes are killed with SIGKILL.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import psutil
import pytest

from ossa_assets import recovery
from tests import chaos
from tests.conftest import ROOT


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "dagster_home"
    h.mkdir()
    shutil.copy(ROOT / "dagster.yaml", h / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(h), "OSSA_DATA_ROOT": str(tmp_path / "data"),
           "PYTHONUNBUFFERED": "1", "OSSA_POOL_WAIT_LOG_S": "2"}
    ns = SimpleNamespace(path=h, env=env, inst=chaos.instance_at(h), procs=[])
    yield ns
    for p in ns.procs:  # nothing outlives the test
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


class Lines:
    """A process's output, line by line, with the time each line arrived."""

    def __init__(self, proc: subprocess.Popen):
        self.items: list[tuple[float, str]] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc):
        for raw in proc.stdout:
            self.items.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def text(self) -> str:
        return "\n".join(line for _, line in self.items)

    def wait_for(self, needle: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.items):
                if needle in line:
                    return t
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not seen within {timeout:.0f} s:\n{self.text()[-3000:]}")


def _start(home, mode: str, sleep: float, *tags: str, env: dict | None = None) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.crash_jobs", mode, *tags], cwd=ROOT,
                            env={**home.env, "CRASH_SLEEP_S": str(sleep), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    home.procs.append(proc)
    return proc, Lines(proc)


def _holder(inst, timeout: float = 60) -> tuple[dg.DagsterRun, str]:
    """The run and step holding the gpu pool's slot, once one does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if inst.event_log_storage.supports_global_concurrency_limits and "gpu" in inst.event_log_storage.get_concurrency_keys():
            slots = inst.event_log_storage.get_concurrency_info("gpu").claimed_slots
            if slots:
                return inst.get_run_by_id(slots[0].run_id), slots[0].step_key
        time.sleep(0.2)
    raise AssertionError("no run claimed the gpu slot")


def _slots(inst) -> tuple[list, list]:
    info = inst.event_log_storage.get_concurrency_info("gpu")
    return info.claimed_slots, info.pending_steps


def _step_process(inst, run_id: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in recovery._step_pids(inst, run_id) if psutil.pid_exists(p)]
        run = inst.get_run_by_id(run_id)
        worker = recovery.worker_of(run)
        pids = [p for p in pids if worker is None or p != worker.pid]
        if pids:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError("the step process never appeared in the event log")


def test_a_killed_run_is_failed_with_the_reason_its_steps_stopped_and_its_slot_freed(home):
    proc, _ = _start(home, "multiprocess", 300)
    run, step = _holder(home.inst)
    step_pid = _step_process(home.inst, run.run_id)
    assert recovery.worker_of(run).pid == proc.pid  # recorded by the executor itself
    os.kill(proc.pid, signal.SIGKILL)  # the orchestrator only: its step process lives on
    proc.wait()
    assert psutil.pid_exists(step_pid)
    assert home.inst.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    assert [s.run_id for s in _slots(home.inst)[0]] == [run.run_id]

    dry = recovery.recover(home.inst, by="a dry run", dry_run=True)
    assert [r.run_id for r in dry.recovered] == [run.run_id]
    assert home.inst.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

    report = recovery.recover(home.inst, by="the test")
    assert [r.run_id for r in report.recovered] == [run.run_id]
    assert step_pid in report.recovered[0].terminated_pids
    assert not psutil.pid_exists(step_pid) or psutil.Process(step_pid).status() == psutil.STATUS_ZOMBIE
    after = home.inst.get_run_by_id(run.run_id)
    assert after.status == dg.DagsterRunStatus.FAILURE
    failure = home.inst.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"pid {proc.pid}" in failure[-1].message and "is gone" in failure[-1].message
    assert _slots(home.inst) == ([], [])
    # a second pass finds nothing: recovery is idempotent
    assert not recovery.recover(home.inst, by="the test").changed


def test_the_daemons_run_monitoring_fails_a_killed_run(home):
    """Dagster's own run-monitoring pass, with the project's launcher (dagster.yaml)."""
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    proc, _ = _start(home, "in_process", 300)
    run, _ = _holder(home.inst)
    assert home.inst.run_launcher.check_run_worker_health(run).status.value == "RUNNING"
    chaos.kill_group(proc)
    record = home.inst.get_run_record_by_id(run.run_id)
    monitor_started_run(home.inst, None, record, logging.getLogger("test"))
    after = home.inst.get_run_by_id(run.run_id)
    assert after.status == dg.DagsterRunStatus.FAILURE
    assert "run monitoring" in home.inst.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].message
    assert _slots(home.inst) == ([], [])


@pytest.mark.parametrize("mode", ["in_process", "multiprocess"])
def test_a_waiting_step_says_who_holds_the_slot_sleeps_and_recovers_a_dead_holder(home, mode):
    holder, _ = _start(home, "in_process", 300)
    held_run, held_step = _holder(home.inst)
    waiter, lines = _start(home, mode, 0.1)
    t_first = lines.wait_for("for a slot of pool 'gpu'", timeout=90)
    cpu0 = psutil.Process(waiter.pid).cpu_times()
    time.sleep(6)
    cpu1 = psutil.Process(waiter.pid).cpu_times()
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    assert busy < 0.6, f"the waiting orchestrator used {busy:.2f} s of CPU in 6 s"  # it spun a core before
    waiting = [line for _, line in lines.items if "for a slot of pool 'gpu'" in line]
    assert held_run.run_id[:8] in waiting[-1] and held_step in waiting[-1] and "is running" in waiting[-1]

    chaos.kill_group(holder)  # the holder dies; the waiter must not wait for ever
    t_got = lines.wait_for("got a slot of pool 'gpu'", timeout=40)
    assert waiter.wait(timeout=60) == 0, lines.text()[-3000:]
    assert "freed a slot of pool 'gpu' from a dead holder" in lines.text()
    assert home.inst.get_run_by_id(held_run.run_id).status == dg.DagsterRunStatus.FAILURE
    # while waiting, the longest stretch without a line (the log interval is 2 s here)
    stamps = [t for t, _ in lines.items if t_first <= t <= t_got]
    gap = max(b - a for a, b in zip(stamps, stamps[1:]))
    print(f"longest silent interval while waiting: {gap:.1f} s")
    assert gap <= 2 + 2.0
    assert _slots(home.inst) == ([], [])


def test_a_wait_past_its_deadline_fails_naming_the_holder(home):
    holder, _ = _start(home, "in_process", 300)
    held_run, held_step = _holder(home.inst)
    waiter, lines = _start(home, "in_process", 0.1, "ossa/pool_wait_timeout_s=3")
    t0 = time.monotonic()
    assert waiter.wait(timeout=60) == 1
    assert time.monotonic() - t0 < 45
    text = lines.text()
    assert "gave up after waiting" in text and held_run.run_id[:8] in text and held_step in text
    failed = [r for r in home.inst.get_runs() if r.run_id != held_run.run_id]
    assert [r.status for r in failed] == [dg.DagsterRunStatus.FAILURE]
    # the holder keeps its slot; the one that gave up leaves no pending claim behind
    claimed, pending = _slots(home.inst)
    assert [s.run_id for s in claimed] == [held_run.run_id]
    assert all(p.run_id == held_run.run_id for p in pending)
    assert held_run.run_id in {r.run_id for r in home.inst.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))}
    chaos.kill_group(holder)


def test_doctor_shows_and_repairs_what_a_crash_left(home):
    proc, _ = _start(home, "in_process", 300)
    run, _ = _holder(home.inst)
    chaos.kill_group(proc)
    data = Path(home.env["OSSA_DATA_ROOT"])
    staged = data / "artifacts" / "finetune" / "domain_checkpoint" / "api_spec" / ".tmp-killed"
    staged.mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"half")

    def doctor(*args):
        return subprocess.run([sys.executable, "-m", "ossa_assets.cli", "doctor", *args], cwd=ROOT,
                              env=home.env, capture_output=True, text=True, timeout=120)

    shown = doctor()
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert f"run {run.run_id[:8]}" in shown.stdout and "worker gone" in shown.stdout
    assert "pool gpu (limit 1)" in shown.stdout and "is gone" in shown.stdout
    assert staged.exists() and home.inst.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

    repaired = doctor("--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: recovered" in repaired.stdout and "pool gpu (limit 1): free" in repaired.stdout
    assert not staged.exists()
    assert home.inst.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    again = doctor()
    assert again.returncode == 0 and "no orphaned runs, no stale slots" in again.stdout
