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

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, gate
from ossa_assets.corpora.partitions import domain_partitions
from ossa_assets.finetune.config import BaseModelConfig, FinetuneConfig
from ossa_assets.keys import BASE_MODEL, CURATED_CORPUS, DOMAIN_CHECKPOINT
from ossa_assets.lib import finetune as lib
from ossa_assets.lib.artifacts import Artifact, publish_versioned, sha256_json, staging_dir
from ossa_assets.lib.curation import corpus as corpora_lib
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


@artifact_asset(
    kind="Checkpoint",
    key=DOMAIN_CHECKPOINT,
    ins={"base": dg.AssetIn(BASE_MODEL), "corpus": dg.AssetIn(CURATED_CORPUS)},
    partitions_def=domain_partitions,
    group_name="finetune",
    kinds={"pytorch", "mlflow"},
    owners=["team:ml"],
    pool=GPU_POOL,
    op_tags=gpu_pod_tags(gpus=8, cpu="32", memory="400Gi"),
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    check_specs=[
        gate(
            "val_loss_below_untrained",
            DOMAIN_CHECKPOINT,
            "Fine-tuning must lower validation loss below the untrained model's.",
        )
    ],
)
def domain_checkpoint(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    mlflow: MlflowResource,
    base: Artifact,
    corpus: Artifact,
) -> StageResult:
    """A per-domain fine-tuned causal LM (safetensors + tokenizer), registered in MLflow."""
    domain = context.partition_key
    train_texts = [r["text"] for r in corpora_lib.load_split_texts(corpus.path, "train")]
    val_texts = [r["text"] for r in corpora_lib.load_split_texts(corpus.path, "validation")]
    settings = TrainSettings.from_config(config)
    params = {**config.model_dump(), "domain": domain, "base_version": base.data_version,
              "data_version": corpus.data_version}
    parent = store.dir_for(context.asset_key, domain)
    with mlflow.start_run(context, run_name=f"finetune-{domain}") as run:
        run.log_params(params)
        with staging_dir(parent) as tmp:
            report = lib.finetune_domain(
                base.path,
                train_texts,
                val_texts,
                domain,
                tmp / "model",
                seq_len=config.seq_len,
                settings=settings,
                max_eval_blocks=config.max_eval_blocks,
                work_dir=tmp / "trainer",
                log_metrics=run.log_metrics,
            )
            (tmp / "model" / "ossa_train_report.json").write_text(
                json.dumps({**report.__dict__, "params": params}, indent=2, default=str)
            )
            model_dir = tmp / "model"
            # the report holds timings: keep it out of the content hash so identical weights
            # get the identical version
            final, version = publish_versioned(model_dir, parent, exclude=("ossa_train_report.json",))
        run.log_metrics(report.initial_val, step=0)  # the final values were logged at the last step
        run.log_artifact(final / "config.json", "checkpoint")
        run.log_artifact(final / "ossa_train_report.json", "checkpoint")
        model_version = run.register(
            f"ossa-{domain}-checkpoint",
            source=str(final),
            tags={"dagster_run_id": context.run.run_id, "data_version": version,
                  "corpus_version": corpus.data_version},
        )
    before, after = report.initial_val["val_loss"], report.final_val["val_loss"]
    check = dg.AssetCheckResult(
        check_name="val_loss_below_untrained",
        passed=after < before,
        description=f"validation loss {after:.4f} vs untrained {before:.4f}",
        metadata={"val_loss": after, "untrained_val_loss": before},
    )
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
                "config_hash": sha256_json(params)[:16],
            },
        ),
        metadata={
            "val_loss": dg.FloatMetadataValue(round(after, 4)),
            "untrained_val_loss": dg.FloatMetadataValue(round(before, 4)),
            "val_perplexity": dg.FloatMetadataValue(round(report.final_val["val_perplexity"], 2)),
            "val_token_accuracy": dg.FloatMetadataValue(round(report.final_val["val_token_accuracy"], 4)),
            "train_blocks": report.train_blocks,
            "steps": settings.max_steps,
            "train_seconds": dg.FloatMetadataValue(round(report.train_seconds, 2)),
            "tokens_per_second": dg.FloatMetadataValue(round(report.tokens_per_second, 1)),
            "parameters": report.parameters,
            "registered_model": f"ossa-{domain}-checkpoint v{model_version}",
        },
        checks=[check],
    )
