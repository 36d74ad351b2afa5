"""The training loop: `train(cfg)` runs a recipe end to end, in one process or under torchrun.

Read it top to bottom: set-up (devices, data, model, optimizer, EMA, resume), then the epoch loop
(lr per iteration, mixup, autocast, accumulation, clipping, EMA, checkpoints), then evaluation, logging,
plots and the summary. Reuse it for any classifier: `train(cfg, model=my_module, train_set=..., val_set=...)`.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import fast
from ..data.datasets import DataError, SeededDataset, build_datasets, collate_skipping
from ..evaluate import evaluate
from .config import Config, dump_yaml, effective_batch, scaled_lr
from .distributed import DistInfo, ResumableSampler, all_reduce_sum, cleanup, init_distributed
from .optim import build_ema, build_optimizer, lr_at, set_lr
from .state import CheckpointManager, capture_rng, load_checkpoint, restore_rng

# Test hook: after this optimizer step (and its checkpoint) write <run_dir>/paused-at-<step> and wait to be killed.
PAUSE_ENV = "CONVNEXT_PAUSE_AT_STEP"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint of the broken state."""


@dataclass
class TrainResult:
    """What a finished run reports (also written to `<run_dir>/summary.json`)."""

    run_dir: str
    best_top1: float = 0.0
    best_top5: float = 0.0
    best_epoch: int = -1
    best_ema_top1: float | None = None
    best_ema_top5: float | None = None
    final_top1: float = 0.0
    final_ema_top1: float | None = None
    epochs: int = 0
    steps: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    img_per_s: float = 0.0
    bad_images: int = 0
    files: dict[str, str] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """"auto" -> the local CUDA device if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `run.amp` ("auto": bf16 on CUDA; none on CPU, where bf16 pays off only with native
    support such as AMX, so recipes opt in with run.amp=bf16)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "none"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("run.amp=fp16 needs CUDA (it uses a gradient scaler); use bf16 or none on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_model(cfg: Config, num_classes: int, in_chans: int) -> nn.Module:
    """The recipe's model, optionally initialised from `model.init` (fine-tuning; the head is re-initialised
    with `head_init_scale` when the number of classes differs)."""
    from ..api import create_model

    m = cfg.model
    kwargs: dict[str, Any] = dict(num_classes=m.num_classes or num_classes, in_chans=m.in_chans or in_chans,
                                  drop_path_rate=m.drop_path_rate, head_init_scale=m.head_init_scale,
                                  **m.kwargs)
    if m.layer_scale_init_value is not None:
        kwargs["layer_scale_init_value"] = m.layer_scale_init_value
    if m.init and Path(m.init).suffix == ".pt":
        model = create_model(m.name, **kwargs)
        state = load_checkpoint(m.init)["model"]
        own = model.state_dict()
        head = [k for k in state if k.startswith("head.") and k in own and state[k].shape != own[k].shape]
        for k in head:  # a new task: keep the fresh head, as create_model(pretrained=...) does
            del state[k]
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("head.")]:
            raise ValueError(f"{m.init} does not fit {m.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model
    if m.init:
        return create_model(m.name, pretrained=m.init, **kwargs)
    return create_model(m.name, **kwargs)


def train(cfg: Config, model: nn.Module | None = None, train_set=None, val_set=None,
          num_classes: int | None = None) -> TrainResult:
    """Train with `cfg` and return the result; rank 0 writes everything under `run.out_dir/run.name`.

    By default the model and data come from the config. Pass `model` (any nn.Module classifier; layer-wise
    decay needs `layer_group`/`num_layer_groups`) and/or `train_set`/`val_set` (map-style data sets of
    `(image_tensor, label)`) to train something else with the same loop.
    """
    wall0 = time.time()
    # ---- devices, processes, seeds ----------------------------------------------------------------------
    device = resolve_device(cfg.run.device)
    info: DistInfo = init_distributed(device.type)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # The same seed on every rank: identical initial weights, and RNG streams that stay identical across ranks
    # (they draw alike), so rank 0's saved RNG state resumes every rank exactly. Images differ per rank anyway;
    # mixup's lambda and drop-path masks are shared by the ranks within a step (official code: seed + rank).
    seed_everything(cfg.run.seed)
    run_dir = Path(cfg.run.out_dir) / (cfg.run.name or cfg.recipe)
    ckpts = CheckpointManager(run_dir, cfg.run.keep_last)
    log = RunLogger(run_dir, info.is_main, cfg.run.tensorboard)

    # ---- data -------------------------------------------------------------------------------------------
    if train_set is None or val_set is None:
        built = build_datasets(cfg.data)
        train_set, val_set = train_set or built[0], val_set or built[1]
        num_classes, in_chans = num_classes or built[2], built[3]
    else:
        in_chans = int(train_set[0][0].shape[0])  # images are (C, H, W) tensors
    batch = cfg.optim.batch_size
    sampler = ResumableSampler(len(train_set), batch, cfg.run.seed, info.rank, info.world_size)
    accum = cfg.optim.accum_steps
    steps_per_epoch = sampler.batches_per_epoch // accum
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_set)} training images give no complete optimizer step at batch {batch} x "
                        f"{info.world_size} ranks x {accum} accumulation; lower optim.batch_size or accum_steps")
    loader_gen = torch.Generator()  # keeps DataLoader start-up off the global RNG, so resuming is exact
    train_loader = torch.utils.data.DataLoader(
        SeededDataset(train_set), batch_size=batch, sampler=sampler, num_workers=cfg.data.num_workers,
        collate_fn=collate_skipping, pin_memory=device.type == "cuda", generator=loader_gen,
        persistent_workers=False)
    if info.distributed and cfg.run.strategy == "fsdp" and len(val_set) % info.world_size:
        # FSDP's forward is a collective: every rank must run the same number of evaluation batches.
        raise DataError(f"Under FSDP the {len(val_set)} validation images must split evenly over "
                        f"{info.world_size} ranks; set data.limit_val to a multiple of {info.world_size}")
    val_indices = list(range(info.rank, len(val_set), info.world_size))
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(SeededDataset(val_set), val_indices), batch_size=batch * 2,
        num_workers=cfg.data.num_workers, collate_fn=collate_skipping, pin_memory=device.type == "cuda",
        generator=loader_gen)

    # ---- model, optimizer, EMA, precision ---------------------------------------------------------------
    if model is None:
        model = build_model(cfg, num_classes, in_chans)
    model.to(device)
    fsdp = info.distributed and cfg.run.strategy == "fsdp"
    if cfg.run.channels_last and not fsdp:  # FSDP shards only contiguous parameters; inputs stay channels_last
        model.to(memory_format=torch.channels_last)
    if fsdp and cfg.run.ema:
        raise ValueError("run.ema with run.strategy=fsdp is not supported: set run.ema=false or use ddp")
    raw_model = model  # fully_shard works in place; DDP wraps
    if info.distributed:
        model = _wrap_distributed(model, cfg.run.strategy, device)
    lr = scaled_lr(cfg, info.world_size)
    optimizer = build_optimizer(raw_model, lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps,
                                cfg.optim.layer_decay)
    ema = build_ema(raw_model, cfg.run.ema_decay) if cfg.run.ema else None
    dtype = amp_dtype(cfg.run.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    if cfg.run.compile:
        model = fast.compile(model)

    total_steps = steps_per_epoch * cfg.optim.epochs
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)

    # ---- resume -----------------------------------------------------------------------------------------
    start_epoch, start_step, global_step = 0, 0, 0
    best: dict[str, Any] = {"top1": -1.0, "top5": 0.0, "epoch": -1, "ema_top1": -1.0, "ema_top5": 0.0}
    resume_path = _resume_path(cfg.run.resume, ckpts)
    if resume_path is not None:
        ck = load_checkpoint(resume_path, map_location="cpu")
        _load_state(raw_model, optimizer, ck["model"], ck["optimizer"], fsdp)
        if ema is not None and ck.get("ema") is not None:
            ema.module.load_state_dict(ck["ema"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, start_step, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        best.update(ck.get("best", {}))
        restore_rng(ck["rng"])
        log.info(f"Resumed from {resume_path}: epoch {start_epoch}, step {start_step} of {steps_per_epoch}, "
                 f"global step {global_step}")
    elif info.is_main and ckpts.latest() is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints ({ckpts.latest().name}). Continue it with "
                              f"--resume auto, or start a new run with --set run.name=NEW_NAME.")

    resolved = cfg.to_dict()
    resolved["resolved"] = {
        "world_size": info.world_size, "effective_batch": effective_batch(cfg, info.world_size),
        "lr_scaled": lr, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "warmup_steps": warmup_steps, "num_classes": num_classes, "device": str(device),
        "amp": str(dtype).replace("torch.", "") if dtype else "none", "train_images": len(train_set),
        "val_images": len(val_set),
        "params": sum(p.numel() for p in raw_model.parameters()),
    }
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(resolved))
        log.info(f"Run {run_dir}: {resolved['resolved']['params'] / 1e6:.2f}M params, "
                 f"{len(train_set)} train / {len(val_set)} val images, {info.world_size} process(es) on "
                 f"{device}, effective batch {resolved['resolved']['effective_batch']}, lr {lr:.3g}, "
                 f"{steps_per_epoch} steps/epoch x {cfg.optim.epochs} epochs")

    def make_state(epoch: int, step_in_epoch: int) -> dict[str, Any]:
        model_state, optim_state = _full_state(raw_model, optimizer, fsdp)  # collective under FSDP
        return {
            "model": model_state,
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optim_state,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "best": dict(best), "config": resolved, "rng": capture_rng(),
        }

    # ---- loss and mixup ---------------------------------------------------------------------------------
    mixup_fn = _mixup(cfg, num_classes)
    if mixup_fn is not None:
        from timm.loss import SoftTargetCrossEntropy
        criterion: nn.Module = SoftTargetCrossEntropy()  # mixup makes soft targets that carry the smoothing
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.data.label_smoothing)

    def forward_backward(x: torch.Tensor, y: torch.Tensor, last_micro: bool, epoch: int, step: int) -> torch.Tensor:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        # FSDP reduce-scatters every micro-batch (correct, slower); DDP skips the all-reduce until the last
        sync = nullcontext() if (last_micro or not info.distributed or fsdp) else model.no_sync()
        with sync:
            with autocast():
                loss = criterion(model(x), y)
            if not _all_finite(loss, info):
                raise NonFiniteLossError(
                    f"Loss is {loss.item()} at global step {global_step} (epoch {epoch}, step {step} of "
                    f"{steps_per_epoch}); stopped without saving the broken state. Last good checkpoint: "
                    f"{ckpts.latest() or 'none yet'}. Try a lower optim.lr, optim.clip_grad, or run.amp=none.")
            (scaler.scale(loss / accum) if scaler else loss / accum).backward()
        return loss.detach()

    # ---- the loop ---------------------------------------------------------------------------------------
    bad_images = 0
    images_seen, train_time = 0, 0.0
    last_metrics: dict[str, Any] = {}
    pause_at = int(os.environ.get(PAUSE_ENV, "0"))
    done = global_step >= total_steps
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.optim.epochs):
        if done:
            break
        first_step = start_step if epoch == start_epoch else 0
        sampler.set_epoch(epoch, first_step * accum)
        model.train()
        t_epoch, cpu_epoch, loss_sum, loss_n = time.time(), time.process_time(), 0.0, 0
        bar = _progress(info.is_main and cfg.run.progress, steps_per_epoch, first_step, epoch, cfg.optim.epochs)
        micro = first_step * accum
        for x, y, bad in train_loader:
            if micro >= steps_per_epoch * accum:
                break  # micro-batches that would not complete an accumulation group
            if bad:
                bad_images += len(bad)
                for path in bad:
                    log.info(f"Skipped unreadable image {path}")
                if bad_images > cfg.data.max_bad_images:
                    raise DataError(f"{bad_images} unreadable images (more than data.max_bad_images="
                                    f"{cfg.data.max_bad_images}); the last was {bad[-1]}. Check the data set.")
            step_in_epoch = micro // accum
            if micro % accum == 0:
                set_lr(optimizer, lr_at(global_step, total_steps, lr, warmup_steps, cfg.optim.min_lr))
            last_micro = micro % accum == accum - 1
            if x is not None and mixup_fn is not None and len(x) % 2:
                x, y = x[:-1], y[:-1]  # timm's Mixup pairs images: a skipped unreadable one leaves an odd batch
            if x is not None and len(x):  # None: every image of this micro-batch was unreadable
                loss = forward_backward(x, y, last_micro, epoch, step_in_epoch)
                loss_sum += loss.item()
                loss_n += 1
                images_seen += len(x) * info.world_size
            micro += 1
            if not last_micro:
                continue
            # ---- optimizer step ----
            if cfg.optim.clip_grad:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optim.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(raw_model, step=global_step)
            global_step += 1
            cur_lr = optimizer.param_groups[-1]["lr"] / optimizer.param_groups[-1]["lr_scale"]
            if bar is not None:
                rate = bar.format_dict.get("rate") or 0.0
                bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", lr=f"{cur_lr:.2e}",
                                img_s=f"{rate * batch * accum * info.world_size:.0f}", refresh=False)
                bar.update(1)
            if global_step % 50 == 0:
                log.metric({"type": "step", "step": global_step, "epoch": epoch + (step_in_epoch + 1) / steps_per_epoch,
                            "loss": loss_sum / max(loss_n, 1), "lr": cur_lr})
            at_end = global_step >= total_steps
            if ((cfg.run.ckpt_every_steps and global_step % cfg.run.ckpt_every_steps == 0)
                    or (at_end and step_in_epoch + 1 < steps_per_epoch)):
                state = make_state(epoch, step_in_epoch + 1) if info.is_main or fsdp else None
                if info.is_main:
                    ckpts.save(state, global_step)
            if pause_at and global_step == pause_at and info.is_main:
                (run_dir / f"paused-at-{global_step}").touch()
                signal.pause()  # the test kills this process here
            if at_end:
                done = True
                break
        if bar is not None:
            bar.close()
        epoch_time = time.time() - t_epoch
        epoch_cpu = time.process_time() - cpu_epoch  # all threads: on a shared machine, what the epoch cost
        train_time += epoch_time
        epoch_done = micro >= steps_per_epoch * accum

        # ---- evaluation, best checkpoints, epoch checkpoint ----
        if done or (epoch_done and ((epoch + 1) % cfg.run.eval_every == 0 or epoch + 1 == cfg.optim.epochs)):
            metrics = evaluate(model, val_loader, device, dtype, channels_last=cfg.run.channels_last)
            ema_metrics = evaluate(ema.module, val_loader, device, dtype, channels_last=cfg.run.channels_last) \
                if ema is not None else None
            train_loss = all_reduce_sum([loss_sum, loss_n], device)
            last_metrics = {
                "type": "epoch", "epoch": epoch + 1, "step": global_step,
                "train_loss": train_loss[0] / max(1, train_loss[1]),
                "lr": optimizer.param_groups[-1]["lr"] / optimizer.param_groups[-1]["lr_scale"],
                "top1": metrics["top1"], "top5": metrics["top5"], "val_loss": metrics["loss"],
                "epoch_time_s": epoch_time, "epoch_cpu_s": epoch_cpu,
                "img_per_s": steps_per_epoch * batch * accum * info.world_size / max(epoch_time, 1e-9),
            }
            if ema_metrics is not None:
                last_metrics.update(ema_top1=ema_metrics["top1"], ema_top5=ema_metrics["top5"])
            log.metric(last_metrics)
            log.info(f"epoch {epoch + 1}/{cfg.optim.epochs}: train loss {last_metrics['train_loss']:.4f}, "
                     f"val top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}"
                     + (f", EMA top-1 {ema_metrics['top1']:.2f}" if ema_metrics else "")
                     + f" ({epoch_time:.0f} s)")
            if metrics["top1"] > best["top1"]:  # every rank has the all-reduced metrics
                best.update(top1=metrics["top1"], top5=metrics["top5"], epoch=epoch + 1)
                weights = _full_state(raw_model, None, fsdp)[0] if info.is_main or fsdp else None
                if info.is_main:
                    ckpts.save_best({"config": resolved, "epoch": epoch + 1, "model": weights,
                                     "top1": metrics["top1"], "top5": metrics["top5"]})
            if info.is_main:
                weights = {"config": resolved, "epoch": epoch + 1}
                if ema_metrics is not None and ema_metrics["top1"] > best["ema_top1"]:
                    best.update(ema_top1=ema_metrics["top1"], ema_top5=ema_metrics["top5"])
                    ckpts.save_best({**weights, "model": ema.module.state_dict(), "top1": ema_metrics["top1"],
                                     "top5": ema_metrics["top5"]}, ema=True)
        if epoch_done:
            state = make_state(epoch + 1, 0) if info.is_main or fsdp else None
            if info.is_main:
                ckpts.save(state, global_step)

    # ---- the end: plots and summary ---------------------------------------------------------------------
    result = TrainResult(run_dir=str(run_dir), best_top1=max(best["top1"], 0.0), best_top5=best["top5"],
                         best_epoch=best["epoch"], epochs=global_step // steps_per_epoch, steps=global_step,
                         train_time_s=train_time, wall_time_s=time.time() - wall0,
                         img_per_s=images_seen / max(train_time, 1e-9), bad_images=bad_images,
                         final_top1=last_metrics.get("top1", 0.0))
    if ema is not None:
        result.best_ema_top1, result.best_ema_top5 = max(best["ema_top1"], 0.0), best["ema_top5"]
        result.final_ema_top1 = last_metrics.get("ema_top1")
    if info.is_main:
        if cfg.run.plots:
            from .plots import plot_metrics

            for name, path in plot_metrics(run_dir / "metrics.jsonl", run_dir).items():
                result.files[name] = str(path)
        files = {"config": run_dir / "config.yaml", "metrics": run_dir / "metrics.jsonl", "last": ckpts.latest(),
                 "best": run_dir / "best.pt", "best_ema": run_dir / "best_ema.pt", "tensorboard": run_dir / "tb"}
        result.files.update({k: str(v) for k, v in files.items() if v is not None and v.exists()})
        (run_dir / "summary.json").write_text(json.dumps(result.__dict__, indent=2))
    log.close()
    cleanup()
    return result


# ---- helpers --------------------------------------------------------------------------------------------

def _resume_path(resume: str | None, ckpts: CheckpointManager) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return ckpts.latest()
    return Path(resume)


def _mixup(cfg: Config, num_classes: int):
    if cfg.data.mixup <= 0 and cfg.data.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.data.mixup, cutmix_alpha=cfg.data.cutmix, prob=cfg.data.mixup_prob,
                 switch_prob=cfg.data.mixup_switch_prob, label_smoothing=cfg.data.label_smoothing,
                 num_classes=num_classes)


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


def _progress(enabled: bool, total: int, initial: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

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
            prefix = "train" if record["type"] == "step" else "epoch"
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("type", "step", "epoch") and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
