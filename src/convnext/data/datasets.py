"""Data sets: ImageNet-layout folders (with clear errors and corrupt-image reporting), Fashion-MNIST read
straight from the Debian package's idx files, and (through data/shards.py and data/hf.py) WebDataset tar shards
and Hugging Face datasets saved on disk."""

from __future__ import annotations

import gzip
import io
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..data_config import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DataError(ValueError):
    """A data set that cannot be trained on: missing, empty, mislabelled, or with unreadable images."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped), the format of MNIST and Fashion-MNIST, into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values for shape {shape}, "
                        f"found {body.size}")
    return body.reshape(shape)


def fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (uint8 images N x 1 x 28 x 28, int64 labels N), from the idx .gz files in `root`."""
    prefix = "train" if train else "t10k"
    root = Path(root)
    img, lbl = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img, lbl):
        if not p.exists():
            raise DataError(f"Fashion-MNIST file {p} not found. Install it with "
                            "`sudo apt-get install dataset-fashion-mnist` or set data.root to its folder.")
    x, y = read_idx(img), read_idx(lbl)
    if len(x) != len(y):
        raise DataError(f"{img} has {len(x)} images but {lbl} has {len(y)} labels")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def _check_image_folder(split_dir: Path) -> list[str]:
    """The class folders of an ImageNet-layout split, or a DataError that says what is wrong with it."""
    if not split_dir.is_dir():
        raise DataError(f"Data folder {split_dir} does not exist. Expected the ImageNet layout: "
                        f"<root>/train/<class>/<image> and <root>/val/<class>/<image>.")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = [p.name for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    if not classes:
        what = f"{len(loose)} images directly in it" if loose else "nothing usable in it"
        raise DataError(f"Data folder {split_dir} has no class folders ({what}). Put each class's images in "
                        f"its own sub-folder: {split_dir}/<class>/<image>.")
    if loose:
        raise DataError(f"Data folder {split_dir} has {len(loose)} images outside any class folder "
                        f"(e.g. {loose[0]}); move them into {split_dir}/<class>/.")
    empty = [c for c in classes if not any(p.suffix.lower() in IMG_EXTENSIONS for p in (split_dir / c).rglob("*"))]
    if empty:
        raise DataError(f"Class folder(s) with no images in {split_dir}: {', '.join(empty[:10])}"
                        f"{' ...' if len(empty) > 10 else ''}. Remove them or add images "
                        f"(extensions: {', '.join(IMG_EXTENSIONS)}).")
    return classes


def decode_image(data: bytes) -> Image.Image:
    """An encoded image (JPEG, PNG, WebP, ...) as an RGB PIL image, decoded exactly as `CheckedImageFolder`
    decodes the same file, so a data set gives the same pixels from a folder, shards or a HF dataset."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder with clear errors for empty or malformed folders, and unreadable images
    reported by path instead of crashing a worker: `__getitem__` returns `(None, target, path)` for them
    (see `collate_skipping`), or raises a DataError naming the file when `bad_images="stop"`."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, bad_images: str = "skip",
                 expected_classes: list[str] | None = None) -> None:
        classes = _check_image_folder(Path(root))
        if expected_classes is not None and classes != list(expected_classes):
            missing = sorted(set(expected_classes) - set(classes))
            extra = sorted(set(classes) - set(expected_classes))
            raise DataError(f"The classes of {root} do not match the training classes: missing {missing[:10]}, "
                            f"unexpected {extra[:10]}. Validation must use the same class folder names.")
        super().__init__(str(root), transform=transform)
        self.bad_images = bad_images

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img = img.convert("RGB")
        except Exception as e:  # PIL raises many types for broken files
            if self.bad_images == "stop":
                raise DataError(f"Cannot read image {path}: {e}. Fix or remove it, or set "
                                f"data.bad_images=skip to skip unreadable images.") from e
            return None, target, path
        if self.transform is not None:
            img = self.transform(img)
        return img, target, None


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a data set whose items are `(image, target[, bad_path])` so that it takes `(index, seed)` items
    from `ResumableSampler` and draws its random augmentation from `seed` alone.

    Seeding per image makes an epoch's augmented images a function of (seed, epoch, position): the same
    with any number of workers or ranks and after resuming mid-epoch. In the main process (no workers) the
    global RNG states are put back afterwards so the training loop's own randomness is not disturbed.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, items: list):
        """A whole batch at once: vectorised for data sets with `get_batch`, one by one otherwise."""
        if hasattr(self.dataset, "get_batch"):
            if items and isinstance(items[0], int):
                return self.dataset.get_batch(items)
            return self.dataset.get_batch([i for i, _ in items], [s for _, s in items])
        return [self[item] for item in items]

    def __getitem__(self, item):
        if isinstance(item, int):
            return _triple(self.dataset[item])
        index, seed = item
        in_main = torch.utils.data.get_worker_info() is None
        if in_main:
            saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return _triple(self.dataset[index])
        finally:
            if in_main:
                torch.set_rng_state(saved[0])
                random.setstate(saved[1])
                np.random.set_state(saved[2])


def _triple(item):
    return item if len(item) == 3 else (item[0], item[1], None)


def collate_skipping(batch):
    """Collate `(image, target, bad_path)` items into `(images, targets, bad_paths)`, leaving out the images
    that could not be read (their paths are returned so the trainer can report and count them).
    A batch that `get_batch` already assembled passes through."""
    if isinstance(batch, tuple):
        return batch
    good = [(x, y) for x, y, bad in batch if bad is None and x is not None]
    bad = [b for _, _, b in batch if b is not None]
    if not good:
        return None, None, bad
    xs, ys = zip(*good, strict=True)
    return torch.stack(xs), torch.as_tensor(ys), bad


class TensorImages(torch.utils.data.Dataset):
    """Small images held in memory as a uint8 tensor (N, C, H, W) with labels, transformed a batch at a time
    by `batch_transform(images, seeds)` (see `SmallImageBatchTransform`): `get_batch` is what the DataLoader
    calls (through `SeededDataset.__getitems__`), `__getitem__` serves single images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_transform: Callable,
                 classes: tuple[str, ...] | None = None, limit: int | None = None) -> None:
        if limit:
            images, labels = images[:limit], labels[:limit]
        self.images, self.labels, self.batch_transform = images, labels, batch_transform
        self.classes = list(classes) if classes else [str(i) for i in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.batch_transform(self.images[index:index + 1])[0], int(self.labels[index])

    def get_batch(self, indices: list[int], seeds: list[int] | None = None):
        """(images, labels, []) for `indices`, augmented from `seeds` (None: evaluation, no augmentation)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.batch_transform(self.images[idx], seeds), self.labels[idx], []


def build_datasets(data_cfg, for_training: bool = True):
    """(train, val, num_classes, in_chans) for a `DataConfig`; train is None when `for_training` is False.

    Fashion-MNIST uses the Debian idx files (`data.root` defaults to /usr/share/datasets/fashion-mnist);
    an image folder uses `<root>/<train_split>` and `<root>/<val_split>` with identical class folders;
    `wds` reads the shards that data.train_split / data.val_split name under `data.root` (a split name, a brace
    pattern, a glob, a `::` list or a .txt list: `shards.resolve_shards`); `hf` reads a Hugging Face dataset saved
    with `save_to_disk` or as parquet files in `data.root` (`hf.load_split`). Every data set has `.classes`.
    """
    from .transforms import SmallImageBatchTransform, eval_transform, train_transform

    c = data_cfg
    if c.dataset == "fashion_mnist":
        norm = (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        val = TensorImages(*fashion_mnist_split(c, c.val_split), SmallImageBatchTransform(*norm),
                           FASHION_MNIST_CLASSES, c.limit_val)
        train = None
        if for_training:
            aug = SmallImageBatchTransform(*norm, crop_padding=c.crop_padding, hflip=c.hflip, reprob=c.reprob)
            train = TensorImages(*fashion_mnist_split(c, "train"), aug, FASHION_MNIST_CLASSES, c.limit_train)
        in_chans = 1
        return train, val, len(FASHION_MNIST_CLASSES), in_chans
    elif c.dataset in ("wds", "hf"):
        if not c.root and c.dataset == "hf":
            raise DataError("data.root is not set: give the folder of the Hugging Face dataset (save_to_disk or "
                            "parquet files), e.g. --set data.root=/data/imagenet-hf")
        train, classes = None, None
        evalt = eval_transform(c.input_size, c.crop_pct, interpolation=c.interpolation)
        if c.dataset == "wds":
            from .shards import ShardDataset, resolve_shards

            if for_training:
                train = ShardDataset(resolve_shards(c.train_split, c.root), train_transform(c), c.bad_images,
                                     name="train")
                classes = train.classes
            val = ShardDataset(resolve_shards(c.val_split, c.root), evalt, c.bad_images, classes, name="val")
        else:
            from .hf import HFImageDataset, load_split

            if for_training:
                train = HFImageDataset(load_split(c.root, c.train_split), train_transform(c), c.bad_images,
                                       name="train")
                classes = train.classes
            val = HFImageDataset(load_split(c.root, c.val_split), evalt, c.bad_images, classes, name="val")
        in_chans = 3
    else:
        if not c.root:
            raise DataError("data.root is not set: give the folder that holds train/ and val/ "
                            "(e.g. --set data.root=/data/imagenet)")
        root = Path(c.root)
        train = None
        classes = None
        if for_training:
            train = CheckedImageFolder(root / c.train_split, train_transform(c), c.bad_images)
            classes = train.classes
        val = CheckedImageFolder(root / c.val_split, eval_transform(c.input_size, c.crop_pct,
                                                                     interpolation=c.interpolation),
                                 c.bad_images, expected_classes=classes)
        in_chans = 3
    if train is not None and c.limit_train:
        train = torch.utils.data.Subset(train, range(min(c.limit_train, len(train))))
    if c.limit_val:
        val = torch.utils.data.Subset(val, range(min(c.limit_val, len(val))))
    num_classes = len(_base(val).classes)
    return train, val, num_classes, in_chans


def build_test_set(data_cfg):
    """The data set a run is tested on once, at its end, or None: Fashion-MNIST's test set, or an image folder's
    `data.test_split` sub-folder (with the training classes)."""
    from .transforms import SmallImageBatchTransform, eval_transform

    c = data_cfg
    if c.dataset == "fashion_mnist":
        if c.val_split == "test" or not c.val_size:  # validating on the test set: nothing is left to test on
            return None
        return TensorImages(*fashion_mnist_split(c, "test"), SmallImageBatchTransform(FASHION_MNIST_MEAN,
                                                                                      FASHION_MNIST_STD),
                            FASHION_MNIST_CLASSES, c.limit_val)
    if not c.test_split:
        return None

    train_classes = _check_image_folder(Path(c.root) / c.train_split)
    test = CheckedImageFolder(Path(c.root) / c.test_split, eval_transform(c.input_size, c.crop_pct,
                                                                          interpolation=c.interpolation),
                              c.bad_images, expected_classes=train_classes)
    return torch.utils.data.Subset(test, range(min(c.limit_val, len(test)))) if c.limit_val else test


# The held-out validation images are the same for every run and seed: 500 per class drawn with this seed.
FASHION_MNIST_SPLIT_SEED = 20221


def fashion_mnist_split(data_cfg, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a Fashion-MNIST split: "train" (the 60,000 training images less the validation ones),
    "val" (`data.val_size` of the training images, the same number per class, fixed by FASHION_MNIST_SPLIT_SEED),
    or "test" (the official 10,000). With data.val_size=0, "val" is the test set, as before the split existed."""
    c = data_cfg
    if c.input_size != 28:
        raise DataError(f"Fashion-MNIST images are 28x28; data.input_size must be 28, not {c.input_size}")
    root = c.root or FASHION_MNIST_DIR
    if split == "test" or (split == "val" and not c.val_size):
        return fashion_mnist(root, train=False)
    if split not in ("train", "val"):
        raise DataError(f"Fashion-MNIST has the splits train, val and test; not {split!r}")
    x, y = fashion_mnist(root, train=True)
    classes = len(FASHION_MNIST_CLASSES)
    if c.val_size % classes or not 0 <= c.val_size < len(y):
        raise DataError(f"data.val_size must be a multiple of {classes} below {len(y)} (the same number per class), "
                        f"not {c.val_size}")
    g = torch.Generator().manual_seed(FASHION_MNIST_SPLIT_SEED)
    held = torch.cat([torch.nonzero(y == k).flatten()[torch.randperm(int((y == k).sum()), generator=g)]
                      [:c.val_size // classes] for k in range(classes)])
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    idx = held.sort().values if split == "val" else torch.nonzero(keep).flatten()
    return x[idx], y[idx]


def _base(ds):
    while isinstance(ds, (torch.utils.data.Subset, SeededDataset)):
        ds = ds.dataset
    return ds


def class_names(dataset) -> list[str] | None:
    """The class names a data set knows (ImageFolder's folder names, Fashion-MNIST's), or None."""
    classes = getattr(_base(dataset), "classes", None)
    return list(classes) if classes is not None else None
