"""`convnext pretrain`: ConvNeXt V2's FCMAE masked pretraining with a `task: fcmae` recipe, on the same loop, data and
torchrun support as `convnext train`; fine-tune the result with `convnext train`.

    convnext pretrain                                  # the small default: convnextv2_fmnist on Fashion-MNIST
    torchrun --nproc_per_node 8 -m convnext pretrain --recipe fcmae_base --set data.root=/data/imagenet
    convnext train --recipe fcmae_ft_fashion_mnist --set model.init=runs/fcmae_fashion_mnist/last-00001284.pt
"""

from __future__ import annotations

import argparse
import json

from ..pretrain.task import pretrain
from .train import add_arguments as add_recipe_arguments
from .train import recipe_config

DEFAULT_RECIPE = "fcmae_fashion_mnist"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, DEFAULT_RECIPE)


def main(args: argparse.Namespace) -> int:
    cfg = recipe_config(args, "fcmae")
    if cfg is None:
        return 0
    summary = pretrain(cfg)
    if summary["files"]:  # rank 0 only
        print(json.dumps({"final": summary["final"], "steps": summary["steps"], "last": summary["files"].get("last"),
                          "run_dir": summary["run_dir"]}))
    return 0
