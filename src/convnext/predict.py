"""Top-k classes for images, through the model's own eval transform and class names (its `data_config`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .data.transforms import ImageLike, load_image, transform
from .data_config import DataSpec


@dataclass
class Prediction:
    """The top-k classes of one image, best first."""

    indices: list[int]
    names: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, Any]:
        """{"indices", "names", "probs"}, for JSON."""
        return asdict(self)


@torch.no_grad()
def predict(model: nn.Module, images: ImageLike | Sequence[ImageLike], topk: int = 5,
            size: int | tuple[int, int] | None = None, batch_size: int = 16,
            data_config: DataSpec | None = None) -> list[Prediction]:
    """The `topk` classes of each image, with softmax probabilities and the model's class names.

    Images go through the eval transform of `data_config` (default: `model.data_config`, see
    `convnext.transform`); `size` evaluates at another resolution by the paper's protocol
    (`DataSpec.at_size`: squash at 384 and above, resize + center crop below).
    """
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    spec = data_config or getattr(model, "data_config", None) or DataSpec.for_channels(
        (getattr(model, "config", None) or {}).get("in_chans", 3))
    if size is not None:
        spec = spec.at_size(size)
    tf = transform(spec)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results = []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([tf(load_image(img)) for img in images[start:start + batch_size]])
            probs = model(batch.to(device)).float().softmax(-1)
            top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                results.append(Prediction(i, [spec.class_name(c) for c in i], p))
    finally:
        model.train(was_training)
    return results
