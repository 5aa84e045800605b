"""Causal-LM training: documents -> fixed-length token blocks -> HF Trainer -> metrics.

The same functions train the full domain fine-tune and the LoRA adapters (a peft-wrapped model
is just another `nn.Module` to the Trainer), on CPU in tiny mode and on GPUs in production.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

MetricLogger = Callable[[dict[str, float], int], None]


def pack_blocks(
    tokenizer,
    texts: Sequence[str],
    seq_len: int,
    prefix_token: str | None = None,
    max_blocks: int | None = None,
) -> list[list[int]]:
    """Tokenize documents and pack them into `seq_len` blocks (GPT-style concatenation).

    Each document is wrapped `<domain> ... </s>` so the model learns where documents end and
    which domain it is writing; packing wastes no compute on padding.
    """
    prefix = tokenizer.convert_tokens_to_ids(prefix_token) if prefix_token else None
    stream: list[int] = []
    blocks: list[list[int]] = []
    for text in texts:
        # whole documents are longer than the context on purpose: they are packed into blocks below
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if prefix is not None:
            stream.append(prefix)
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
        while len(stream) >= seq_len:
            blocks.append(stream[:seq_len])
            stream = stream[seq_len:]
            if max_blocks and len(blocks) >= max_blocks:
                return blocks
    if len(stream) >= max(8, seq_len // 4) and (not max_blocks or len(blocks) < max_blocks):
        # keep a short tail (padded in the collator) rather than drop a small validation set
        blocks.append(stream)
    return blocks


class BlockDataset:
    """torch-style dataset over token blocks; labels = inputs (the model shifts internally)."""

    def __init__(self, blocks: list[list[int]], pad_id: int):
        self.blocks = blocks
        self.pad_id = pad_id
        self.width = max((len(b) for b in blocks), default=0)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        b = self.blocks[i]
        pad = self.width - len(b)
        ids = b + [self.pad_id] * pad
        mask = [1] * len(b) + [0] * pad
        labels = b + [-100] * pad  # -100: ignored by the loss
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "labels": torch.tensor(labels),
        }


@dataclass
class EvalResult:
    loss: float
    perplexity: float
    token_accuracy: float
    tokens: int


def evaluate(model, blocks: list[list[int]], pad_id: int, batch_size: int = 16) -> EvalResult:
    """Mean next-token loss and accuracy over all target tokens of the blocks."""
    import torch

    if not blocks:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0)
    ds = BlockDataset(blocks, pad_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens, correct = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].float()
            shift_labels = batch["labels"][:, 1:]
            valid = shift_labels != -100
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total_loss += float(loss)
            total_tokens += int(valid.sum())
            correct += int(((shift_logits.argmax(-1) == shift_labels) & valid).sum())
    if was_training:
        model.train()
    mean = total_loss / max(total_tokens, 1)
    return EvalResult(mean, math.exp(min(mean, 50)), correct / max(total_tokens, 1), total_tokens)


COMPLETE_MARKER = "ossa_checkpoint_complete"


@dataclass
class TrainSettings:
    max_steps: int
    batch_size: int
    learning_rate: float
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (bf16/fp16 only on CUDA)
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int = 0  # 0: no intermediate checkpoints (nothing to resume from)
    distributed: str = "ddp"  # ddp | fsdp: how several processes (torchrun) share the work
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Any) -> "TrainSettings":
        """Settings from any object with these field names (the stages' Config classes)."""
        names = ("max_steps", "batch_size", "learning_rate", "grad_accum", "precision",
                 "gradient_checkpointing", "seed", "save_steps", "distributed")
        return cls(**{n: getattr(config, n) for n in names if hasattr(config, n)})

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass
class TrainResult:
    step_losses: list[float]
    steps: int
    train_seconds: float
    tokens_seen: int
    resumed_from_step: int = 0
    world_size: int = 1
    peak_memory_bytes: int = 0
    strategy: str = "single"  # what ran, read off the wrapped model: single | ddp | fsdp2
    sharding: list[dict[str, Any]] = field(default_factory=list)  # per rank, FSDP only
    model: Any = None  # the trained model this rank can evaluate and save (None: not rank 0 under FSDP)


# Set to a directory, and every training run writes the exact state it starts from (parameters and
# optimizer state, after a resume loaded its checkpoint) to start-<step>.safetensors there, and
# appends each step's loss to losses.jsonl: how the resume tests compare a resumed run with the
# checkpoint on disk, tensor by tensor, and with the killed run's loss curve. Off by default.
PROBE_ENV = "OSSA_TRAIN_PROBE_DIR"


def probe_loss(step: int, loss: float) -> None:
    import json
    import os

    probe = os.environ.get(PROBE_ENV)
    if probe:
        Path(probe).mkdir(parents=True, exist_ok=True)
        with open(Path(probe) / "losses.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": loss, "pid": os.getpid()}) + "\n")


def write_probe(probe_dir: Path, step: int, model_state: dict[str, Any], optim_state: dict[str, Any]) -> Path:
    """Flatten model + optimizer state into one safetensors file (atomically)."""
    import torch
    from safetensors.torch import save_file

    flat: dict[str, Any] = {}
    for name, t in model_state.items():
        if isinstance(t, torch.Tensor):
            flat[f"model/{name}"] = t.detach().cpu().clone().contiguous()
    for key, st in (optim_state.get("state") or {}).items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                flat[f"optim/{key}/{k}"] = v.detach().cpu().clone().contiguous().reshape(v.shape)
    probe_dir.mkdir(parents=True, exist_ok=True)
    out = probe_dir / f"start-{step}.safetensors"
    tmp = out.with_suffix(".tmp")
    save_file(flat, str(tmp))
    tmp.replace(out)
    return out


def latest_complete_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The newest `checkpoint-N` that finished saving; half-written ones are removed.

    A process killed while the Trainer writes a checkpoint leaves a directory without our
    marker (written only after the Trainer's save returned): resuming from it would load torn
    optimizer state, so it is deleted instead.
    """
    import shutil

    if not checkpoint_dir or not Path(checkpoint_dir).is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for d in Path(checkpoint_dir).glob("checkpoint-*"):
        try:
            step = int(d.name.split("-", 1)[1])
        except ValueError:
            continue
        if (d / COMPLETE_MARKER).exists():
            found.append((step, d))
        else:
            shutil.rmtree(d, ignore_errors=True)
    return max(found)[1] if found else None


def _peak_memory_bytes(cuda: bool) -> int:
    if cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def train(
    model,
    train_blocks: list[list[int]],
    pad_id: int,
    settings: TrainSettings,
    work_dir: str,
    log_metrics: MetricLogger | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train with transformers' Trainer; returns the per-step losses it logged.

    With `checkpoint_dir` and `settings.save_steps`, a checkpoint is written every `save_steps`
    optimizer steps and training resumes from the newest complete one: a killed run loses at
    most `save_steps` steps. Launched under torchrun (WORLD_SIZE > 1) the Trainer runs DDP, or
    with `distributed="fsdp"` torch's FSDP2 loop (lib/fsdp.py) shards the model; `batch_size`
    per process; NCCL on GPUs, gloo on CPU. The result names the strategy that really ran.
    """
    import os
    import time

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if not train_blocks:
        raise ValueError("no training blocks: the curated corpus is empty or shorter than one block")
    cuda = torch.cuda.is_available()
    if settings.precision in ("bf16", "fp16") and not cuda:
        # mixed precision is a GPU feature here; CPU runs fall back to fp32 rather than fail
        precision = "fp32"
    else:
        precision = settings.precision
    world = int(os.environ.get("WORLD_SIZE", "1"))
    random.seed(settings.seed)
    if world > 1 and settings.distributed == "fsdp":
        # the Trainer cannot shard on CPU (accelerate falls back to DDP without a word): torch's
        # FSDP2 loop runs on GPUs and CPUs alike (lib/fsdp.py)
        from ossa_assets.lib.fsdp import train_fsdp

        return train_fsdp(model, train_blocks, pad_id, settings, log_metrics, checkpoint_dir)

    losses: list[float] = []
    resume = latest_complete_checkpoint(checkpoint_dir) if settings.save_steps else None

    class _Collect(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if state.is_world_process_zero:
                    probe_loss(state.global_step, float(logs["loss"]))
                if log_metrics and state.is_world_process_zero:
                    log_metrics({"train_loss": float(logs["loss"])}, state.global_step)

        def on_save(self, args, state, control, **kw):
            # the Trainer's save has returned on this process: mark the checkpoint complete
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    (ckpt / COMPLETE_MARKER).write_text(str(state.global_step))

    class _Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            probe = os.environ.get(PROBE_ENV)
            if probe and state.is_world_process_zero:
                write_probe(Path(probe), state.global_step, dict(model.state_dict()), optimizer.state_dict())

    dist: dict[str, Any] = {}
    if world > 1:
        dist["ddp_backend"] = "nccl" if cuda else "gloo"
    save = bool(settings.save_steps and checkpoint_dir)
    args = TrainingArguments(
        output_dir=str(checkpoint_dir) if save else work_dir,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        warmup_steps=max(0, int(settings.warmup_ratio * settings.max_steps)),
        weight_decay=settings.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="steps" if save else "no",
        save_steps=settings.save_steps or 500,
        save_total_limit=2 if save else None,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=settings.gradient_checkpointing,
        seed=settings.seed,
        data_seed=settings.seed,
        **dist,
        **settings.extra,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=BlockDataset(train_blocks, pad_id),
        callbacks=[_Collect(), _Probe()],
    )
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    strategy = _strategy_that_ran(trainer, world)
    resumed_at = int(resume.name.split("-", 1)[1]) if resume else 0
    done = settings.max_steps - resumed_at
    tokens = done * settings.batch_size * settings.grad_accum * world * len(train_blocks[0])
    return TrainResult(losses, settings.max_steps, seconds, tokens, resumed_at, world,
                       _peak_memory_bytes(cuda), strategy=strategy, model=model)


def _strategy_that_ran(trainer, world: int) -> str:
    """Read what the Trainer actually wrapped the model in; refuse a silent fallback."""
    wrapped = type(trainer.model_wrapped).__name__
    if world == 1:
        return "single"
    if wrapped != "DistributedDataParallel" or getattr(trainer, "is_fsdp_enabled", False):
        raise RuntimeError(f"asked for DDP on {world} processes, the Trainer ran {wrapped}")
    return "ddp"
