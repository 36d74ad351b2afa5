"""Segmentation inference as mmseg runs it: whole-image or sliding-window, single- or multi-scale with flip."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _logits(model: nn.Module, image: torch.Tensor, mode: str, crop: int, stride: int) -> torch.Tensor:
    if mode == "whole":
        return model(image)["out"]
    if mode != "slide":
        raise ValueError(f"mode must be 'whole' or 'slide', not {mode!r}")
    # mmseg's slide_inference: overlapping crops whose logits are averaged where they overlap
    n, _, h, w = image.shape
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    out = count = None
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logits = model(image[:, :, y1:y2, x1:x2])["out"]
            if out is None:
                out = image.new_zeros(n, logits.shape[1], h, w)
                count = image.new_zeros(1, 1, h, w)
            out[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


@torch.no_grad()
def segment(
    model: nn.Module,
    image: torch.Tensor,
    out_size: Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    crop: int = 512,
    stride: int = 341,
) -> torch.Tensor:
    """Class probabilities (N, C, H, W) at `out_size` (default: the image's size).

    Each scale r resizes the (already test-resized) image by r; each pass's logits are resized to
    `out_size` and soft-maxed, and the probabilities are averaged over scales and flips, as mmseg's
    `aug_test` (the paper's multi-scale: scales 0.5-1.75 with flip). `mode="slide"` runs overlapping
    `crop` x `crop` windows with `stride`, as the official ADE20K configs (512, 341).
    """
    model.eval()
    out_size = tuple(image.shape[-2:] if out_size is None else out_size)
    h, w = image.shape[-2:]
    total = None
    for s in scales:
        x = image if s == 1.0 else F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear",
                                                 align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = _logits(model, xi, mode, crop, stride)
            logits = logits.flip(-1) if flipped else logits
            probs = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False).softmax(1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
