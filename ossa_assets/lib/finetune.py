"""Base model assembly and per-domain fine-tuning (the library side of the finetune stage)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from ossa_assets.lib import modeling
from ossa_assets.lib.training import EvalResult, MetricLogger, TrainSettings, evaluate, pack_blocks, train

BASE_POINTER = "ossa_base.json"  # names where the weights are (this dir, or a pretrained path)


def build_base(
    out_dir: Path,
    texts: Iterable[str],
    *,
    pretrained_path: str | None,
    vocab_size: int,
    arch: dict[str, Any],
    tokenizer_max_chars: int,
    seed: int,
) -> dict[str, Any]:
    """Write a base model directory: tokenizer + weights (tiny) or tokenizer + pointer (prod).

    With `pretrained_path` the tokenizer comes from the checkpoint (domain tokens added) and the
    weights stay where they are: copying 26 GB of llama2-13b per run would be waste.
    """
    out_dir = Path(out_dir)
    if pretrained_path:
        src = Path(pretrained_path)
        if not (src / "config.json").exists():
            raise FileNotFoundError(f"pretrained_path {src} has no config.json (a local HF checkpoint)")
        tokenizer = modeling.load_tokenizer(src)
        added = modeling.ensure_domain_tokens(tokenizer)
        tokenizer.save_pretrained(str(out_dir))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(src), local_files_only=True)
        (out_dir / BASE_POINTER).write_text(
            json.dumps({"weights_path": str(src.resolve()), "added_tokens": added}, indent=2)
        )
        return {
            "source": "pretrained",
            "weights_path": str(src.resolve()),
            "vocab_size": len(tokenizer),
            "model_type": config.model_type,
        }

    budget = tokenizer_max_chars
    sample: list[str] = []
    for t in texts:
        if budget <= 0:
            break
        sample.append(t[:budget])
        budget -= len(sample[-1])
    tokenizer = modeling.train_tokenizer(
        sample, vocab_size=vocab_size, model_max_length=arch["max_position_embeddings"]
    )
    model = modeling.build_llama(tokenizer, arch, seed=seed)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / BASE_POINTER).write_text(json.dumps({"weights_path": "."}, indent=2))
    return {
        "source": "initialised",
        "vocab_size": len(tokenizer),
        "parameters": modeling.parameter_count(model),
        "tokenizer_chars": sum(len(t) for t in sample),
    }


def load_base(base_dir: str | Path, dtype: str = "float32"):
    """(model, tokenizer) of a base directory written by `build_base`."""
    base_dir = Path(base_dir)
    pointer = json.loads((base_dir / BASE_POINTER).read_text())
    weights = base_dir if pointer["weights_path"] == "." else Path(pointer["weights_path"])
    tokenizer = modeling.load_tokenizer(base_dir)
    model = modeling.load_causal_lm(weights, dtype=dtype)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


TOKENIZED_SPLITS = ("train", "validation")


def tokenize_corpus(
    base_dir: str | Path,
    texts_by_split: dict[str, list[str]],
    domain: str,
    out_dir: Path,
    *,
    seq_len: int,
    max_eval_blocks: int,
) -> dict[str, int]:
    """Pack a domain's splits into `seq_len` token blocks with the base tokenizer; save as Arrow.

    Its own step so that every training run (and every resumed attempt, and every rank under
    torchrun) reads the same blocks instead of re-tokenizing.
    """
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    tokenizer = modeling.load_tokenizer(base_dir)
    token = modeling.DOMAIN_TOKENS[domain]
    features = Features({"input_ids": Sequence(Value("int32"))})
    splits = {}
    for split in TOKENIZED_SPLITS:
        blocks = pack_blocks(tokenizer, texts_by_split.get(split, []), seq_len, token,
                             max_blocks=max_eval_blocks if split != "train" else None)
        splits[split] = Dataset.from_dict({"input_ids": blocks}, features=features)
    if not len(splits["train"]):
        raise ValueError(f"{domain}: the training split yields no token blocks of length {seq_len}")
    if not len(splits["validation"]):
        raise ValueError(f"{domain}: the validation split yields no token blocks of length {seq_len}")
    DatasetDict(splits).save_to_disk(str(out_dir))
    (Path(out_dir) / "ossa_tokenized.json").write_text(json.dumps(
        {"domain": domain, "seq_len": seq_len, "pad_token_id": tokenizer.pad_token_id}))
    return {split: len(ds) for split, ds in splits.items()}


def load_blocks(tokenized_dir: str | Path, split: str) -> list[list[int]]:
    from datasets import load_from_disk

    return [list(map(int, r)) for r in load_from_disk(str(tokenized_dir))[split]["input_ids"]]


@dataclass
class FinetuneReport:
    initial_val: dict[str, float]
    final_val: dict[str, float]
    step_losses: list[float]
    train_blocks: int
    val_blocks: int
    train_seconds: float
    tokens_per_second: float
    parameters: int
    resumed_from_step: int = 0
    world_size: int = 1
    peak_memory_bytes: int = 0
    strategy: str = "single"  # what trained: single | ddp | fsdp2 (read off the run, not the config)
    sharding: list[dict[str, Any]] | None = None  # FSDP: each rank's parameter share during training


def finetune_domain(
    base_dir: Path,
    tokenized_dir: Path,
    domain: str,
    out_dir: Path,
    *,
    settings: TrainSettings,
    work_dir: Path,
    checkpoint_dir: Path | None = None,
    log_metrics: MetricLogger | None = None,
) -> FinetuneReport:
    """Fine-tune the base on one domain's token blocks; save model + tokenizer to out_dir.

    Under torchrun every rank trains; rank 0 alone evaluates and writes out_dir (under FSDP from
    the full state dict gathered after training: no rank ever holds the whole model before that).
    """
    import os

    dtype = "bfloat16" if settings.precision == "bf16" and modeling.best_device().startswith("cuda") else "float32"
    model, tokenizer = load_base(base_dir, dtype=dtype)
    model.to(modeling.best_device())
    train_blocks = load_blocks(tokenized_dir, "train")
    val_blocks = load_blocks(tokenized_dir, "validation")
    pad = tokenizer.pad_token_id
    rank0 = int(os.environ.get("RANK", "0")) == 0
    before = evaluate(model, val_blocks, pad) if rank0 else None
    result = train(model, train_blocks, pad, settings, str(work_dir), log_metrics, checkpoint_dir)
    if not rank0:
        return FinetuneReport({}, {}, result.step_losses, len(train_blocks), len(val_blocks),
                              result.train_seconds, 0.0, 0, result.resumed_from_step, result.world_size,
                              strategy=result.strategy)
    model = result.model  # FSDP: an unsharded copy of the gathered weights
    after = evaluate(model, val_blocks, pad)
    if log_metrics:
        log_metrics(_eval_metrics("val", after), result.steps)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return FinetuneReport(
        initial_val=_eval_metrics("val", before),
        final_val=_eval_metrics("val", after),
        step_losses=result.step_losses,
        train_blocks=len(train_blocks),
        val_blocks=len(val_blocks),
        train_seconds=result.train_seconds,
        tokens_per_second=result.tokens_seen / max(result.train_seconds, 1e-9),
        parameters=modeling.parameter_count(model),
        resumed_from_step=result.resumed_from_step,
        world_size=result.world_size,
        peak_memory_bytes=result.peak_memory_bytes,
        strategy=result.strategy,
        sharding=result.sharding or None,
    )


def _eval_metrics(prefix: str, e: EvalResult) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in asdict(e).items()}
