"""Top-k classes for images, with the paper's eval transform.

Class names come from timm's ImageNet metadata (`checkpoints.pretrained.imagenet_class_names`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .checkpoints.pretrained import imagenet_class_names
from .data.transforms import eval_transform

ImageLike = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """The top-k classes of one image, best first."""

    indices: list[int]
    names: list[str]
    probs: list[float]


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an HxW(x3) uint8 array; a bad file names its path."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"Cannot read image {path}: not an image or a corrupt/truncated file ({e}).") from e


@torch.no_grad()
def predict(model: nn.Module, images: ImageLike | Sequence[ImageLike], topk: int = 5, size: int = 224,
            batch_size: int = 16) -> list[Prediction]:
    """The `topk` classes of each image, with softmax probabilities.

    Images go through the paper's eval transform (`convnext.data.transforms.eval_transform(size)`:
    resize to size/0.875 bicubic + center crop below 384, squash to size x size at 384).
    """
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    transform = eval_transform(size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results = []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(load_image(img)) for img in images[start:start + batch_size]])
            probs = model(batch.to(device)).float().softmax(-1)
            names = imagenet_class_names(probs.shape[-1])
            top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                results.append(Prediction(i, [names[c] for c in i], p))
    finally:
        model.train(was_training)
    return results
