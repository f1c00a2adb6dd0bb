"""The one training loop every task uses.

AdamW, EMA of the weights, bf16/fp16 autocast, gradient clipping, resume of the
whole run state, PNG previews sampled from the EMA weights, and a JSON-lines
metrics log. Under ``torchrun`` it runs data-parallel (NCCL on GPUs, gloo on
CPUs); only rank 0 writes files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..config import to_dict
from ..devices import resolve_device
from ..errors import ConfigError
from ..models import ModelFiles, save_model
from ..progress import Reporter, SilentReporter
from ..tasks.base import TrainableTask
from .config import TrainConfig
from .state import has_state, load_state, save_state


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def distributed_from_env() -> DistributedContext:
    """Read torchrun's environment; a plain ``python`` run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistributedContext(rank=int(os.environ.get("RANK", "0")), world_size=world,
                              local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _device_for(ctx: DistributedContext, requested: str) -> torch.device:
    device = resolve_device(requested)
    if device.type == "cuda" and ctx.enabled:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision = 'fp16' needs a CUDA GPU", "use 'bf16' or 'fp32' on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, for parameters; buffers are copied."""
    for ema_p, p in zip(ema.parameters(), net.parameters()):
        ema_p.lerp_(p.detach(), 1.0 - decay)
    for ema_b, b in zip(ema.buffers(), net.buffers()):
        ema_b.copy_(b)


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then constant (a pure function of the step, so resume needs no scheduler state)."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    if not cfg.ema_warmup:
        return cfg.ema_decay
    return min(cfg.ema_decay, (1.0 + step) / (10.0 + step))


def batches_per_epoch(dataset, cfg: TrainConfig, ctx: DistributedContext) -> int:
    per_rank = math.ceil(len(dataset) / ctx.world_size)
    return max(1, per_rank // cfg.batch_size if per_rank >= cfg.batch_size else 1)


def _batches(dataset, cfg: TrainConfig, ctx: DistributedContext, generator_seed: int,
             start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches; each rank sees its own shard of every epoch.

    The order depends only on the seed and the epoch, so a run resumed at
    ``start_step`` sees exactly the batches an uninterrupted run would have.
    """
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    per_epoch = batches_per_epoch(dataset, cfg, ctx)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        if ctx.enabled:
            sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=generator_seed)
            sampler.set_epoch(epoch)
        else:
            gen = torch.Generator().manual_seed(generator_seed + epoch)
            sampler = RandomSampler(dataset, generator=gen)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            drop_last=math.ceil(len(dataset) / ctx.world_size) >= cfg.batch_size)
        yielded = False
        for index, batch in enumerate(loader):
            yielded = True
            if index < skip:
                continue
            yield batch
        skip = 0
        if not yielded:
            raise ConfigError(f"the training set has {len(dataset)} items, fewer than one batch", "add data or lower train.batch_size")
        epoch += 1


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() in (4, 5) and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last if value.dim() == 4 else torch.channels_last_3d)
        out[key] = value
    return out


def train(task: TrainableTask, config: Any, *, resume: bool = False, reporter: Reporter | None = None,
          command: str | None = None) -> ModelFiles | None:
    """Train ``task`` with ``config``; returns the exported model's files on rank 0."""
    cfg: TrainConfig = config.train
    reporter = reporter or SilentReporter()
    ctx = distributed_from_env()
    if ctx.enabled and not dist.is_initialized():
        backend = "nccl" if resolve_device(cfg.device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    try:
        return _train(task, config, cfg, ctx, resume, reporter, command)
    finally:
        if ctx.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(task, config, cfg: TrainConfig, ctx: DistributedContext, resume: bool, reporter: Reporter,
           command: str | None) -> ModelFiles | None:
    out_dir = Path(cfg.out_dir)
    if has_state(out_dir) and not resume:
        raise ConfigError(f"'{out_dir}' already holds a training run", "pass --resume to continue it, or set train.out_dir to a new folder")
    device = _device_for(ctx, cfg.device)
    torch.manual_seed(cfg.seed + ctx.rank)

    net = task.build_network(config).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last_3d if _is_3d(net) else torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas)
    scaler = torch.amp.GradScaler("cuda", enabled=(cfg.precision == "fp16" and device.type == "cuda"))

    step = 0
    earlier_wall_s = 0.0  # wall time of the sessions before a resume, so the card reports the whole run
    if resume and has_state(out_dir):
        meta = load_state(out_dir, net=net, ema=ema, optimizer=optimizer, device=device)
        step = int(meta["step"])
        earlier_wall_s = float(meta.get("wall_time_s", 0.0))
        if meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        if "rng_state" in meta:
            torch.set_rng_state(torch.tensor(meta["rng_state"], dtype=torch.uint8))
        reporter.log(f"resumed from step {step} in {out_dir}")

    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if ctx.enabled else net
    dataset = task.build_dataset(config)
    batches = _batches(dataset, cfg, ctx, cfg.seed, start_step=step)

    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps({"task": task.name, **to_dict(config)}, indent=2), encoding="utf-8")
    metrics_path = out_dir / "metrics.jsonl"
    started = time.monotonic()
    window_loss, window_n, window_start = 0.0, 0, time.monotonic()
    reporter.started(f"train.{task.name}", steps=cfg.steps, start_step=step, world_size=ctx.world_size, device=str(device))
    while step < cfg.steps:
        net.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, cfg)
        batch = _to_device(next(batches), device, cfg.channels_last)
        with _autocast(device, cfg.precision):
            loss, terms = task.training_loss(model, batch, config, None)
        if not torch.isfinite(loss):
            raise ConfigError(f"the training loss became {loss.item()} at step {step}",
                              "lower train.lr, use train.precision = 'fp32', or check the data for NaNs")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else torch.tensor(0.0)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        update_ema(ema, net, ema_decay_at(step, cfg))
        window_loss += float(loss.detach())
        window_n += 1
        reporter.progress("training", step, cfg.steps)

        if ctx.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
            elapsed = time.monotonic() - window_start
            record = {"step": step, "loss": window_loss / window_n, "grad_norm": float(grad_norm),
                      "lr": optimizer.param_groups[0]["lr"], "s_per_step": elapsed / window_n,
                      "samples_per_s": window_n * cfg.batch_size * ctx.world_size / max(elapsed, 1e-9),
                      **{k: float(v) for k, v in terms.items()}}
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            window_loss, window_n, window_start = 0.0, 0, time.monotonic()
        if ctx.is_main and cfg.preview_every > 0 and (step % cfg.preview_every == 0 or step == cfg.steps):
            _write_preview(task, ema, config, device, out_dir / "previews" / f"step_{step:07d}.png")
        if ctx.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save_state(out_dir, net=net, ema=ema, optimizer=optimizer,
                       scaler_state=scaler.state_dict() if scaler.is_enabled() else None, step=step,
                       extra={"task": task.name, "rng_state": torch.get_rng_state().tolist(),
                              "wall_time_s": round(earlier_wall_s + time.monotonic() - started, 1)})

    if not ctx.is_main:
        return None
    card = task.model_card(config)
    card.training = {
        **card.training,
        "command": command or " ".join(sys.argv),
        "config": to_dict(config),
        "steps": step,
        "final_loss": _last_logged_loss(metrics_path),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "world_size": ctx.world_size,
        "wall_time_s": round(earlier_wall_s + time.monotonic() - started, 1),
        "weights": "EMA",
    }
    files = save_model(out_dir / "model", card, ema.state_dict())
    reporter.log(f"exported EMA weights to {files.weights_path}")
    return files


def _write_preview(task, ema, config, device, path: Path) -> None:
    from ..preview import write_png

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        image = task.preview(ema, config, device)
    write_png(path, image)


def _last_logged_loss(metrics_path: Path) -> float | None:
    if not metrics_path.is_file():
        return None
    lines = metrics_path.read_text(encoding="utf-8").strip().splitlines()
    return json.loads(lines[-1])["loss"] if lines else None


def _is_3d(net: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv3d) for m in net.modules())
