"""Waiting on a pool slot and recovering from a dead holder, against Dagster's own waiting.

A run holds the `gpu` pool's only slot (tests/crash_jobs.py, a one-step job on the project's
executors); a second run's step waits for it for WAIT_S seconds, then the holder's process group
is killed with SIGKILL. Measured for the project's waiting (default settings: a line every 10 s)
and, as the baseline in the same run, for Dagster 1.13's (OSSA_PATIENT_POOLS=0):
- the longest interval without a line from the waiting command while it waits;
- the CPU the waiting orchestrator uses (cores);
- seconds from the holder's death until the waiting step has its slot (the baseline never gets
  it: the dead run keeps the slot; reported as the observation window).

    .venv/bin/python bench/bench_recovery.py [--wait 40]

Prints TARGET ... MET/MISSED per target (verdict.py) and exits 1 if one is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from verdict import Verdicts  # noqa: E402

from tests.chaos import instance_at  # noqa: E402


def _start(env: dict, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.crash_jobs", "in_process"], cwd=ROOT,
                            env={**env, "CRASH_SLEEP_S": str(sleep)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def trial(patient: bool, wait_s: float, after_s: float) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    home = base / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "OSSA_DATA_ROOT": str(base / "data"), "PYTHONUNBUFFERED": "1",
           "OSSA_PATIENT_POOLS": "1" if patient else "0"}
    env.pop("OSSA_POOL_WAIT_LOG_S", None)  # the defaults users get
    inst = instance_at(home)
    holder = _start(env, 600)
    try:
        while not ("gpu" in inst.event_log_storage.get_concurrency_keys()
                   and inst.event_log_storage.get_concurrency_info("gpu").claimed_slots):
            time.sleep(0.2)
        waiter = _start(env, 0.1)
        stamps: list[float] = []
        got: list[float] = []

        def read():
            for line in waiter.stdout:
                stamps.append(time.monotonic())
                if b"got a slot" in line or b"RESULT" in line:
                    got.append(time.monotonic())

        threading.Thread(target=read, daemon=True).start()
        time.sleep(5)  # past start-up: the step is waiting now
        proc = psutil.Process(waiter.pid)
        t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
        time.sleep(wait_s)
        cores = (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
        window = [t for t in stamps if t >= t0] + [time.monotonic()]
        gaps = [b - a for a, b in zip([t0, *window], window)]
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        t_dead = time.monotonic()
        deadline = t_dead + after_s
        while not got and time.monotonic() < deadline:
            time.sleep(0.2)
        return {"silent_s": max(gaps), "cores": cores,
                "recovered_s": (got[0] - t_dead) if got else None}
    finally:
        for p in (holder, locals().get("waiter")):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wait", type=float, default=40.0, help="seconds the step waits on a live holder")
    args = ap.parse_args()
    ours = trial(True, args.wait, after_s=60)
    dagsters = trial(False, args.wait, after_s=30)
    print(f"project: {ours}\ndagster 1.13 (baseline): {dagsters}")
    v = Verdicts()
    v.at_most("longest silent interval while waiting", ours["silent_s"], 30.0, " s")
    print(f"  baseline: {dagsters['silent_s']:.1f} s without a line")
    v.at_most("CPU of the waiting orchestrator", ours["cores"], 0.05, " cores")
    print(f"  baseline: {dagsters['cores']:.2f} cores (ratio {ours['cores'] / max(dagsters['cores'], 1e-9):.3f})")
    v.at_most("dead holder -> waiting step has its slot", ours["recovered_s"], 30.0, " s")
    print("  baseline: " + ("never within 30 s (the dead run keeps the slot)" if dagsters["recovered_s"] is None
                            else f"{dagsters['recovered_s']:.1f} s"))
    return v.report()


if __name__ == "__main__":
    sys.exit(main())
