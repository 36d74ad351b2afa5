"""Top-1/top-5 evaluation: the function training and `convnext eval` use, and the mapping of an image
folder's classes onto a model's.

    convnext eval --weights runs/fashion_mnist/best.pt
    convnext eval --weights convnext_tiny_1k_224_ema.pth --data /data/imagenet --split val
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of `targets` are among the top-k `logits`, for each k (k larger than the classes counts all)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets[:, None])
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


TTA_MODES: tuple[str, ...] = ("none", "hflip")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, tta: str = "none") -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of `model` over `loader`, summed over all ranks.

    `loader` yields `(images, targets)` or `(images, targets, bad_paths)`; under torchrun each rank should
    see its own shard (no padding duplicates), and the counts are all-reduced so every rank gets the total.
    `tta="hflip"` scores each image by the mean of its and its mirror image's class probabilities (the loss is
    then the cross-entropy of that mean), for models trained with horizontal flips.
    """
    from .distributed import all_reduce_sum

    if tta not in TTA_MODES:
        raise ValueError(f"Unknown test-time augmentation {tta!r}: use one of {', '.join(TTA_MODES)}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = top1 = top5 = 0
    loss = 0.0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for batch in loader:
        x, y = batch[0], batch[1]
        if x is None:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if tta == "hflip" and x.dim() != 4:
            raise ValueError(f"tta='hflip' mirrors NCHW image batches; got a {x.dim()}-D input")
        with autocast:
            logits = model(x).float()
            if tta == "hflip":
                # log of the mean probability, in log space so that it stays finite where both views' softmax
                # underflows: top-k and the cross-entropy below then score the averaged prediction
                logits = torch.logaddexp(logits.log_softmax(1), model(x.flip(3)).float().log_softmax(1)) - math.log(2)
        c1, c5 = topk_correct(logits, y)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    n, top1, top5, loss = all_reduce_sum([n, top1, top5, loss], device)
    model.train(was_training)
    if n == 0:
        raise ValueError("Evaluation saw no images")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}


def folder_class_map(folder_classes: Sequence[str], class_names: Sequence[str] | None, num_classes: int,
                     where: str = "the folder") -> list[int]:
    """The model's class index for each class folder (in ImageFolder's sorted order).

    By name where every folder is named after one of the model's classes (compared ignoring case and
    punctuation, so "T-shirt_top" is "T-shirt/top", which no folder can be called); else by position where
    there are as many folders as classes (ImageNet's wnid folders sort into its class order)."""
    if class_names:
        index = {_key(n): i for i, n in reversed(list(enumerate(class_names)))}
        if all(_key(c) in index for c in folder_classes):
            return [index[_key(c)] for c in folder_classes]
    if len(folder_classes) == num_classes:
        return list(range(num_classes))
    named = f" named {_few(class_names, 10)}" if class_names else ""
    raise ValueError(f"{where} has {len(folder_classes)} class folders ({_few(folder_classes, 5)}) but the model has "
                     f"{num_classes} classes{named}: name the folders after the model's classes, or give one folder "
                     "per class in class order.")


def _few(names: Sequence[str], n: int) -> str:
    return ", ".join(list(names)[:n]) + (" ..." if len(names) > n else "")


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
