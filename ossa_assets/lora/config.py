from __future__ import annotations

import dagster as dg
from pydantic import Field, model_validator

from ossa_assets.configs import profiled


class _LoraFields(dg.Config):
    r: int = Field(default=64, description="LoRA rank.")
    alpha: int = Field(default=128, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(default=0.1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default=["q_proj", "v_proj", "gate_proj"], description="Modules that get adapters."
    )
    seq_len: int = Field(default=2048, description="Tokens per training block.")
    batch_size: int = Field(default=4, description="Blocks per device per step.")
    seed: int = Field(default=0, description="Sampling and dropout seed.")

    @model_validator(mode="after")
    def _check(self):
        if self.r < 1 or self.alpha < 1:
            raise ValueError("r and alpha must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        return self


class AdapterConfigBase(_LoraFields):
    """Multi-task LoRA adapter on a domain checkpoint: its own domain mixed with the others."""

    learning_rate: float = Field(default=2e-4, description="Peak learning rate.")
    grad_accum: int = Field(default=8, description="Gradient accumulation steps.")
    max_steps: int = Field(default=500, description="Optimizer steps.")
    own_domain_weight: float = Field(default=1.0, description="Mixture weight of the domain's task.")
    other_domain_weight: float = Field(
        default=0.25, description="Mixture weight of each other domain (keeps shared skills)."
    )
    max_eval_blocks: int = Field(default=200, description="Validation blocks evaluated.")
    max_regression: float = Field(
        default=0.01, description="Blocking: adapter held-out loss may exceed the checkpoint's by this share."
    )
    promotion_tolerance: float = Field(
        default=0.0, description="A challenger becomes champion if its held-out loss <= champion's x (1 + this)."
    )


class RealtimeAdapterConfigBase(_LoraFields):
    """Hourly adapter: warm-started from the previous hour, trained on that hour's documents."""

    learning_rate: float = Field(default=1e-4, description="Learning rate (small: warm start).")
    grad_accum: int = Field(default=8, description="Gradient accumulation steps.")
    max_steps: int = Field(default=50, description="Optimizer steps per hour at most.")


AdapterConfig = profiled(AdapterConfigBase, "multitask_adapter")
RealtimeAdapterConfig = profiled(RealtimeAdapterConfigBase, "realtime_adapter")
