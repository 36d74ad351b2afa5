"""Downstream data: COCO-format detection (torchvision's CocoDetection) and ADE20K-format segmentation.

Both return tensors ready for the models: detection samples are `(image in [0, 1], target dict)` (the
detector normalises and resizes itself); segmentation samples are `(normalised image, label map int64)`.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ----------------------------------------------------------------------------------------------- detection

class _DropCrowd:
    """Remove crowd annotations from a training target (mmdet ignores them as gt, as torchvision's reference)."""

    def __call__(self, image: Any, target: dict) -> tuple[Any, dict]:
        crowd = torch.tensor(target.pop("iscrowd", []), dtype=torch.bool)
        if crowd.any():
            keep = ~crowd
            for key in ("boxes", "masks", "labels"):
                if key in target:
                    target[key] = target[key][keep]
        return image, target


class RandomCropPolicy(v2.Transform):
    """The crop policy of the official 3x config's AutoAugment (chosen with probability `p`, as one of its two
    policies): resize the short side to one of `short_sides` (long side <= 1333), then crop a random
    `crop_range[0]`..`crop_range[1]` pixel high and wide window (mmdet `RandomCrop` "absolute_range",
    negative crops allowed). Boxes are clipped and masks cropped with the image; `SanitizeBoundingBoxes`
    then drops the instances left without area. The detector's own transform resizes afterwards."""

    def __init__(self, p: float = 0.5, short_sides: tuple[int, ...] = (400, 500, 600),
                 crop_range: tuple[int, int] = (384, 600), max_size: int = 1333) -> None:
        super().__init__()
        self.p, self.short_sides, self.crop_range, self.max_size = p, short_sides, crop_range, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if random.random() >= self.p:
            return {}
        h, w = v2.query_size(flat_inputs)
        scale = min(random.choice(self.short_sides) / min(h, w), self.max_size / max(h, w))
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        lo, hi = self.crop_range
        ch, cw = random.randint(min(lo, nh), min(hi, nh)), random.randint(min(lo, nw), min(hi, nw))
        return {"size": [nh, nw], "top": random.randint(0, nh - ch), "left": random.randint(0, nw - cw),
                "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params:
            return inpt
        return TF.crop(TF.resize(inpt, params["size"]), params["top"], params["left"], params["height"],
                       params["width"])


def detection_transform(train: bool, crop_policy: float = 0.5) -> v2.Compose:
    """Training: the official crop policy with probability `crop_policy` (`RandomCropPolicy`), a horizontal
    flip; both: conversion to float in [0, 1]. Multi-scale resizing is the detector's own transform
    (`create_detector(min_size=(480, ..., 800))` draws a short side per batch)."""
    steps: list[Callable] = [_DropCrowd(), v2.ToImage()]
    if train:
        if crop_policy > 0:
            steps.append(RandomCropPolicy(crop_policy))
        steps.append(v2.RandomHorizontalFlip(0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()] if train else \
        [v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def coco_detection(images: str | Path, annotations: str | Path, train: bool, crop_policy: float = 0.5) -> Dataset:
    """A COCO-format data set (an image folder and an instances json) with boxes, labels and masks.

    Labels are the json's category ids, so the detector needs `num_classes = max id + 1` (background 0).
    For training, images with no non-crowd annotation are left out (as mmdet's `filter_empty_gt`), and
    `crop_policy` is the probability of the official random-crop policy (`RandomCropPolicy`; 0 disables).
    The underlying `pycocotools.coco.COCO` is `coco_of(dataset)`.
    """
    images, annotations = Path(images), Path(annotations)
    if not images.is_dir():
        raise FileNotFoundError(f"COCO image folder {images} does not exist: pass the folder holding the images")
    if not annotations.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotations} does not exist: pass an instances_*.json")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        base = CocoDetection(str(images), str(annotations), transforms=detection_transform(train, crop_policy))
    dataset = wrap_dataset_for_transforms_v2(base, target_keys=("boxes", "labels", "masks", "image_id", "iscrowd"))
    if not train:
        return dataset
    coco = base.coco
    keep = [i for i, img_id in enumerate(base.ids)
            if any(not a.get("iscrowd", 0) for a in coco.imgToAnns.get(img_id, []))]
    if not keep:
        raise ValueError(f"{annotations} has no image with a non-crowd annotation to train on")
    return Subset(dataset, keep)


def coco_of(dataset: Dataset) -> Any:
    """The pycocotools `COCO` object behind a data set made by `coco_detection`."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset._dataset.coco


def num_coco_classes(dataset: Dataset) -> int:
    """Classes the detector needs for this data set: the largest category id + 1 (background 0)."""
    return max(coco_of(dataset).getCatIds()) + 1


def collate_detection(batch: list) -> tuple[list, list]:
    """Lists of images and targets: torchvision's detectors take images of different sizes."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


# -------------------------------------------------------------------------------------------- segmentation

class RandomRescale(v2.Transform):
    """mmseg's `Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)`: scale the image so
    that its short side is at most `short * r` and its long side at most `long * r`, r uniform in the range."""

    def __init__(self, short: int = 512, long: int = 2048, ratio_range: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        self.short, self.long, self.ratio_range = short, long, ratio_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        r = random.uniform(*self.ratio_range)
        h, w = v2.query_size(flat_inputs)
        scale = min(self.short * r / min(h, w), self.long * r / max(h, w))
        return {"size": [max(1, round(h * scale)), max(1, round(w * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.resize(inpt, params["size"])  # masks are resized with nearest neighbours


class RandomCropCatMax(v2.Transform):
    """mmseg's `RandomCrop(crop_size, cat_max_ratio=0.75)` + `Pad(size=crop_size)`: draw up to 10 crops until
    no class covers `cat_max_ratio` or more of the crop's labelled pixels (the last draw is kept otherwise),
    then pad the bottom/right up to `size` with 0 (image) and `ignore_index` (labels)."""

    def __init__(self, size: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = size, cat_max_ratio, ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(self.size, h), min(self.size, w)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        for _ in range(10):
            top, left = random.randint(0, h - ch), random.randint(0, w - cw)
            if mask is None or self.cat_max_ratio >= 1:
                break
            crop = mask[..., top:top + ch, left:left + cw]
            counts = crop[crop != self.ignore_index].unique(return_counts=True)[1]
            if len(counts) > 1 and counts.max() < self.cat_max_ratio * counts.sum():
                break
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = TF.crop(inpt, params["top"], params["left"], params["height"], params["width"])
        pad = [0, 0, self.size - params["width"], self.size - params["height"]]
        if pad[2] or pad[3]:
            out = TF.pad(out, pad, fill=self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0)
        return out


def segmentation_train_transform(crop: int = 512, short: int = 512, long: int = 2048) -> v2.Compose:
    """The paper's ADE20K training pipeline (mmseg): random rescale (0.5-2.0), random crop `crop` re-drawn
    until no class covers 75% of it, padded with ignore, horizontal flip, photometric distortion, ImageNet
    normalisation. Difference from mmseg: the photometric distortion is torchvision's ColorJitter with
    mmseg's ranges (brightness as a factor rather than an offset).
    """
    return v2.Compose([
        RandomRescale(short, long),
        RandomCropCatMax(crop),
        v2.RandomHorizontalFlip(0.5),
        v2.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


class SegmentationEvalTransform:
    """Resize the image (not the label) to short side `short`, long side at most `long`, and normalise;
    predictions are resized back to the label's size, as mmseg evaluates at the original resolution."""

    def __init__(self, short: int = 512, long: int = 2048) -> None:
        self.short, self.long = short, long

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask) -> tuple[torch.Tensor, tv_tensors.Mask]:
        h, w = image.shape[-2:]
        scale = min(self.short / min(h, w), self.long / max(h, w))
        image = TF.resize(image, [max(1, round(h * scale)), max(1, round(w * scale))])
        image = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        return image, label


class ADE20KSegmentation(Dataset):
    """ADE20K's folder layout: `root/images/<split>/*.jpg` and `root/annotations/<split>/*.png` (same stem).

    With `reduce_zero_label` (ADE20K's convention, as mmseg): label 0 ("other") becomes 255 (ignored) and
    1..150 become 0..149. Samples are `(image, label int64)` after `transforms(image, label)`.
    """

    def __init__(self, root: str | Path, split: str = "training", transforms: Callable | None = None,
                 reduce_zero_label: bool = True) -> None:
        root = Path(root)
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        for d in (image_dir, label_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d} does not exist: expected ADE20K's layout root/images/{split} and "
                                        f"root/annotations/{split}")
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise FileNotFoundError(f"no images in {image_dir}")
        self.labels = [label_dir / (p.stem + ".png") for p in self.images]
        missing = [str(p) for p in self.labels if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images have no label PNG, e.g. {missing[0]}")
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = tv_tensors.Image(TF.pil_to_tensor(Image.open(self.images[i]).convert("RGB")))
            label = np.array(Image.open(self.labels[i]))
        except OSError as e:
            raise OSError(f"cannot read sample {i} ({self.images[i].name}): {e}") from e
        if label.ndim != 2:
            raise ValueError(f"{self.labels[i]} is not a single-channel label map (shape {label.shape})")
        if self.reduce_zero_label:
            label = label.astype(np.int64)
            label = np.where(label == 0, IGNORE_INDEX, label - 1)
            label[label == IGNORE_INDEX - 1] = IGNORE_INDEX  # 255 stays ignored
        mask = tv_tensors.Mask(torch.from_numpy(np.asarray(label, dtype=np.uint8)))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask.as_subclass(torch.Tensor).long()
