"""LoRA adapters with peft: build, warm-start, mix tasks, save as safetensors.

Adapters are saved alone (`adapter_model.safetensors` + `adapter_config.json`), never with the
base weights: a 13B base copied into every adapter version is what filled MLflow stores with
tens of GB (mlflow#9256).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class LoraSettings:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "gate_proj")


def wrap_with_lora(model, settings: LoraSettings):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    return get_peft_model(model, config)


def load_adapter(model, adapter_dir: str | Path, trainable: bool = False):
    """Attach a saved adapter to `model` (warm start when trainable)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def mix_tasks(
    blocks_by_task: dict[str, list[list[int]]],
    weights: dict[str, float],
    total: int,
    seed: int,
) -> list[list[int]]:
    """Sample a training mixture: each task contributes in proportion to its weight.

    Sampling with replacement lets a small task reach its share; a task with weight 0 or no
    blocks contributes nothing.
    """
    rng = random.Random(seed)
    live = {t: w for t, w in weights.items() if w > 0 and blocks_by_task.get(t)}
    if not live:
        raise ValueError("task mixture is empty: no task has both a positive weight and data")
    norm = sum(live.values())
    mixture: list[list[int]] = []
    for task, w in sorted(live.items()):
        n = max(1, round(total * w / norm))
        mixture.extend(rng.choice(blocks_by_task[task]) for _ in range(n))
    rng.shuffle(mixture)
    return mixture


def trainable_parameter_count(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_adapter(peft_model, out_dir: str | Path) -> list[Path]:
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    files = sorted(Path(out_dir).iterdir())
    if not any(f.name == "adapter_model.safetensors" for f in files):
        raise RuntimeError(f"peft did not write adapter_model.safetensors in {out_dir}")
    return files


def adapter_target_modules(adapter_dir: str | Path) -> Sequence[str]:
    import json

    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return sorted(cfg["target_modules"])


@dataclass
class AdapterReport:
    base_val: dict[str, float]
    adapter_val: dict[str, float]
    step_losses: list[float]
    mixture: dict[str, int]
    trainable_parameters: int
    total_parameters: int
    train_seconds: float
    per_domain: dict[str, dict[str, float]] | None = None  # domain -> base/adapter val loss


def heldout_loss(
    model_dir: str | Path,
    adapter_dir: str | Path,
    texts: list[str],
    domain: str,
    *,
    seq_len: int,
    max_blocks: int,
) -> float:
    """Validation loss of base + adapter on `texts`, tokenized with the adapter's own tokenizer.

    Used to compare a challenger with the champion on the same held-out documents even when
    the champion was trained on an older checkpoint.
    """
    from ossa_assets.lib import modeling
    from ossa_assets.lib.training import evaluate, pack_blocks

    tokenizer = modeling.load_tokenizer(adapter_dir)
    model = modeling.load_causal_lm(model_dir).to(modeling.best_device())
    model = load_adapter(model, adapter_dir)
    blocks = pack_blocks(tokenizer, texts, seq_len, modeling.DOMAIN_TOKENS.get(domain), max_blocks=max_blocks)
    return evaluate(model, blocks, tokenizer.pad_token_id).loss


def train_adapter(
    model_dir: str | Path,
    texts_by_task: dict[str, list[str]],
    weights: dict[str, float],
    val_texts: list[str],
    val_task: str,
    out_dir: Path,
    *,
    lora: LoraSettings,
    seq_len: int,
    settings,
    mixture_blocks: int,
    max_eval_blocks: int,
    work_dir: Path,
    warm_start_dir: str | Path | None = None,
    base_loader=None,
    log_metrics=None,
    other_val_texts: dict[str, list[str]] | None = None,
) -> AdapterReport:
    """Train (or continue) a LoRA adapter on a task mixture; save it alone to out_dir.

    Tasks are domains, each block prefixed with its domain token, so one adapter learns all of
    them and the prompt selects the task at inference.
    """
    from ossa_assets.lib import modeling
    from ossa_assets.lib.training import evaluate, pack_blocks, train

    if base_loader is None:
        tokenizer = modeling.load_tokenizer(model_dir)
        model = modeling.load_causal_lm(model_dir)
    else:
        model, tokenizer = base_loader(model_dir)
    model.to(modeling.best_device())
    blocks_by_task = {
        task: pack_blocks(tokenizer, texts, seq_len, modeling.DOMAIN_TOKENS.get(task))
        for task, texts in texts_by_task.items()
    }
    val_blocks = pack_blocks(
        tokenizer, val_texts, seq_len, modeling.DOMAIN_TOKENS.get(val_task), max_blocks=max_eval_blocks
    )
    pad = tokenizer.pad_token_id
    other_blocks = {
        task: pack_blocks(tokenizer, texts, seq_len, modeling.DOMAIN_TOKENS.get(task), max_blocks=max_eval_blocks)
        for task, texts in (other_val_texts or {}).items()
    }
    other_base = {task: evaluate(model, b, pad).loss for task, b in other_blocks.items() if b}
    base_eval = evaluate(model, val_blocks, pad)
    train_blocks = mix_tasks(blocks_by_task, weights, mixture_blocks, settings.seed)
    mixture = {t: len(b) for t, b in blocks_by_task.items()}
    if warm_start_dir:
        peft_model = load_adapter(model, warm_start_dir, trainable=True)
    else:
        # lora_A's initialisation draws from torch's global generator, before the Trainer seeds
        # it: unseeded, the same inputs trained twice gave different weights and data versions
        import torch

        torch.manual_seed(settings.seed)
        peft_model = wrap_with_lora(model, lora)
    trainable, total = trainable_parameter_count(peft_model)
    result = train(peft_model, train_blocks, pad, settings, str(work_dir), log_metrics)
    adapter_eval = evaluate(peft_model, val_blocks, pad)
    per_domain = {val_task: {"base_val_loss": base_eval.loss, "adapter_val_loss": adapter_eval.loss}}
    for task, loss in other_base.items():
        per_domain[task] = {"base_val_loss": loss,
                            "adapter_val_loss": evaluate(peft_model, other_blocks[task], pad).loss}
    save_adapter(peft_model, out_dir)
    tokenizer.save_pretrained(str(out_dir))  # the prompt format (domain tokens) travels with it
    return AdapterReport(
        base_val={"val_loss": base_eval.loss, "val_token_accuracy": base_eval.token_accuracy},
        adapter_val={"val_loss": adapter_eval.loss, "val_token_accuracy": adapter_eval.token_accuracy},
        step_losses=result.step_losses,
        mixture=mixture,
        trainable_parameters=trainable,
        total_parameters=total,
        train_seconds=result.train_seconds,
        per_domain=per_domain,
    )
