"""New-documents sensor: a file dropped into a source reaches that hour's real-time adapter.

Each tick lists the configured `local` sources' files (directory listings and stat, no reads)
and compares each file's listing fingerprint (size, mtime, ctime) with the cursor's:

1. new or changed files -> a curation run for each touched (domain, source) partition, and the
   hours the files *arrived* in become *pending*;
2. a pending hour whose curation runs have all materialized -> a run of that hour's
   `lora/realtime_adapter` partition (which reads the sources' curated snapshots);
3. an hour whose warm start is stale (an earlier hour was re-materialized) -> a run of the
   first such hour; the next tick sees the next one (ossa_assets/lora/chain.py).

Arrivals are keyed on the listing, not on modification times: a file copied in with an old
mtime (cp -p, rsync -a, a git checkout or tar x of old content) is new to the listing, and it
arrived at max(mtime, ctime) -- the kernel sets ctime when the file is created or changed, and
nothing backdates it. The curation dates a new or changed document the same way
(`pipeline.arrival`: a source's very first curation uses mtimes, the only history there is),
so the hour the sensor waits for is the hour whose adapter finds the document.

The cursor (JSON) holds, per source, the fingerprint of every file (relpath -> 10 hex digits,
zlib-packed: about 22 bytes a file) and the pending hours, so a restarted daemon neither
repeats nor loses a request; removed files drop out. The first tick only records what is
there: history is the backfill's job, not the sensor's. A cursor of the earlier format (the
newest mtime per source) is replaced the same way, by a baseline.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
import zlib
from pathlib import Path

import dagster as dg

from ossa_assets.jobs import curate_sources, refresh_realtime_adapter
from ossa_assets.keys import REALTIME_ADAPTER, SOURCE_DOCUMENTS
from ossa_assets.lora.chain import latest_hours, stale_hours
from ossa_assets.lora.partitions import hourly_partitions
from resources.corpus import CorpusSources
from resources.storage import ArtifactStore

CURSOR_VERSION = 2
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


def fingerprint(size: int, mtime: float, ctime: float) -> str:
    """A file's listing fingerprint: any write, copy, rename or metadata change moves ctime."""
    return hashlib.blake2b(f"{size}:{mtime!r}:{ctime!r}".encode(), digest_size=5).hexdigest()


def _pack(listing: dict[str, str]) -> str:
    raw = json.dumps(listing, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def _unpack(packed: str) -> dict[str, str]:
    return json.loads(zlib.decompress(base64.b64decode(packed)))


def cursor_listings(cursor: str) -> dict[str, dict[str, str]]:
    """source -> {relpath: fingerprint} recorded in a cursor (for tests and inspection)."""
    return {source: _unpack(p) for source, p in json.loads(cursor).get("files", {}).items()}


def _scan(corpus: CorpusSources, cache_dir) -> dict[str, tuple[str, list | None]]:
    """source -> (domain, files or None when it cannot be listed now) for the `local` sources."""
    from ossa_assets.lib.curation.sources import list_files

    seen: dict[str, tuple[str, list | None]] = {}
    for spec in corpus.specs():
        if spec.kind != "local":
            continue  # git, datasets and fsspec stores change by new versions: the backfill's job
        try:
            seen[spec.name] = (spec.domain, list_files(spec, cache_dir))
        except Exception:  # a source that cannot be listed now is retried next tick
            seen[spec.name] = (spec.domain, None)
    return seen


def _read_cursor(cursor: str | None) -> tuple[dict, str | None]:
    """(state, why this tick is a baseline or None)."""
    if not cursor:
        return {}, "first tick"
    try:
        state = json.loads(cursor)
    except json.JSONDecodeError:
        return {}, "unreadable cursor"
    if not isinstance(state, dict):
        return {}, "unreadable cursor"
    if "files" not in state:
        # the earlier format ({"seen": {source: newest mtime}, "pending": ...}) cannot tell a file
        # copied in with an old mtime from history: re-baseline, keeping the hours it waits for
        return {"pending": state.get("pending", {})}, "old-format cursor (newest mtime per source)"
    return state, None


def evaluate_new_documents(
    instance: dg.DagsterInstance, corpus: CorpusSources, cursor: str | None, cache_dir, now: float | None = None,
    curation_cache: Path | None = None,
) -> tuple[list[dg.RunRequest], str, str]:
    """(run requests, new cursor, summary): the sensor's logic, callable without a daemon.

    `curation_cache` is the curation's cache root: a source without a curation index there has
    never been curated, and its first curation dates files by mtime (the sensor waits for those
    hours); without it, every new file is dated max(mtime, ctime).
    """
    from ossa_assets.lib.curation.pipeline import arrival, index_path

    now = time.time() if now is None else now
    state, baseline = _read_cursor(cursor)
    packed: dict[str, str] = state.get("files", {})
    pending: dict[str, dict] = state.get("pending", {})
    requests: list[dg.RunRequest] = []
    touched: dict[str, set[str]] = {}
    files_out: dict[str, str] = {}
    for source, (domain, files) in _scan(corpus, cache_dir).items():
        if files is None:
            if source in packed:
                files_out[source] = packed[source]
            continue
        listing = {f.relpath: fingerprint(f.size, f.mtime, f.ctime) for f in files}
        try:
            before = _unpack(packed[source]) if source in packed else {}
        except (ValueError, zlib.error):  # a damaged entry: this source starts a new baseline
            before = None
        files_out[source] = packed[source] if listing == before else _pack(listing)
        fresh = [f for f in files if before is not None and before.get(f.relpath) != listing[f.relpath]]
        if baseline or not fresh:
            continue
        partition = str(dg.MultiPartitionKey({"domain": domain, "source": source}))
        change = hashlib.sha256(json.dumps(sorted((f.relpath, listing[f.relpath]) for f in fresh)).encode())
        requests.append(dg.RunRequest(
            run_key=f"new-docs:{source}:{change.hexdigest()[:16]}",
            job_name=curate_sources.name,
            partition_key=partition,
            tags={"ossa/trigger": "new_documents"},
        ))
        first_curation = curation_cache is not None and not index_path(curation_cache, source).exists()
        for f in fresh:
            touched.setdefault(hour_key(arrival(f.mtime, f.ctime, first_curation)), set()).add(partition)
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
    summary = (f"{baseline}: baseline of {len(files_out)} sources, no file requested" if baseline else
               f"{len(requests)} requests, {len(pending)} hours waiting for curation")
    new_cursor = json.dumps({"v": CURSOR_VERSION, "files": files_out, "pending": pending}, sort_keys=True)
    return requests, new_cursor, summary


@dg.sensor(
    name="new_documents_sensor",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    jobs=[curate_sources, refresh_realtime_adapter],
    description="New files in a source -> curate that source -> train that hour's real-time adapter.",
)
def new_documents_sensor(context: dg.SensorEvaluationContext, corpus: CorpusSources, store: ArtifactStore):
    requests, cursor, summary = evaluate_new_documents(
        context.instance, corpus, context.cursor, store.path("cache", "git"),
        curation_cache=store.path("cache", "curation"),
    )
    context.update_cursor(cursor)
    if not requests:
        return dg.SkipReason(summary)
    return dg.SensorResult(run_requests=requests)

