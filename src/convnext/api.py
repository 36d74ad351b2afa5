"""The public API: build a model by name with weights and speed, load and save it, rebuild it from a config.

The layers below stay apart: `models` is the reference network, `checkpoints` reads and writes weights,
`fast` makes it fast. These functions put them together, once, for every command and for users.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoints, fast
from .models import build_model


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
            or the path of a checkpoint in any layout `convnext.load_state_dict` reads.
        num_classes: classifier outputs (default 1000, or what the pretrained weights have;
            `convnext.IN22K_CLASSES` = 21841 for the 22K head). If it differs from the checkpoint's, only the
            head is re-initialised, with a warning.
        optimize: apply `convnext.optimize` (the same parameters and state dict, computed by the fastest
            kernels this machine runs); False gives the reference computation.
        **kwargs: `convnext.models.build_model` arguments: in_chans, drop_path_rate, layer_scale_init_value,
            head_init_scale, features_only, out_indices, and constructor arguments (depths, dims, patch_size,
            kernel_size, ...).
    """
    if pretrained:
        model = checkpoints.create_pretrained(name, pretrained, num_classes=num_classes, **kwargs)
    else:
        model = build_model(name, num_classes=1000 if num_classes is None else num_classes, **kwargs)
    return fast.optimize(model) if optimize else model


def load(path: str | os.PathLike, *, optimize: bool = True, **overrides: Any) -> nn.Module:
    """Rebuild and load a model from a checkpoint: ours (architecture from config.json) or any official,
    timm, torchvision or HF file (architecture inferred from the tensor shapes).

    `overrides` are `create_model` arguments, e.g. `num_classes=10` (re-initialises only the head, with
    a warning), `features_only=True`, `drop_path_rate=0.1`.
    """
    model = checkpoints.load(path, **overrides)
    return fast.optimize(model) if optimize else model


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save `model` in our format (model.safetensors + config.json in the folder `path`, or `NAME.safetensors` +
    `NAME.json`); the pair alone rebuilds it with `convnext.load`."""
    return checkpoints.save(model, path)


def model_from_config(config: dict[str, Any], *, optimize: bool = True) -> nn.Module:
    """The model a `model.config` dict describes (`{"model": name, **build_model arguments}`), freshly
    initialised: what config.json and training checkpoints store."""
    return create_model(config["model"], optimize=optimize, **{k: v for k, v in config.items() if k != "model"})
