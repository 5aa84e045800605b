"""FSDP training: torch's own FSDP2 (`fully_shard`) on every decoder layer and the root module,
with NCCL on GPUs and gloo on CPUs — one loop for both, so the CPU test runs what the GPU pods run.

Why not the HF Trainer's `fsdp=` option: accelerate 1.15 attaches its FSDP plugin only for GPU
distributed types; under torchrun on CPU the Trainer silently trains DDP replicas instead
(`is_fsdp_enabled=False`, `model_wrapped=DistributedDataParallel`). This loop shards for real
and reports what it ran: every rank's share of the parameters, measured after its first step.

The loop follows the Trainer's recipe (AdamW, linear warm-up + cosine decay, gradient clipping at
1.0, gradient accumulation, a shuffled sampler seeded by `seed`), and its resume contract:
`checkpoint-N/` every `save_steps` steps (a sharded torch.distributed.checkpoint of model and
optimizer, plus the scheduler and step), completed by the same marker the Trainer path writes
once every rank's shard is on disk; a torn one is deleted, never loaded. After training the full
state dict is gathered to rank 0, which gets an ordinary (unsharded) model to evaluate and save.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ossa_assets.lib.training import (
    COMPLETE_MARKER,
    PROBE_ENV,
    BlockDataset,
    MetricLogger,
    TrainResult,
    TrainSettings,
    _peak_memory_bytes,
    latest_complete_checkpoint,
    probe_loss,
    write_probe,
)

MAX_GRAD_NORM = 1.0  # the Trainer's default
KEEP_CHECKPOINTS = 2  # as the Trainer path's save_total_limit


def _init_distributed():
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), "cuda"
    return torch.device("cpu"), "cpu"


def shard_model(model, mesh, mp_policy=None) -> int:
    """`fully_shard` each transformer block (the classes the model names as unsplittable), then
    the root; returns how many blocks were sharded. Sharding block by block is what lets FSDP
    gather one layer's parameters at a time instead of the whole model."""
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(model, "_no_split_modules", None) or [])
    kwargs = {"mesh": mesh, **({"mp_policy": mp_policy} if mp_policy is not None else {})}
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return len(blocks)


def sharding_of(model) -> dict[str, Any]:
    """This rank's share of the parameters: local shard elements vs full elements, placements."""
    from torch.distributed.tensor import DTensor

    local = full = sharded = 0
    placements: set[str] = set()
    for p in model.parameters():
        full += p.numel()
        if isinstance(p, DTensor):
            sharded += 1
            local += p.to_local().numel()
            placements.update(str(x) for x in p.placements)
        else:
            local += p.numel()
    return {"local_numel": local, "full_numel": full, "dtensor_params": sharded,
            "params": sum(1 for _ in model.parameters()), "placements": sorted(placements)}


def _optimizer(model, settings: TrainSettings):
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8,
    )


def _full_state(model, optimizer) -> tuple[dict, dict]:
    """Model and optimizer state gathered whole onto rank 0's CPU (every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _save_checkpoint(model, optimizer, scheduler, step: int, checkpoint_dir: Path, rank: int, world: int) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    out = Path(checkpoint_dir) / f"checkpoint-{step}"
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(out / "dcp"))
    if rank == 0:
        (out / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "scheduler": scheduler.state_dict(), "world_size": world}))
    dist.barrier()  # every rank's shard is written before the checkpoint is declared complete
    if rank == 0:
        (out / COMPLETE_MARKER).write_text(str(step))
        done = sorted((int(d.name.split("-", 1)[1]), d) for d in Path(checkpoint_dir).glob("checkpoint-*")
                      if (d / COMPLETE_MARKER).exists())
        for _, old in done[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)


def _resume_point(checkpoint_dir: Path | None, rank: int) -> Path | None:
    """Rank 0 picks (and cleans up torn checkpoints), every rank gets its answer."""
    import torch.distributed as dist

    found = [str(latest_complete_checkpoint(checkpoint_dir) or "") if rank == 0 else ""]
    dist.broadcast_object_list(found, src=0)
    return Path(found[0]) if found[0] else None


def _load_checkpoint(model, optimizer, scheduler, ckpt: Path) -> int:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # get_state_dict creates the optimizer's (empty) state tensors: the template dcp.load fills in
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(ckpt / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    scheduler.load_state_dict(meta["scheduler"])
    return int(meta["global_step"])


def _plain_copy(model, full_sd: dict):
    """An ordinary model holding the gathered weights (rank 0 evaluates and saves it alone)."""
    import torch
    from transformers import AutoModelForCausalLM

    # built on the meta device: no second random initialisation of a 13B model on the host
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(full_sd.values())).dtype)
    plain.load_state_dict(full_sd, assign=True, strict=True)
    # buffers outside the state dict (rotary inv_freq) are not sharded: every rank has them whole
    for name, buf in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        plain.get_submodule(owner).register_buffer(leaf, buf.detach().cpu().clone(),
                                                   persistent=leaf not in plain.get_submodule(owner)._non_persistent_buffers_set)
    plain.tie_weights()
    leftover = [n for n, t in itertools.chain(plain.named_parameters(), plain.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"gathered state dict left tensors unset: {leftover[:5]}")
    return plain


def train_fsdp(
    model,
    train_blocks: list[list[int]],
    pad_id: int,
    settings: TrainSettings,
    log_metrics: MetricLogger | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train `model` sharded across the torchrun world; rank 0's result carries the whole model."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.utils.data import DataLoader, DistributedSampler
    from transformers import get_cosine_schedule_with_warmup

    device, device_type = _init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(settings.seed)
    model.to(device)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = None
    if settings.precision == "bf16" and device_type == "cuda" and next(model.parameters()).dtype == torch.float32:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # fp32 master weights, bf16 compute, fp32 gradient reduction
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mesh = init_device_mesh(device_type, (world,))
    blocks = shard_model(model, mesh, mp)
    model.train()
    optimizer = _optimizer(model, settings)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, max(0, int(settings.warmup_ratio * settings.max_steps)), settings.max_steps)
    save = bool(settings.save_steps and checkpoint_dir)
    resume = _resume_point(Path(checkpoint_dir), rank) if save else None
    start = _load_checkpoint(model, optimizer, scheduler, resume) if resume else 0
    probe = os.environ.get(PROBE_ENV)
    if probe:
        full_model, full_optim = _full_state(model, optimizer)
        if rank == 0:
            write_probe(Path(probe), start, full_model, full_optim)

    dataset = BlockDataset(train_blocks, pad_id)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=settings.seed,
                                 drop_last=len(dataset) >= world * settings.batch_size)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=0)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError(f"{len(dataset)} blocks cannot fill one batch of {settings.batch_size} on {world} ranks")

    def batches(from_micro: int):
        # the order a resumed run sees is the order the uninterrupted run would have seen
        epoch, skip = divmod(from_micro, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            yield from itertools.islice(iter(loader), skip, None)
            epoch, skip = epoch + 1, 0

    stream = batches(start * settings.grad_accum)
    losses: list[float] = []
    sharding: dict[str, Any] = {}
    t0 = time.perf_counter()
    for step in range(start + 1, settings.max_steps + 1):
        total = torch.zeros((), device=device)
        for micro in range(settings.grad_accum):
            # reduce-scatter gradients once per optimizer step, not once per micro-batch
            model.set_requires_gradient_sync(micro == settings.grad_accum - 1)
            batch = {k: v.to(device) for k, v in next(stream).items()}
            loss = model(**batch).loss / settings.grad_accum
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(total)  # SUM: gloo has no AVG
        losses.append(float(total) / world)
        if not sharding:
            sharding = sharding_of(model)  # measured during training, with the optimizer's state in place
        if rank == 0:
            probe_loss(step, losses[-1])
        if log_metrics and rank == 0:
            log_metrics({"train_loss": losses[-1]}, step)
        if save and step % settings.save_steps == 0:
            _save_checkpoint(model, optimizer, scheduler, step, Path(checkpoint_dir), rank, world)
    seconds = time.perf_counter() - t0
    per_rank: list[Any] = [None] * world
    dist.all_gather_object(per_rank, {"rank": rank, **sharding, "sharded_blocks": blocks})
    full_model, _ = _full_state(model, optimizer)
    plain = _plain_copy(model, full_model) if rank == 0 else None
    tokens = (settings.max_steps - start) * settings.batch_size * settings.grad_accum * world * dataset.width
    return TrainResult(losses, settings.max_steps, seconds, tokens, start, world, _peak_memory_bytes(device_type == "cuda"),
                       strategy="fsdp2", sharding=per_rank, model=plain)
