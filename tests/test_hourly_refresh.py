"""The hourly refresh: the new-documents sensor, the hourly automation, and the warm-start chain."""

from __future__ import annotations

import datetime as dt
import json
import time

import dagster as dg

from ossa_assets.keys import REALTIME_ADAPTER
from tests.conftest import copy_sample, curate_all, tiny_resources

UTC = dt.timezone.utc
NEW_PIPELINE = "stages: [test]\nunit:\n  stage: test\n  script:\n    - pytest -q\n  rules:\n    - if: $CI\n"


def _devops_source(resources):
    spec = next(s for s in resources["corpus"].specs() if s.domain == "devops_workflow" and s.kind == "local")
    return spec


def test_new_documents_sensor_requests_curation_then_the_hour(tmp_path, data_root):
    from ossa_assets.corpora.assets import source_documents
    from sensors.new_documents import evaluate_new_documents, hour_key, new_documents_sensor

    corpus = copy_sample(tmp_path / "corpus")
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    spec = _devops_source(resources)
    curate_all(instance, resources, domains=("devops_workflow",))
    cache = data_root / "cache" / "git"

    # first tick: a baseline, no requests for history
    requests, cursor, summary = evaluate_new_documents(instance, resources["corpus"], None, cache)
    assert requests == [] and "baseline" in summary
    assert spec.name in json.loads(cursor)["seen"]
    # nothing new: nothing requested
    requests, cursor, _ = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    assert requests == []

    target = corpus / "cicd" / "gitlab" / "dropped-now" / ".gitlab-ci.yml"
    target.parent.mkdir()
    target.write_text(NEW_PIPELINE)
    hour = hour_key(target.stat().st_mtime)
    partition = str(dg.MultiPartitionKey({"domain": "devops_workflow", "source": spec.name}))

    # through the real sensor definition, with its resources
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = new_documents_sensor(ctx)
    assert [(r.partition_key, r.job_name) for r in result.run_requests] == [(partition, "curate_sources")]
    cursor = ctx.cursor
    assert hour in json.loads(cursor)["pending"]

    # the hour waits for its curation run
    requests, cursor, summary = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    assert requests == [] and "1 hours waiting" in summary
    time.sleep(0.01)
    assert dg.materialize([source_documents], partition_key=partition, resources=resources,
                          instance=instance).success
    requests, cursor, _ = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    assert [(r.partition_key, r.job_name) for r in requests] == [(hour, "refresh_realtime_adapter")]
    assert requests[0].run_key.startswith(f"realtime:{hour}:")
    # requested once
    requests, cursor, _ = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    assert requests == [] and json.loads(cursor)["pending"] == {}


def test_hourly_automation_targets_the_hour_that_just_ended():
    from ossa_assets.definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    at = dt.datetime(2026, 11, 20, 10, 3, tzinfo=UTC)
    first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=at)
    assert first.total_requested == 0  # no cron tick has passed since the first evaluation
    second = dg.evaluate_automation_conditions(defs, instance, cursor=first.cursor,
                                               evaluation_time=at + dt.timedelta(minutes=3))
    assert second.get_requested_partitions(REALTIME_ADAPTER) == {"2026-11-20-09:00", "2026-11-20-10:00"}
    third = dg.evaluate_automation_conditions(defs, instance, cursor=second.cursor,
                                              evaluation_time=at + dt.timedelta(minutes=10))
    assert third.total_requested == 0  # once per tick


def test_hour_chain_and_staleness(tmp_path, data_root):
    """Hour h depends on h-1: the graph says so, and re-materializing h-1 marks h stale."""
    from ossa_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    node = graph.get(REALTIME_ADAPTER)
    mapping = graph.get_partition_mapping(REALTIME_ADAPTER, REALTIME_ADAPTER)
    assert REALTIME_ADAPTER in node.parent_keys
    assert (mapping.start_offset, mapping.end_offset) == (-1, -1)  # hour h reads hour h-1
    assert node.backfill_policy is None  # a backfill launches one run per hour, tagged with it

    # Dagster's staleness stops following a self-dependency beyond 100 partitions (the hourly
    # asset has more): ossa's chain check is what marks later hours stale. Stand-in bodies with
    # the same key and partitioning record the warm start as the real asset does.
    from ossa_assets.lora.chain import WARM_START_VERSION, stale_hours

    assert len(node.partitions_def.get_partition_keys()) > 100
    versions = {"v": "a"}

    @dg.asset(key=REALTIME_ADAPTER, partitions_def=node.partitions_def)
    def stand_in(context):
        hours = ["2026-11-20-09:00", "2026-11-20-10:00", "2026-11-20-11:00"]
        i = hours.index(context.partition_key)
        prev = f"{hours[i - 1]}:{versions.get(hours[i - 1], 'a')}" if i else ""
        versions[context.partition_key] = versions["v"]
        return dg.Output(None, data_version=dg.DataVersion(f"{context.partition_key}:{versions['v']}"),
                         metadata={WARM_START_VERSION: prev})

    instance = dg.DagsterInstance.ephemeral()
    for hour in ("2026-11-20-09:00", "2026-11-20-10:00", "2026-11-20-11:00"):
        assert dg.materialize([stand_in], partition_key=hour, instance=instance).success
    assert stale_hours(instance) == []
    versions["v"] = "b"  # hour 9 re-materialized with different weights
    assert dg.materialize([stand_in], partition_key="2026-11-20-09:00", instance=instance).success
    assert stale_hours(instance) == ["2026-11-20-10:00", "2026-11-20-11:00"]
    assert dg.materialize([stand_in], partition_key="2026-11-20-10:00", instance=instance).success
    assert stale_hours(instance) == ["2026-11-20-11:00"]
