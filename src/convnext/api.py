"""The public API: build a model by name with weights and speed, load and save it, rebuild it from a config.

The layers below stay apart: `models` is the reference network, `checkpoints` reads and writes weights,
`fast` makes it fast. These functions put them together, once, for every command and for users.

Every model they return carries `model.data_config` (a `convnext.data_config.DataSpec`: input channels and
size, mean/std, eval resize, class names), and `convnext.transform(model)` is its eval transform:

    model = convnext.load("runs/fashion_mnist/best.pt")
    x = convnext.transform(model)(Image.open("shirt.png"))[None]
    print(model.data_config.class_name(int(model(x).argmax())))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoints, fast
from .checkpoints import Source
from .data_config import data_spec
from .models import MODELS, build_model, unknown_model


def create_model(
    name: str,
    *,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    optimize: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a ConvNeXt by name, optionally with weights.

    Args:
        name: one of `convnext.list_models()`.
        pretrained: False; True for the default official release; a tag such as "in22k_ft_in1k_384"; a URL;
            or the path of a checkpoint in any layout `convnext.load` reads (a file that names its model, ours
            or a training checkpoint, must hold `name`; its architecture arguments are taken from it).
        num_classes: classifier outputs (default 1000, or what the pretrained weights have;
            `convnext.IN22K_CLASSES` = 21841 for the 22K head). If it differs from the checkpoint's, only the
            head is re-initialised, with a warning.
        optimize: apply `convnext.optimize` (the same parameters and state dict, computed by the fastest
            kernels this machine runs); False gives the reference computation.
        **kwargs: `convnext.models.build_model` arguments: in_chans, drop_path_rate, layer_scale_init_value,
            head_init_scale, features_only, out_indices, and constructor arguments (depths, dims, patch_size,
            kernel_size, ...).

    The model's `data_config` is the weights' (a release's: ImageNet; a checkpoint's own), or for a randomly
    initialised model ImageNet's input format (and class names, for a 1000- or 21841-class head), as timm does.
    """
    if name not in MODELS:  # before any download: a typo is named as such
        raise unknown_model(name)
    if pretrained:
        path, release = checkpoints.resolve_weights(name, pretrained)
        model = checkpoints.build_from_source(read_source(path), name, release=release, num_classes=num_classes,
                                              **kwargs)
    else:
        model = build_model(name, num_classes=1000 if num_classes is None else num_classes, **kwargs)
        model.data_config = checkpoints.data_config_for(model)
    return fast.optimize(model) if optimize else model


def load(path: str | os.PathLike, *, key: str | None = None, optimize: bool = True, **overrides: Any) -> nn.Module:
    """The model a checkpoint holds, ready to use, with its `data_config`: a training checkpoint of ours
    (`best.pt`, `best_ema.pt`, `last-*.pt`), our safetensors format, an HF folder, or any official, timm or
    torchvision file (architecture inferred from the tensor shapes; an official release is recognised by its
    file name). See `read_source`.

    `key` picks other weights in the file (e.g. "ema" in a `last-*.pt`). `overrides` are `create_model`
    arguments, e.g. `num_classes=10` (re-initialises only the head, with a warning), `features_only=True`,
    `drop_path_rate=0.1`.
    """
    model = checkpoints.build_from_source(read_source(path, key), **overrides)
    return fast.optimize(model) if optimize else model


def read_source(path: str | os.PathLike, key: str | None = None) -> Source:
    """Read a checkpoint: its weights (official layout), model config and data config
    (`convnext.checkpoints.Source`), what every command starts from.

    A training checkpoint written before checkpoints recorded their data config gets it from its recipe's
    data section (Fashion-MNIST's format and names; an image folder's size, crop and class folders).
    `data_config` stays None only where the file says nothing (bare weights of unknown origin); building the
    model then gives the default (`convnext.checkpoints.data_config_for`).
    """
    source = checkpoints.read_source(path, key)
    if source.data_config is None and source.recipe is not None:
        spec = data_spec(source.recipe.get("data") or {}, source.model_config.get("in_chans", 3))
        classes = source.model_config.get("num_classes")
        source.data_config = spec.for_classes(classes) if classes is not None else spec
    return source


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save `model` in our format (model.safetensors + config.json in the folder `path`, or `NAME.safetensors` +
    `NAME.json`); the pair alone rebuilds it with `convnext.load`, with its data config."""
    return checkpoints.save(model, path)
