from __future__ import annotations

from typing import Literal, Optional

import dagster as dg
from pydantic import Field, model_validator

from ossa_assets.configs import profiled


class BaseModelConfigBase(dg.Config):
    """Where the causal-LM base comes from: a local checkpoint, or a tokenizer + config built here.

    The architecture defaults are Llama-2-13B's; production sets `pretrained_path` instead.
    """

    pretrained_path: Optional[str] = Field(
        default=None,
        description="Local directory of a Hugging Face checkpoint (e.g. llama-2-13b-hf). "
        "When set, tokenizer and weights load from it; nothing is downloaded.",
    )
    vocab_size: int = Field(default=32000, description="BPE vocabulary when training a tokenizer.")
    hidden_size: int = Field(default=5120, description="LlamaConfig.hidden_size.")
    intermediate_size: int = Field(default=13824, description="LlamaConfig.intermediate_size.")
    num_hidden_layers: int = Field(default=40, description="LlamaConfig.num_hidden_layers.")
    num_attention_heads: int = Field(default=40, description="LlamaConfig.num_attention_heads.")
    num_key_value_heads: int = Field(default=40, description="LlamaConfig.num_key_value_heads.")
    max_position_embeddings: int = Field(default=4096, description="Longest context in tokens.")
    tokenizer_max_chars: int = Field(
        default=200_000_000, description="Cap on corpus characters fed to tokenizer training."
    )
    seed: int = Field(default=0, description="Initialisation seed.")

    @model_validator(mode="after")
    def _check(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


class TokenizeConfigBase(dg.Config):
    """How a domain's curated text becomes token blocks (a cached step of its own)."""

    seq_len: int = Field(default=2048, description="Tokens per packed training block.")
    max_eval_blocks: int = Field(default=200, description="Validation blocks kept for evaluation.")

    @model_validator(mode="after")
    def _check(self):
        if self.seq_len < 8 or self.max_eval_blocks < 1:
            raise ValueError("seq_len must be >= 8 and max_eval_blocks >= 1")
        return self


class FinetuneConfigBase(dg.Config):
    """Per-domain causal-LM fine-tuning (full weights), its evaluation and its blocking thresholds.

    The defaults are production's (llama-2-13b on one 8-GPU node); tiny.yaml shrinks them.
    """

    batch_size: int = Field(default=4, description="Blocks per device (per process) per step.")
    grad_accum: int = Field(default=8, description="Gradient accumulation steps.")
    learning_rate: float = Field(default=2e-5, description="Peak learning rate (cosine decay).")
    max_steps: int = Field(default=1000, description="Optimizer steps.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="bf16", description="Training precision; bf16/fp16 apply on CUDA only."
    )
    gradient_checkpointing: bool = Field(
        default=True, description="Trade compute for memory (needed for 13B)."
    )
    save_steps: int = Field(
        default=100, description="Checkpoint every N steps; a killed run resumes from the newest."
    )
    nproc_per_node: int = Field(
        default=8, description="Training processes (GPUs); above 1 the step runs torchrun."
    )
    distributed: Literal["ddp", "fsdp"] = Field(
        default="fsdp", description="How processes share the model: DDP replicas or FSDP shards."
    )
    seed: int = Field(default=0, description="Data order and dropout seed.")
    # evaluation and the blocking thresholds (the seed's production targets)
    max_val_loss: float = Field(default=1.5, description="Blocking: validation loss at most this.")
    min_token_accuracy: float = Field(
        default=0.95, description="Blocking: next-token accuracy on held-out documents (the seed's > 95 %)."
    )
    generation_samples: int = Field(default=32, description="Generations sampled for format validity.")
    max_new_tokens: int = Field(default=512, description="Tokens per sampled generation.")
    min_format_validity: float = Field(
        default=0.8, description="Blocking: share of generations the domain's curator accepts."
    )

    @model_validator(mode="after")
    def _check(self):
        if min(self.batch_size, self.grad_accum, self.max_steps, self.nproc_per_node) < 1:
            raise ValueError("batch_size, grad_accum, max_steps and nproc_per_node must be >= 1")
        if self.save_steps < 0:
            raise ValueError("save_steps must be >= 0 (0: no intermediate checkpoints)")
        if not 0 < self.learning_rate < 1:
            raise ValueError("learning_rate must be in (0, 1)")
        for name in ("min_token_accuracy", "min_format_validity"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        return self


BaseModelConfig = profiled(BaseModelConfigBase, "base_model")
FinetuneConfig = profiled(FinetuneConfigBase, "domain_checkpoint")
TokenizeConfig = profiled(TokenizeConfigBase, "tokenized_corpus")
