"""`convnext train`: train with a shipped recipe or a YAML file, overriding any key with --set.

    convnext train                                   # the built-in default: a small ConvNeXt on Fashion-MNIST
    convnext train --recipe in1k_tiny --set data.root=/data/imagenet --set optim.batch_size=64 \\
        --set optim.accum_steps=16                   # the paper's batch 4096 on 4 GPUs
    torchrun --nproc_per_node 8 -m convnext train --recipe in1k_base --set data.root=/data/imagenet
    convnext train --resume auto                     # continue the default run where it stopped
"""

from __future__ import annotations

import argparse
import sys

from ..train.config import ConfigError, list_recipes, load_config

DEFAULT_RECIPE = "fashion_mnist"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help=f"a shipped recipe name or a YAML file (default: {DEFAULT_RECIPE}); "
                             "--list-recipes shows the shipped ones")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-3 --set run.name=try2 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="continue a run: 'auto' picks the run folder's latest checkpoint")
    parser.add_argument("--out", default=None, help="folder for runs (default: ./runs); the run goes in OUT/NAME")
    parser.add_argument("--name", default=None, help="run name (default: the recipe's name)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")


def main(args: argparse.Namespace) -> int:
    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"run.resume={args.resume}")
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if args.name:
        overrides.append(f"run.name={args.name}")
    try:
        cfg = load_config(args.recipe, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from ..train.config import dump_yaml

        print(dump_yaml(cfg.to_dict()), end="")
        return 0

    from ..data.datasets import DataError
    from ..train.engine import NonFiniteLossError, train

    try:
        result = train(cfg)
    except (DataError, NonFiniteLossError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.files:  # rank 0 only
        print(summary_text(result))
    return 0


def summary_text(r) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = [
        "",
        f"Run finished: {r.run_dir}",
        f"  best top-1 {r.best_top1:.2f}%  top-5 {r.best_top5:.2f}%  (epoch {r.best_epoch})",
    ]
    if r.best_ema_top1 is not None:
        lines.append(f"  best EMA top-1 {r.best_ema_top1:.2f}%  top-5 {r.best_ema_top5:.2f}%")
    lines += [
        f"  final top-1 {r.final_top1:.2f}%" + (f"  EMA {r.final_ema_top1:.2f}%" if r.final_ema_top1 else ""),
        f"  {r.epochs} epochs, {r.steps} steps, training {r.train_time_s / 60:.1f} min, "
        f"wall-clock {r.wall_time_s / 60:.1f} min, {r.img_per_s:.0f} img/s",
    ]
    if r.bad_images:
        lines.append(f"  skipped {r.bad_images} unreadable images (listed in the log above)")
    lines.append("  files:")
    lines += [f"    {k:11s} {v}" for k, v in r.files.items() if v]
    return "\n".join(lines)
