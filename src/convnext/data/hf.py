"""Hugging Face datasets on local disk (a `save_to_disk` folder or parquet files) as map-style data sets of
`(image, target, bad_path)`, like `CheckedImageFolder`: the image column decoded by us (the same pixels a folder of
the same files gives, and unreadable images reported instead of raised), the label column as the target, the class
names from its ClassLabel feature."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .datasets import DataError, decode_image
from .shards import _needs


def _split_name(split: str, names: Sequence[str], where: str) -> str:
    if split in names:
        return split
    if split == "val" and "validation" in names:  # the Hub's name for it
        return "validation"
    raise DataError(f"{where} has no split {split!r}; it has {', '.join(names)}. Set data.train_split / "
                    f"data.val_split to one of them.")


def _parquet_files(root: Path, split: str) -> list[Path]:
    if any(c in split for c in "*?["):
        return sorted(root.glob(split))
    for name in (split, "validation") if split == "val" else (split,):
        for pattern in (f"{name}/**/*.parquet", f"**/{name}-*.parquet", f"**/{name}.parquet"):
            found = sorted(root.glob(pattern))
            if found:
                return found
    return []


def load_split(root: str | os.PathLike, split: str):
    """The `split` of the Hugging Face dataset in `root`: a `DatasetDict.save_to_disk` folder, a folder per split
    saved with `Dataset.save_to_disk`, or parquet files (`<split>-*.parquet`, `<split>/*.parquet`, the Hub's
    `data/<split>-00000-of-00004.parquet`, or a glob given as the split). "val" also finds "validation".

    Parquet files are converted once into the datasets cache ($HF_DATASETS_CACHE), which memory-maps them."""
    datasets = _needs("datasets", "data.dataset=hf")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Hugging Face dataset folder {root} does not exist (data.root)")
    if (root / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(root))
        return dd[_split_name(split, list(dd), str(root))]
    for name in (split, "validation") if split == "val" else (split,):
        if (root / name / "state.json").is_file():
            return datasets.load_from_disk(str(root / name))
    files = _parquet_files(root, split)
    if files:
        return datasets.load_dataset("parquet", data_files={"split": [str(f) for f in files]}, split="split")
    if (root / "state.json").is_file():
        raise DataError(f"{root} holds a single Dataset without splits; save a DatasetDict with {split!r} and the "
                        f"other split (DatasetDict({{'train': ..., 'val': ...}}).save_to_disk), or one folder per "
                        f"split")
    raise DataError(f"{root} holds no Hugging Face dataset for split {split!r}: expected a save_to_disk folder "
                    f"(dataset_dict.json, or {split}/state.json) or parquet files ({split}-*.parquet, "
                    f"{split}/*.parquet, data/{split}-*.parquet)")


class HFImageDataset(torch.utils.data.Dataset):
    """A Hugging Face `datasets.Dataset` with an image column (an `Image` feature) and an integer label column (a
    `ClassLabel` feature, else a column named label/labels/cls) as items `(image, target, bad_path)`.

    `classes`: the class names; by default the ClassLabel's names, else "0".."N-1".
    """

    def __init__(self, ds, transform: Callable | None = None, bad_images: str = "skip",
                 classes: Sequence[str] | None = None, name: str = "train") -> None:
        import datasets

        feats = ds.features
        images = [k for k, f in feats.items() if isinstance(f, datasets.Image)]
        labels = [k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)] or [
            k for k in ("label", "labels", "cls")
            if isinstance(feats.get(k), datasets.Value) and "int" in feats[k].dtype]
        if not images or not labels:
            raise DataError(f"The {name} split needs an image column (datasets.Image feature) and an integer label "
                            f"column (ClassLabel, or one named label); its columns are "
                            f"{', '.join(f'{k}: {type(f).__name__}' for k, f in feats.items())}")
        self.image_col, self.label_col = images[0], labels[0]
        own = feats[self.label_col].names if isinstance(feats[self.label_col], datasets.ClassLabel) else None
        if classes is not None and own is not None and list(own) != list(classes):
            raise DataError(f"The class names of the {name} split ({len(own)}, e.g. {own[:3]}) do not match the "
                            f"training classes ({len(classes)}, e.g. {list(classes)[:3]})")
        # we decode (not datasets): the same pixels as a folder of the same files, and bad images reported
        self.ds = ds.select_columns([self.image_col, self.label_col]).cast_column(
            self.image_col, datasets.Image(decode=False))
        self.targets = np.asarray(self.ds.with_format("numpy")[self.label_col], dtype=np.int64)
        self.transform, self.bad_images, self.name = transform, bad_images, name
        if classes is None:
            classes = own if own is not None else [str(i) for i in range(int(self.targets.max()) + 1)]
        self.classes = list(classes)
        bad = np.flatnonzero((self.targets < 0) | (self.targets >= len(self.classes)))
        if len(bad):
            raise DataError(f"{len(bad)} rows of the {name} split have a label outside 0..{len(self.classes) - 1} "
                            f"(row {bad[0]}: {self.targets[bad[0]]}; -1 means unlabelled, as in a test split)")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        target = int(self.targets[index])
        cell = self.ds[int(index)][self.image_col]  # {"bytes": ..., "path": ...}
        where = f"{self.name}[{index}]" + (f" ({cell['path']})" if cell.get("path") else "")
        try:
            data = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
            img = decode_image(data)
        except Exception as e:  # PIL raises many types for broken files
            if self.bad_images == "stop":
                raise DataError(f"Cannot read image {where}: {e}. Fix the dataset, or set data.bad_images=skip "
                                f"to skip unreadable images.") from e
            return None, target, where
        if self.transform is not None:
            img = self.transform(img)
        return img, target, None
