"""Top-k ImageNet classes for images, with the paper's eval transform; the `convnext predict` command.

Class names come from timm's ImageNet metadata (`timm.data.ImageNetInfo`): 1000 ImageNet-1K classes, 21841
ImageNet-22K classes; other class counts are named by index.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .data.transforms import eval_transform

ImageLike = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """The top-k classes of one image, best first."""

    indices: list[int]
    names: list[str]
    probs: list[float]


@lru_cache(maxsize=4)
def class_names(num_classes: int) -> list[str]:
    """Human-readable class names: ImageNet-1K (1000) or -22K (21841) from timm, else "class i"."""
    from timm.data import ImageNetInfo

    subset = {1000: "imagenet-1k", 21841: "imagenet-22k"}.get(num_classes)
    if subset is None:
        return [f"class {i}" for i in range(num_classes)]
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(num_classes)]


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
            names = class_names(probs.shape[-1])
            top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                results.append(Prediction(i, [names[c] for c in i], p))
    finally:
        model.train(was_training)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files")
    parser.add_argument("--model", default=None,
                        help="model name (default: from --weights, or convnext_tiny with the official weights)")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (ours, official, timm, torchvision or HF), a release tag such as "
                             "in22k_ft_in1k_384, or a URL; default: the model's official release")
    parser.add_argument("--size", type=int, default=224, help="input size (384: squash resize, no crop)")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image")


def main(args: argparse.Namespace) -> int:
    from .checkpoints import CheckpointError, DownloadError, load
    from .models import create_model

    try:
        if args.weights and args.model is None and Path(args.weights).exists():
            model = load(args.weights)
        else:
            model = create_model(args.model or "convnext_tiny", pretrained=args.weights or True)
        results = predict(model, args.images, topk=args.topk, size=args.size)
    except (CheckpointError, DownloadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, result in zip(args.images, results, strict=True):
        print(path)
        for rank, (idx, name, prob) in enumerate(zip(result.indices, result.names, result.probs, strict=True), 1):
            print(f"  {rank}. {prob:7.2%}  {name} ({idx})")
    return 0
