"""Our checkpoint format: model.safetensors + config.json, where config.json is `model.config`
({"model": name, **create_model arguments}), so the pair alone rebuilds the model.

A directory holding the two files, or a file pair `NAME.safetensors` + `NAME.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import ConvNeXtFeatures
from .io import write_json, write_state_dict
from .matching import infer_config

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save `model` in our format: `path` is a directory, or a `.safetensors` file (config beside it as
    `.json`). Returns the weights file. Writes are atomic: an interrupted save leaves the old files intact."""
    state_dict = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = dict(getattr(model, "config", None) or infer_config(state_dict))
    if isinstance(model, ConvNeXtFeatures):
        cfg.update(features_only=True, out_indices=list(model.out_indices))
    return save_state_dict(state_dict, path, cfg)


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                    config: dict[str, Any] | None = None) -> Path:
    """Save an official-layout state dict in our format; `config` defaults to what its shapes say."""
    weights, config_file = _paths(Path(path))
    write_state_dict(state_dict, weights)
    write_json(_jsonable(config or infer_config(state_dict)), config_file)
    return weights


def read_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The config of a checkpoint in our format, or None for any other file (or an HF directory)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / CONFIG]
    elif path.suffix == ".safetensors":
        candidates = [path.with_suffix(".json"), path.parent / CONFIG]
    else:
        return None
    for config in candidates:
        cfg = json.loads(config.read_text()) if config.is_file() else None
        if isinstance(cfg, dict) and "model" in cfg:  # HF's config.json has "model_type" instead
            return cfg
    return None


def load(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild and load a model from a checkpoint: ours (architecture from config.json) or any official,
    timm, torchvision or HF file (architecture inferred from the tensor shapes).

    `overrides` are `create_model` arguments, e.g. `num_classes=10` (re-initialises only the head, with
    a warning), `features_only=True`, `drop_path_rate=0.1`.
    """
    from .build import create_pretrained
    from .io import load_state_dict

    cfg = read_config(path) or infer_config(load_state_dict(path))
    cfg = {**cfg, **overrides}
    name = cfg.pop("model")
    return create_pretrained(name, str(path), **cfg)


def _paths(path: Path) -> tuple[Path, Path]:
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / WEIGHTS, path / CONFIG


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
            if not isinstance(v, torch.Tensor)}
