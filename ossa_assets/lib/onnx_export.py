"""Merge a LoRA adapter, export a causal LM to ONNX and quantize it to int8.

The quantize stage's library: `merge_adapter` → `export_onnx` → `quantize_int8`; running and
evaluating the result is `onnx_runtime` (`OnnxCausalLM`, `top1_agreement`). Heavy imports (torch, transformers, peft, onnx, onnxruntime) happen inside functions
so that importing this module, and hence the Dagster definitions, stays cheap.

Every artifact is written into a hidden temporary directory beside its destination and renamed
into place only after it is complete and validated: a failure never leaves a half-written file.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAMES = ("logits",)

# Everything a tokenizer may be saved as; whichever of these the base checkpoint has travels with
# the merged model so that the merged directory is usable on its own.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)

# A protobuf message cannot exceed 2 GiB. Weights above this (leaving room for the graph itself)
# go to a single `<name>.data` file next to the .onnx; the tiny model stays one self-contained file.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)

# Written into the ONNX metadata so OnnxCausalLM can cap its context without the HF config.
_META_MAX_POSITIONS = "ossa.max_position_embeddings"
# "layers,kv_heads,head_dim" of a decoder exported with its KV cache (export_onnx_kv)
_META_KV = "ossa.kv_cache"


# --------------------------------------------------------------------------- atomic writes


def _tmp_sibling(dest: Path) -> Path:
    # Same directory as the destination, so the final os.replace is a rename, never a copy.
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))


@contextlib.contextmanager
def _atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temp dir; on success it replaces `dest` (an old `dest` is removed only then)."""
    tmp = _tmp_sibling(dest)
    try:
        yield tmp
        old = None
        if dest.exists():
            # A non-empty directory cannot be renamed over; move it aside first.
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old, dest)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _atomic_onnx(dest: Path) -> Iterator[Path]:
    """Yield a temp path named like `dest`; on success move it (and its .data file) into place.

    The temp file carries the final name so that the external-data location recorded inside the
    .onnx (a path relative to it) stays valid after the move.
    """
    tmp_dir = _tmp_sibling(dest)
    try:
        tmp = tmp_dir / dest.name
        yield tmp
        # The side file first, the .onnx last: when the .onnx appears its weights are there.
        sides = [p for p in tmp_dir.iterdir() if p != tmp]
        for side in sides:
            os.replace(side, dest.parent / side.name)
        os.replace(tmp, dest)
        stale = dest.with_name(dest.name + ".data")
        if not sides and stale.exists():
            stale.unlink()  # left by an earlier external-data version; would skew sizes
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _onnx_bytes(path: Path) -> int:
    """Size of a model including its external data file, if it has one."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


# --------------------------------------------------------------------------- loading


def _load_causal_lm(model_dir: str | os.PathLike, dtype: Any = "auto"):
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in model dir {model_dir}")
    # local_files_only: a typo must not turn into a hub download; use_safetensors: never unpickle.
    return AutoModelForCausalLM.from_pretrained(
        model_dir,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        dtype=dtype,
        # sdpa exports to plain MatMul/Softmax ONNX ops and matches eager numerically.
        attn_implementation="sdpa",
    ).eval()


def logits_module(model):
    """Wrap a causal LM as forward(input_ids, attention_mask) -> logits, no KV cache.

    This is exactly what export_onnx traces, so it is also the PyTorch reference to compare with.
    """
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            # Positions count real tokens only (as HF generate does), so a left-padded row gets the
            # same logits as the unpadded sequence; right padding leaves positions unchanged.
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids = position_ids.masked_fill(attention_mask == 0, 1)
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                return_dict=True,
            )
            return out.logits

    return LogitsOnly(model).eval()


# --------------------------------------------------------------------------- merge


def merge_adapter(
    model_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """Fold a peft LoRA adapter into its base model; save weights (safetensors) and tokenizer.

    The merged weights keep the checkpoint's dtype ("auto"): fp32 for the tiny model, the
    production checkpoint's half precision for llama2-13b (fp32 would need 52 GB of RAM).
    """
    from peft import PeftModel

    model_dir, adapter_dir, out_dir = Path(model_dir), Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        # peft would fall back to adapter_model.bin, a pickle: refuse instead.
        raise FileNotFoundError(f"no adapter_model.safetensors in {adapter_dir}")
    tokenizer_files = [model_dir / n for n in TOKENIZER_FILES if (model_dir / n).is_file()]
    if not tokenizer_files:
        raise FileNotFoundError(f"no tokenizer files in {model_dir}; the merged model needs one")

    base = _load_causal_lm(model_dir)
    merged = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False).merge_and_unload()
    with _atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        for f in tokenizer_files:
            shutil.copy2(f, tmp / f.name)
    return out_dir


# --------------------------------------------------------------------------- export


def export_onnx(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int | None = None,
    *,
    external_data: bool | None = None,
) -> dict:
    """Export a causal LM (fp32, no KV cache) to ONNX with the dynamo exporter.

    Inputs `input_ids`, `attention_mask` (int64 [batch, sequence]); output `logits`
    [batch, sequence, vocab]; batch and sequence are dynamic. The legacy TorchScript exporter
    cannot be used: it fails on Llama (`aten::diff`). `opset` None takes the exporter's default.

    `external_data` None decides by size: weights over ~1.8 GiB (protobuf's 2 GiB limit; any
    llama2-13b) go to one `<out_path>.data` file beside the .onnx, smaller models are one file.
    Export runs in fp32, the input quantize_int8 expects: for 13b that is ~52 GB of host RAM.
    """
    import onnx
    import torch

    out_path = Path(out_path)
    model = _load_causal_lm(model_dir, dtype=torch.float32)
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    wrapper = logits_module(model)

    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("sequence", min=1, max=max_pos or None)
    # Example sizes of 2 and 8: a size of 1 would let the tracer specialise that axis to 1.
    example = torch.ones((2, 8), dtype=torch.int64)

    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example, torch.ones_like(example)),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    if max_pos:
        program.model.metadata_props[_META_MAX_POSITIONS] = str(max_pos)
    with _atomic_onnx(out_path) as tmp:
        program.save(tmp, external_data=external)
        # Validate before the rename; a path (not a proto) lets the checker read external data.
        onnx.checker.check_model(str(tmp))
    seconds = time.perf_counter() - t0

    proto = onnx.load(str(out_path), load_external_data=False)
    return {
        "path": str(out_path),
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "bytes": _onnx_bytes(out_path),
        "external_data": external,
        "export_seconds": round(seconds, 3),
        "inputs": [i.name for i in proto.graph.input],
        "outputs": [o.name for o in proto.graph.output],
        "max_position_embeddings": max_pos or None,
    }


# --------------------------------------------------------------------------- KV-cache export


def kv_step_module(model):
    """input_ids, attention_mask (past + new), position_ids, past.{i}.key/value ->
    the last position's logits and present.{i}.key/value: the decoding step with its cache."""
    import torch
    from transformers.cache_utils import DynamicCache

    layers = model.config.num_hidden_layers

    class KVStep(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
            presents = []
            for layer in out.past_key_values.layers:
                presents += [layer.keys, layer.values]
            return (out.logits[:, -1], *presents)

    return KVStep(model).eval()


def export_onnx_kv(model_dir: str | os.PathLike, out_path: str | os.PathLike, opset: int | None = None, *,
                   external_data: bool | None = None) -> dict:
    """Export the decoding step with its KV cache (fp32) for serving: inputs `input_ids`
    [batch, new], `attention_mask` [batch, past + new], `position_ids` [batch, new] and
    `past.{i}.key` / `past.{i}.value` [batch, kv_heads, past, head_dim]; outputs the last
    position's `logits` [batch, vocab] and `present.{i}.key/value` (past + new). A prompt is
    one call with an empty past (past = 0); each new token one call with the previous presents.
    The layer count, kv heads and head size are in the model's metadata (`ossa.kv_cache`)."""
    import onnx
    import torch

    out_path = Path(out_path)
    model = _load_causal_lm(model_dir, dtype=torch.float32)
    cfg = model.config
    layers = int(cfg.num_hidden_layers)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    max_pos = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    step = kv_step_module(model)

    batch, new, total = (torch.export.Dim(n, min=1) for n in ("batch", "new", "total"))
    past = torch.export.Dim("past")  # 0 for a prompt's first call
    ids = torch.ones((2, 3), dtype=torch.int64)
    mask = torch.ones((2, 7), dtype=torch.int64)
    pos = torch.arange(4, 7).expand(2, 3).contiguous()
    cache = tuple(torch.zeros((2, kv_heads, 4, head_dim)) for _ in range(2 * layers))
    past_names = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(
            step, (ids, mask, pos, cache),
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_shapes=({0: batch, 1: new}, {0: batch, 1: total}, {0: batch, 1: new},
                            tuple({0: batch, 2: past} for _ in range(2 * layers))),
            opset_version=opset, dynamo=True, verbose=False,
        )
    program.model.metadata_props[_META_KV] = f"{layers},{kv_heads},{head_dim}"
    if max_pos:
        program.model.metadata_props[_META_MAX_POSITIONS] = str(max_pos)
    with _atomic_onnx(out_path) as tmp:
        program.save(tmp, external_data=external)
        onnx.checker.check_model(str(tmp))
    return {"path": str(out_path), "bytes": _onnx_bytes(out_path), "export_seconds": round(time.perf_counter() - t0, 3),
            "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim}


# --------------------------------------------------------------------------- quantize


def _nodes_in_modules(proto, module_names: Sequence[str]) -> list[str]:
    """Names of the nodes the dynamo exporter traced inside the given torch modules.

    The exporter records each node's module path (`pkg.torch.onnx.name_scopes`), so `lm_head`
    or `embed_tokens` can be found without relying on generated node names like `node_linear_14`.
    """
    wanted = tuple(module_names)
    found = []
    for node in proto.graph.node:
        scopes = next(
            (p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None
        )
        if scopes is None:
            continue
        for scope in ast.literal_eval(scopes):
            if any(scope == w or scope.endswith("." + w) for w in wanted):
                found.append(node.name)
                break
    return found


def quantize_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    per_channel: bool = True,
    reduce_range: bool = True,
    op_types: Sequence[str] = ("MatMul", "Gather"),
    exclude_modules: Sequence[str] = (),
    external_data: bool | None = None,
) -> dict:
    """Dynamic int8 quantization of an fp32 ONNX model (weights int8, activations at run time).

    Defaults, measured on trained tiny Llamas (top-1 agreement with PyTorch on 8k held-out
    positions, bench/bench_quantize.py): per-channel symmetric int8 weights with `reduce_range`
    (7-bit) scored 0.986 / 0.975 (150 / 600 training steps), level with plain per-tensor
    quantize_dynamic (0.987 / 0.976). Per-channel *without* reduce_range scored 0.956 / 0.931,
    under the 0.95 gate: on x86 CPUs without VNNI (AVX2, as here) the u8×s8 GEMM sums pairs of
    products in int16 and saturates when every channel uses the full int8 range; 7-bit weights
    cannot saturate. Signed symmetric weights (not u8) are what CUDA/TensorRT int8 expect.
    `op_types` quantizes the projections (MatMul) and the embedding table (Gather); attention's
    activation×activation MatMuls stay fp32 (dynamic mode quantizes MatMuls with a constant B
    only). `exclude_modules` keeps named torch modules fp32: ["lm_head"] gained ~0.003
    agreement but grew the tiny model's int8 file from 0.32 to 0.52 of fp32 (its vocab dominates;
    ~+4 % on 13b): not worth it by default, there if a production model needs it.
    ORT's `quant_pre_process` changed nothing measurable on these graphs, so it is not run.
    `external_data` None: external when the fp32 model is over ~1.8 GiB.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(onnx_path)
    fp32_bytes = _onnx_bytes(onnx_path)
    excluded: list[str] = []
    if exclude_modules:
        graph_only = onnx.load(str(onnx_path), load_external_data=False)
        excluded = _nodes_in_modules(graph_only, exclude_modules)
        if not excluded:
            raise ValueError(f"no nodes found for modules {list(exclude_modules)}")
    # Decided on the fp32 input: its int8 model is ~1/4 of it but may still pass 2 GiB (13b).
    external = fp32_bytes > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data

    t0 = time.perf_counter()
    with _atomic_onnx(out_path) as tmp:
        quantize_dynamic(
            onnx_path,
            tmp,
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            use_external_data_format=external,
        )
        onnx.checker.check_model(str(tmp))
    int8_bytes = _onnx_bytes(out_path)
    return {
        "path": str(out_path),
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "ratio": int8_bytes / fp32_bytes,
        "quantize_seconds": round(time.perf_counter() - t0, 3),
        "options": {
            "per_channel": per_channel,
            "reduce_range": reduce_range,
            "weight_type": "int8",
            "op_types": list(op_types),
            "exclude_modules": list(exclude_modules),
            "excluded_nodes": excluded,
            "external_data": external,
        },
    }
