"""`ossa materialize`: run the pipeline's jobs in order, one run per partition, on this instance.

Crash-safe: before it starts it recovers what a crash left behind (runs whose worker is gone,
slots nobody will free: `ossa_assets.recovery`). Ctrl-C or SIGTERM cancels the current run
cleanly (its steps are stopped, it is marked CANCELED, its slots freed) and then stops; a second
Ctrl-C exits at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ossa_assets.cli.interrupts import Interrupts

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
    recovered: list[str] = field(default_factory=list)  # what a crash had left behind
    interrupted: str | None = None  # the signal that stopped it
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.failed_runs
            and not self.interrupted
            and self.materialized == self.planned_assets
            and self.checks_passed == self.checks_total
        )

    def line(self) -> str:
        line = (f"materialized {self.materialized}/{self.planned_assets} assets, "
                f"checks {self.checks_passed}/{self.checks_total} passed")
        if self.informational_total:
            line += (f" (+ {self.informational_total} informational, "
                     f"{self.informational_passed} passed)")
        if self.interrupted:
            line += f"; stopped by {self.interrupted}"
        return line


def instance():
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _partition_keys(inst, partitioned_by: str | None) -> list[str | None]:
    import dagster as dg

    from ossa_assets.corpora.partitions import domain_partitions, source_partitions
    from ossa_assets.lora.partitions import hourly_partitions
    from resources import corpus_sources

    if partitioned_by == "source":
        specs = corpus_sources().specs()
        sync_source_partitions(inst, [s.name for s in specs], source_partitions.name)
        return [dg.MultiPartitionKey({"domain": s.domain, "source": s.name}) for s in specs]
    if partitioned_by == "domain":
        return list(domain_partitions.get_partition_keys())
    if partitioned_by == "hour":
        return [hourly_partitions.get_last_partition_key()]
    if partitioned_by == "embedding_model":
        from ossa_assets.embeddings.partitions import embedding_partitions

        return list(embedding_partitions.get_partition_keys())
    return [None]


def sync_source_partitions(inst, names: list[str], partitions_name: str) -> None:
    """Register configured sources as dynamic partitions (new ones only; the sensor removes)."""
    existing = set(inst.get_dynamic_partitions(partitions_name))
    new = [n for n in names if n not in existing]
    if new:
        inst.add_dynamic_partitions(partitions_name, new)


def materialize(only: list[str] | None = None, log=print, verbose: bool = False) -> MaterializeSummary:
    """Run the pipeline's jobs in order, one run per partition, on the persistent instance.

    The console shows warnings and errors only (unless verbose); every event is in the event
    log, where the UI shows it.
    """
    from ossa_assets import recovery
    from resources import data_root

    inst = instance()
    summary = MaterializeSummary()
    t0 = time.perf_counter()
    report = recovery.recover(inst, by="ossa materialize (crash recovery before it started)",
                              data_root=data_root())
    for line in report.lines():
        log(line)
    summary.recovered = report.lines()
    with Interrupts(log=log) as interrupts:
        try:
            _run_pipeline(inst, summary, interrupts, only, log, verbose)
        except KeyboardInterrupt:  # between runs, or while Dagster was creating one
            interrupts.note_outside_run()
        finally:
            if interrupts.signal_name:
                summary.interrupted = interrupts.signal_name
                for line in interrupts.cancel_own_runs(inst):
                    log(line)
    summary.seconds = time.perf_counter() - t0
    if summary.interrupted:
        log(f"stopped by {summary.interrupted}: no further runs started")
        interrupts.hold_if_exiting()
        return summary
    try:
        from ossa_assets.cli.lineage import lineage_sync

        stats = lineage_sync()
        log(f"lineage: {stats.materializations} materializations recorded ({stats.nodes} nodes)")
    except Exception as e:  # lineage must not hide the materialization result
        log(f"lineage sync failed: {type(e).__name__}: {e}")
        summary.failed_runs.append("lineage sync")
    return summary


def _run_pipeline(inst, summary: MaterializeSummary, interrupts: Interrupts, only, log, verbose) -> None:
    import dagster as dg

    from ossa_assets import recovery
    from ossa_assets.definitions import defs
    from ossa_assets.jobs import PIPELINE

    asset_graph = defs.resolve_asset_graph()
    # the summary counts gates; a check the profile reports informationally is counted apart
    blocking = {(s.asset_key, s.name): s.blocking
                for a in [*defs.assets, *(defs.asset_checks or [])] for s in a.check_specs}
    for job, partitioned_by in PIPELINE:
        if only and job.name not in only:
            continue
        job_def = defs.resolve_job_def(job.name)
        keys = [k for k in job_def.asset_layer.selected_asset_keys]
        check_keys = [c for c in asset_graph.asset_check_keys if c.asset_key in keys]
        gates = {c for c in check_keys if blocking.get((c.asset_key, c.name), True)}
        job_failed = False
        for partition in _partition_keys(inst, partitioned_by):
            if interrupts.signal_name:
                return
            tags = {"dagster/partition": partition} if partition else {}
            # this process orchestrates the run: recorded from the start, so a crash before the
            # executor starts is recognised too
            tags.update(recovery.worker_tags())
            tags.update(recovery.NO_DAEMON_RETRY)
            label = f"{job.name}" + (f"[{partition}]" if partition else "")
            summary.planned_assets += len(keys)
            summary.checks_total += len(gates)
            summary.informational_total += len(check_keys) - len(gates)
            t_run = time.perf_counter()
            result = dg.execute_job(
                dg.reconstructable(_JOB_POINTERS[job.name]),
                instance=inst,
                tags=tags,
                run_config=None if verbose else {"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            if interrupts.signal_name:
                log(f"{label}: {interrupts.finish_canceled(inst, result.run_id)} "
                    f"after {time.perf_counter() - t_run:.1f}s")
                return
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
            return  # downstream jobs would read stale or missing artifacts
