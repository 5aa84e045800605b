"""New-documents sensor: a file dropped into a source reaches that hour's real-time adapter.

Each tick lists the configured sources' files (directory listings, no reads) and compares their
modification times with the cursor:

1. new or changed files -> a curation run for each touched (domain, source) partition, and the
   hours the files belong to become *pending*;
2. a pending hour whose curation runs have all materialized -> a run of that hour's
   `lora/realtime_adapter` partition (which reads the sources' curated snapshots);
3. an hour whose warm start is stale (an earlier hour was re-materialized) -> a run of the
   first such hour; the next tick sees the next one (ossa_assets/lora/chain.py).

The cursor (JSON) holds the newest modification time seen per source and the pending hours, so
a restarted daemon neither repeats nor loses a request. The first tick only records what is
there: history is the backfill's job, not the sensor's.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import dagster as dg

from ossa_assets.jobs import curate_sources, refresh_realtime_adapter
from ossa_assets.keys import REALTIME_ADAPTER, SOURCE_DOCUMENTS
from ossa_assets.lora.chain import latest_hours, stale_hours
from ossa_assets.lora.partitions import hourly_partitions
from resources.corpus import CorpusSources
from resources.storage import ArtifactStore

PENDING_TIMEOUT_S = 1800  # a curation that never lands (failed run) stops blocking after this


def hour_key(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d-%H:00")


def _latest_curation(instance: dg.DagsterInstance, partition: str) -> float:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SOURCE_DOCUMENTS, asset_partitions=[partition]), limit=1
    ).records
    return records[0].timestamp if records else 0.0


def _adapter_runs_in_flight(instance: dg.DagsterInstance) -> bool:
    """A backfill or refresh of the adapter is running: it is rebuilding the chain already."""
    from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

    runs = instance.get_runs(dg.RunsFilter(statuses=list(IN_PROGRESS_RUN_STATUSES)), limit=100)
    return any(REALTIME_ADAPTER in (r.asset_selection or ()) for r in runs)


def _scan(corpus: CorpusSources, cache_dir) -> dict[str, tuple[str, dict[str, float]]]:
    """source -> (domain, {relpath: mtime}) for the sources whose files can be listed cheaply."""
    from ossa_assets.lib.curation.sources import list_files

    seen = {}
    for spec in corpus.specs():
        if spec.kind != "local":
            continue  # git, datasets and fsspec stores change by new versions: the backfill's job
        try:
            files = list_files(spec, cache_dir)
        except Exception:  # a source that cannot be listed now is retried next tick
            continue
        seen[spec.name] = (spec.domain, {f.relpath: f.mtime for f in files})
    return seen


def evaluate_new_documents(
    instance: dg.DagsterInstance, corpus: CorpusSources, cursor: str | None, cache_dir, now: float | None = None
) -> tuple[list[dg.RunRequest], str, str]:
    """(run requests, new cursor, summary): the sensor's logic, callable without a daemon."""
    now = time.time() if now is None else now
    state = json.loads(cursor) if cursor else {}
    first = "seen" not in state
    seen: dict[str, float] = state.get("seen", {})
    pending: dict[str, dict] = state.get("pending", {})
    requests: list[dg.RunRequest] = []
    touched: dict[str, set[str]] = {}
    for source, (domain, files) in _scan(corpus, cache_dir).items():
        last = seen.get(source, 0.0)
        fresh = {p: m for p, m in files.items() if m > last}
        if files:
            seen[source] = max(last, max(files.values()))
        if first or not fresh:
            continue
        partition = str(dg.MultiPartitionKey({"domain": domain, "source": source}))
        requests.append(dg.RunRequest(
            run_key=f"new-docs:{source}:{seen[source]:.6f}",
            job_name=curate_sources.name,
            partition_key=partition,
            tags={"ossa/trigger": "new_documents"},
        ))
        for m in fresh.values():
            touched.setdefault(hour_key(m), set()).add(partition)
    for hour, parts in touched.items():
        entry = pending.setdefault(hour, {"partitions": [], "since": now})
        entry["partitions"] = sorted(set(entry["partitions"]) | parts)
        entry["since"] = now  # the newest curation request is the one to wait for
    valid_hours = set(hourly_partitions.get_partition_keys(current_time=dt.datetime.fromtimestamp(
        now, tz=dt.timezone.utc)))
    for hour, entry in sorted(pending.items()):
        if hour not in valid_hours:
            pending.pop(hour)  # before the partitions start, or in the future: nothing to train
            continue
        done = all(_latest_curation(instance, p) >= entry["since"] for p in entry["partitions"])
        if done:
            requests.append(dg.RunRequest(
                run_key=f"realtime:{hour}:{entry['since']:.6f}",
                job_name=refresh_realtime_adapter.name,
                partition_key=hour,
                tags={"ossa/trigger": "new_documents"},
            ))
            pending.pop(hour)
        elif now - entry["since"] > PENDING_TIMEOUT_S:
            pending.pop(hour)
    stale = stale_hours(instance) if not _adapter_runs_in_flight(instance) else []
    if stale:
        # an earlier hour changed: rebuild the chain from its first stale hour, one hour a tick
        hours = latest_hours(instance)
        requests.append(dg.RunRequest(
            run_key=f"restale:{stale[0]}:{hours[stale[0]][1]}",
            job_name=refresh_realtime_adapter.name,
            partition_key=stale[0],
            tags={"ossa/trigger": "stale_warm_start"},
        ))
    summary = (f"baseline of {len(seen)} sources" if first else
               f"{len(requests)} requests, {len(pending)} hours waiting for curation")
    return requests, json.dumps({"seen": seen, "pending": pending}, sort_keys=True), summary


@dg.sensor(
    name="new_documents_sensor",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=[curate_sources, refresh_realtime_adapter],
    description="New files in a source -> curate that source -> train that hour's real-time adapter.",
)
def new_documents_sensor(context: dg.SensorEvaluationContext, corpus: CorpusSources, store: ArtifactStore):
    requests, cursor, summary = evaluate_new_documents(
        context.instance, corpus, context.cursor, store.path("cache", "git")
    )
    context.update_cursor(cursor)
    if not requests:
        return dg.SkipReason(summary)
    return dg.SensorResult(run_requests=requests)

