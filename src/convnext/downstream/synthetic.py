"""Small synthetic downstream data sets drawn on the fly: shapes in COCO format and as ADE20K label maps.

For tests, demos and the recorded benchmark runs: the classes (rectangle, ellipse, triangle) differ in
shape and in colour range, so a small model learns them in minutes on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("rectangle", "ellipse", "triangle")
# per-class base colours; each shape gets a jittered copy
_COLORS = np.array([[220, 60, 60], [60, 200, 60], [70, 90, 230]])


def _draw(kind: str, box: tuple[int, int, int, int], draw: ImageDraw.ImageDraw, fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "rectangle":
        draw.rectangle(box, fill=fill)
    elif kind == "ellipse":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _scene(rng: np.random.Generator, size: int, max_shapes: int) -> tuple[Image.Image, list[tuple[int, np.ndarray]]]:
    """An image with 1..max_shapes shapes; returns it and (class index, binary mask) per visible shape."""
    bg = rng.integers(0, 90, 3)
    pixels = np.clip(bg + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    owner = np.full((size, size), -1)
    shapes = []
    for k in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(len(SHAPES)))
        w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        color = tuple(int(c) for c in np.clip(_COLORS[cls] + rng.integers(-30, 31, 3), 0, 255))
        _draw(SHAPES[cls], (x0, y0, x0 + w, y0 + h), draw, color)
        m = Image.new("L", (size, size))
        _draw(SHAPES[cls], (x0, y0, x0 + w, y0 + h), ImageDraw.Draw(m), 1)
        owner[np.asarray(m) > 0] = k  # later shapes cover earlier ones
        shapes.append(cls)
    out = [(cls, owner == k) for k, cls in enumerate(shapes)]
    return image, [(cls, m) for cls, m in out if m.sum() >= 16]


def make_coco_shapes(root: str | Path, num_images: int, size: int = 128, max_shapes: int = 3,
                     seed: int = 0) -> tuple[Path, Path]:
    """Write `root/images/*.png` and `root/annotations.json` (COCO instances: boxes, RLE masks, areas).

    Category ids are 1..3 (rectangle, ellipse, triangle), so a detector needs `num_classes=4`.
    Returns (image folder, annotation file).
    """
    from pycocotools import mask as mask_util

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        image, shapes = _scene(rng, size, max_shapes)
        name = f"{i:05d}.png"
        image.save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        for cls, m in shapes:
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1,
                                "bbox": [x, y, w, h], "area": float(m.sum()), "iscrowd": 0, "segmentation": rle})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPES)]
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root / "images", ann_file


def make_ade_shapes(root: str | Path, split: str, num_images: int, size: int = 128, max_shapes: int = 3,
                    seed: int = 0) -> Path:
    """Write an ADE20K-layout split: `root/images/<split>/*.jpg` and `root/annotations/<split>/*.png`.

    Label values follow ADE20K's convention before `reduce_zero_label`: 0 (ignored) on a 1-pixel frame,
    1 background, 2..4 the shapes, i.e. 4 classes after reduction. Returns `root`.
    """
    root = Path(root)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        image, shapes = _scene(rng, size, max_shapes)
        label = np.ones((size, size), np.uint8)
        for cls, m in shapes:
            label[m] = cls + 2
        label[[0, -1], :] = 0
        label[:, [0, -1]] = 0
        image.save(root / "images" / split / f"{i:05d}.jpg", quality=95)
        Image.fromarray(label).save(root / "annotations" / split / f"{i:05d}.png")
    return root
