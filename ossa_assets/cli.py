"""`ossa`: materialize the graph, serve it, and ask lineage questions.

  ossa materialize            run the whole graph (every job, every domain) on this instance
  ossa serve                  the inference server (reloads when a deployment is materialized)
  ossa run                    materialize, then serve the Dagster UI and the endpoints until Ctrl-C;
                              with CI=true: one smoke request per endpoint, then exit
  ossa lineage upstream X     the chain from an endpoint route or asset key back to its corpora
  ossa lineage downstream X   everything derived from an artifact
  ossa lineage sync|rebuild   write new (or all) materializations into the lineage graph
  ossa store stop             stop the embedded lineage graph server
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Steps share two cores: OpenMP threads that spin while waiting for a busy core made torch
# steps 2-10x slower when another step ran beside them; passive waiting costs little alone.
# Must be set before torch loads (forked step processes inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- reconstructable job pointers (execute_job runs steps in other processes, which re-import
#    the job by module path and function name) ---------------------------------------------


def _job(name: str):
    from ossa_assets.definitions import defs

    return defs.resolve_job_def(name)


def curate_sources_job():
    return _job("curate_sources")


def curate_corpora_job():
    return _job("curate_corpora")


def build_foundations_job():
    return _job("build_foundations")


def build_embeddings_job():
    return _job("build_embeddings")


def train_domain_models_job():
    return _job("train_domain_models")


def deploy_job():
    return _job("deploy")


def refresh_realtime_adapter_job():
    return _job("refresh_realtime_adapter")


_JOB_POINTERS = {
    "curate_sources": curate_sources_job,
    "curate_corpora": curate_corpora_job,
    "build_foundations": build_foundations_job,
    "build_embeddings": build_embeddings_job,
    "train_domain_models": train_domain_models_job,
    "deploy": deploy_job,
    "refresh_realtime_adapter": refresh_realtime_adapter_job,
}


@dataclass
class MaterializeSummary:
    planned_assets: int = 0
    materialized: int = 0
    checks_total: int = 0  # blocking checks (gates) planned
    checks_passed: int = 0
    informational_total: int = 0  # checks the profile reports without gating on them
    informational_passed: int = 0
    failed_runs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.failed_runs
            and self.materialized == self.planned_assets
            and self.checks_passed == self.checks_total
        )

    def line(self) -> str:
        line = (f"materialized {self.materialized}/{self.planned_assets} assets, "
                f"checks {self.checks_passed}/{self.checks_total} passed")
        if self.informational_total:
            line += (f" (+ {self.informational_total} informational, "
                     f"{self.informational_passed} passed)")
        return line


def _instance():
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _partition_keys(instance, partitioned_by: str | None) -> list[str | None]:
    import dagster as dg

    from ossa_assets.corpora.partitions import domain_partitions, source_partitions
    from ossa_assets.lora.partitions import hourly_partitions
    from resources import corpus_sources

    if partitioned_by == "source":
        specs = corpus_sources().specs()
        sync_source_partitions(instance, [s.name for s in specs], source_partitions.name)
        return [dg.MultiPartitionKey({"domain": s.domain, "source": s.name}) for s in specs]
    if partitioned_by == "domain":
        return list(domain_partitions.get_partition_keys())
    if partitioned_by == "hour":
        return [hourly_partitions.get_last_partition_key()]
    if partitioned_by == "embedding_model":
        from ossa_assets.embeddings.partitions import embedding_partitions

        return list(embedding_partitions.get_partition_keys())
    return [None]


def sync_source_partitions(instance, names: list[str], partitions_name: str) -> None:
    """Register configured sources as dynamic partitions (new ones only; the sensor removes)."""
    existing = set(instance.get_dynamic_partitions(partitions_name))
    new = [n for n in names if n not in existing]
    if new:
        instance.add_dynamic_partitions(partitions_name, new)


def materialize(only: list[str] | None = None, log=print, verbose: bool = False) -> MaterializeSummary:
    """Run the pipeline's jobs in order, one run per partition, on the persistent instance.

    The console shows warnings and errors only (unless verbose); every event is in the event
    log, where the UI shows it.
    """
    import dagster as dg

    from ossa_assets.definitions import defs
    from ossa_assets.jobs import PIPELINE

    instance = _instance()
    summary = MaterializeSummary()
    t0 = time.perf_counter()
    asset_graph = defs.resolve_asset_graph()
    # the summary counts gates; a check the profile reports informationally is counted apart
    blocking = {(s.asset_key, s.name): s.blocking for a in defs.assets for s in a.check_specs}
    for job, partitioned_by in PIPELINE:
        if only and job.name not in only:
            continue
        job_def = defs.resolve_job_def(job.name)
        keys = [k for k in job_def.asset_layer.selected_asset_keys]
        check_keys = [c for c in asset_graph.asset_check_keys if c.asset_key in keys]
        gates = {c for c in check_keys if blocking.get((c.asset_key, c.name), True)}
        job_failed = False
        for partition in _partition_keys(instance, partitioned_by):
            tags = {"dagster/partition": partition} if partition else {}
            label = f"{job.name}" + (f"[{partition}]" if partition else "")
            summary.planned_assets += len(keys)
            summary.checks_total += len(gates)
            summary.informational_total += len(check_keys) - len(gates)
            t_run = time.perf_counter()
            result = dg.execute_job(
                dg.reconstructable(_JOB_POINTERS[job.name]),
                instance=instance,
                tags=tags,
                run_config=None if verbose else {"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            mats = {e.asset_key for e in result.get_asset_materialization_events()}
            evals = result.get_asset_check_evaluations()
            summary.materialized += len(mats & set(keys))
            gate_evals = [e for e in evals if dg.AssetCheckKey(e.asset_key, e.check_name) in gates]
            summary.checks_passed += sum(1 for e in gate_evals if e.passed)
            summary.informational_passed += sum(1 for e in evals if e.passed) - sum(1 for e in gate_evals if e.passed)
            status = "ok" if result.success else "FAILED"
            log(
                f"{label}: {status} in {time.perf_counter() - t_run:.1f}s "
                f"({len(mats)} assets, {sum(e.passed for e in gate_evals)}/{len(gates)} checks"
                + (f", {len(evals) - len(gate_evals)} informational" if len(evals) > len(gate_evals) else "") + ")"
            )
            for e in evals:
                if not e.passed and e not in gate_evals:
                    log(f"  informational check failed (not a gate in this profile): "
                        f"{e.asset_key.to_user_string()}:{e.check_name}")
            if not result.success:
                job_failed = True
                summary.failed_runs.append(f"{label} (run {result.run_id})")
                for e in gate_evals:
                    if not e.passed:
                        log(f"  check failed: {e.asset_key.to_user_string()}:{e.check_name}")
        if job_failed:
            break  # downstream jobs would read stale or missing artifacts
    summary.seconds = time.perf_counter() - t0
    try:
        stats = lineage_sync()
        log(f"lineage: {stats.materializations} materializations recorded ({stats.nodes} nodes)")
    except Exception as e:  # lineage must not hide the materialization result
        log(f"lineage sync failed: {type(e).__name__}: {e}")
        summary.failed_runs.append("lineage sync")
    return summary


# -- lineage -----------------------------------------------------------------------------------


def _graph_store():
    from resources import build_resources

    return build_resources()["graph"].open()


def _cursor_path() -> Path:
    from resources import data_root

    return data_root() / "graph" / "sync_cursor"


def lineage_sync(rebuild: bool = False):
    from ossa_assets.definitions import ASSET_KEYS
    from ossa_assets.lineage import recorder

    instance = _instance()
    store = _graph_store()
    try:
        cursor_file = _cursor_path()
        if rebuild:
            stats = recorder.rebuild(instance, store, ASSET_KEYS)
        else:
            after = int(cursor_file.read_text()) if cursor_file.exists() else 0
            stats = recorder.sync(instance, store, ASSET_KEYS, after)
        cursor_file.parent.mkdir(parents=True, exist_ok=True)
        cursor_file.write_text(str(stats.cursor))
        return stats
    finally:
        store.close()


def lineage_check():
    """The drift report of the lineage graph against Dagster's event log, asset graph and MLflow."""
    from ossa_assets.definitions import ASSET_KEYS, defs
    from ossa_assets.lineage import consistency
    from resources import build_resources

    store = _graph_store()
    try:
        client = build_resources()["mlflow"].client()
        return consistency.check(_instance(), store, defs.resolve_asset_graph(), ASSET_KEYS,
                                 consistency.mlflow_checker(client))
    finally:
        store.close()


def _cmd_lineage(args: argparse.Namespace) -> int:
    from ossa_assets.lineage import queries

    if args.action in ("sync", "rebuild"):
        stats = lineage_sync(rebuild=args.action == "rebuild")
        print(
            f"{stats.materializations} materializations -> {stats.nodes} nodes, {stats.edges} edges "
            f"({stats.skipped_edges} skipped)"
        )
        return 0
    if args.action == "check":
        report = lineage_check()
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
        return 1 if report.drift else 0
    if not args.target:
        print("error: give an endpoint route (/api-model/v1), an asset key, a lineage id, "
              "doc:<content hash> or source:<name>", file=sys.stderr)
        return 2
    store = _graph_store()
    try:
        lineage_sync()  # answer from an up-to-date graph
        root_id = queries.resolve(store, args.target, args.partition)
        if root_id is None:
            print(f"error: nothing in the lineage graph matches {args.target!r}", file=sys.stderr)
            return 1
        if args.action == "diff":
            other = queries.resolve(store, args.other, args.partition) if args.other else queries.previous(store, root_id)
            if other is None:
                print(f"error: nothing to compare {root_id} with" + (f" ({args.other!r} not found)" if args.other else
                      " (no earlier materialization; name a second version)"), file=sys.stderr)
                return 1
            d = queries.diff(store, other, root_id, sample=args.documents)
            print(json.dumps(d, indent=2, default=str) if args.json else queries.render_diff(d))
            return 0
        if args.action == "upstream":
            lin = store.upstream(root_id, documents=args.documents)
        else:
            lin = store.downstream(root_id)
        if args.target.startswith("/") and not args.json:
            print(f"endpoint {args.target} serves:")
        if args.json:
            print(json.dumps(queries.as_json(lin), indent=2, default=str))
        else:
            print(queries.render(lin, direction=args.action))
        return 0
    finally:
        store.close()


# -- serving -------------------------------------------------------------------------------------


def _state_path() -> Path:
    from resources import data_root

    return data_root() / "serving" / "deployment.json"


def _serve(host: str, port: int) -> None:
    import uvicorn

    from ossa_assets.serving.server import create_app

    app = create_app(_state_path(), cache_url=os.environ.get("OSSA_REDIS_URL"), graph_factory=_graph_store)
    uvicorn.run(app, host=host, port=port, log_level="info")


def smoke_test(log=print) -> tuple[int, int]:
    """One request per endpoint against an in-process server over real HTTP."""
    import socket
    import threading

    import httpx
    import uvicorn

    from ossa_assets.serving.server import ROUTES, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(_state_path(), graph_factory=_graph_store), host="127.0.0.1", port=port,
                       log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    ok = total = 0
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        with httpx.Client(base_url=base, timeout=60) as client:
            probes: list[tuple[str, str, Any]] = [("GET", "/health", None), ("GET", "/v1/models", None)]
            probes += [("POST", r, {"prompt": "openapi: 3.0.0\ninfo:", "max_new_tokens": 8}) for r in ROUTES]
            probes.append(("POST", "/v1/search", {"query": "list pets by tag", "limit": 3}))
            probes.append(("POST", "/v1/search", {"query": "run the unit tests", "index": "capability", "limit": 3}))
            probes.append(("POST", "/v1/search", {"query": "paths: get: responses", "index": "code", "limit": 3}))
            probes.append(("GET", "/v1/lineage/upstream?id=/api-model/v1&documents=3", None))
            for method, path, body in probes:
                total += 1
                r = client.request(method, path, json=body)
                good = r.status_code == 200
                ok += good
                preview = json.dumps(r.json())[:140]
                log(f"  {method} {path} -> {r.status_code} {preview}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return ok, total


def _cmd_run(args: argparse.Namespace) -> int:
    import signal
    import subprocess

    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    summary = materialize()
    print(f"graph materialized in {summary.seconds:.1f}s")
    if ci:
        ok, total = smoke_test()
        print(f"smoke requests: {ok}/{total} answered 200")
        print(summary.line())
        return 0 if summary.ok and ok == total else 1
    if not summary.ok:
        print(summary.line())
        print("inspect the failed runs in the Dagster UI: make ui")
        return 1
    print(summary.line())
    ui = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", args.host, "-p", str(args.ui_port)]
    )
    print(f"Dagster UI: http://{args.host}:{args.ui_port}   endpoints: http://{args.host}:{args.port}")
    try:
        _serve(args.host, args.port)
    except KeyboardInterrupt:
        pass
    finally:
        # SIGINT, as Ctrl-C in a terminal would: `dagster dev` then stops its webserver, daemon
        # and code servers (on SIGTERM it would exit and leave them running)
        ui.send_signal(signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ossa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("materialize", help="run the whole graph")
    m.add_argument("--job", action="append", help="only these jobs (repeatable)")
    m.add_argument("--verbose", action="store_true", help="print every Dagster event")
    s = sub.add_parser("serve", help="run the inference server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    r = sub.add_parser("run", help="materialize, then serve UI + endpoints")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("--ui-port", type=int, default=3000)
    lg = sub.add_parser("lineage", help="lineage queries")
    lg.add_argument("action", choices=["upstream", "downstream", "diff", "check", "sync", "rebuild"])
    lg.add_argument("target", nargs="?",
                    help="endpoint route, asset key (stage/artifact), lineage id, doc:<hash> or source:<name>")
    lg.add_argument("other", nargs="?", help="diff: the version to compare with (default: the one before)")
    lg.add_argument("--partition", help="partition of the asset key (e.g. api_spec)")
    lg.add_argument("--documents", type=int, default=20, help="upstream/diff: documents listed (the rest counted)")
    lg.add_argument("--json", action="store_true")
    st = sub.add_parser("store", help="the embedded lineage graph server")
    st.add_argument("action", choices=["stop"])
    args = parser.parse_args(argv)

    if args.cmd == "materialize":
        summary = materialize(only=args.job, verbose=args.verbose)
        print(summary.line())
        return 0 if summary.ok else 1
    if args.cmd == "serve":
        _serve(args.host, args.port)
        return 0
    if args.cmd == "run":
        return _cmd_run(args)
    if args.cmd == "lineage":
        return _cmd_lineage(args)
    if args.cmd == "store":
        from ossa_assets.lib.graph_store import EmbeddedFalkorDB
        from resources import data_root

        EmbeddedFalkorDB(data_root() / "graph").stop()
        print("embedded graph store stopped")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
