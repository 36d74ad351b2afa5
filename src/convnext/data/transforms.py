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


def train_transform(data_cfg) -> Callable:
    """The paper's training transform for PIL images (timm): random resized crop, flip, RandAugment
    (rand-m9-mstd0.5-inc1), bicubic, random erasing 0.25, from a `DataConfig`."""
    c = data_cfg
    transform = create_transform(c.input_size, is_training=True, auto_augment=c.auto_augment or None,
                                 interpolation=c.interpolation, re_prob=c.reprob, re_mode=c.remode,
                                 color_jitter=c.color_jitter, hflip=c.hflip)
    for t in getattr(transform, "transforms", []):
        for op in [*getattr(t, "ops", []), *(o for sub in getattr(t, "policy", []) for o in sub)]:
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = _posterize
    return transform


def _posterize(img, bits_to_keep: int, **_):
    """timm's posterize op, with 0 bits kept giving the black image that Pillow < 13 gave. Pillow 13 rejects
    0 bits, and RandAugment's PosterizeIncreasing asks for 0 at magnitude 10, which m9-mstd0.5 draws about
    2% of the time: about 1 training image in 600 would raise and stop the run."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


class SmallImageBatchTransform:
    """Augmentation of a whole batch of small uint8 images (N, C, H, W), e.g. Fashion-MNIST, vectorised but
    with each image's randomness drawn from its own seed (so a batch split over ranks augments identically).

    Training: random crop after zero padding by `crop_padding`, horizontal flip with prob `hflip`, random
    erasing with prob `reprob` (timm's area 2%-33%, aspect 0.3-3.3, per-pixel normal noise), then
    normalisation. Without seeds (evaluation), only normalisation. RandAugment and Mixup are meant for
    ImageNet-scale models and hurt a few-minute run on 28x28 images; per-image PIL transforms would cost more
    than the model here.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], crop_padding: int = 0, hflip: float = 0.0,
                 reprob: float = 0.0) -> None:
        import torch

        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.pad, self.hflip, self.reprob = crop_padding, hflip, reprob

    def __call__(self, images, seeds=None):
        import math

        import torch
        import torch.nn.functional as F

        if seeds is None:
            return (images.float() / 255.0 - self.mean) / self.std
        n, c, h, w = images.shape
        # Per image: crop offsets, flip, erasing (apply, area, log-aspect, top, left), and its noise.
        u = torch.empty(n, 8)
        noise = torch.empty(n, c, h, w)
        g = torch.Generator()
        for i, s in enumerate(seeds):
            g.manual_seed(int(s))
            u[i] = torch.rand(8, generator=g)
            if self.reprob:
                noise[i] = torch.randn(c, h, w, generator=g)
        p = self.pad
        dy = (u[:, 0] * (2 * p + 1)).long().clamp(max=2 * p)
        dx = (u[:, 1] * (2 * p + 1)).long().clamp(max=2 * p)
        flip = u[:, 2] < self.hflip
        ar_h, ar_w = torch.arange(h), torch.arange(w)
        rows = dy[:, None] + ar_h  # (n, h) rows of the padded image
        cols = torch.where(flip[:, None], dx[:, None] + (w - 1 - ar_w), dx[:, None] + ar_w)
        # Crop and flip in one gather on the uint8 NHWC images; padding is black (0) before normalisation.
        padded = (F.pad(images, (p, p, p, p)) if p else images).permute(0, 2, 3, 1)
        x = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        x = (x.float() / 255.0 - self.mean) / self.std
        if self.reprob:
            area = h * w * (0.02 + u[:, 4] * (1 / 3 - 0.02))
            aspect = torch.exp(math.log(0.3) + u[:, 5] * (math.log(1 / 0.3) - math.log(0.3)))
            eh = torch.sqrt(area * aspect).round().long()
            ew = torch.sqrt(area / aspect).round().long()
            ok = (u[:, 3] < self.reprob) & (eh < h) & (ew < w)
            top = (u[:, 6] * (h - eh + 1).float()).long()
            left = (u[:, 7] * (w - ew + 1).float()).long()
            mask = ((ar_h[None, :, None] >= top[:, None, None]) & (ar_h[None, :, None] < (top + eh)[:, None, None])
                    & (ar_w[None, None, :] >= left[:, None, None]) & (ar_w[None, None, :] < (left + ew)[:, None, None])
                    & ok[:, None, None])
            x = torch.where(mask[:, None], noise, x)
        return x.contiguous()
