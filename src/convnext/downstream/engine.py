"""The downstream training loop, shared by `convnext train-detection` and `convnext train-segmentation`.

Iteration-based like mmdet/mmseg (the paper's 3x schedule and 160k iterations), built on the training
system's pieces: AdamW groups with layer decay (`train.optim`), atomic rotating checkpoints with RNG state
and exact resume (`train.state`, `train.distributed.ResumableSampler`, `data.datasets.SeededDataset`),
torchrun/DDP (`train.distributed`), metrics.jsonl + TensorBoard logging (`train.engine`). What differs from
classification lives in a `Task`: the model's loss (a dict of losses), the collate function and evaluation.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import SeededDataset
from ..train.distributed import DistInfo, ResumableSampler, cleanup, init_distributed
from ..train.engine import NonFiniteLossError, RunLogger, amp_dtype, resolve_device, seed_everything
from ..train.optim import build_optimizer, set_lr
from ..train.plots import line_plot
from ..train.state import CheckpointManager, capture_rng, load_checkpoint, restore_rng


@dataclass
class Task:
    """What the loop needs to know about a downstream task.

    `loss(model, batch, device)` returns a dict of scalar losses (summed for the backward pass);
    `evaluate(model)` returns metrics, among them `metric` (higher is better) for the best checkpoint;
    `model_config` rebuilds the model (`create_detector(**cfg)` / `create_segmenter(**cfg)`).
    """

    name: str
    model: nn.Module
    train_set: torch.utils.data.Dataset
    collate: Callable[[list], Any]
    loss: Callable[[nn.Module, Any, torch.device], dict[str, torch.Tensor]]
    evaluate: Callable[[nn.Module], dict[str, Any]]
    metric: str
    model_config: dict[str, Any]


@dataclass
class LoopConfig:
    """Optimisation and run settings (the CLI fills them; the paper's values are the CLI defaults)."""

    run_dir: str
    iters: int
    batch_size: int = 2  # per process
    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay: float | None = None
    schedule: str = "step"  # "step" (mmdet: x0.1 at milestones) or "poly" (mmseg: power 1 down to min_lr)
    milestones: tuple[int, ...] = ()  # iterations where the step schedule divides the lr by 10
    min_lr: float = 0.0
    warmup_iters: int = 500
    warmup_ratio: float = 1e-3  # the lr starts at warmup_ratio x its scheduled value (mmcv's linear warmup)
    clip_grad: float | None = None
    eval_every: int = 0  # iterations; 0: only at the end
    ckpt_every: int = 0  # iterations; 0: at every evaluation and at the end
    keep_last: int = 2
    stop_at: int = 0  # checkpoint and stop at this iteration without changing the schedule (job splitting)
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    workers: int = 2
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    resume: str | None = None
    progress: bool = True
    tensorboard: bool = False
    plots: bool = True


def lr_at(it: int, cfg: LoopConfig) -> float:
    """The lr at iteration `it` (0-based): the step or poly schedule, times mmcv's linear warmup factor."""
    if cfg.schedule == "poly":
        lr = (cfg.lr - cfg.min_lr) * (1 - it / cfg.iters) + cfg.min_lr
    elif cfg.schedule == "step":
        lr = cfg.lr * 0.1 ** sum(it >= m for m in cfg.milestones)
    else:
        raise ValueError(f"schedule must be 'step' or 'poly', not {cfg.schedule!r}")
    if it < cfg.warmup_iters:
        lr *= 1 - (1 - it / cfg.warmup_iters) * (1 - cfg.warmup_ratio)
    return lr


def train_downstream(task: Task, cfg: LoopConfig) -> dict[str, Any]:
    """Train `task.model` for `cfg.iters` iterations; rank 0 writes everything under `cfg.run_dir`:
    `last-*.pt` (full state, resumable), `best.pt` (weights + model config + metrics), `metrics.jsonl`,
    `config.json`, `summary.json` and plots. Returns the summary."""
    wall0 = time.time()
    device = resolve_device(cfg.device)
    info: DistInfo = init_distributed(device.type)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    ckpts = CheckpointManager(run_dir, cfg.keep_last)
    log = RunLogger(run_dir, info.is_main, cfg.tensorboard)

    # ---- data: deterministic per-sample augmentation, resumable mid-epoch -------------------------------
    sampler = ResumableSampler(len(task.train_set), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    loader = torch.utils.data.DataLoader(
        SeededDataset(task.train_set), batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        collate_fn=partial(_collate_pairs, task.collate), pin_memory=device.type == "cuda",
        generator=torch.Generator())
    per_epoch = sampler.batches_per_epoch

    # ---- model, optimizer (layer decay from model.layer_group), precision, DDP --------------------------
    raw = task.model.to(device)
    if info.distributed and device.type == "cuda":  # SyncBatchNorm is CUDA-only; CPU ranks keep their own stats
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)  # the heads' BN over the global batch, as mmseg
    optimizer = build_optimizer(raw, cfg.lr, cfg.weight_decay, layer_decay=cfg.layer_decay)
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    model: nn.Module = raw
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=False)

    # ---- resume -----------------------------------------------------------------------------------------
    it, best = 0, {task.metric: -math.inf, "iter": -1}
    resume = ckpts.latest() if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume is not None:
        ck = load_checkpoint(resume, map_location="cpu")
        if ck.get("task") != task.name:
            raise ValueError(f"{resume} is a {ck.get('task', 'classification')!r} checkpoint, not {task.name!r}")
        raw.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        it, best = ck["iter"], ck["best"]
        restore_rng(ck["rng"])
        log.info(f"Resumed from {resume} at iteration {it}")
    elif info.is_main and ckpts.latest() is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints ({ckpts.latest().name}). Continue it with "
                              f"--resume auto, or choose another --name / --out.")

    config = {"task": task.name, "model": task.model_config, "loop": asdict(cfg), "world_size": info.world_size,
              "train_samples": len(task.train_set), "params": sum(p.numel() for p in raw.parameters())}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
        log.info(f"{task.name}: {config['params'] / 1e6:.2f}M params, {len(task.train_set)} training samples, "
                 f"{info.world_size} process(es) on {device}, batch {cfg.batch_size * info.world_size}, "
                 f"{cfg.iters} iterations ({cfg.iters / per_epoch:.1f} epochs)")

    def state() -> dict[str, Any]:
        return {"model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "iter": it, "best": dict(best), "task": task.name, "config": config, "rng": capture_rng()}

    def evaluate_and_save() -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if info.is_main:  # rank 0 evaluates the whole validation set; the others wait for its checkpoint
            t0 = time.time()
            metrics = task.evaluate(raw)
            raw.train()
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            log.metric({"type": "eval", "step": it, "epoch": it / per_epoch, **scalars})
            shown = ", ".join(f"{k} {v:.2f}" for k, v in scalars.items() if not k.endswith(("APs", "APm", "APl")))
            log.info(f"iteration {it}: {shown} ({time.time() - t0:.0f} s)")
            if metrics[task.metric] > best[task.metric]:
                best.update({task.metric: metrics[task.metric], "iter": it})
                ckpts.save_best({"model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
                                 "task": task.name, "config": config, "iter": it, "metrics": scalars})
            ckpts.save(state(), it)
        if info.distributed:
            torch.distributed.barrier()
        return metrics

    # ---- the loop ---------------------------------------------------------------------------------------
    model.train()
    t_train, samples = 0.0, 0
    bar = None
    if info.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iters, initial=it, desc=task.name, unit="it", dynamic_ncols=True, file=sys.stderr)
    metrics: dict[str, Any] = {}
    while it < cfg.iters and not (cfg.stop_at and it >= cfg.stop_at):
        sampler.set_epoch(it // per_epoch, it % per_epoch)
        for batch in loader:
            t0 = time.time()
            set_lr(optimizer, lr_at(it, cfg))
            with autocast():
                losses = task.loss(model, batch, device)
            loss = sum(losses.values())
            finite = torch.isfinite(loss.detach()).float()
            if info.distributed:  # every rank stops together, or the others would wait in all-reduce
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if not finite.item():
                raise NonFiniteLossError(
                    f"Loss is {loss.item()} at iteration {it} ({ {k: v.item() for k, v in losses.items()} }); stopped "
                    f"without saving the broken state. Last good checkpoint: {ckpts.latest() or 'none yet'}. "
                    f"Try a lower --lr, --clip-grad, or --amp none.")
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            it += 1
            t_train += time.time() - t0
            samples += cfg.batch_size * info.world_size
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(it - 1, cfg):.2e}", refresh=False)
                bar.update(1)
            if it % 20 == 0 or it == 1:
                log.metric({"type": "step", "step": it, "epoch": it / per_epoch, "loss": loss.item(),
                            "lr": lr_at(it - 1, cfg), **{k: v.item() for k, v in losses.items()}})
            if (cfg.eval_every and it % cfg.eval_every == 0) or it == cfg.iters:
                metrics = evaluate_and_save()
            elif cfg.ckpt_every and it % cfg.ckpt_every == 0 and info.is_main:
                ckpts.save(state(), it)
            if it == cfg.stop_at and it < cfg.iters:
                if info.is_main:
                    ckpts.save(state(), it)
                    log.info(f"Stopped at iteration {it} of {cfg.iters} (--stop-at); continue with --resume auto")
                break
            if it >= cfg.iters:
                break
    if bar is not None:
        bar.close()

    summary = {"task": task.name, "run_dir": str(run_dir), "iters": it, "best": best, "final": {
        k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "train_time_s": t_train,
        "samples_per_s": samples / max(t_train, 1e-9), "wall_time_s": time.time() - wall0}
    if info.is_main:
        if cfg.plots:
            summary["plots"] = {k: str(v) for k, v in plot_downstream(run_dir / "metrics.jsonl", run_dir,
                                                                      task.metric).items()}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log.close()
    cleanup()
    return summary


def _collate_pairs(collate: Callable[[list], Any], items: list) -> Any:
    # SeededDataset yields (sample, target, bad_path) triples; the tasks' collate functions take pairs
    return collate([item[:2] for item in items])


def load_trained(path: str | Path, build: Callable[..., nn.Module]) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a downstream checkpoint (`best.pt` or `last-*.pt`): rebuilt from its stored config with
    `build` (`create_detector` / `create_segmenter`), weights loaded. Returns (model, checkpoint)."""
    ck = load_checkpoint(path)
    if "task" not in ck:
        raise ValueError(f"{path} is not a downstream checkpoint (no 'task'): pass a best.pt or last-*.pt "
                         f"written by train-detection / train-segmentation")
    model = build(**ck["config"]["model"])
    model.load_state_dict(ck["model"])
    return model, ck


def plot_downstream(metrics_path: Path, out_dir: Path, metric: str) -> dict[str, Path]:
    """loss.png (training losses against iterations) and metrics.png (`metric` and friends per evaluation)."""
    if not metrics_path.exists():
        return {}
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    steps = {r["step"]: r for r in records if r["type"] == "step"}  # a resumed run may repeat: keep the latest
    evals = {r["step"]: r for r in records if r["type"] == "eval"}
    paths = {}
    for name, rows, keys in (("loss", steps, [k for k in next(iter(steps.values()), {}) if k.startswith("loss")]),
                             ("metrics", evals, [k for k in (metric, metric.replace("bbox", "segm"), "mAcc")
                                                 if k in next(iter(evals.values()), {})])):
        if not rows or not keys:
            continue
        xs = sorted(rows)
        series = [(k, [rows[x][k] for x in xs]) for k in dict.fromkeys(keys)]
        paths[name] = line_plot(out_dir / f"{name}.png", xs, series, "iteration",
                                marker="o" if name == "metrics" else None)
    return paths
