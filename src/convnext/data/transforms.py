"""The paper's image transforms, built with timm's transform factory, and `transform(model)`: the eval
transform a model's data config describes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T

from ..data_config import DataSpec


def eval_transform(
    size: int | tuple[int, int] = 224,
    crop_pct: float | None = None,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
    crop_mode: str = "center",
) -> Callable:
    """The paper's evaluation transform for PIL images.

    Below 384: resize the short side to size / crop_pct (crop_pct 0.875 by default) and center-crop.
    At 384 and above: resize ("squash") to size x size with no crop, as the official code evaluates
    its 384 models. An explicit `crop_pct` means resize + center crop, unless `crop_mode` is "squash".
    """
    if crop_pct is None and max(size if isinstance(size, tuple) else (size,)) >= 384:
        crop_pct, crop_mode = 1.0, "squash"
    return create_transform(size, is_training=False, interpolation=interpolation,
                            crop_pct=0.875 if crop_pct is None else crop_pct, crop_mode=crop_mode, mean=mean, std=std)


class ToMode:
    """Convert a PIL image (or an HxW[xC] uint8 array) to the PIL mode a model reads: "L" (grayscale) or "RGB".

    A class rather than a lambda so that data loader workers can pickle it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image | np.ndarray) -> Image.Image:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode!r})"


def transform(model_or_spec) -> Callable:
    """The eval transform of a model (its `data_config`, see `convnext.data_config.DataSpec`) or of a data
    config: PIL image or uint8 array -> normalised (in_chans, H, W) tensor, the input the model was evaluated on.

        model = convnext.load("runs/fashion_mnist/best.pt")
        x = convnext.transform(model)(Image.open("shirt.png"))[None]
        print(model.data_config.class_names[model(x).argmax()])

    Images are converted to grayscale for one-channel models and to RGB for three (a model with another
    channel count gets the grayscale image in each channel).
    """
    spec = model_or_spec if isinstance(model_or_spec, DataSpec) else getattr(model_or_spec, "data_config", None)
    if spec is None:  # a model built without convnext.create_model / load: the default for its channels
        spec = DataSpec.for_channels((getattr(model_or_spec, "config", None) or {}).get("in_chans", 3))
    if spec.in_chans in (1, 3):
        return T.Compose([ToMode("L" if spec.in_chans == 1 else "RGB"),
                          eval_transform(spec.input_size, spec.crop_pct, spec.mean, spec.std, spec.interpolation,
                                         spec.crop_mode)])
    # another channel count: the grayscale image in every channel, each normalised with its own statistics
    return T.Compose([ToMode("L"), eval_transform(spec.input_size, spec.crop_pct, (0.0,), (1.0,), spec.interpolation,
                                                  spec.crop_mode),
                      _Repeat(spec.in_chans), T.Normalize(spec.mean, spec.std)])


class _Repeat:
    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x):
        return x.expand(self.n, -1, -1).contiguous()


def train_transform(data_cfg) -> Callable:
    """The paper's training transform for PIL images (timm): random resized crop, flip, RandAugment
    (rand-m9-mstd0.5-inc1), bicubic, random erasing 0.25, from a `DataConfig`."""
    c = data_cfg
    transform = create_transform(c.input_size, is_training=True, auto_augment=c.auto_augment or None,
                                 interpolation=c.interpolation, re_prob=c.reprob, re_mode=c.remode,
                                 color_jitter=c.color_jitter, hflip=c.hflip,
                                 **({"scale": tuple(c.scale)} if c.scale else {}))
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


ImageLike = str | os.PathLike | Image.Image | np.ndarray


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
