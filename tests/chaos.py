"""Helpers for the crash tests: run `ossa materialize` in its own process group, wait until a
given step is running (read from the instance's event log), kill the whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT


def instance_at(home: Path):
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def start(env: dict, *args: str, log: Path) -> subprocess.Popen:
    """`ossa materialize ARGS` as a user's terminal would run it: a process group of its own."""
    fh = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "ossa_assets.cli", "materialize", *args], cwd=ROOT,
                            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def running_steps(inst) -> set[str]:
    """Step keys that have started and not finished in any in-progress run."""
    import dagster as dg

    out = set()
    for run in inst.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        for s in inst.get_run_step_stats(run.run_id):
            if s.end_time is None:
                out.add(s.step_key)
    return out


def wait_for_step(inst, proc: subprocess.Popen, prefix: str, timeout: float = 600, settle: float = 0.0) -> str:
    """Block until a step whose key starts with `prefix` runs (then `settle` more seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ossa materialize exited ({proc.returncode}) before {prefix} ran")
        hit = sorted(s for s in running_steps(inst) if s.startswith(prefix))
        if hit:
            time.sleep(settle)
            return hit[0]
        time.sleep(0.25)
    raise AssertionError(f"no step {prefix}* started within {timeout:.0f} s")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group: the laptop-crash case (nothing gets to clean up)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
