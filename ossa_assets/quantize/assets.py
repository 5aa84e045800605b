"""Quantize stage.

Inputs: a domain checkpoint and its multi-task adapter; the domain's validation documents.
Outputs under `<data root>/artifacts/quantize/...`:
- `quantize/onnx_model[domain]`: the adapter merged into the checkpoint (`merged/`, safetensors)
  and exported to ONNX (`model.onnx`, dynamo exporter: input_ids/attention_mask -> logits).
- `quantize/int8_model[domain]`: onnxruntime dynamic int8 quantization (`model.int8.onnx`) with
  the tokenizer beside it: the serving engine on CPU. (TensorRT engines are built from the same
  ONNX on GPU nodes; not available on CPU.) Gate: int8 next-token argmax agreement with the
  merged PyTorch model on validation tokens >= `min_top1_agreement` (blocking).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from ossa_assets.artifact_asset import StageResult, artifact_asset, gate
from ossa_assets.corpora.partitions import domain_partitions
from ossa_assets.keys import CURATED_CORPUS, DOMAIN_CHECKPOINT, INT8_MODEL, MULTITASK_ADAPTER, ONNX_MODEL
from ossa_assets.lib import onnx_export as lib
from ossa_assets.lib.artifacts import Artifact, publish_versioned, staging_dir
from ossa_assets.lib.curation import corpus as corpora_lib
from ossa_assets.lib.onnx_runtime import top1_agreement
from ossa_assets.quantize.config import QuantizeConfig
from resources import GPU_POOL, gpu_pod_tags
from resources.storage import ArtifactStore

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


@artifact_asset(
    kind="OnnxModel",
    key=ONNX_MODEL,
    ins={"checkpoint": dg.AssetIn(DOMAIN_CHECKPOINT), "adapter": dg.AssetIn(MULTITASK_ADAPTER)},
    partitions_def=domain_partitions,
    group_name="quantize",
    kinds={"onnx", "pytorch"},
    owners=["team:serving"],
    pool=GPU_POOL,
    op_tags=gpu_pod_tags(gpus=1),
)
def onnx_model(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    checkpoint: Artifact,
    adapter: Artifact,
) -> StageResult:
    """The domain model with its adapter merged, exported to ONNX (fp32)."""
    parent = store.dir_for(context.asset_key, context.partition_key)
    with staging_dir(parent) as tmp:
        out = tmp / "artifact"
        out.mkdir()
        lib.merge_adapter(checkpoint.path, adapter.path, out / "merged")
        info = lib.export_onnx(out / "merged", out / "model.onnx")
        # what the server runs: the decoding step with its KV cache (model.onnx stays the
        # full-sequence graph the int8 agreement check scores)
        kv = lib.export_onnx_kv(out / "merged", out / "model_kv.onnx")
        _copy_tokenizer(out / "merged", out)
        final, version = publish_versioned(out, parent)
    return StageResult(
        Artifact(kind="OnnxModel", path=str(final), data_version=version,
                 # the registry version whose aliases will mirror the release that serves it
                 meta={"domain": context.partition_key, "registered_model": adapter.meta.get("registered_model"),
                       "registry_version": adapter.meta.get("model_version")}),
        metadata={
            "onnx_bytes": info["bytes"],
            "export_seconds": dg.FloatMetadataValue(round(info["export_seconds"], 2)),
            "kv_export_seconds": dg.FloatMetadataValue(round(kv["export_seconds"], 2)),
            "opset": info["opset"],
        },
    )


@artifact_asset(
    kind="Engine",
    key=INT8_MODEL,
    ins={"onnx": dg.AssetIn(ONNX_MODEL), "corpus": dg.AssetIn(CURATED_CORPUS)},
    partitions_def=domain_partitions,
    group_name="quantize",
    kinds={"onnx"},
    owners=["team:serving"],
    check_specs=[
        gate(
            "int8_top1_agreement",
            INT8_MODEL,
            "int8 next-token argmax agrees with the PyTorch model on validation tokens.",
        )
    ],
)
def int8_model(
    context: dg.AssetExecutionContext,
    config: QuantizeConfig,  # type: ignore[valid-type]
    store: ArtifactStore,
    onnx: Artifact,
    corpus: Artifact,
) -> StageResult:
    """The int8-quantized ONNX engine and tokenizer the serving process runs."""
    from ossa_assets.lib.modeling import DOMAIN_TOKENS, load_tokenizer
    from ossa_assets.lib.training import pack_blocks

    domain = context.partition_key
    src = Path(onnx.path)
    parent = store.dir_for(context.asset_key, domain)
    with staging_dir(parent) as tmp:
        out = tmp / "artifact"
        out.mkdir()
        q = lib.quantize_int8(src / "model.onnx", out / "model.int8.onnx", per_channel=config.per_channel)
        kv_file = None
        if (src / "model_kv.onnx").is_file():  # exports made before the KV graph existed have none
            lib.quantize_int8(src / "model_kv.onnx", out / "model_kv.int8.onnx", per_channel=config.per_channel)
            kv_file = "model_kv.int8.onnx"
        _copy_tokenizer(src, out)
        final, version = publish_versioned(out, parent)

    tokenizer = load_tokenizer(final)
    val_texts = [r["text"] for r in corpora_lib.load_split_texts(corpus.path, "validation")]
    blocks = pack_blocks(
        tokenizer, val_texts, config.eval_seq_len, DOMAIN_TOKENS[domain], max_blocks=config.eval_blocks
    )
    agreement = top1_agreement(src / "merged", final / "model.int8.onnx", blocks)
    passed = agreement["agreement"] >= config.min_top1_agreement
    check = dg.AssetCheckResult(
        check_name="int8_top1_agreement",
        passed=passed,
        description=f"top-1 agreement {agreement['agreement']:.4f} over {agreement['positions']} positions "
        f"(threshold {config.min_top1_agreement})",
        metadata={"agreement": agreement["agreement"], "positions": agreement["positions"]},
    )
    return StageResult(
        Artifact(
            kind="Engine",
            path=str(final),
            data_version=version,
            meta={
                "domain": domain,
                "engine": "onnxruntime-int8",
                "model_file": "model.int8.onnx",
                "kv_model_file": kv_file,
                "top1_agreement": agreement["agreement"],
                "registered_model": onnx.meta.get("registered_model"),
                "registry_version": onnx.meta.get("registry_version"),
            },
        ),
        metadata={
            "fp32_bytes": q["fp32_bytes"],
            "int8_bytes": q["int8_bytes"],
            "size_ratio": dg.FloatMetadataValue(round(q["ratio"], 4)),
            "top1_agreement": dg.FloatMetadataValue(round(agreement["agreement"], 4)),
            "agreement_positions": agreement["positions"],
        },
        checks=[check],
    )
