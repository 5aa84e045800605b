"""A 6-hour backfill of the real-time adapter, through Dagster's own backfill daemon, in order.

Hour h warm-starts from hour h-1, so the backfill must run the hours one after the other. The
backfill is created as the UI's "Materialize selected partitions" creates it (an asset backfill
on the instance) and executed by `dagster-daemon run` on this project's workspace, with the
default run launcher: every hour is a real run in its own process.

Six hours, not a day: the backfill daemon starts the next hour on its next 30-second tick (a
constant in Dagster 1.13), so a 24-hour backfill cost 13 minutes of the suite for the same proof
(order, warm-start chain, quiet hours carried forward, one trained hour among them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg

from tests.conftest import ROOT, copy_sample, curate_all

HOURS = [f"2026-11-20-{h:02d}:00" for h in range(7, 13)]  # hour 10 trains; the others are quiet


def test_hourly_backfill_runs_hours_in_order(tmp_path, data_root, monkeypatch):
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
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env={**os.environ}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            status = instance.get_backfill(backfill_id).status
            if status not in (BulkActionStatus.REQUESTED,):
                break
            time.sleep(2)
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS, \
            (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
        shutil.rmtree(data_root / "graph", ignore_errors=True)

    runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    by_hour = {r.dagster_run.tags["dagster/partition"]: r for r in runs}
    assert sorted(by_hour) == HOURS and all(r.dagster_run.is_success for r in runs)
    for prev, hour in zip(HOURS, HOURS[1:]):
        # hour h started only after hour h-1 had finished: the chain was respected
        assert by_hour[hour].start_time >= by_hour[prev].end_time, (prev, hour)
    # and the chain is intact: every hour after 10 carries hour 10's trained adapter forward
    from ossa_assets.lora.chain import latest_hours, stale_hours

    hours = latest_hours(instance)
    assert stale_hours(instance) == []
    assert hours["2026-11-20-11:00"][1] == hours["2026-11-20-10:00"][0] != hours["2026-11-20-09:00"][0]
