"""The training loop every task shares: classification (`convnext train`), FCMAE pretraining, detection and
segmentation. What differs between them is a `Task` (its model, data, loss and evaluation); everything else is
here, once: devices and torchrun, deterministic resumable data order, mixed precision, gradient accumulation,
clipping, EMA, the lr schedule, NaN checks, atomic checkpoints with exact resume, logs, plots and a summary.

Read `run` top to bottom: set-up, resume, the step loop, evaluation and checkpoints, the end.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import fast
from ..checkpoints.io import load_checkpoint
from ..data.datasets import DataError, SeededDataset
from ..distributed import DistInfo, ResumableSampler, cleanup, init_distributed
from .config import Config, dump_yaml, scaled_lr
from .optim import LRSchedule, build_ema, build_optimizer, lr_at, set_lr
from .state import CheckpointManager, capture_rng, restore_rng


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint of the broken state."""


class Task:
    """What the loop needs to know about a task. Subclasses set `model` and `train_set` and define `loss`.

    `train_set` items are `(sample, target)` or `(sample, target, bad_path)` (an unreadable image is
    `(None, target, path)`: reported, counted and left out of its batch); `collate` turns a list of good
    `(sample, target)` pairs into what `loss` takes.
    """

    name: str = "task"
    metric: str | None = None  # the evaluation metric that picks best.pt (higher is better); None: no best.pt
    evaluate_on_every_rank: bool = True  # False: rank 0 evaluates alone while the others wait
    model: nn.Module
    train_set: torch.utils.data.Dataset

    def collate(self, items: list) -> Any:
        return torch.utils.data.default_collate(items)

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """The losses of one micro-batch, summed for the backward pass (one entry for a single loss)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Metrics of `model` (in eval mode) on the validation data; {} when the task has none."""
        return {}

    def test(self, model: nn.Module) -> dict[str, Any]:
        """Metrics of the final `model` on held-out test data, evaluated once at the end of the run; {} if none."""
        return {}

    def checkpoint_meta(self) -> dict[str, Any]:
        """Entries every checkpoint of the run carries besides the weights: what rebuilds and uses the model."""
        return {}

    def describe(self) -> str:
        """One line about the run, printed at its start."""
        return f"{self.name}: {len(self.train_set)} training samples"

    def plot(self, metrics: Path, out_dir: Path) -> dict[str, Path]:
        """Plots of the run from its metrics.jsonl."""
        return {}

    def summarize(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The run's summary (summary.json and `run`'s result) in the task's own terms; the loop's by default."""
        return summary


@dataclass
class LoopConfig:
    """How to run the loop. Length: `epochs` or `iters` (optimizer steps)."""

    run_dir: str
    batch_size: int  # per process and micro-batch
    lr: float  # peak lr (already scaled to the effective batch)
    epochs: float | None = None
    iters: int | None = None
    max_steps: int | None = None  # end the schedule after this many steps (quick runs, tests)
    stop_at: int = 0  # checkpoint and stop at this step without changing the schedule (job splitting)
    accum_steps: int = 1
    schedule: LRSchedule = field(default_factory=LRSchedule)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float | None = None
    layer_decay_type: str = "group"
    no_weight_decay: tuple[str, ...] = ()
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.9999
    amp: str = "auto"  # "auto" (bf16 on CUDA, none on CPU), "bf16", "fp16" (CUDA, with a grad scaler), "none"
    device: str = "auto"
    strategy: str = "ddp"  # "ddp" or "fsdp"
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False  # BatchNorm over the global batch under DDP on CUDA (the detection/seg heads)
    deterministic: bool = False
    threads: int | None = None
    seed: int = 0
    workers: int = 2
    eval_every: int = 0  # steps; 0: not by steps
    eval_every_epochs: int = 0  # epochs; 0: not by epochs (the end of training is always evaluated)
    ckpt_every: int = 0  # also checkpoint every N steps
    ckpt_each_epoch: bool = False
    keep_last: int = 2
    resume: str | None = None  # "auto", a checkpoint path, or None
    max_bad_images: int = 100
    log_every: int = 50
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    record: dict = field(default_factory=dict)  # the caller's own config, saved in config.yaml and checkpoints


@dataclass
class LoopState:
    """Where the run is; callbacks receive it after every optimizer step."""

    run_dir: Path
    global_step: int
    total_steps: int
    steps_per_epoch: int
    latest_checkpoint: Path | None = None

    @property
    def epoch(self) -> int:
        return self.global_step // self.steps_per_epoch


def recipe_loop_config(cfg: Config, world_size: int, train_size: int) -> LoopConfig:
    """The loop settings a recipe describes, for `train_size` training samples over `world_size` processes."""
    o, r = cfg.optim, cfg.run
    steps_per_epoch = train_size // (o.batch_size * world_size) // o.accum_steps
    return LoopConfig(
        run_dir=str(Path(r.out_dir) / (r.name or cfg.recipe)), batch_size=o.batch_size, lr=scaled_lr(cfg, world_size),
        epochs=o.epochs, max_steps=r.max_steps, accum_steps=o.accum_steps,
        schedule=LRSchedule("cosine", warmup_steps=round(o.warmup_epochs * steps_per_epoch), min_lr=o.min_lr),
        weight_decay=o.weight_decay, betas=o.betas, eps=o.eps, layer_decay=o.layer_decay,
        layer_decay_type=o.layer_decay_type, no_weight_decay=tuple(o.no_weight_decay), clip_grad=o.clip_grad,
        ema=r.ema, ema_decay=r.ema_decay, amp=r.amp, device=r.device, strategy=r.strategy,
        channels_last=r.channels_last, compile=r.compile, deterministic=r.deterministic, threads=r.threads,
        seed=r.seed, workers=cfg.data.num_workers, eval_every_epochs=r.eval_every, ckpt_every=r.ckpt_every_steps or 0,
        ckpt_each_epoch=True, keep_last=r.keep_last, resume=r.resume, max_bad_images=cfg.data.max_bad_images,
        progress=r.progress, tensorboard=r.tensorboard, plots=r.plots, record=cfg.to_dict())


def resolve_device(name: str) -> torch.device:
    """"auto" -> the local CUDA device if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `amp`. "auto": bf16 on CUDA, and on a CPU whose hardware computes bf16 (AMX or
    AVX512-BF16, as probed by `fast.capabilities`); elsewhere none, as emulated bf16 is slower than fp32."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" or (device.type == "cpu" and fast.capabilities().native_bf16) else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs CUDA (it uses a gradient scaler); use bf16 or none on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def run(task: Task, cfg: LoopConfig, callbacks: Sequence[Callable[[LoopState], None]] = ()) -> dict[str, Any]:
    """Train `task.model` with `cfg`; rank 0 writes everything under `cfg.run_dir`. Returns the summary.

    `callbacks` are called after every optimizer step (and any checkpoint it writes) with the `LoopState`.
    """
    wall0 = time.time()
    # ---- devices, processes, seeds ----------------------------------------------------------------------
    device = resolve_device(cfg.device)
    info: DistInfo = init_distributed(device.type)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # The same seed on every rank: identical initial weights, and RNG streams that stay identical across ranks
    # (they draw alike), so rank 0's saved RNG state resumes every rank exactly.
    seed_everything(cfg.seed)
    run_dir = Path(cfg.run_dir)
    ckpts = CheckpointManager(run_dir, cfg.keep_last)
    log = RunLogger(run_dir, info.is_main, cfg.tensorboard)

    # ---- data: deterministic per-sample augmentation, resumable mid-epoch -------------------------------
    sampler = ResumableSampler(len(task.train_set), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    accum = cfg.accum_steps
    steps_per_epoch = sampler.batches_per_epoch // accum
    if steps_per_epoch == 0:
        raise DataError(f"{len(task.train_set)} training samples give no complete optimizer step at batch "
                        f"{cfg.batch_size} x {info.world_size} ranks x {accum} accumulation; lower the batch size "
                        "or the accumulation steps")
    loader = torch.utils.data.DataLoader(
        SeededDataset(task.train_set), batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        collate_fn=_Collate(task.collate), pin_memory=device.type == "cuda",
        generator=torch.Generator())  # keeps DataLoader start-up off the global RNG, so resuming is exact
    total_steps = cfg.iters if cfg.iters is not None else math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    # ---- model, optimizer, EMA, precision, processes ----------------------------------------------------
    raw = task.model.to(device)
    fsdp = info.distributed and cfg.strategy == "fsdp"
    if cfg.channels_last and not fsdp:  # FSDP shards only contiguous parameters; inputs stay channels_last
        raw.to(memory_format=torch.channels_last)
    if fsdp and cfg.ema:
        raise ValueError("EMA with the fsdp strategy is not supported: turn EMA off or use ddp")
    if cfg.sync_batchnorm and info.distributed and device.type == "cuda":  # SyncBatchNorm is CUDA-only
        raw = nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    model = _wrap_distributed(raw, cfg.strategy, device) if info.distributed else raw
    optimizer = build_optimizer(raw, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.layer_decay,
                                cfg.layer_decay_type, cfg.no_weight_decay)
    ema = build_ema(raw, cfg.ema_decay) if cfg.ema else None
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    if cfg.compile:
        model = fast.compile(model)

    # ---- resume -----------------------------------------------------------------------------------------
    global_step = 0
    best: dict[str, Any] = {"metrics": None, "step": -1, "ema_metrics": None}
    resume = ckpts.latest() if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume is not None:
        ck = load_checkpoint(resume, map_location="cpu")
        if ck.get("task", "classification") != task.name:
            raise ValueError(f"{resume} is a {ck.get('task', 'classification')!r} checkpoint, not {task.name!r}")
        _load_state(raw, optimizer, ck["model"], ck["optimizer"], fsdp)
        if ema is not None and ck.get("ema") is not None:
            ema.module.load_state_dict(ck["ema"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        global_step = ck["global_step"]
        best.update(ck.get("best", {}))
        restore_rng(ck["rng"])
        log.info(f"Resumed from {resume} at step {global_step} (epoch {global_step // steps_per_epoch}, step "
                 f"{global_step % steps_per_epoch} of {steps_per_epoch})")
    elif info.is_main and ckpts.latest() is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints ({ckpts.latest().name}). Continue it with "
                              f"--resume auto, or start a new run under another name.")

    resolved = {**cfg.record, "resolved": {
        "task": task.name, "world_size": info.world_size,
        "effective_batch": cfg.batch_size * accum * info.world_size, "lr_scaled": cfg.lr,
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "device": str(device),
        "amp": str(dtype).replace("torch.", "") if dtype else "none", "train_samples": len(task.train_set),
        "params": sum(p.numel() for p in raw.parameters()),
        "fast_path": fast.describe("train", device, dtype or torch.float32)}}
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(resolved))
        r = resolved["resolved"]
        log.info(f"Run {run_dir}: {task.describe()}; {r['params'] / 1e6:.2f}M params, {info.world_size} "
                 f"process(es) on {device}, effective batch {r['effective_batch']}, lr {cfg.lr:.3g}, "
                 f"{total_steps} steps ({steps_per_epoch}/epoch)")
        log.info(f"Fast path: {r['fast_path']}")
    state = LoopState(run_dir, global_step, total_steps, steps_per_epoch, ckpts.latest())
    meta = {"task": task.name, "config": resolved, **task.checkpoint_meta()}
    saved_at = [global_step if resume is not None else -1]

    def save(step: int) -> None:
        """last-<step>.pt: everything a resume needs (a collective under FSDP: every rank calls it)."""
        if saved_at[0] == step:
            return
        saved_at[0] = step
        model_state, optim_state = _full_state(raw, optimizer, fsdp) if info.is_main or fsdp else (None, None)
        if info.is_main:
            state.latest_checkpoint = ckpts.save({
                **meta, "model": model_state, "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optim_state, "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": step // steps_per_epoch, "step_in_epoch": step % steps_per_epoch, "global_step": step,
                "best": dict(best), "rng": capture_rng()}, step)

    def epoch_record(epoch_time: float | None) -> dict[str, Any]:
        """The epoch's time and throughput (when it ended) and the mean training loss so far in it."""
        record: dict[str, Any] = {}
        if epoch_time is not None:
            record.update(epoch_time_s=epoch_time, img_per_s=epoch_steps[0] * cfg.batch_size * accum
                          * info.world_size / max(epoch_time, 1e-9))
        if train_loss[1]:
            record["train_loss"] = train_loss[0] / train_loss[1]
        return record

    def evaluate(step: int, epoch_time: float | None) -> dict[str, Any]:
        """Evaluate the model (and its EMA), log, write best.pt / best_ema.pt and a checkpoint."""
        metrics: dict[str, Any] = {}
        if task.evaluate_on_every_rank or info.is_main:
            t0 = time.time()
            # alone on rank 0, the unwrapped model: DDP's forward would wait for the other ranks' buffers
            metrics = task.evaluate(model if task.evaluate_on_every_rank else raw)
            if ema is not None:
                metrics.update({f"ema_{k}": v for k, v in task.evaluate(ema.module).items()})
            model.train()
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            record = {"type": "eval", "step": step, "epoch": step / steps_per_epoch, **scalars,
                      "lr": optimizer.param_groups[-1]["lr"] / optimizer.param_groups[-1]["lr_scale"]}
            record.update(epoch_record(epoch_time))
            log.metric(record)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in scalars.items() if not k.endswith(("APs", "APm", "APl")))
            log.info(f"step {step} (epoch {step / steps_per_epoch:.2f}): {shown} ({time.time() - t0:.0f} s)")
            own = {k: v for k, v in scalars.items() if not k.startswith("ema_")}
            of_ema = {k[4:]: v for k, v in scalars.items() if k.startswith("ema_")}
            for key, values, is_ema in (("metrics", own, False), ("ema_metrics", of_ema, True)):
                value = values.get(task.metric) if task.metric else None
                if value is None or (best[key] is not None and value <= best[key][task.metric]):
                    continue
                best[key] = values
                if not is_ema:
                    best["step"] = step
                weights = ema.module.state_dict() if is_ema else \
                    (_full_state(raw, None, fsdp)[0] if info.is_main or fsdp else None)
                if info.is_main:
                    ckpts.save_best({**meta, "model": weights, "global_step": step,
                                     "epoch": step / steps_per_epoch, "metrics": values}, ema=is_ema)
        if info.distributed and not task.evaluate_on_every_rank:
            torch.distributed.barrier()
        save(step)
        return metrics

    # ---- the loop ---------------------------------------------------------------------------------------
    bad_images, images_seen, train_time = 0, 0, 0.0
    train_loss, epoch_steps = [0.0, 0], [0]
    last_metrics: dict[str, Any] = {}
    stop = min(total_steps, cfg.stop_at) if cfg.stop_at else total_steps
    while global_step < stop:
        epoch, first_step = divmod(global_step, steps_per_epoch)
        sampler.set_epoch(epoch, first_step * accum)
        model.train()
        t_epoch = time.time()
        train_loss[:] = [0.0, 0]
        epoch_steps[0] = 0
        losses: dict[str, torch.Tensor] = {}
        bar = _progress(info.is_main and cfg.progress, steps_per_epoch, first_step, epoch, total_steps,
                        steps_per_epoch)
        micro = first_step * accum
        evaluated_at = -1
        for batch, bad in loader:
            if micro >= steps_per_epoch * accum:
                break  # micro-batches that would not complete an accumulation group
            if bad:
                bad_images += len(bad)
                for path in bad:
                    log.info(f"Skipped unreadable image {path}")
                if bad_images > cfg.max_bad_images:
                    raise DataError(f"{bad_images} unreadable images (more than the {cfg.max_bad_images} allowed); "
                                    f"the last was {bad[-1]}. Check the data set.")
            if micro % accum == 0:
                set_lr(optimizer, lr_at(global_step, total_steps, cfg.lr, cfg.schedule))
            last_micro = micro % accum == accum - 1
            micro += 1
            if batch is not None:  # None: every sample of this micro-batch was unreadable
                # FSDP reduce-scatters every micro-batch (correct, slower); DDP skips the all-reduce until the last
                sync = nullcontext() if (last_micro or not info.distributed or fsdp) else model.no_sync()
                with sync:
                    with autocast():
                        losses = task.loss(model, batch, device)
                    loss = sum(losses.values())
                    if not _all_finite(loss, info):
                        parts = "".join(f", {k} {v.item():.4g}" for k, v in losses.items()) if len(losses) > 1 else ""
                        raise NonFiniteLossError(
                            f"Loss is {loss.item()} at global step {global_step} (epoch {epoch}, step "
                            f"{global_step % steps_per_epoch} of {steps_per_epoch}{parts}); stopped without "
                            f"saving the broken state. Last good checkpoint: {ckpts.latest() or 'none yet'}. "
                            "Try a lower lr, gradient clipping, or amp none.")
                    (scaler.scale(loss / accum) if scaler else loss / accum).backward()
                train_loss[0] += loss.item()
                train_loss[1] += 1
                images_seen += cfg.batch_size * info.world_size
            if not last_micro:
                continue
            # ---- optimizer step ----
            if cfg.clip_grad:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(raw, step=global_step)
            global_step += 1
            epoch_steps[0] += 1
            state.global_step = global_step
            lr = lr_at(global_step - 1, total_steps, cfg.lr, cfg.schedule)
            if bar is not None:
                rate = bar.format_dict.get("rate") or 0.0
                bar.set_postfix(loss=f"{train_loss[0] / max(train_loss[1], 1):.4f}", lr=f"{lr:.2e}",
                                img_s=f"{rate * cfg.batch_size * accum * info.world_size:.0f}", refresh=False)
                bar.update(1)
            if global_step % cfg.log_every == 0 or global_step == 1:
                log.metric({"type": "step", "step": global_step, "epoch": global_step / steps_per_epoch,
                            "loss": train_loss[0] / max(train_loss[1], 1), "lr": lr,
                            **{k: v.item() for k, v in losses.items()}})
            epoch_ends = global_step % steps_per_epoch == 0
            if cfg.eval_every and global_step % cfg.eval_every == 0 and not epoch_ends:
                last_metrics, evaluated_at = evaluate(global_step, None), global_step
            elif (cfg.ckpt_every and global_step % cfg.ckpt_every == 0) or \
                    (global_step == stop and not epoch_ends and stop < total_steps):
                save(global_step)
            for callback in callbacks:
                callback(state)
            if global_step >= stop:
                break
        if bar is not None:
            bar.close()
        epoch_time = time.time() - t_epoch
        train_time += epoch_time  # the epochs' step loops; the end-of-epoch evaluations are not in it
        # ---- the end of an epoch (or of the run): evaluation and checkpoints ----
        done = global_step >= total_steps
        epoch_done = global_step % steps_per_epoch == 0
        due = (cfg.eval_every and global_step % cfg.eval_every == 0) or \
            (cfg.eval_every_epochs and epoch_done and (global_step // steps_per_epoch) % cfg.eval_every_epochs == 0)
        if (done or (epoch_done and due)) and evaluated_at != global_step:
            last_metrics = evaluate(global_step, epoch_time if epoch_done else None)
        else:
            if epoch_done:  # an epoch without evaluation still records its time (eval_every > 1)
                log.metric({"type": "epoch", "step": global_step, "epoch": global_step / steps_per_epoch,
                            **epoch_record(epoch_time)})
            if (epoch_done and cfg.ckpt_each_epoch) or global_step == stop:
                save(global_step)
        if global_step == stop < total_steps:
            log.info(f"Stopped at step {global_step} of {total_steps}; continue with --resume auto")

    # ---- the end: the test set, once; plots and summary -------------------------------------------------
    test: dict[str, Any] = {}
    if global_step >= total_steps and (task.evaluate_on_every_rank or info.is_main):
        test = task.test(model if task.evaluate_on_every_rank else raw)
        if test and ema is not None:
            test.update({f"ema_{k}": v for k, v in task.test(ema.module).items()})
        if test:
            log.metric({"type": "test", "step": global_step, "epoch": global_step / steps_per_epoch, **test})
            log.info("test set (final weights): " + ", ".join(f"{k} {v:.4g}" for k, v in test.items()))
    summary = {"task": task.name, "run_dir": str(run_dir), "steps": global_step, "test": test,
               "epochs": global_step / steps_per_epoch, "best": best, "final": {
                   k: v for k, v in last_metrics.items() if isinstance(v, (int, float))},
               "train_time_s": train_time, "wall_time_s": time.time() - wall0,
               "samples_per_s": images_seen / max(train_time, 1e-9), "bad_images": bad_images, "files": {}}
    if info.is_main:
        if cfg.plots:
            summary["files"].update({k: str(v) for k, v in task.plot(run_dir / "metrics.jsonl", run_dir).items()})
        files = {"config": run_dir / "config.yaml", "metrics": run_dir / "metrics.jsonl", "last": ckpts.latest(),
                 "best": run_dir / "best.pt", "best_ema": run_dir / "best_ema.pt", "tensorboard": run_dir / "tb"}
        summary["files"].update({k: str(v) for k, v in files.items() if v is not None and v.exists()})
    summary = task.summarize(summary)
    if info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.close()
    cleanup()
    return summary


# ---- helpers --------------------------------------------------------------------------------------------

class _Collate:
    """Drops unreadable samples from a micro-batch and collates the rest with the task's function:
    returns (batch or None, [paths of the unreadable ones])."""

    def __init__(self, collate: Callable[[list], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list | tuple) -> tuple[Any, list[str]]:
        if isinstance(items, tuple):  # a batch the data set assembled itself (`get_batch`): (x, y, bad paths)
            x, y, bad = items
            return ((x, y) if len(x) else None), list(bad)
        items = [item if len(item) == 3 else (*item, None) for item in items]
        good = [item[:2] for item in items if item[0] is not None]
        bad = [item[2] for item in items if item[0] is None]
        return (self.collate(good) if good else None), bad


def _all_finite(loss: torch.Tensor, info: DistInfo) -> bool:
    finite = torch.isfinite(loss.detach()).float()
    if info.distributed:  # every rank must stop together, or the others would wait forever in all-reduce
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


def _wrap_distributed(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard each stage (and the isotropic model's blocks), then the rest: parameters, gradients and
        # optimizer state live 1/world_size per rank, as XL needs on 80 GB devices.
        for stage in getattr(model, "stages", getattr(model, "blocks", [])):
            fully_shard(stage)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _full_state(raw: nn.Module, optimizer: torch.optim.Optimizer | None, fsdp: bool) -> tuple[dict, dict | None]:
    """Full model (official layout, on CPU) and optimizer state dicts; under FSDP gathered from the shards,
    a collective every rank must call."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(raw, options=opts)
        return model_state, get_optimizer_state_dict(raw, optimizer, options=opts) if optimizer else None
    model_state = {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}
    return model_state, optimizer.state_dict() if optimizer else None


def _load_state(raw: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
                fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(raw, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    raw.load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


def _progress(enabled: bool, total: int, initial: int, epoch: int, total_steps: int, steps_per_epoch: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    epochs = math.ceil(total_steps / steps_per_epoch)
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="step", dynamic_ncols=True,
                file=sys.stderr, leave=False)


class RunLogger:
    """Rank-0 console messages, metrics.jsonl and TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled, self.run_dir = enabled, run_dir
        self.tb = None
        self.tensorboard = tensorboard

    def info(self, msg: str) -> None:
        if self.enabled:
            print(msg, file=sys.stderr, flush=True)

    def metric(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard:
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            prefix = "train" if record["type"] in ("step", "epoch") else "eval"
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("type", "step", "epoch") and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a metrics.jsonl."""
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


