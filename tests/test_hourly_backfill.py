"""A 3-hour backfill of the real-time adapter, through Dagster's own backfill daemon, in order,
with the daemon killed in the middle of the trained hour and started again.

Hour h warm-starts from hour h-1, so the backfill must run the hours one after the other. The
backfill is created as the UI's "Materialize selected partitions" creates it (an asset backfill
on the instance) and executed by `dagster-daemon run` on this project's workspace, with the
project's run launcher: every hour is a real run in its own process. SIGKILL on the daemon's
process group takes the code server and the hour's run worker with it (a machine crash); the
restarted daemon's run monitoring finds the run's worker gone (resources/run_launcher.py), fails
it and frees its slot, run retries (dagster.yaml) run the hour again, and the backfill goes on.

Three hours (quiet, trained, quiet): the backfill daemon starts the next hour on its next 30-second
tick (a constant in Dagster 1.13), so each hour costs ~30 s of the suite; these three prove order,
the warm-start chain, a quiet hour carried forward and the recovery.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg

from tests.conftest import ROOT, copy_sample, curate_all

HOURS = [f"2026-11-20-{h:02d}:00" for h in range(9, 12)]  # hour 10 trains; the others are quiet
TRAINED = "2026-11-20-10:00"


def _daemon(log):
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env={**os.environ}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(daemon, sig) -> None:
    """Signal the daemon and everything it started (its code servers run in sessions of their
    own, so the process group alone misses them), and wait for all of it to be gone."""
    import psutil

    procs = [psutil.Process(daemon.pid), *psutil.Process(daemon.pid).children(recursive=True)]
    os.killpg(daemon.pid, sig)
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    daemon.wait(timeout=60)
    _, alive = psutil.wait_procs(procs, timeout=60)
    assert not alive, [p.pid for p in alive]


def _running_step_of(instance, backfill_id: str, partition: str):
    """The run of `partition` once its adapter step is under way, else None."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                   tags={"dagster/backfill": backfill_id,
                                                         "dagster/partition": partition}))
    for run in runs:
        if any(s.end_time is None for s in instance.get_run_step_stats(run.run_id)):
            return run
    return None


def test_hourly_backfill_runs_hours_in_order_through_a_daemon_crash(tmp_path, data_root, monkeypatch):
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.definitions import defs
    from ossa_assets.finetune.assets import base_model
    from ossa_assets.keys import REALTIME_ADAPTER
    from resources import build_resources
    from resources.local_executor import IN_PROCESS_RUN_CONFIG

    corpus = copy_sample(tmp_path / "corpus")
    monkeypatch.setenv("OSSA_CORPUS_ROOT", str(corpus))
    # the hours are quiet (no file arrived on 2026-11-20) except hour 10: one trained hour
    old = time.mktime((2026, 11, 1, 0, 0, 0, 0, 0, 0))
    for p in corpus.rglob("*"):
        os.utime(p, (old, old))
    arrived = time.mktime((2026, 11, 20, 10, 30, 0, 0, 0, 0)) - time.timezone
    for p in (corpus / "cicd" / "github").rglob("*.yml"):
        os.utime(p, (arrived, arrived))
    instance = dg.DagsterInstance.get()
    resources = build_resources()
    curate_all(instance, resources)
    assert dg.materialize([base_model, curated_corpus.to_source_asset()], selection=[base_model],
                          resources=resources, instance=instance).success

    backfill_id = uuid.uuid4().hex[:8]
    instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=defs.resolve_asset_graph(), partition_names=HOURS,
        asset_selection=[REALTIME_ADAPTER], backfill_timestamp=time.time(), tags={},
        dynamic_partitions_store=instance, all_partitions=False, title="6 hours", description=None,
        run_config=IN_PROCESS_RUN_CONFIG,  # one step per run: no step process (README)
    ))
    log = open(tmp_path / "daemon.log", "w")
    daemon = _daemon(log)
    try:
        deadline = time.time() + 600
        killed = None
        while killed is None and time.time() < deadline:
            killed = _running_step_of(instance, backfill_id, TRAINED)
            time.sleep(0.2)
        assert killed is not None, (tmp_path / "daemon.log").read_text()[-3000:]
        time.sleep(2)  # in the middle of training
        _stop(daemon, signal.SIGKILL)  # the machine crashed: daemon, code server, run worker
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.STARTED
        t_crash = time.time()
        daemon = _daemon(log)
        deadline = time.time() + 600
        while time.time() < deadline:
            status = instance.get_backfill(backfill_id).status
            if status not in (BulkActionStatus.REQUESTED,):
                break
            time.sleep(2)
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS, \
            (tmp_path / "daemon.log").read_text()[-3000:]
        print(f"backfill completed {time.time() - t_crash:.0f} s after the daemon was killed")
    finally:
        _stop(daemon, signal.SIGTERM)

    # the killed hour: failed by run monitoring with the reason, its slot freed, then retried
    orphan = instance.get_run_by_id(killed.run_id)
    assert orphan.status == dg.DagsterRunStatus.FAILURE
    reason = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].message
    assert "is gone" in reason and "run monitoring" in reason, reason
    info = instance.event_log_storage.get_concurrency_info("gpu")
    assert not info.claimed_slots and not info.pending_steps
    assert not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))

    runs = [r for r in instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            if r.dagster_run.run_id != killed.run_id]
    by_hour = {r.dagster_run.tags["dagster/partition"]: r for r in runs}
    assert sorted(by_hour) == HOURS and len(runs) == len(HOURS) and all(r.dagster_run.is_success for r in runs)
    assert by_hour[TRAINED].dagster_run.parent_run_id == killed.run_id  # the retry of the killed run
    for prev, hour in zip(HOURS, HOURS[1:]):
        # hour h started only after hour h-1 had finished: the chain was respected
        assert by_hour[hour].start_time >= by_hour[prev].end_time, (prev, hour)
    # and the chain is intact: every hour after 10 carries hour 10's trained adapter forward
    from ossa_assets.lora.chain import latest_hours, stale_hours

    hours = latest_hours(instance)
    assert stale_hours(instance) == []
    assert hours["2026-11-20-11:00"][1] == hours["2026-11-20-10:00"][0] != hours["2026-11-20-09:00"][0]
