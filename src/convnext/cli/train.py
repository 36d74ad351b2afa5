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
from ..train.config import Config, ConfigError, dump_yaml, list_recipes, load_config

DEFAULT_RECIPE = "fashion_mnist"


def add_arguments(parser: argparse.ArgumentParser, default_recipe: str = DEFAULT_RECIPE) -> None:
    parser.add_argument("--recipe", default=default_recipe,
                        help=f"a shipped recipe name or a YAML file (default: {default_recipe}); "
                             "--list-recipes shows the shipped ones")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-3 --set run.name=try2 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="continue a run: 'auto' picks the run folder's latest checkpoint")
    parser.add_argument("--out", default=None, help="folder for runs (default: ./runs); the run goes in OUT/NAME")
    parser.add_argument("--name", default=None, help="run name (default: the recipe's name)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")


def recipe_config(args: argparse.Namespace, task: str) -> Config | None:
    """The recipe the arguments name, with their overrides; None when the command only printed something."""
    if args.list_recipes:
        print("\n".join(list_recipes()))
        return None
    overrides = list(args.overrides)
    for flag, key in ((args.resume, "run.resume"), (args.out, "run.out_dir"), (args.name, "run.name")):
        if flag:
            overrides.append(f"{key}={flag}")
    cfg = load_config(args.recipe, overrides)
    if cfg.task != task:
        command = "convnext pretrain" if cfg.task == "fcmae" else "convnext train"
        raise ConfigError(f"{args.recipe} is a {cfg.task} recipe: run it with `{command} --recipe {args.recipe}`")
    if args.print_config:
        print(dump_yaml(cfg.to_dict()), end="")
        return None
    return cfg


def main(args: argparse.Namespace) -> int:
    cfg = recipe_config(args, "classification")
    if cfg is None:
        return 0
    result = train(cfg)
    if result.files:  # rank 0 only
        print(result.summary())
    return 0
