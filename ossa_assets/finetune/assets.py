"""Finetune stage.

Inputs: every domain's curated corpus. Outputs:
- `finetune/base_model`: a tokenizer trained on all curated training text plus a Llama initialised
  from config (tiny), or a local pretrained checkpoint's tokenizer and a pointer to its weights
  (production); `<data root>/artifacts/finetune/base_model/_/<version>/`.
- `finetune/domain_checkpoint[domain]`: the base fully fine-tuned on one domain with the HF
  Trainer, saved as safetensors + tokenizer, tracked in MLflow and registered as a version of
  `ossa-<domain>-checkpoint`. Gate: validation loss below the untrained model's (blocking).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, blocking_names, gate
from ossa_assets.corpora.partitions import domain_partitions
from ossa_assets.finetune.config import BaseModelConfig, FinetuneConfig, TokenizeConfig
from ossa_assets.keys import BASE_MODEL, CURATED_CORPUS, DOMAIN_CHECKPOINT, TOKENIZED_CORPUS
from ossa_assets.lib import finetune as lib
from ossa_assets.lib import train_job
from ossa_assets.lib.artifacts import Artifact, publish_dir, publish_versioned, sha256_json, staging_dir
from ossa_assets.lib.curation import corpus as corpora_lib
from ossa_assets.lib.train_job import TrainJobSpec
from ossa_assets.lib.training import TrainSettings
from resources import GPU_POOL, gpu_pod_tags
from resources.mlflow import MlflowResource
from resources.storage import ArtifactStore


@artifact_asset(
    kind="BaseModel",
    key=BASE_MODEL,
    ins={"corpora": dg.AssetIn(CURATED_CORPUS)},
    group_name="finetune",
    kinds={"pytorch", "huggingface"},
    owners=["team:ml"],
)
def base_model(
    context: dg.AssetExecutionContext,
    config: BaseModelConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    corpora: dict,
) -> StageResult:
    """The causal-LM base: tokenizer + Llama weights (or a pointer to a local pretrained checkpoint)."""
    texts = []
    for domain in sorted(corpora):
        texts.extend(r["text"] for r in corpora_lib.load_split_texts(corpora[domain].path, "train"))
    arch = {
        k: getattr(config, k)
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        )
    }
    parent = store.dir_for(context.asset_key)
    with staging_dir(parent) as tmp:
        info = lib.build_base(
            tmp,
            texts,
            pretrained_path=config.pretrained_path,
            vocab_size=config.vocab_size,
            arch=arch,
            tokenizer_max_chars=config.tokenizer_max_chars,
            seed=config.seed,
        )
        final, version = publish_versioned(tmp, parent)
    context.log.info(f"base model {info} at {final}")
    return StageResult(
        Artifact(kind="BaseModel", path=str(final), data_version=version, meta=info),
        metadata={k: v for k, v in info.items() if isinstance(v, (int, str))},
    )


TOKENIZE_CODE_VERSION = "1"  # bump when packing changes: part of the cache key


@artifact_asset(
    kind="Dataset",
    key=TOKENIZED_CORPUS,
    ins={"base": dg.AssetIn(BASE_MODEL), "corpus": dg.AssetIn(CURATED_CORPUS)},
    partitions_def=domain_partitions,
    group_name="finetune",
    kinds={"huggingface"},
    owners=["team:ml"],
)
def tokenized_corpus(
    context: dg.AssetExecutionContext,
    config: TokenizeConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    base: Artifact,
    corpus: Artifact,
) -> StageResult:
    """A domain's curated train/validation text as packed token blocks (Arrow), cached by inputs."""
    domain = context.partition_key
    key = sha256_json({"base": base.data_version, "corpus": corpus.data_version,
                       "config": config.model_dump(), "code": TOKENIZE_CODE_VERSION})
    parent = store.dir_for(context.asset_key, domain)
    final = parent / key[:16]
    cached = final.exists()
    if not cached:
        with staging_dir(parent) as tmp:
            lib.tokenize_corpus(
                base.path,
                {split: [r["text"] for r in corpora_lib.load_split_texts(corpus.path, split)]
                 for split in lib.TOKENIZED_SPLITS},
                domain,
                tmp,
                seq_len=config.seq_len,
                max_eval_blocks=config.max_eval_blocks,
            )
            publish_dir(tmp, final)
    info = json.loads((final / "ossa_tokenized.json").read_text())
    from datasets import load_from_disk

    sizes = {split: len(ds) for split, ds in load_from_disk(str(final)).items()}
    return StageResult(
        Artifact(kind="Dataset", path=str(final), data_version=key,
                 meta={"domain": domain, "seq_len": info["seq_len"], "blocks": sizes}),
        metadata={
            "train_blocks": sizes["train"],
            "validation_blocks": sizes["validation"],
            "seq_len": info["seq_len"],
            "train_tokens": sizes["train"] * info["seq_len"],
            "from_cache": cached,
        },
    )


def _checks(config, report: dict, validity) -> list[dg.AssetCheckResult]:
    before, after = report["initial_val"]["val_loss"], report["final_val"]["val_loss"]
    acc = report["final_val"]["val_token_accuracy"]
    return [
        dg.AssetCheckResult(
            check_name="val_loss_below_untrained", passed=after < before,
            description=f"validation loss {after:.4f} vs untrained {before:.4f}",
            metadata={"val_loss": after, "untrained_val_loss": before},
        ),
        dg.AssetCheckResult(
            check_name="val_loss_threshold", passed=after <= config.max_val_loss,
            description=f"validation loss {after:.4f}, threshold {config.max_val_loss}",
            metadata={"val_loss": after, "max_val_loss": config.max_val_loss},
        ),
        dg.AssetCheckResult(
            check_name="token_accuracy_threshold", passed=acc >= config.min_token_accuracy,
            description=f"next-token accuracy {acc:.4f}, threshold {config.min_token_accuracy}",
            metadata={"val_token_accuracy": acc, "min_token_accuracy": config.min_token_accuracy},
        ),
        dg.AssetCheckResult(
            check_name="format_validity_threshold", passed=validity.rate >= config.min_format_validity,
            description=f"{validity.rate:.3f} of {validity.samples} sampled documents valid, "
            f"threshold {config.min_format_validity}",
            metadata={"format_validity": validity.rate, "reasons": dg.JsonMetadataValue(validity.reasons)},
        ),
    ]


CHECKPOINT_CHECKS = [
    ("val_loss_below_untrained", "Fine-tuning must lower validation loss below the untrained model's."),
    ("val_loss_threshold", "Validation loss at most `max_val_loss` (config)."),
    ("token_accuracy_threshold", "Next-token accuracy on held-out documents at least `min_token_accuracy`."),
    ("format_validity_threshold", "Share of sampled generations the domain's curator accepts."),
]
CHECKPOINT_GATES = [gate(name, DOMAIN_CHECKPOINT, why) for name, why in CHECKPOINT_CHECKS]
BLOCKING = blocking_names(CHECKPOINT_GATES)  # the profile may report some checks without gating


@artifact_asset(
    kind="Checkpoint",
    key=DOMAIN_CHECKPOINT,
    ins={"base": dg.AssetIn(BASE_MODEL), "tokenized": dg.AssetIn(TOKENIZED_CORPUS)},
    partitions_def=domain_partitions,
    group_name="finetune",
    kinds={"pytorch", "mlflow"},
    owners=["team:ml"],
    pool=GPU_POOL,
    op_tags=gpu_pod_tags(gpus=8, cpu="32", memory="400Gi"),
    check_specs=CHECKPOINT_GATES,
)
def domain_checkpoint(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    mlflow: MlflowResource,
    base: Artifact,
    tokenized: Artifact,
) -> StageResult:
    """A per-domain fine-tuned causal LM (safetensors + tokenizer), evaluated and registered in MLflow.

    Training checkpoints go to a work directory keyed by the inputs and config: a killed step
    leaves them there and the next materialization resumes from the newest complete one.
    """
    domain = context.partition_key
    settings = TrainSettings.from_config(config)
    params = {**config.model_dump(), "domain": domain, "base_version": base.data_version,
              "tokenized_version": tokenized.data_version, "seq_len": tokenized.meta.get("seq_len")}
    attempt_key = sha256_json(params)[:16]
    work = store.path("work", *DOMAIN_CHECKPOINT.path, domain, attempt_key)
    work.mkdir(parents=True, exist_ok=True)
    parent = store.dir_for(context.asset_key, domain)
    with mlflow.start_run(context, run_name=f"finetune-{domain}") as run:
        run.log_params(params)
        with staging_dir(parent) as tmp:
            spec = TrainJobSpec(
                base_dir=base.path, tokenized_dir=tokenized.path, domain=domain,
                out_dir=str(tmp / "model"), work_dir=str(tmp / "trainer"),
                checkpoint_dir=str(work / "checkpoints"), report_path=str(tmp / "report.json"),
                settings=settings.to_dict(),
            )
            if config.nproc_per_node > 1:
                context.log.info(f"launching torchrun with {config.nproc_per_node} processes")
                report = train_job.launch(spec, tmp / "spec.json", config.nproc_per_node, work / "torchrun.log")
                for step, loss in enumerate(report["step_losses"], start=report["resumed_from_step"] + 1):
                    run.log_metrics({"train_loss": loss}, step)
            else:
                report = asdict(train_job.run(spec, log_metrics=run.log_metrics))
            if report["resumed_from_step"]:
                context.log.info(f"resumed from the checkpoint at step {report['resumed_from_step']}")
            model_dir = tmp / "model"
            from ossa_assets.lib import modeling
            from ossa_assets.lib.evaluation import format_validity, loss_curve_svg

            model = modeling.load_causal_lm(model_dir).to(modeling.best_device())
            validity = format_validity(
                model, modeling.load_tokenizer(model_dir), domain,
                samples=config.generation_samples, max_new_tokens=config.max_new_tokens, seed=config.seed,
            )
            del model
            (model_dir / "ossa_train_report.json").write_text(json.dumps(
                {**report, "format_validity": asdict(validity), "params": params}, indent=2, default=str))
            (model_dir / "ossa_loss_curve.svg").write_text(loss_curve_svg(
                report["step_losses"], f"{domain} fine-tune: train loss per step"))
            # report and picture hold timings: keep them out of the content hash so identical
            # weights get the identical version
            final, version = publish_versioned(
                model_dir, parent, exclude=("ossa_train_report.json", "ossa_loss_curve.svg"))
        run.log_metrics(report["initial_val"], step=0)  # the final values were logged at the last step
        run.log_metrics({"format_validity": validity.rate}, step=settings.max_steps)
        run.log_artifact(final / "config.json", "checkpoint")
        run.log_artifact(final / "ossa_train_report.json", "checkpoint")
        run.log_artifact(final / "ossa_loss_curve.svg", "checkpoint")
        # the gates decide before MLflow does: a failed check ends the run FAILED, unregistered
        checks = _checks(config, report, validity)
        model_version = None
        if run.record_gates(c for c in checks if c.check_name in BLOCKING):
            model_version = run.register(
                f"ossa-{domain}-checkpoint",
                source=str(final),
                tags={"dagster_run_id": context.run.run_id, "data_version": version,
                      "corpus_version": tokenized.data_version},
            )
        else:
            context.log.warning(f"ossa-{domain}-checkpoint not registered: failed {', '.join(run.failed_checks)}")
    import shutil

    # published: the resume state has served its purpose
    shutil.rmtree(work, ignore_errors=True)
    final_val = report["final_val"]
    size = sum(f.stat().st_size for f in final.iterdir() if f.is_file())
    return StageResult(
        Artifact(
            kind="Checkpoint",
            path=str(final),
            data_version=version,
            meta={
                "domain": domain,
                "mlflow_run_id": run.run_id,
                "registered_model": f"ossa-{domain}-checkpoint",
                "model_version": model_version,
                "config_hash": attempt_key,
            },
        ),
        metadata={
            "val_loss": dg.FloatMetadataValue(round(final_val["val_loss"], 4)),
            "untrained_val_loss": dg.FloatMetadataValue(round(report["initial_val"]["val_loss"], 4)),
            "val_perplexity": dg.FloatMetadataValue(round(final_val["val_perplexity"], 2)),
            "val_token_accuracy": dg.FloatMetadataValue(round(final_val["val_token_accuracy"], 4)),
            "format_validity": dg.FloatMetadataValue(round(validity.rate, 4)),
            "format_validity_reasons": dg.JsonMetadataValue(validity.reasons),
            "train_blocks": report["train_blocks"],
            "steps": settings.max_steps,
            "resumed_from_step": report["resumed_from_step"],
            "processes": report["world_size"],
            # what trained, read off the run (not the config): single | ddp | fsdp2
            "strategy": report.get("strategy", "single"),
            **({"parameter_share_per_rank": dg.JsonMetadataValue(
                {s["rank"]: round(s["local_numel"] / s["full_numel"], 4) for s in report["sharding"]
                 if s.get("full_numel")})}
               if report.get("sharding") else {}),
            "train_seconds": dg.FloatMetadataValue(round(report["train_seconds"], 2)),
            "tokens_per_second": dg.FloatMetadataValue(round(report["tokens_per_second"], 1)),
            "peak_memory_mb": dg.FloatMetadataValue(round(report["peak_memory_bytes"] / 2**20, 1)),
            "model_bytes": size,
            "parameters": report["parameters"],
            "loss_curve": dg.MetadataValue.path(str(final / "ossa_loss_curve.svg")),
            "registered_model": (f"ossa-{domain}-checkpoint v{model_version}" if model_version
                                 else f"not registered (failed {', '.join(run.failed_checks)})"),
        },
        checks=checks,
    )
