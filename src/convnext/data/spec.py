"""The data config (`convnext.data_config.DataSpec`) of a training recipe's data section: what the training
loop records in every checkpoint, and how a checkpoint written before checkpoints recorded one is read."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data_config import DataSpec
from .datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD


def recipe_data_spec(data: Mapping[str, Any] | Any, *, in_chans: int | None = None,
                     class_names: Sequence[str] | None = None, num_classes: int | None = None) -> DataSpec:
    """The input format and class names of the images a recipe's data section (`DataConfig` or its dict)
    trains on: what the model needs to classify a new image the way it was evaluated.

    Fashion-MNIST: 28x28 grayscale, its own mean/std, its ten class names. An image folder: the recipe's
    input size, interpolation and crop (the paper's: 0.875 below 384, squash at 384 and above), ImageNet's
    mean/std (the recipe's transforms normalise with them), and `class_names` (the training folder's class
    folders; when not given, read from `root/train_split` if that folder is still there).
    `in_chans` (default: the data set's) and `num_classes` (to check the names against) come from the model.
    """
    d = dataclasses.asdict(data) if dataclasses.is_dataclass(data) else dict(data)
    if d.get("dataset") == "fashion_mnist":
        chans = in_chans or 1
        # The evaluation batch transform only normalises the 28x28 images; a PIL image of another size is
        # brought to 28x28 first (resize + center crop, no margin).
        spec = DataSpec(in_chans=chans, input_size=(28, 28), mean=FASHION_MNIST_MEAN * chans,
                        std=FASHION_MNIST_STD * chans, interpolation="bilinear", crop_pct=1.0,
                        class_names=tuple(class_names or FASHION_MNIST_CLASSES))
    else:
        chans = in_chans or 3
        size = int(d.get("input_size") or 224)
        # the recipe's transforms normalise with ImageNet's mean/std (timm's defaults)
        spec = DataSpec.for_channels(chans, interpolation=d.get("interpolation") or "bicubic").at_size(size)
        if d.get("crop_pct"):
            spec = spec.replace(crop_pct=float(d["crop_pct"]), crop_mode="center")
        names = tuple(class_names) if class_names else _folder_classes(d)
        spec = spec.replace(class_names=names)
    return spec.for_classes(num_classes) if num_classes is not None else spec


def _folder_classes(d: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The class folders ImageFolder would find in the recipe's training split, if it is on this machine."""
    if not d.get("root"):
        return None
    split = Path(d["root"]) / (d.get("train_split") or "train")
    if not split.is_dir():
        return None
    names = sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    return tuple(names) or None
