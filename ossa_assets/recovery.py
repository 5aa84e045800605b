"""Crash recovery for the Dagster instance: runs whose worker is gone, slots nobody will free.

A run killed with its process (SIGKILL, OOM, a laptop that died) stays STARTED for ever and keeps
the concurrency slots its steps claimed, so every later step of that pool waits on a holder that
no longer exists. Every run this project executes records its worker's identity in run tags
(host, pid, start time: `worker_tags`); a run whose worker is gone is marked FAILED with the
reason, its surviving step processes are terminated and its slots freed. Slots held or awaited by
runs that already ended are freed too (Dagster's daemon does that only after
`free_slots_after_run_end_seconds`, and only while a daemon runs).

Called by `ossa materialize` before it starts, by the daemon's run monitoring (through
`resources.run_launcher.LocalRunLauncher`), by a step that has waited on a pool slot (it checks
the holder), and by `ossa doctor`. Public Dagster APIs only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from ossa_assets.lib.processes import ALIVE, GONE, UNKNOWN, ProcessIdentity

HOST_TAG, PID_TAG, STARTED_TAG = "ossa/worker_host", "ossa/worker_pid", "ossa/worker_started"
# statuses in which a run still has (or is about to have) a worker; QUEUED runs have none yet
LIVE_STATUSES = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                 dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def worker_tags(identity: ProcessIdentity | None = None) -> dict[str, str]:
    """Run tags naming the process that executes the run (this one, by default)."""
    me = identity or ProcessIdentity.current()
    return {HOST_TAG: me.host, PID_TAG: str(me.pid), STARTED_TAG: f"{me.started:.2f}"}


# for runs `ossa materialize` executes in its own process: it recovers and reruns them itself,
# and the daemon could not relaunch them (they have no code-location origin)
NO_DAEMON_RETRY = {"dagster/max_retries": "0"}


def worker_of(run: dg.DagsterRun) -> ProcessIdentity | None:
    tags = run.tags
    try:
        return ProcessIdentity(tags[HOST_TAG], int(tags[PID_TAG]), float(tags[STARTED_TAG]))
    except (KeyError, ValueError):
        return None  # not started by this project's executor (or too early to tell)


def stamp_worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """Record this process as the run's worker (the executor calls this as the run starts)."""
    tags = worker_tags()
    if any(run.tags.get(k) != v for k, v in tags.items()):
        instance.add_run_tags(run.run_id, tags)


def run_label(run: dg.DagsterRun) -> str:
    partition = run.tags.get("dagster/partition")
    return f"{run.job_name}" + (f"[{partition}]" if partition else "") + f" (run {run.run_id[:8]})"


@dataclass
class Recovered:
    run_id: str
    label: str
    status_before: str
    reason: str
    terminated_pids: list[int] = field(default_factory=list)

    def line(self) -> str:
        extra = f"; terminated leftover step processes {self.terminated_pids}" if self.terminated_pids else ""
        return f"{self.label}: was {self.status_before}, marked FAILED: {self.reason}{extra}"


@dataclass
class RecoveryReport:
    recovered: list[Recovered] = field(default_factory=list)
    freed_slots: list[str] = field(default_factory=list)  # "pool: run (status)"
    unknown: list[str] = field(default_factory=list)  # in-progress runs this host cannot judge
    staging: list[str] = field(default_factory=list)  # half-written outputs of killed steps

    @property
    def changed(self) -> bool:
        return bool(self.recovered or self.freed_slots or self.staging)

    def lines(self) -> list[str]:
        out = [f"recovered {r.line()}" for r in self.recovered]
        out += [f"freed slot {s}" for s in self.freed_slots]
        if self.staging:
            out.append(f"removed {len(self.staging)} staging dirs/temp files left by killed steps "
                       f"(never published), e.g. {self.staging[0]}")
        return out


def orphans(instance: dg.DagsterInstance) -> list[tuple[dg.DagsterRun, str]]:
    """In-progress runs whose recorded worker is gone, with the reason."""
    found = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=LIVE_STATUSES)):
        worker = worker_of(run)
        if worker is None:
            continue
        state, why = worker.liveness()
        if state == GONE:
            found.append((run, why))
    return found


def _step_pids(instance: dg.DagsterInstance, run_id: str) -> list[int]:
    """Pids of the run's step processes, from the events the executor wrote as it started them."""
    pids = []
    kinds = {dg.DagsterEventType.STEP_WORKER_STARTED, dg.DagsterEventType.ENGINE_EVENT}
    for entry in instance.all_logs(run_id, of_type=kinds):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        pid = data.metadata.get("pid") if data and data.metadata else None
        if pid is not None:
            try:
                pids.append(int(getattr(pid, "value", pid)))
            except (TypeError, ValueError):
                continue
    return pids


def fail_orphan(instance: dg.DagsterInstance, run: dg.DagsterRun, why: str, by: str) -> Recovered:
    """Mark a run whose worker is gone FAILED (CANCELED if it was being canceled), stop what is
    left of its steps, free its slots."""
    from ossa_assets.lib.processes import terminate

    record = instance.get_run_record_by_id(run.run_id)
    not_before = record.create_timestamp.timestamp() if record else time.time()
    terminated = terminate(_step_pids(instance, run.run_id), not_before=not_before)
    message = f"Run worker {why}. Marked by {by}; the run's concurrency slots were freed."
    if run.status != dg.DagsterRunStatus.CANCELING and _will_be_retried(instance, run):
        # Dagster tags a failed run will_retry only after its status has flipped; a backfill
        # that looks in between counts the hour as failed for good (seen in
        # tests/test_hourly_backfill.py). Tag it first; Dagster then writes the same value.
        instance.add_run_tags(run.run_id, {"dagster/will_retry": "true"})
    if run.status == dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceled(run, message=message)
    else:
        instance.report_run_failed(run, message)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return Recovered(run.run_id, run_label(run), run.status.value, why, terminated)


def _will_be_retried(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether the daemon's run retries will run it again (dagster.yaml run_retries, the run's
    dagster/max_retries tag); a worker that died is not an asset failure."""
    if not instance.run_retries_enabled:
        return False
    try:
        max_retries = int(run.tags.get("dagster/max_retries", instance.run_retries_max_retries))
        attempt = int(run.tags.get("dagster/retry_number", 0))
    except ValueError:
        return False
    return attempt < max_retries


def _slot_runs(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """run id -> pools in which it holds or awaits a slot."""
    storage = instance.event_log_storage
    runs: dict[str, set[str]] = {}
    if not storage.supports_global_concurrency_limits:
        return runs
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        for rid in {s.run_id for s in info.claimed_slots} | {p.run_id for p in info.pending_steps}:
            runs.setdefault(rid, set()).add(pool)
    return runs


def free_stale_slots(instance: dg.DagsterInstance, dry_run: bool = False) -> list[str]:
    """Free slots held or awaited by runs that have ended or no longer exist."""
    freed = []
    for run_id, pools in _slot_runs(instance).items():
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status not in FINISHED:
            continue
        status = run.status.value if run else "deleted"
        if not dry_run:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        freed.append(f"{', '.join(sorted(pools))}: run {run_id[:8]} ({status})")
    return freed


def recover(instance: dg.DagsterInstance, by: str, dry_run: bool = False,
            data_root: Path | None = None) -> RecoveryReport:
    """Fail every orphaned run and free every stale slot (or only report them, with dry_run);
    with `data_root`, and once no run is left in progress, remove staging dirs killed steps left."""
    report = RecoveryReport()
    for run, why in orphans(instance):
        if dry_run:
            report.recovered.append(Recovered(run.run_id, run_label(run), run.status.value, why))
        else:
            report.recovered.append(fail_orphan(instance, run, why, by))
    report.freed_slots = free_stale_slots(instance, dry_run=dry_run)
    # in progress after recovery (a dry run has failed nothing: leave out what it would fail)
    recovered = {r.run_id for r in report.recovered}
    live = [r for r in instance.get_runs(filters=dg.RunsFilter(statuses=LIVE_STATUSES)) if r.run_id not in recovered]
    report.unknown = [f"{run_label(r)}: {r.status.value}, no worker recorded" for r in live if worker_of(r) is None]
    if data_root is not None and not live:
        from ossa_assets.lib.artifacts import leftover_staging, sweep_staging

        found = leftover_staging(data_root) if dry_run else sweep_staging(data_root)
        report.staging = [str(p) for p in found]
    return report


# -- who holds a pool ------------------------------------------------------------------------


@dataclass
class Holder:
    run_id: str
    step_key: str
    label: str
    status: str
    held_s: float | None
    liveness: str
    why: str

    def describe(self) -> str:
        held = f" for {self.held_s:.0f} s" if self.held_s is not None else ""
        return f"{self.label} step {self.step_key}{held} ({self.status}; worker {self.why})"


def pool_holders(instance: dg.DagsterInstance, pool: str) -> tuple[int | None, list[Holder]]:
    """(the pool's limit, the steps holding its slots)."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    holders = []
    now = time.time()
    for slot in info.claimed_slots:
        run = instance.get_run_by_id(slot.run_id)
        if run is None:
            holders.append(Holder(slot.run_id, slot.step_key, f"deleted run {slot.run_id[:8]}", "deleted",
                                  None, GONE, "is gone (the run was deleted)"))
            continue
        stats = instance.get_run_step_stats(slot.run_id, step_keys=[slot.step_key])
        started = stats[0].start_time if stats and stats[0].start_time else None
        worker = worker_of(run)
        if run.status in FINISHED:
            state, why = GONE, f"finished ({run.status.value})"
        elif worker is None:
            state, why = UNKNOWN, "not recorded"
        else:
            state, why = worker.liveness()
        holders.append(Holder(slot.run_id, slot.step_key, run_label(run), run.status.value,
                              now - started if started else None, state, why))
    return info.limit, holders


def release_dead_holders(instance: dg.DagsterInstance, pool: str, by: str) -> list[str]:
    """Free the pool's slots held by runs that ended or whose worker is gone; what was freed."""
    freed = []
    _, holders = pool_holders(instance, pool)
    for h in holders:
        if h.liveness in (ALIVE, UNKNOWN):
            continue
        run = instance.get_run_by_id(h.run_id)
        if run is not None and run.status not in FINISHED:
            freed.append(fail_orphan(instance, run, h.why, by).line())
        else:
            instance.event_log_storage.free_concurrency_slots_for_run(h.run_id)
            freed.append(f"slot of {h.describe()}")
    return freed


def status(instance: dg.DagsterInstance) -> dict[str, Any]:
    """What `ossa doctor` prints: in-progress runs with their workers, pools with their holders."""
    runs = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=LIVE_STATUSES + [dg.DagsterRunStatus.QUEUED])):
        worker = worker_of(run)
        state, why = worker.liveness() if worker else (UNKNOWN, "no worker recorded")
        runs.append({"run": run_label(run), "status": run.status.value, "worker": state, "why": why})
    pools = []
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for pool in sorted(storage.get_concurrency_keys()):
            limit, holders = pool_holders(instance, pool)
            info = storage.get_concurrency_info(pool)
            pools.append({"pool": pool, "limit": limit, "held_by": [h.describe() for h in holders],
                          "dead_holders": sum(h.liveness == GONE for h in holders),
                          "waiting": [f"run {p.run_id[:8]} step {p.step_key}" for p in info.pending_steps]})
    return {"runs": runs, "pools": pools}
