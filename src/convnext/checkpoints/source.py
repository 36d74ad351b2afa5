"""Everything a checkpoint says about the model it holds, from any file we read: the weights (official layout),
the model config that rebuilds the network and the data config (input format, class names) where the file
records one.

    training checkpoint   {"model", "model_config", "data_config", "config" (the recipe), ...; last-*.pt: "ema"}
    ours                  model.safetensors + config.json ({"model": name, **arguments, "data_config": {...}})
    HF folder             config.json (model_type, num_channels, id2label) + preprocessor_config.json
    official release      recognised by its file name: the release's ImageNet data config
    any other weights     official/timm/torchvision/HF state dict: the architecture from the tensor shapes

Training checkpoints written before checkpoints carried "model_config"/"data_config" are read too: the
architecture comes from the recipe's model name and the tensor shapes; their data config is left to
`convnext.api.read_source`, which reads the recipe's data section (data sets live above this package).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data_config import DataSpec
from .errors import CheckpointError
from .io import DIR_FILES, read_checkpoint, unwrap_state_dict, weights_file
from .layouts import detect_layout, to_official
from .matching import infer_config
from .ours import read_config, read_data_config
from .pretrained import Release, release_data_config, release_for_file

KINDS = ("training", "ours", "hf", "weights")


@dataclass
class Source:
    """A checkpoint, read: what rebuilds and describes its model.

    `model_config`: {"model": name, **build_model arguments}, as recorded (training checkpoints, ours) or
    inferred from the tensor shapes. `data_config`: as recorded (training checkpoints, ours, HF folders,
    official releases), or None where the file does not say. `recipe`: a training checkpoint's resolved recipe.
    `ema`: the EMA weights a full training checkpoint (`last-*.pt`) carries beside the model's. `layout`: the
    key layout the file stores its weights in (official, timm, torchvision, hf).
    """

    path: Path
    kind: str
    state_dict: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    layout: str = "official"
    data_config: DataSpec | None = None
    recipe: dict[str, Any] | None = None
    ema: dict[str, torch.Tensor] | None = None
    release: Release | None = None

    @property
    def recorded(self) -> bool:
        """Whether the file itself names the model (training checkpoints, ours), rather than its shapes."""
        return self.kind in ("training", "ours")


def read_source(path: str | os.PathLike, key: str | None = None) -> Source:
    """Read any checkpoint we support (see the module docstring). `key` picks the weights of a wrapped file,
    e.g. "ema" in a training checkpoint or "model_ema" in an official one."""
    path = Path(path)
    raw = read_checkpoint(path)
    if is_training_checkpoint(raw):
        return _training(path, raw, key)
    state_dict, layout = _official(path, raw, key)
    ours = read_config(path)
    if ours is not None:
        return Source(path, "ours", state_dict, ours, layout, read_data_config(path))
    hf = _hf_data_config(path)
    if hf is not None:
        return Source(path, "hf", state_dict, infer_config(state_dict), layout, hf)
    release = release_for_file(weights_file(path))
    return Source(path, "weights", state_dict, infer_config(state_dict), layout,
                  release_data_config(release) if release else None, release=release)


def is_training_checkpoint(raw: Mapping[str, Any]) -> bool:
    """A checkpoint our training loop wrote: the weights under "model" beside a model config or a recipe."""
    recipe = raw.get("config")
    return isinstance(raw.get("model"), Mapping) and (
        isinstance(raw.get("model_config"), Mapping)
        or (isinstance(recipe, Mapping) and isinstance(recipe.get("model"), Mapping)))


def _training(path: Path, raw: Mapping[str, Any], key: str | None) -> Source:
    if key is not None and raw.get(key) is None:
        have = [k for k in ("model", "ema") if isinstance(raw.get(k), Mapping)]
        raise CheckpointError(f"{path} has no {key!r} weights; it holds {', '.join(have)}.")
    state_dict, layout = _official(path, raw, key or "model")
    recipe = dict(raw["config"]) if isinstance(raw.get("config"), Mapping) else None
    if isinstance(raw.get("model_config"), Mapping):
        model_config = dict(raw["model_config"])
        if not isinstance(model_config.get("model"), str):
            raise CheckpointError(f"{path}: its model_config names no model (keys {sorted(model_config)}).")
    else:  # written before checkpoints recorded model.config: the recipe's name, the shapes' architecture
        model_config = infer_config(state_dict, name=(recipe or {}).get("model", {}).get("name"))
    data_config = None
    if raw.get("data_config") is not None:
        try:
            data_config = DataSpec.from_dict(raw["data_config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from e
    ema = None
    if key is None and isinstance(raw.get("ema"), Mapping) and raw["ema"]:
        ema = _official(path, raw, "ema")[0]
    return Source(path, "training", state_dict, model_config, layout, data_config, recipe, ema)


def _official(path: Path, raw: Mapping[str, Any], key: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The official-layout weights under `key` and the layout they were stored in; errors name the file."""
    try:
        weights = unwrap_state_dict(raw, key)
        layout = detect_layout(weights)
        return to_official(weights, layout), layout
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _hf_data_config(path: Path) -> DataSpec | None:
    """The data config of an HF transformers folder (or of its weights file), None for anything else."""
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and path.name not in DIR_FILES:
        return None
    config, pre = _json(folder / "config.json"), _json(folder / "preprocessor_config.json")
    if not isinstance(config, dict) or "model_type" not in config:
        return None
    return DataSpec.from_hf(pre if isinstance(pre, dict) else None, config)


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); fix or remove it.") from e
