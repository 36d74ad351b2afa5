"""Top-1 error of a classifier on class folders, and on a corrupted copy laid out as ImageNet-C
(`ROOT/<corruption>/<severity>/<class>/<image>`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from .metrics import CORRUPTIONS, SEVERITIES
from .subsets import imagenet_synsets, masked_predictions


def class_indices(classes: Sequence[str]) -> list[int]:
    """The classifier's output index for each class folder name.

    ImageNet WordNet ids map to their 1000-class index (so a folder holding only some classes, like
    ImageNet-A's 200, is still scored against the right logits); integer names ("0", "7") are the index
    itself, as `convnext corrupt` writes them; anything else keeps ImageFolder's sorted order.
    """
    synsets = {s: i for i, s in enumerate(imagenet_synsets())}
    if all(c in synsets for c in classes):
        return [synsets[c] for c in classes]
    if all(c.isdigit() for c in classes):
        return [int(c) for c in classes]
    return list(range(len(classes)))


class _Loader:
    """Open an image in a fixed mode (a class, not a closure, so that worker processes can unpickle it)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            return img.convert(self.mode)


def image_folder(root: str | os.PathLike, transform: Callable, image_mode: str = "RGB") -> ImageFolder:
    """An ImageFolder whose targets are the classifier's indices (see `class_indices`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected {root}/<class>/<image> files")

    dataset = ImageFolder(str(root), transform=transform, loader=_Loader(image_mode))
    mapping = class_indices(dataset.classes)
    dataset.target_transform = mapping.__getitem__
    return dataset


@torch.no_grad()
def top1_error(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    keep: Sequence[int] | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    desc: str | None = None,
) -> float:
    """Top-1 error (fraction) of `model` on `dataset`; with `keep`, only those classes may be predicted
    (the ImageNet-A/-R protocol). `limit` scores an evenly spaced subset of that many images."""
    if limit is not None and limit < len(dataset):
        step = len(dataset) / limit
        dataset = Subset(dataset, [int(i * step) for i in range(limit)])
    if len(dataset) == 0:
        raise ValueError(f"no images to evaluate{f' in {desc}' if desc else ''}")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    model.eval()
    wrong = total = 0
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=None):
        pred = masked_predictions(model(images.to(device)).float(), keep).cpu()
        wrong += int((pred != targets).sum())
        total += len(targets)
    return wrong / total


def evaluate_corruptions(
    model: nn.Module,
    root: str | os.PathLike,
    transform: Callable,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    image_mode: str = "RGB",
    **kwargs,
) -> dict[str, list[float]]:
    """Top-1 error on every `root/<corruption>/<severity>` folder: {corruption: [error at each severity]}.

    Keyword arguments go to `top1_error` (batch_size, workers, device, limit).
    """
    root = Path(root)
    missing = [f"{c}/{s}" for c in corruptions for s in severities if not (root / c / str(s)).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(
            f"{root} lacks {len(missing)} corruption/severity folders (first: {', '.join(missing[:3])}); "
            f"found corruptions {found}. Expected the ImageNet-C layout ROOT/<corruption>/<severity>/<class>/; "
            "`convnext corrupt` writes it, or pass --corruptions for a subset.")
    errors: dict[str, list[float]] = {}
    for c in corruptions:
        errors[c] = [top1_error(model, image_folder(root / c / str(s), transform, image_mode),
                                desc=f"{c}/{s}", **kwargs) for s in severities]
    return errors
