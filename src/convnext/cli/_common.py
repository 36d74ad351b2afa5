"""What several commands share: argument types, and the model a --weights/--model pair means."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '1280x800' -> (1280, 800) (H x W), for the command lines."""
    h, _, w = text.lower().partition("x")
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be N or HxW, e.g. 224 or 1280x800") from None


def load_weights(weights: str | None, model: str | None, *, optimize: bool = True, **kwargs) -> nn.Module:
    """The model `--weights` and `--model` name, with its `data_config`:

    - a checkpoint path alone: the model it holds (`convnext.load`: the architecture and data config from the
      file itself);
    - a path with --model: that model with those weights (`create_model(name, pretrained=path)`);
    - a release tag or URL: --model (default convnext_tiny) with it; nothing: convnext_tiny's default release.
    """
    from ..api import create_model, load

    if weights and model is None and Path(weights).exists():
        return load(weights, optimize=optimize, **kwargs)
    if weights and model is None and ("/" in weights or "." in weights) and not weights.startswith("http"):
        raise FileNotFoundError(f"Checkpoint not found: {weights}")
    return create_model(model or "convnext_tiny", pretrained=weights or True, optimize=optimize, **kwargs)
