"""Our checkpoint format: model.safetensors + config.json, where config.json is `model.config`
({"model": name, **create_model arguments}) and, under "data_config", the model's data config (input format,
normalisation, eval resize, class names), so the pair alone rebuilds the model and says how to use it.

A directory holding the two files, or a file pair `NAME.safetensors` + `NAME.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data_config import DataSpec
from ..models import ConvNeXtFeatures
from .errors import CheckpointError
from .io import write_json, write_state_dict
from .matching import infer_config

WEIGHTS, CONFIG = "model.safetensors", "config.json"
DATA_CONFIG = "data_config"  # the config.json entry holding DataSpec.to_dict()


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save `model` in our format: `path` is a directory, or a `.safetensors` file (config beside it as
    `.json`), with `model.data_config` if it has one. Returns the weights file. Writes are atomic: an
    interrupted save leaves the old files intact."""
    state_dict = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = dict(getattr(model, "config", None) or infer_config(state_dict))
    if isinstance(model, ConvNeXtFeatures):
        cfg.update(features_only=True, out_indices=list(model.out_indices))
    return save_state_dict(state_dict, path, cfg, getattr(model, "data_config", None))


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                    config: dict[str, Any] | None = None, data_config: DataSpec | None = None) -> Path:
    """Save an official-layout state dict in our format; `config` defaults to what its shapes say."""
    weights, config_file = _paths(Path(path))
    cfg = _jsonable(config or infer_config(state_dict))
    if data_config is not None:
        cfg[DATA_CONFIG] = data_config.to_dict()
    write_state_dict(state_dict, weights)
    write_json(cfg, config_file)
    return weights


def read_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model config of a checkpoint in our format, or None for any other file (or an HF directory)."""
    cfg = _read(path)
    return None if cfg is None else {k: v for k, v in cfg.items() if k != DATA_CONFIG}


def read_data_config(path: str | os.PathLike) -> DataSpec | None:
    """The data config a checkpoint in our format records, or None (saved without one, or not ours)."""
    cfg = _read(path)
    if not cfg or cfg.get(DATA_CONFIG) is None:
        return None
    try:
        return DataSpec.from_dict(cfg[DATA_CONFIG])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the data_config in its config.json is invalid: {e}") from e


def _read(path: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(path)
    if path.is_dir():
        candidates = [path / CONFIG]
    elif path.suffix == ".safetensors":
        candidates = [path.with_suffix(".json"), path.parent / CONFIG]
    else:
        return None
    for config in candidates:
        try:
            cfg = json.loads(config.read_text()) if config.is_file() else None
        except ValueError as e:
            raise CheckpointError(f"{config} is not valid JSON ({e}); fix it or save the model again.") from e
        if isinstance(cfg, dict) and "model" in cfg:  # HF's config.json has "model_type" instead
            return cfg
    return None


def _paths(path: Path) -> tuple[Path, Path]:
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / WEIGHTS, path / CONFIG


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
            if not isinstance(v, torch.Tensor)}
