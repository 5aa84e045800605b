"""LoRA stage.

Inputs: a domain checkpoint and every domain's curated corpus (task mixing); the base model for
the real-time adapter. Outputs, each an adapter alone (`adapter_model.safetensors` +
`adapter_config.json` + tokenizer), under `<data root>/artifacts/lora/...`:
- `lora/multitask_adapter[domain]`: r64/α128/dropout 0.1 on q_proj, v_proj, gate_proj over the
  domain checkpoint, trained on a mixture of all three domains (own domain weighted up),
  logged to MLflow and registered as a version of `ossa-<domain>-adapter`.
- `lora/realtime_adapter[hour]`: warm-started from the latest earlier hour's adapter and trained
  on the documents that arrived in that hour (gradient accumulation 8, lr 1e-4); an hour without
  new documents is a recorded no-op that carries the previous adapter forward.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, gate
from ossa_assets.corpora.partitions import domain_partitions
from ossa_assets.keys import (
    BASE_MODEL,
    CURATED_CORPUS,
    DOMAIN_CHECKPOINT,
    MULTITASK_ADAPTER,
    REALTIME_ADAPTER,
    SOURCE_DOCUMENTS,
)
from ossa_assets.lib import lora as lib
from ossa_assets.lib.artifacts import Artifact, publish_versioned, sha256_json, staging_dir
from ossa_assets.lib.curation import corpus as corpora_lib
from ossa_assets.lib.finetune import load_base
from ossa_assets.lib.training import TrainSettings
from ossa_assets.lora.chain import NO_ADAPTER, WARM_START_VERSION
from ossa_assets.lora.config import AdapterConfig, RealtimeAdapterConfig
from ossa_assets.lora.partitions import HOURLY_REFRESH, hourly_partitions
from resources import GPU_POOL, gpu_pod_tags
from resources.corpus import CorpusSources
from resources.mlflow import MlflowResource
from resources.storage import ArtifactStore


def _texts(corpora: dict[str, Artifact], split: str) -> dict[str, list[str]]:
    return {
        d: [r["text"] for r in corpora_lib.load_split_texts(a.path, split)]
        for d, a in sorted(corpora.items())
    }


@artifact_asset(
    kind="Adapter",
    key=MULTITASK_ADAPTER,
    ins={
        "checkpoint": dg.AssetIn(DOMAIN_CHECKPOINT),
        "corpora": dg.AssetIn(CURATED_CORPUS, partition_mapping=dg.AllPartitionMapping()),
    },
    partitions_def=domain_partitions,
    group_name="lora",
    kinds={"pytorch", "mlflow"},
    owners=["team:ml"],
    pool=GPU_POOL,
    op_tags=gpu_pod_tags(gpus=1),
    check_specs=[gate("adapter_not_worse_than_checkpoint", MULTITASK_ADAPTER,
                      "On its domain's held-out set the adapter is not worse than the checkpoint alone.")],
)
def multitask_adapter(
    context: dg.AssetExecutionContext,
    config: AdapterConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    mlflow: MlflowResource,
    checkpoint: Artifact,
    corpora: dict,
) -> StageResult:
    """A multi-task LoRA adapter over the domain checkpoint (safetensors), registered in MLflow."""
    domain = context.partition_key
    train_texts = _texts(corpora, "train")
    all_val = _texts(corpora, "validation")
    val_texts = all_val[domain]
    weights = {
        d: (config.own_domain_weight if d == domain else config.other_domain_weight)
        for d in train_texts
    }
    settings = TrainSettings.from_config(config)
    lora = lib.LoraSettings(config.r, config.alpha, config.dropout, tuple(config.target_modules))
    parent = store.dir_for(context.asset_key, domain)
    params = {**config.model_dump(), "domain": domain, "checkpoint_version": checkpoint.data_version}
    with mlflow.start_run(context, run_name=f"adapter-{domain}") as run:
        run.log_params(params)
        with staging_dir(parent) as tmp:
            report = lib.train_adapter(
                checkpoint.path,
                train_texts,
                weights,
                val_texts,
                domain,
                tmp / "adapter",
                lora=lora,
                seq_len=config.seq_len,
                settings=settings,
                mixture_blocks=config.max_steps * config.batch_size * config.grad_accum,
                max_eval_blocks=config.max_eval_blocks,
                work_dir=tmp / "trainer",
                log_metrics=run.log_metrics,
                other_val_texts={d: t for d, t in all_val.items() if d != domain},
            )
            final, version = publish_versioned(tmp / "adapter", parent)
        run.log_metrics({f"base_{k}": v for k, v in report.base_val.items()}, step=0)
        run.log_metrics({f"adapter_{k}": v for k, v in report.adapter_val.items()}, step=settings.max_steps)
        # the adapter alone (a few MB even at 13B): never the base weights (mlflow#9256)
        run.log_artifacts(final, "adapter")
        name = f"ossa-{domain}-adapter"
        adapter_loss = report.adapter_val["val_loss"]
        checkpoint_loss = report.base_val["val_loss"]
        check = dg.AssetCheckResult(
            check_name="adapter_not_worse_than_checkpoint",
            passed=adapter_loss <= checkpoint_loss * (1 + config.max_regression),
            description=f"held-out loss {adapter_loss:.4f} vs checkpoint {checkpoint_loss:.4f} "
            f"(tolerance {config.max_regression:.1%})",
            metadata={"adapter_val_loss": adapter_loss, "checkpoint_val_loss": checkpoint_loss},
        )
        model_version = None
        if run.record_gates([check]):
            model_version = run.register(
                name,
                source=f"{run.artifact_uri}/adapter",
                tags={"dagster_run_id": context.run.run_id, "data_version": version,
                      "checkpoint_version": checkpoint.data_version, "adapter_path": str(final),
                      "checkpoint_path": checkpoint.path, "val_loss": f"{adapter_loss:.6f}"},
            )
            promotion = _promote(run.client, name, model_version, domain, adapter_loss, val_texts, config)
        else:
            # failed its gate: a FAILED MLflow run, no registered version, so no release can name it
            promotion = f"not registered: blocking check failed ({check.description})"
        context.log.info(f"{name}: {promotion}")
    return StageResult(
        Artifact(
            kind="Adapter",
            path=str(final),
            data_version=version,
            meta={
                "domain": domain,
                "name": f"ossa-{domain}-adapter-{version[:12]}",  # content-versioned, never reused
                "mlflow_run_id": run.run_id,
                "registered_model": f"ossa-{domain}-adapter",
                "model_version": model_version,
                "mixture": report.mixture,
                "promotion": promotion,
            },
        ),
        metadata={
            "adapter_val_loss": dg.FloatMetadataValue(round(report.adapter_val["val_loss"], 4)),
            "checkpoint_val_loss": dg.FloatMetadataValue(round(report.base_val["val_loss"], 4)),
            "trainable_parameters": report.trainable_parameters,
            "total_parameters": report.total_parameters,
            "task_blocks": dg.JsonMetadataValue(report.mixture),
            "train_seconds": dg.FloatMetadataValue(round(report.train_seconds, 2)),
            "registered_model": f"ossa-{domain}-adapter v{model_version}" if model_version else "not registered",
            "per_domain_val_loss": dg.JsonMetadataValue(
                {d: {k: round(v, 4) for k, v in r.items()} for d, r in (report.per_domain or {}).items()}),
            "promotion": promotion,
        },
        checks=[check],
    )


def _promote(client, name: str, version: str, domain: str, loss: float, val_texts: list[str], config) -> str:
    """The offline judgement of a registered version (it passed its gate): eligible for the
    release if it is not worse than the live champion on today's held-out documents
    (lib.promotion). No alias moves here: `champion`/`challenger` mirror the route's release
    and move only with it (serving/release), so MLflow cannot disagree with what is served."""
    from ossa_assets.lib.promotion import CHAMPION, ELIGIBLE_TAG, decide
    from resources.mlflow import registry_alias_version

    champion = registry_alias_version(client, name, CHAMPION)
    champion_loss = None
    if champion is not None and str(champion.version) != str(version):
        tags = champion.tags or {}
        if Path(tags.get("adapter_path", "")).is_dir() and Path(tags.get("checkpoint_path", "")).is_dir():
            # the champion re-evaluated on today's held-out documents: a like-for-like comparison
            champion_loss = lib.heldout_loss(
                tags["checkpoint_path"], tags["adapter_path"], val_texts, domain,
                seq_len=config.seq_len, max_blocks=config.max_eval_blocks)
        else:  # its files are gone: fall back to the loss it recorded when it was registered
            champion_loss = float(tags.get("val_loss", "nan"))
    decision = decide(True, loss, champion_loss, config.promotion_tolerance)
    reason = decision.reason + (f" (champion v{champion.version})" if champion_loss is not None else "")
    client.set_model_version_tag(name, version, ELIGIBLE_TAG, "true" if decision.promote else "false")
    client.set_model_version_tag(name, version, "promotion", reason)
    verdict = "eligible for release" if decision.promote else "not eligible for release"
    return f"v{version} {verdict}: {reason}"


def _latest_earlier_hour(store: ArtifactStore, before: str) -> Artifact | None:
    """The most recent materialized hour before `before` (the warm start), if any."""
    manifests = store.path("manifests", *REALTIME_ADAPTER.path)
    if not manifests.is_dir():
        return None
    earlier = sorted(p.stem for p in manifests.glob("*.json") if p.stem < before)
    for key in reversed(earlier):
        art = Artifact.from_json((manifests / f"{key}.json").read_text())
        if art.path and Path(art.path).exists():
            return art
    return None


def hour_documents(store: ArtifactStore, corpus: CorpusSources, start: float, end: float):
    """The curated documents of every configured source whose file arrived in [start, end).

    Arrival is the curation's (`CuratedDoc.arrived`): a file new or changed since its source's
    previous curation arrived at max(mtime, ctime), so one copied in with an old mtime (cp -p,
    rsync -a, git) belongs to the hour it was copied in; a source's first curation dates its
    files by mtime. Read from each source's curated snapshot (parsed, validated, secret-scrubbed
    per file), not from the merged domain corpus: the hourly path then waits for one curation
    run, not two, which is what keeps a dropped file -> adapter under a minute. Held-out test
    documents are never trained on: the content-hash split with the fractions the domain's
    corpus was built with (its artifact records them; the defaults before a corpus exists).
    """
    from ossa_assets.corpora.config import CuratedCorpusConfig
    from ossa_assets.lib.curation import pipeline

    default = CuratedCorpusConfig()
    fractions: dict[str, tuple[float, float]] = {}
    for d in {s.domain for s in corpus.specs()}:
        art = store.load_manifest(CURATED_CORPUS, d)
        meta = art.meta if art else {}
        fractions[d] = (float(meta.get("validation_fraction", default.validation_fraction)),
                        float(meta.get("test_fraction", default.test_fraction)))
    rows, snapshots = [], []
    for spec in corpus.specs():
        key = dg.MultiPartitionKey({"domain": spec.domain, "source": spec.name})
        art = store.load_manifest(SOURCE_DOCUMENTS, str(key))
        if art is None or not art.path:
            continue
        snapshots.append(art)
        for d in pipeline.load_source_result(Path(art.path)).documents:
            if start <= d.arrived < end and corpora_lib.split_for(d.doc_id, *fractions[spec.domain]) != "test":
                rows.append({"domain": d.domain, "text": d.text, "doc_id": d.doc_id})
    return rows, snapshots


@artifact_asset(
    kind="Adapter",
    key=REALTIME_ADAPTER,
    ins={"base": dg.AssetIn(BASE_MODEL)},
    # hour h is computed from hour h-1: declared so Dagster orders backfills and marks later
    # hours stale when an earlier one changes; source documents are read per source (above)
    deps=[dg.AssetDep(REALTIME_ADAPTER, partition_mapping=dg.TimeWindowPartitionMapping(-1, -1)),
          dg.AssetDep(SOURCE_DOCUMENTS, partition_mapping=dg.AllPartitionMapping())],
    partitions_def=hourly_partitions,
    automation_condition=HOURLY_REFRESH,
    group_name="lora",
    kinds={"pytorch"},
    owners=["team:ml"],
    pool=GPU_POOL,
    op_tags=gpu_pod_tags(gpus=1),
)
def realtime_adapter(
    context: dg.AssetExecutionContext,
    config: RealtimeAdapterConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    corpus: CorpusSources,
    base: Artifact,
) -> StageResult:
    """The hourly real-time adapter: previous hour's adapter trained on this hour's new documents."""
    window = context.partition_time_window
    rows, snapshots = hour_documents(store, corpus, window.start.timestamp(), window.end.timestamp())
    previous = _latest_earlier_hour(store, context.partition_key)
    derived = [previous.lineage_id] if previous else []
    if not rows:
        # a quiet hour: nothing to learn, carry the previous adapter forward unchanged
        context.log.info(f"no documents arrived in {context.partition_key}: no-op")
        return StageResult(
            Artifact(
                kind="Adapter",
                path=previous.path if previous else "",
                data_version=previous.data_version if previous else NO_ADAPTER,
                derived_from=derived,
                meta={"new_documents": 0, "warm_start": previous.lineage_id if previous else None},
            ),
            metadata={"new_documents": 0, "outcome": "no-op: no new documents this hour",
                      WARM_START_VERSION: previous.data_version if previous else ""},
        )
    derived += [a.lineage_id for a in snapshots if a.lineage_id]
    # the lineage graph draws these as TRAINED_ON: the documents this hour learned from
    trained_on = [a.lineage_id for a in snapshots if a.lineage_id]
    # Quiet: an hour whose inputs (its documents, the warm start, the base, the config) are
    # those of its last materialization is not trained again; it keeps its weights and data
    # version, so later hours do not turn stale. (The automation materializes the hour that
    # just ended at five past: on the same documents that is this branch, not a new version.)
    inputs = sha256_json({"documents": sorted(r["doc_id"] for r in rows), "base": base.data_version,
                          "warm_start": previous.data_version if previous else None,
                          "config": config.model_dump()})
    last = store.load_manifest(REALTIME_ADAPTER, context.partition_key)
    if last is not None and last.meta.get("inputs") == inputs and last.path and Path(last.path).is_dir():
        context.log.info(f"{context.partition_key}: inputs unchanged since its last materialization: not retrained")
        return StageResult(
            Artifact(kind="Adapter", path=last.path, data_version=last.data_version, derived_from=derived,
                     meta={**last.meta, "trained_on": trained_on}),
            metadata={"new_documents": len(rows),
                      "outcome": f"unchanged: the same {len(rows)} documents, warm start, base and config "
                                 "as its last materialization (not retrained)",
                      WARM_START_VERSION: previous.data_version if previous else "",
                      "warm_started_from": previous.partition if previous else "cold start"},
        )
    by_domain: dict[str, list[str]] = {}
    for r in rows:
        by_domain.setdefault(r["domain"], []).append(r["text"])
    settings = TrainSettings.from_config(config)
    parent = store.dir_for(context.asset_key, context.partition_key)
    val_domain = max(by_domain, key=lambda d: len(by_domain[d]))
    with staging_dir(parent) as tmp:
        report = lib.train_adapter(
            base.path,
            by_domain,
            {d: 1.0 for d in by_domain},
            by_domain[val_domain],
            val_domain,
            tmp / "adapter",
            lora=lib.LoraSettings(config.r, config.alpha, config.dropout, tuple(config.target_modules)),
            seq_len=config.seq_len,
            settings=settings,
            mixture_blocks=config.max_steps * config.batch_size * config.grad_accum,
            max_eval_blocks=16,
            work_dir=tmp / "trainer",
            warm_start_dir=previous.path if previous else None,
            base_loader=load_base,
        )
        (tmp / "adapter" / "ossa_hour.json").write_text(
            json.dumps({"hour": context.partition_key, "documents": len(rows),
                        "warm_start": previous.lineage_id if previous else None})
        )
        final, version = publish_versioned(tmp / "adapter", parent)
    return StageResult(
        Artifact(
            kind="Adapter",
            path=str(final),
            data_version=version,
            derived_from=derived,
            meta={
                "new_documents": len(rows),
                "warm_start": previous.lineage_id if previous else None,
                "trained_on": trained_on,
                "name": f"ossa-realtime-{version[:12]}",
                "hour": context.partition_key,
                "inputs": inputs,  # what it was trained from: the same again is not retrained
            },
        ),
        metadata={
            "new_documents": len(rows),
            "outcome": "trained",
            WARM_START_VERSION: previous.data_version if previous else "",
            "warm_started_from": previous.partition if previous else "cold start",
            "hour_docs_loss_before": dg.FloatMetadataValue(round(report.base_val["val_loss"], 4)),
            "hour_docs_loss_after": dg.FloatMetadataValue(round(report.adapter_val["val_loss"], 4)),
            "processed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
