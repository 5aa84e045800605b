"""The hourly refresh: the new-documents sensor, the hourly automation, and the warm-start chain."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import shutil
import time

import dagster as dg

from ossa_assets.keys import REALTIME_ADAPTER
from tests.conftest import copy_sample, curate_all, tiny_resources

UTC = dt.timezone.utc
NEW_PIPELINE = "stages: [test]\nunit:\n  stage: test\n  script:\n    - pytest -q\n  rules:\n    - if: $CI\n"


def _devops_source(resources):
    spec = next(s for s in resources["corpus"].specs() if s.domain == "devops_workflow" and s.kind == "local")
    return spec


def _curated_devops(tmp_path, data_root):
    """The sample corpus with its devops source curated: (corpus, resources, instance, spec, git cache)."""
    corpus = copy_sample(tmp_path / "corpus")
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    curate_all(instance, resources, domains=("devops_workflow",))
    return corpus, resources, instance, _devops_source(resources), data_root / "cache" / "git"


def test_new_documents_sensor_requests_curation_then_the_hour(tmp_path, data_root):
    from ossa_assets.corpora.assets import source_documents
    from sensors.new_documents import cursor_listings, evaluate_new_documents, hour_key, new_documents_sensor

    corpus, resources, instance, spec, cache = _curated_devops(tmp_path, data_root)

    # first tick: a baseline, no requests for history
    requests, cursor, summary = evaluate_new_documents(instance, resources["corpus"], None, cache)
    assert requests == [] and "baseline" in summary
    assert ".gitlab-ci.yml" in "".join(cursor_listings(cursor)[spec.name])  # a fingerprint per file
    # nothing new: nothing requested
    requests, cursor, _ = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    assert requests == []

    target = corpus / "cicd" / "gitlab" / "dropped-now" / ".gitlab-ci.yml"
    target.parent.mkdir()
    target.write_text(NEW_PIPELINE)
    hour = hour_key(max(target.stat().st_mtime, target.stat().st_ctime))
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


# --- arrivals: files that come in with old modification times ---------------------------------

WEEKS_AGO = time.time() - 40 * 86400


def _backdate(path, ts=WEEKS_AGO):
    os.utime(path, (ts, ts))


def _not_held_out(text: str) -> str:
    """`text`, with a trailing comment varied until its content hash is not in the test split."""
    from ossa_assets.corpora.config import CuratedCorpusConfig
    from ossa_assets.lib.curation.corpus import split_for

    cfg = CuratedCorpusConfig()
    for i in range(100):
        candidate = f"{text.rstrip()}\n# revision {i}\n"
        doc_id = hashlib.sha256(candidate.encode()).hexdigest()
        if split_for(doc_id, cfg.validation_fraction, cfg.test_fraction) != "test":
            return candidate
    raise AssertionError("unreachable: a tenth of hashes are held out")


RESTORED_PIPELINE = """stages: [build, test]
build-wheel:
  stage: build
  image: python:3.12-slim
  script:
    - pip install build
    - python -m build --wheel
  artifacts:
    paths: [dist/]
unit-tests:
  stage: test
  image: python:3.12-slim
  needs: [build-wheel]
  script:
    - pip install dist/*.whl pytest
    - pytest -q tests/
"""


def test_a_file_copied_in_with_its_old_mtime_trains_the_hour_it_arrived(tmp_path, data_root):
    """cp -p / rsync -a: the file's mtime is weeks old, yet it arrived now, and now's adapter learns it."""
    from ossa_assets.corpora.assets import curated_corpus, source_documents
    from ossa_assets.finetune.assets import base_model
    from ossa_assets.lib.curation.pipeline import load_source_result
    from ossa_assets.lora.assets import realtime_adapter
    from sensors.new_documents import evaluate_new_documents, hour_key, new_documents_sensor

    corpus = copy_sample(tmp_path / "corpus")
    for p in corpus.rglob("*"):
        if p.is_file():
            _backdate(p)  # the history: nothing of it is this hour's
    resources = tiny_resources(data_root, corpus)
    instance = dg.DagsterInstance.ephemeral()
    for srcs, corp in curate_all(instance, resources).values():
        assert corp.success and all(r.success for r in srcs)
    assert dg.materialize([base_model, curated_corpus.to_source_asset()], resources=resources, instance=instance,
                          selection=[base_model]).success
    spec = _devops_source(resources)
    partition = str(dg.MultiPartitionKey({"domain": "devops_workflow", "source": spec.name}))
    cache = data_root / "cache" / "git"  # every source is curated: arrival = max(mtime, ctime)
    requests, cursor, summary = evaluate_new_documents(instance, resources["corpus"], None, cache)
    assert requests == [] and "baseline" in summary

    # a new file restored from a backup with its old mtime (copy2, then utime to be sure) ...
    backup = tmp_path / "backup" / ".gitlab-ci.yml"
    backup.parent.mkdir()
    backup.write_text(_not_held_out(RESTORED_PIPELINE))
    _backdate(backup)
    copied = corpus / "cicd" / "gitlab" / "restored-service" / ".gitlab-ci.yml"
    copied.parent.mkdir()
    shutil.copy2(backup, copied)
    _backdate(copied)
    # ... and an existing file overwritten in place by an older version of it (rsync -a)
    rsynced = corpus / "cicd" / "gitlab" / "docs-site" / ".gitlab-ci.yml"
    rsynced.write_text(_not_held_out(rsynced.read_text().replace("python:3.12-alpine", "python:3.10-alpine")))
    _backdate(rsynced, WEEKS_AGO - 86400)
    assert copied.stat().st_mtime == rsynced.stat().st_mtime + 86400 == WEEKS_AGO
    arrived = max(max(p.stat().st_mtime, p.stat().st_ctime) for p in (copied, rsynced))
    hour = hour_key(arrived)
    assert hour == hour_key(time.time()) or hour == hour_key(time.time() - 60)  # now, not weeks ago

    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = new_documents_sensor(ctx)
    assert isinstance(result, dg.SensorResult), result  # a SkipReason: the copies went unnoticed
    assert [(r.partition_key, r.job_name) for r in result.run_requests] == [(partition, "curate_sources")]
    cursor = ctx.cursor
    assert list(json.loads(cursor)["pending"]) == [hour]  # the arrival's hour, not the mtime's
    requests, cursor, summary = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    assert requests == [] and "1 hours waiting" in summary
    time.sleep(0.01)
    assert dg.materialize([source_documents], partition_key=partition, resources=resources,
                          instance=instance).success
    requests, cursor, _ = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    assert [(r.partition_key, r.job_name) for r in requests] == [(hour, "refresh_realtime_adapter")]

    # the curated snapshot dates both by arrival, and keeps their mtimes as they are
    snapshot = resources["store"].load_manifest(dg.AssetKey(["corpora", "source_documents"]), partition)
    docs = {d.path: d for d in load_source_result(snapshot.path).documents}
    start = dt.datetime.strptime(hour, "%Y-%m-%d-%H:00").replace(tzinfo=UTC).timestamp()
    in_hour = {p for p, d in docs.items() if start <= d.arrived < start + 3600}
    assert in_hour == {"gitlab/restored-service/.gitlab-ci.yml", "gitlab/docs-site/.gitlab-ci.yml"}
    assert docs["gitlab/restored-service/.gitlab-ci.yml"].mtime == WEEKS_AGO
    assert all(d.arrived == d.mtime for p, d in docs.items() if p not in in_hour)  # history as it was

    res = dg.materialize([realtime_adapter, base_model.to_source_asset()], partition_key=hour,
                         resources=resources, instance=instance, selection=[realtime_adapter])
    assert res.success
    md = {k: v.value for k, v in res.asset_materializations_for_node("lora__realtime_adapter")[0].metadata.items()}
    assert md["outcome"] == "trained" and md["new_documents"] == 2


def test_old_format_cursor_is_a_baseline(tmp_path, data_root):
    from sensors.new_documents import evaluate_new_documents, hour_key

    corpus, resources, instance, spec, cache = _curated_devops(tmp_path, data_root)

    old = json.dumps({"seen": {s.name: time.time() for s in resources["corpus"].specs()}, "pending": {}})
    requests, cursor, summary = evaluate_new_documents(instance, resources["corpus"], old, cache)
    assert requests == [] and "old-format cursor" in summary and "baseline of 3 sources" in summary
    state = json.loads(cursor)
    assert "seen" not in state and set(state["files"]) == {s.name for s in resources["corpus"].specs()}
    assert len(cursor) < 40 * sum(1 for _ in corpus.rglob("*") if _.is_file()) + 200  # ~20 bytes a file

    # the newest mtime it held would hide this file; the listing does not
    copied = corpus / "cicd" / "gitlab" / "restored" / ".gitlab-ci.yml"
    copied.parent.mkdir()
    copied.write_text(NEW_PIPELINE)
    _backdate(copied)
    requests, cursor, _ = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    partition = str(dg.MultiPartitionKey({"domain": "devops_workflow", "source": spec.name}))
    assert [(r.partition_key, r.job_name) for r in requests] == [(partition, "curate_sources")]
    assert list(json.loads(cursor)["pending"]) == [hour_key(copied.stat().st_ctime)]
    # removed files drop out of the cursor; a removal alone requests nothing
    copied.unlink()
    requests, cursor, _ = evaluate_new_documents(instance, resources["corpus"], cursor, cache)
    from sensors.new_documents import cursor_listings

    assert "gitlab/restored/.gitlab-ci.yml" not in cursor_listings(cursor)[spec.name]
    assert [r.job_name for r in requests] == []


def test_curation_dates_documents_by_arrival(tmp_path):
    """First curation: mtime. Afterwards: new or changed bytes (its own or an included file's)
    arrive at max(mtime, ctime); unchanged files keep their arrival, even when touched."""
    from ossa_assets.lib.curation.pipeline import (
        CURATION_CODE_VERSION,
        CurationSettings,
        curate_source,
        load_source_result,
        save_source_result,
    )
    from ossa_assets.lib.curation.sources import SourceSpec, list_files

    assert CURATION_CODE_VERSION == "9"
    root = tmp_path / "src"
    (root / "a" / "ci").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / ".gitlab-ci.yml").write_text("include:\n  - local: /ci/test.yml\nstages: [test]\n")
    (root / "a" / "ci" / "test.yml").write_text("unit:\n  stage: test\n  script:\n    - pytest -q\n")
    (root / "b" / ".gitlab-ci.yml").write_text(NEW_PIPELINE)
    for p in root.rglob("*"):
        if p.is_file():
            _backdate(p)
    spec = SourceSpec(name="arrivals", domain="devops_workflow", kind="local", path=str(root))
    cache = tmp_path / "cache"

    def curate():
        files = list_files(spec, tmp_path)
        assert all(f.ctime >= f.mtime for f in files)
        return {d.path: d for d in curate_source(spec, files, cache, CurationSettings()).documents}

    docs = curate()
    assert {"a/.gitlab-ci.yml", "b/.gitlab-ci.yml"} <= set(docs)
    assert all(d.arrived == d.mtime == WEEKS_AGO for d in docs.values())  # the only history there is

    t0 = time.time() - 1
    (root / "c").mkdir()
    shutil.copy2(root / "b" / ".gitlab-ci.yml", root / "c" / "copied.yml")  # same bytes: a duplicate
    (root / "c" / ".gitlab-ci.yml").write_text(NEW_PIPELINE.replace("pytest -q", "pytest -x"))
    _backdate(root / "c" / ".gitlab-ci.yml")
    _backdate(root / "b" / ".gitlab-ci.yml", WEEKS_AGO - 3600)  # touched: same bytes
    docs = curate()
    assert docs["c/.gitlab-ci.yml"].mtime == WEEKS_AGO and docs["c/.gitlab-ci.yml"].arrived >= t0
    assert docs["b/.gitlab-ci.yml"].arrived == WEEKS_AGO and docs["a/.gitlab-ci.yml"].arrived == WEEKS_AGO

    # an included file changes (an old version restored): the pipeline that includes it arrived
    before = docs
    time.sleep(0.05)
    t1 = time.time() - 1
    (root / "a" / "ci" / "test.yml").write_text("unit:\n  stage: test\n  script:\n    - pytest -q -x\n")
    _backdate(root / "a" / "ci" / "test.yml")
    docs = curate()
    assert docs["a/.gitlab-ci.yml"].arrived > before["c/.gitlab-ci.yml"].arrived
    assert docs["a/.gitlab-ci.yml"].arrived >= t1
    assert "a/ci/test.yml" not in docs  # a fragment of its pipeline, whose units hold its job
    assert "pytest -q -x" in " ".join(u["text"] for u in docs["a/.gitlab-ci.yml"].units)
    assert docs["c/.gitlab-ci.yml"].arrived == before["c/.gitlab-ci.yml"].arrived

    # from the cache, arrivals stay; through a snapshot, too; older snapshots read arrived = mtime
    again = curate()
    assert {p: d.arrived for p, d in again.items()} == {p: d.arrived for p, d in docs.items()}
    out = tmp_path / "snapshot"
    out.mkdir()
    result = curate_source(spec, list_files(spec, tmp_path), cache, CurationSettings())
    save_source_result(result, out)
    assert {d.path: d.arrived for d in load_source_result(out).documents} == {p: d.arrived for p, d in docs.items()}
    with gzip.open(out / "documents.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    with gzip.open(out / "documents.jsonl.gz", "wt") as f:
        for r in rows:
            r.pop("arrived")
            f.write(json.dumps(r) + "\n")
    assert all(d.arrived == d.mtime for d in load_source_result(out).documents)
