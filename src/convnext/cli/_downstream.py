"""Command-line options shared by `convnext train-detection` and `convnext train-segmentation`."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..downstream.engine import DownstreamTask
from ..train.loop import LoopConfig, run, seed_everything
from ..train.optim import LRSchedule


def add_common_arguments(parser: argparse.ArgumentParser, model: str, layer_decay: float, warmup: int,
                         batch: int) -> None:
    """Model, run and optimisation options, with the paper's settings as defaults."""
    m = parser.add_argument_group("model")
    m.add_argument("--model", default=model, help=f"architecture (default {model})")
    m.add_argument("--pretrained", default=None, metavar="PATH|TAG",
                   help="backbone weights: a classification checkpoint in any layout convnext reads, or a tag")
    m.add_argument("--drop-path", type=float, default=0.4, help="backbone stochastic depth (paper T: 0.4)")
    m.add_argument("--model-args", type=json.loads, default={}, metavar="JSON",
                   help='more constructor arguments, e.g. \'{"backbone_kwargs": {"depths": [1,1,1,1]}}\'')
    r = parser.add_argument_group("run")
    r.add_argument("--out", default="runs", help="folder for runs (default ./runs); the run goes in OUT/NAME")
    r.add_argument("--name", default=None, help="run name (default: the model name)")
    r.add_argument("--resume", default=None, metavar="auto|PATH", help="continue a run ('auto': its latest)")
    r.add_argument("--eval-only", default=None, metavar="CHECKPOINT", help="evaluate a checkpoint and exit")
    r.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="train and evaluate on N generated shape images (written under the run folder): a demo")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    r.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"],
                   help="autocast (auto: bf16 on CUDA)")
    r.add_argument("--workers", type=int, default=2, help="data loader processes per training process")
    r.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is much faster on a CPU shared with other jobs)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--eval-every", type=int, default=0, metavar="ITERS", help="evaluate every ITERS (0: at the end)")
    r.add_argument("--ckpt-every", type=int, default=0, metavar="ITERS", help="also checkpoint every ITERS")
    r.add_argument("--stop-at", type=int, default=0, metavar="ITER",
                   help="checkpoint and stop at ITER without changing the schedule (resume with --resume auto)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (OUT/NAME/tb)")
    o = parser.add_argument_group("optimisation (AdamW)")
    o.add_argument("--batch-size", type=int, default=batch, help=f"images per process (default {batch})")
    o.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (paper 1e-4)")
    o.add_argument("--weight-decay", type=float, default=0.05, help="paper 0.05")
    o.add_argument("--layer-decay", type=float, default=layer_decay,
                   help=f"backbone lr decay per layer group (default {layer_decay}; 0 disables)")
    o.add_argument("--warmup-iters", type=int, default=warmup, help=f"linear warmup (default {warmup})")
    o.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm (default: off)")


def loop_config(args: argparse.Namespace, iters: int, kind: str, warmup_ratio: float,
                milestones: tuple[int, ...] = ()) -> LoopConfig:
    """The `LoopConfig` the common options describe, for a run of `iters` iterations on the `kind` schedule."""
    return LoopConfig(
        run_dir=str(run_dir(args)), iters=iters, batch_size=args.batch_size, lr=args.lr,
        schedule=LRSchedule(kind, warmup_steps=args.warmup_iters, warmup_ratio=warmup_ratio, milestones=milestones),
        weight_decay=args.weight_decay, layer_decay=args.layer_decay or None, clip_grad=args.clip_grad,
        eval_every=args.eval_every, ckpt_every=args.ckpt_every, device=args.device, amp=args.amp, seed=args.seed,
        workers=args.workers, threads=args.threads or None, resume=args.resume, progress=not args.no_progress,
        tensorboard=args.tensorboard, stop_at=args.stop_at, sync_batchnorm=True, log_every=20,
        record={"args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, type(None)))}})


def run_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) / (args.name or args.model)


def run_and_report(task: Callable[[], DownstreamTask], cfg: Callable[[DownstreamTask], LoopConfig], seed: int) -> int:
    """Build the task, train, print the summary (errors reach the user as one line through the CLI)."""
    seed_everything(seed)  # the model's initial weights: the same in every process and every run
    t = task()
    summary = run(t, cfg(t))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 evaluates and reports
        best = {**(summary["best"]["metrics"] or {}), "step": summary["best"]["step"]}
        print(json.dumps({"best": best, "final": summary["final"], "run_dir": summary["run_dir"]}))
    return 0
