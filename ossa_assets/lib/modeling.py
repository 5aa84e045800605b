"""Causal-LM base models: a tokenizer and a Llama, built from config or loaded from a local path.

Tiny mode trains a byte-level BPE tokenizer on the curated corpus and initialises a small Llama
from a `LlamaConfig`. Production points `pretrained_path` at a local checkpoint (llama2-13b);
both go through `from_pretrained` on a directory, so downstream stages cannot tell them apart.
Nothing here downloads: every load is `local_files_only=True` and never `trust_remote_code`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ossa_assets.lib.domains import REGISTRY

# Domain control tokens: a prompt starts with its domain's token so one tokenizer (and one
# multi-task adapter) can serve all three domains.
DOMAIN_TOKENS = {d.name: d.token for d in REGISTRY}
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", *DOMAIN_TOKENS.values()]


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int):
    """Byte-level BPE (as Llama-3/GPT-2 use): no unknown bytes, whatever the corpus holds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(DOMAIN_TOKENS.values()),
        model_max_length=model_max_length,
    )


def build_llama(tokenizer, arch: dict[str, Any], seed: int):
    """A freshly initialised LlamaForCausalLM sized by `arch` (LlamaConfig fields)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **arch,
    )
    return LlamaForCausalLM(config)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    if tok.pad_token is None:
        # Llama-2's tokenizer ships without a pad token; padding positions are masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, dtype: str = "float32", device: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype
    ]
    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, dtype=torch_dtype
    )
    if device:
        model.to(device)
    return model


def ensure_domain_tokens(tokenizer, model=None) -> int:
    """Add the domain tokens to a pretrained tokenizer that lacks them; resize embeddings."""
    missing = [t for t in DOMAIN_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
        if model is not None:
            model.resize_token_embeddings(len(tokenizer))
    return len(missing)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def best_device() -> str:
    """This process's device: under torchrun each rank owns the GPU of its LOCAL_RANK."""
    import os

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"
