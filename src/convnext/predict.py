"""Top-k classes for images, through the model's own eval transform and class names (its `data_config`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from .data.transforms import transform
from .data_config import DataSpec

ImageLike = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """The top-k classes of one image, best first."""

    indices: list[int]
    names: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, Any]:
        """{"indices", "names", "probs"}, for JSON."""
        return asdict(self)


def load_image(image: ImageLike) -> Image.Image:
    """A PIL image from a path, a PIL image or an HxW(x3) uint8 array, turned upright by its EXIF orientation
    (as phones store photos); a bad file names its path. The model's transform converts it to its channels."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return img
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # PIL raises these for files that are not images or are truncated/corrupt
        raise ValueError(f"Cannot read image {path}: not an image or a corrupt/truncated file ({e}).") from e


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
