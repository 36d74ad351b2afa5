"""`convnext train`: train with a shipped recipe or a YAML file, overriding any key with --set.

    convnext train                                   # the built-in default: a small ConvNeXt on Fashion-MNIST
    convnext train --recipe in1k_tiny --set data.root=/data/imagenet --set optim.batch_size=64 \\
        --set optim.accum_steps=16                   # the paper's batch 4096 on 4 GPUs
    torchrun --nproc_per_node 8 -m convnext train --recipe in1k_base --set data.root=/data/imagenet
    convnext train --resume auto                     # continue the default run where it stopped
"""

from __future__ import annotations

import argparse

from ..train import train
from ..train.config import dump_yaml, list_recipes, load_config

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
    cfg = load_config(args.recipe, overrides)
    if args.print_config:
        print(dump_yaml(cfg.to_dict()), end="")
        return 0
    result = train(cfg)
    if result.files:  # rank 0 only
        print(result.summary())
    return 0
