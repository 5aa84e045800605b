"""The local executors: Dagster's multiprocess and in-process executors, plus what a crash needs.

Two additions, on every run:
- the run records its worker (host, pid, start time) in run tags as it starts, so a run whose
  process was killed can be told from one that is still working (`ossa_assets.recovery`);
- a step waiting for a pool slot waits visibly and cheaply: every `OSSA_POOL_WAIT_LOG_S` seconds
  (default 10) it logs what it waits for, who holds the slot and for how long; a holder whose
  worker is gone (or whose run ended) is recovered on the spot; the executor loop sleeps between
  checks (Dagster 1.13's loops poll `claim()` without sleeping: a blocked step spun a core); and
  after `OSSA_POOL_WAIT_TIMEOUT_S` (default 24 h; per run: the `ossa/pool_wait_timeout_s` tag)
  the step fails with an error naming the holder.

This is the one module that uses private Dagster APIs (`dagster._core…`), checked against
dagster 1.13.27 (pinned in pyproject.toml); tests/test_crash_recovery.py exercises each of them.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import dagster as dg

# Heavy modules every training/export step imports. The local executor forks steps from a
# server that has imported them once per run, instead of paying ~20 s of imports per step.
PRELOAD_MODULES = [
    "ossa_assets.definitions",
    "resources.warm",
    "torch",
    "transformers",
    "peft",
    "datasets",
    "mlflow",
    "sentence_transformers",
    "onnxruntime",
]
IN_PROCESS_RUN_CONFIG = {"execution": {"config": {"in_process": {}}}}
POOL_WAIT_TIMEOUT_TAG = "ossa/pool_wait_timeout_s"
_POLL_S = 0.2  # between claim checks while a step waits: ~0 CPU, events of running steps still flow


class PoolWaitTimeout(Exception):
    pass


def _pool_wait_settings(run: dg.DagsterRun) -> tuple[float, float | None]:
    log_every = float(os.environ.get("OSSA_POOL_WAIT_LOG_S", "10"))
    timeout = run.tags.get(POOL_WAIT_TIMEOUT_TAG) or os.environ.get("OSSA_POOL_WAIT_TIMEOUT_S", "86400")
    return log_every, (float(timeout) if float(timeout) > 0 else None)


def _patient_context_class():
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

    class PatientConcurrencyContext(InstanceConcurrencyContext):
        """Dagster's per-run slot bookkeeping, waiting visibly, cheaply and not for ever."""

        def __init__(self, instance: dg.DagsterInstance, dagster_run: dg.DagsterRun):
            super().__init__(instance, dagster_run)
            self._ossa_run = dagster_run
            self._log_every, self._timeout = _pool_wait_settings(dagster_run)
            self._waiting_since: dict[str, float] = {}
            self._last_report: dict[str, float] = {}

        def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
            if super().claim(concurrency_key, step_key, step_priority):
                since = self._waiting_since.pop(step_key, None)
                if since is not None:
                    self._say(f"{step_key} got a slot of pool '{concurrency_key}' after "
                              f"{time.monotonic() - since:.0f} s", step_key)
                return True
            now = time.monotonic()
            since = self._waiting_since.setdefault(step_key, now)
            if now - self._last_report.get(step_key, -1e9) >= self._log_every:
                self._last_report[step_key] = now
                self._report(concurrency_key, step_key, now - since)
            if self._timeout is not None and now - since > self._timeout:
                raise PoolWaitTimeout(self._describe(concurrency_key, step_key, now - since, final=True))
            time.sleep(_POLL_S)
            return False

        def _describe(self, pool: str, step_key: str, waited: float, final: bool = False) -> str:
            from ossa_assets.recovery import pool_holders

            limit, holders = pool_holders(self._instance, pool)
            held = "; ".join(h.describe() for h in holders) or "no one (the slot is being handed over)"
            head = (f"{step_key} gave up after waiting {waited:.0f} s" if final
                    else f"{step_key} has waited {waited:.0f} s")
            tail = (f" (deadline {self._timeout:.0f} s: {POOL_WAIT_TIMEOUT_TAG} tag or "
                    "OSSA_POOL_WAIT_TIMEOUT_S)") if self._timeout else ""
            return f"{head} for a slot of pool '{pool}' (limit {limit}), held by {held}{tail}"

        def _report(self, pool: str, step_key: str, waited: float) -> None:
            from ossa_assets.recovery import release_dead_holders

            freed = release_dead_holders(
                self._instance, pool, by=f"ossa crash recovery (step {step_key} of run "
                f"{self._run_id[:8]} was waiting for pool '{pool}')")
            for line in freed:
                self._say(f"{step_key}: freed a slot of pool '{pool}' from a dead holder: {line}", step_key)
            if freed:
                self._pending_timeouts[step_key] = 0.0  # ask for the freed slot at once
                return
            self._say(self._describe(pool, step_key, waited), step_key)

        def _say(self, message: str, step_key: str) -> None:
            # the event log (the UI's run view) and the console of whoever runs the orchestrator
            self._instance.report_engine_event(message, self._ossa_run, step_key=step_key)
            print(f"[ossa] {message}", file=sys.stderr, flush=True)

    return PatientConcurrencyContext


_installed = False


def _install_patient_pools() -> None:
    """Make Dagster's local executors build the patient context (idempotent)."""
    global _installed
    if _installed or os.environ.get("OSSA_PATIENT_POOLS", "1") == "0":
        return  # OSSA_PATIENT_POOLS=0: Dagster's own waiting (bench_recovery's baseline)
    from dagster._core.executor import in_process, multiprocess

    cls = _patient_context_class()
    multiprocess.InstanceConcurrencyContext = cls  # type: ignore[attr-defined]
    in_process.InstanceConcurrencyContext = cls  # type: ignore[attr-defined]
    _installed = True


def _recording_executor(inner: Any) -> Any:
    """`inner`, recording the run's worker before it executes anything."""
    from dagster._core.executor.base import Executor

    class RecordingExecutor(Executor):
        def __init__(self, wrapped: Any):
            self._wrapped = wrapped

        @property
        def retries(self):
            return self._wrapped.retries

        @property
        def step_dependency_config(self):
            return self._wrapped.step_dependency_config

        def execute(self, plan_context, execution_plan):
            from ossa_assets.recovery import stamp_worker

            stamp_worker(plan_context.instance, plan_context.dagster_run)
            yield from self._wrapped.execute(plan_context, execution_plan)

    _install_patient_pools()
    return RecordingExecutor(inner)


def _local_executor_def():
    """Dagster's multi_or_in_process_executor with this project's multiprocess defaults.

    Multiprocess (2 at a time, steps forked from a server that preloaded torch & co) unless a
    run asks for `execution: {config: {in_process: {}}}` — what one-step runs such as an hourly
    backfill want: no step process, no forkserver start (~10 s less per run). Built from
    Dagster's own pieces because `configured` would freeze the choice.
    """
    from dagster._core.definitions.executor_definition import (
        IN_PROC_CONFIG,
        MULTI_PROC_CONFIG,
        _core_in_process_executor_creation,
        _core_multiprocess_executor_creation,
        _get_default_executor_requirements,
    )

    @dg.executor(
        name="ossa_local_executor",
        config_schema=dg.Field(
            dg.Selector({"multiprocess": MULTI_PROC_CONFIG, "in_process": IN_PROC_CONFIG}),
            default_value={"multiprocess": {
                "max_concurrent": 2,
                "start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}},
            }},
        ),
        requirements=_get_default_executor_requirements,
    )
    def ossa_local_executor(init_context):
        config = init_context.executor_config
        if "multiprocess" in config:
            return _recording_executor(_core_multiprocess_executor_creation(config["multiprocess"]))
        return _recording_executor(_core_in_process_executor_creation(config["in_process"]))

    return ossa_local_executor


def _in_process_executor_def():
    """Dagster's in_process_executor, recording its worker and waiting patiently."""
    from dagster._core.definitions.executor_definition import (
        IN_PROC_CONFIG,
        _core_in_process_executor_creation,
    )

    @dg.executor(name="ossa_in_process_executor", config_schema=IN_PROC_CONFIG)
    def ossa_in_process_executor(init_context):
        return _recording_executor(_core_in_process_executor_creation(init_context.executor_config))

    return ossa_in_process_executor


local_executor = _local_executor_def()
in_process_executor = _in_process_executor_def()
