from __future__ import annotations

import dagster as dg
from pydantic import Field

from ossa_assets.configs import profiled


class QuantizeConfigBase(dg.Config):
    """ONNX export and int8 quantization of a domain model (adapter merged)."""

    per_channel: bool = Field(default=True, description="Per-channel int8 weight scales.")
    min_top1_agreement: float = Field(
        default=0.95, description="Blocking check: int8 vs PyTorch next-token argmax agreement."
    )
    eval_blocks: int = Field(default=32, description="Validation blocks used for agreement.")
    eval_seq_len: int = Field(default=128, description="Tokens per agreement block.")


QuantizeConfig = profiled(QuantizeConfigBase, "int8_model")
