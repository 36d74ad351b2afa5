"""The paper's image transforms, built with timm's transform factory."""

from __future__ import annotations

from collections.abc import Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform


def eval_transform(
    size: int = 224,
    crop_pct: float | None = None,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
) -> Callable:
    """The paper's evaluation transform for PIL images.

    Below 384: resize the short side to size / crop_pct (crop_pct 0.875 by default) and center-crop.
    At 384 and above: resize ("squash") to size x size with no crop, as the official code evaluates
    its 384 models. An explicit `crop_pct` always means resize + center crop.
    """
    if crop_pct is None and size >= 384:
        return create_transform(size, is_training=False, interpolation=interpolation, crop_pct=1.0,
                                crop_mode="squash", mean=mean, std=std)
    return create_transform(size, is_training=False, interpolation=interpolation,
                            crop_pct=0.875 if crop_pct is None else crop_pct, mean=mean, std=std)
