"""Run an exported causal LM with onnxruntime, and measure it against PyTorch.

`OnnxCausalLM` serves the quantize stage's engines (the inference server loads it) and
`top1_agreement` is the evaluation the int8 blocking check reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ossa_assets.lib.onnx_export import (
    _META_MAX_POSITIONS,
    OUTPUT_NAMES,
    _load_causal_lm,
    logits_module,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- runtime


def usable_providers(requested: Sequence[Any] | None = None) -> list[Any]:
    """The requested onnxruntime execution providers that this onnxruntime build has.

    Entries are names or (name, options) pairs, as InferenceSession takes them. Unavailable ones
    (CUDA or TensorRT on a CPU-only build) are dropped; CPU is always the last fallback.
    """
    import onnxruntime as ort

    def name(p):
        return p[0] if isinstance(p, tuple) else p

    available = set(ort.get_available_providers())
    chosen = [p for p in (requested or []) if name(p) in available]
    dropped = [name(p) for p in (requested or []) if name(p) not in available]
    if dropped:
        log.warning("onnxruntime lacks %s; using %s", dropped, [name(p) for p in chosen] or "CPU")
    if not any(name(p) == "CPUExecutionProvider" for p in chosen):
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxCausalLM:
    """An exported causal LM in an onnxruntime session: logits and greedy generation.

    `providers` is tried in order after dropping what this onnxruntime lacks; `self.providers`
    is what the session actually uses (ORT also falls back silently when, say, CUDA libraries
    are missing), so read that rather than what was asked for.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        providers: Sequence[Any] | None = None,
        *,
        max_positions: int | None = None,
        session_options: Any = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options, providers=usable_providers(providers)
        )
        self.providers: list[str] = self.session.get_providers()
        meta = self.session.get_modelmeta().custom_metadata_map
        if max_positions is None and _META_MAX_POSITIONS in meta:
            max_positions = int(meta[_META_MAX_POSITIONS])
        self.max_positions = max_positions

    def logits(self, input_ids, attention_mask=None):
        """Logits [batch, seq, vocab] (float32 numpy) for int token ids [batch, seq]."""
        import numpy as np

        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None, :]
        if attention_mask is None:
            mask = np.ones_like(ids)
        else:
            mask = np.asarray(attention_mask, dtype=np.int64).reshape(ids.shape)
        return self.session.run(list(OUTPUT_NAMES), {"input_ids": ids, "attention_mask": mask})[0]

    def generate(
        self, input_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None
    ) -> list[int]:
        """Greedy decoding; returns the new tokens only (an emitted eos is included, then stops).

        There is no KV cache in the graph, so each step recomputes the whole context; the context
        is left-truncated to the model's max positions so that long prompts still run.
        """
        if not input_ids:
            raise ValueError("generate needs at least one prompt token")
        tokens, new = list(input_ids), []
        for _ in range(max_new_tokens):
            context = tokens[-self.max_positions :] if self.max_positions else tokens
            nxt = int(self.logits([context])[0, -1].argmax())
            tokens.append(nxt)
            new.append(nxt)
            if eos_token_id is not None and nxt == eos_token_id:
                break
        return new


# --------------------------------------------------------------------------- evaluation


def top1_agreement(
    torch_model_dir: str | os.PathLike,
    onnx_path: str | os.PathLike,
    token_batches: list[list[int]],
    *,
    batch_size: int = 8,
    providers: Sequence[Any] | None = None,
) -> dict:
    """Share of positions where the ONNX model's next-token argmax equals PyTorch's (fp32, eval).

    Every position of every sequence counts. Sequences longer than the model's max positions are
    cut into consecutive windows of that length. Sequences are batched with right padding, and
    only real positions are compared; `max_abs_logit_diff` is over those positions too.
    `providers` go to OnnxCausalLM (the ONNX side); PyTorch runs on CPU in fp32.
    """
    import numpy as np
    import torch

    model = _load_causal_lm(torch_model_dir, dtype=torch.float32)
    wrapper = logits_module(model)
    onnx_lm = OnnxCausalLM(onnx_path, providers)
    window = onnx_lm.max_positions or getattr(model.config, "max_position_embeddings", None)
    seqs = []
    for s in token_batches:
        step = window or max(len(s), 1)
        seqs.extend(list(s[i : i + step]) for i in range(0, len(s), step))
    seqs.sort(key=len)  # similar lengths together: less padding

    agree = positions = 0
    max_diff = 0.0
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        width = max(len(s) for s in chunk)
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, s in enumerate(chunk):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        with torch.inference_mode():
            ref = wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        got = onnx_lm.logits(ids, mask)
        real = mask.astype(bool)
        agree += int((ref.argmax(-1) == got.argmax(-1))[real].sum())
        positions += int(real.sum())
        max_diff = max(max_diff, float(np.abs(ref - got)[real].max()))
    if positions == 0:
        raise ValueError("no tokens to compare")
    return {"agreement": agree / positions, "positions": positions, "max_abs_logit_diff": max_diff}
