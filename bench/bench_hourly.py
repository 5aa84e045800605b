"""Hourly refresh latency: a new file dropped into a source -> that hour's adapter materialized.

Runs the real thing: a persistent Dagster instance, `dagster-daemon run` with the project's
sensors (new_documents_sensor at its 5 s interval), the default run launcher (a process per
run) and the multiprocess executor. The corpus is curated and the base model built first; the
daemon is given time for the sensor's baseline tick; then one GitLab CI file is dropped and the
clock runs until the current hour's `lora/realtime_adapter` materialization lands (target
<= 60 s, sensor interval included). Repeats with a new file each time; prints each latency and
the median. Only a materialization that trained on the dropped file counts (outcome "trained",
at least one new document): a no-op run of the hour that happened to land first is reported and
the clock keeps running.

  python bench/bench_hourly.py [--repeat 3]

Each target is printed as `TARGET <what>: <target>; measured <x> -> MET | MISSED` (bench/verdict.py);
the bench exits 1 if any target is MISSED.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PIPELINE = "stages: [test]\nunit-{i}:\n  stage: test\n  script:\n    - pytest -q -k case{i}\n  rules:\n    - if: $CI\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ossa-bench-hourly-"))
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    corpus = work / "corpus"
    from tests.conftest import SAMPLE

    shutil.copytree(SAMPLE, corpus)
    env = {**os.environ, "DAGSTER_HOME": str(home), "OSSA_DATA_ROOT": str(work / "data"),
           "OSSA_CORPUS_ROOT": str(corpus), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    from verdict import Verdicts

    verdicts = Verdicts()
    daemon = None
    try:
        import dagster as dg

        from ossa_assets.corpora.assets import curated_corpus
        from ossa_assets.finetune.assets import base_model
        from ossa_assets.keys import REALTIME_ADAPTER
        from ossa_assets.lora.partitions import hourly_partitions
        from resources import build_resources
        from tests.conftest import curate_all

        instance = dg.DagsterInstance.get()
        resources = build_resources()
        t = time.perf_counter()
        curate_all(instance, resources)
        assert dg.materialize([base_model, curated_corpus.to_source_asset()], selection=[base_model],
                              resources=resources, instance=instance).success
        print(f"setup (curate + base model): {time.perf_counter() - t:.1f} s")
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
            cwd=ROOT, env=env, stdout=open(work / "daemon.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        time.sleep(40)  # daemon start + the sensor's baseline tick
        latencies = []
        for i in range(args.repeat):
            hour = hourly_partitions.get_last_partition_key()
            before, _ = _latest(instance, REALTIME_ADAPTER, hour)
            target = corpus / "cicd" / "gitlab" / f"dropped-{i}" / ".gitlab-ci.yml"
            target.parent.mkdir(parents=True)
            t0 = time.time()
            target.write_text(PIPELINE.format(i=i))
            seen = before
            while time.time() - t0 < args.timeout:
                ts, md = _latest(instance, REALTIME_ADAPTER, hour)
                if ts > seen and ts > t0:
                    seen = ts
                    if md.get("outcome") == "trained" and md.get("new_documents", 0) >= 1:
                        latencies.append(ts - t0)
                        print(f"drop {i}: adapter for {hour} trained on {md['new_documents']} new document(s) "
                              f"after {ts - t0:.1f} s ({_phases(instance, t0)})")
                        break
                    print(f"drop {i}: a materialization of {hour} at +{ts - t0:.1f} s did not train on it "
                          f"({md.get('outcome')}): not counted, still waiting")
                time.sleep(0.5)
            else:
                print(f"drop {i}: no adapter trained on it within {args.timeout} s (see {work / 'daemon.log'})")
            time.sleep(15)  # let the runs of this drop settle before the next
        median = statistics.median(latencies) if len(latencies) == args.repeat else None
        if median is not None:
            print(f"median latency {median:.1f} s over {len(latencies)} drops")
        verdicts.at_most(f"file dropped -> hour's adapter trained on it (median of {args.repeat})", median, 60.0, " s")
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return verdicts.report()


def _phases(instance, t0: float) -> str:
    """Where the time went: each triggered run's queue/launch delay and its duration."""
    import dagster as dg

    out = []
    for rec in reversed(instance.get_run_records(dg.RunsFilter(tags={"ossa/trigger": "new_documents"}), limit=10)):
        if rec.create_timestamp.timestamp() < t0:
            continue
        what = rec.dagster_run.job_name
        created = rec.create_timestamp.timestamp() - t0
        start = (rec.start_time or 0) - t0
        end = f"ended +{rec.end_time - t0:.1f}s" if rec.end_time else "still finishing"
        out.append(f"{what}: requested +{created:.1f}s, started +{start:.1f}s, {end}")
    return "; ".join(out)


def _latest(instance, key, partition) -> tuple[float, dict]:
    """(timestamp, metadata) of the newest materialization of the partition."""
    import dagster as dg

    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    if not recs:
        return 0.0, {}
    mat = recs[0].asset_materialization
    return recs[0].timestamp, {k: v.value for k, v in (mat.metadata if mat else {}).items()}


if __name__ == "__main__":
    sys.exit(main())
