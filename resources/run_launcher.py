"""The local run launcher: Dagster's DefaultRunLauncher plus run-worker health for run monitoring.

Dagster's default launcher cannot tell whether a run's worker is alive, so the daemon's run
monitoring leaves a killed run STARTED for ever (holding its pool slots). Every run this project
executes records its worker (host, pid, start time) as it starts; this launcher reads it back, and
a run whose worker is gone is failed with the reason, its leftover step processes stopped and its
slots freed (`ossa_assets.recovery`). Configured in dagster.yaml; production uses the
K8sRunLauncher, which checks its pods itself. Private Dagster APIs (`dagster._core.launcher`),
checked against dagster 1.13.27.
"""

from __future__ import annotations

from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus


class LocalRunLauncher(DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        from ossa_assets.lib.processes import GONE
        from ossa_assets.recovery import fail_orphan, worker_of

        worker = worker_of(run)
        if worker is None:  # started by something else, or the worker has not recorded itself yet
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker recorded")
        state, why = worker.liveness()
        if state != GONE:
            return CheckRunHealthResult(WorkerStatus.RUNNING, why)
        # mark it here, with the reason, stopping leftover steps and freeing the slots; run
        # monitoring then sees the status changed and leaves it
        fail_orphan(self._instance, run, why, by="the Dagster daemon's run monitoring")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker {why}")
