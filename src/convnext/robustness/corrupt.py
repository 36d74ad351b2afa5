"""`convnext corrupt`: write the 15 ImageNet-C corruptions x 5 severities of any data set.

The corruptions come from `imagecorruptions-imaug`, the maintained fork of Hendrycks & Dietterich's
`imagecorruptions` code (the original 1.1.2 release breaks on NumPy 2 / scikit-image >= 0.25). Two
adaptations happen here, not in the library:

- Images under 32 px on a side (Fashion-MNIST's 28x28) are reflect-padded to 32, corrupted, and cropped
  back, because the library refuses smaller images; the copy keeps the original size.
- Grayscale images are corrupted as three equal channels and the first channel is kept. Averaging the
  channels back instead would cut the independent per-channel noise of the noise corruptions by a third.

Output: `OUT/<corruption>/<severity>/<class>/<name>.png` (lossless, so no JPEG artefacts are added on top
of the corruption), the ImageNet-C layout that `convnext robustness` reads, plus `OUT/corruptions.json`.
Every image gets its own seed derived from (seed, image index, corruption, severity): reruns are identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .metrics import CORRUPTIONS, SEVERITIES

MIN_SIZE = 32  # the smallest side imagecorruptions accepts
_SEEDED_IN_LIBRARY = ("glass_blur", "impulse_noise")  # these draw from their own generator, seeded by argument


def _library():
    try:
        import imagecorruptions
    except ImportError as e:
        raise ImportError("The corruptions need imagecorruptions-imaug: pip install 'convnext[robustness]' "
                          "(or pip install imagecorruptions-imaug)") from e
    return imagecorruptions


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int | None = None) -> np.ndarray:
    """One ImageNet-C corruption of a uint8 image (H x W grayscale or H x W x 3 RGB), same shape and dtype.

    `seed` makes the result reproducible (NumPy's global generator is restored afterwards).
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    gray = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    if not gray and not (image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected an H x W or H x W x 3 image, got shape {image.shape}")
    rgb = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2) if gray else image
    h, w = rgb.shape[:2]
    ph, pw = max(0, MIN_SIZE - h), max(0, MIN_SIZE - w)
    if ph or pw:
        rgb = np.pad(rgb, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")

    kwargs = {"seed": seed} if seed is not None and corruption in _SEEDED_IN_LIBRARY else {}
    state = np.random.get_state()
    try:
        if seed is not None:
            np.random.seed(seed)
        out = _library().corrupt(np.ascontiguousarray(rgb), severity=severity, corruption_name=corruption,
                                 **kwargs)
    finally:
        np.random.set_state(state)
    out = np.asarray(out, dtype=np.uint8)[ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]
    if gray:
        return out[..., 0].reshape(image.shape)
    return out


def image_seed(seed: int, index: int, corruption: str, severity: int) -> int:
    """The seed of one output image: independent streams per image, corruption and severity."""
    state = np.random.SeedSequence([seed, index, CORRUPTIONS.index(corruption), severity]).generate_state(1)
    return int(state[0])


# A sample to corrupt: (index, class folder name, file stem, uint8 image).
Sample = tuple[int, str, str, np.ndarray]


def folder_samples(root: str | os.PathLike, limit: int | None = None) -> tuple[int, Iterator[Sample]]:
    """The images of an ImageFolder (`root/<class>/<image>`): their count and an iterator over them.
    Grayscale images stay grayscale; everything else is converted to RGB."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected {root}/<class>/<image> files")
    dataset = ImageFolder(str(root))
    items = dataset.samples[:limit] if limit else dataset.samples

    def load() -> Iterator[Sample]:
        for i, (path, target) in enumerate(items):
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L" if img.mode in ("L", "1", "I;16") else "RGB"))
            yield i, dataset.classes[target], Path(path).stem, arr

    return len(items), load()


def fashion_mnist_samples(root: str | os.PathLike | None = None, limit: int | None = None
                          ) -> tuple[int, Iterator[Sample]]:
    """The Fashion-MNIST test set (28x28 grayscale) as samples; class folders are the label digits."""
    from ..data.datasets import FASHION_MNIST_DIR, fashion_mnist

    x, y = fashion_mnist(root or FASHION_MNIST_DIR, train=False)
    n = min(limit, len(y)) if limit else len(y)
    return n, ((i, str(int(y[i])), f"{i:05d}", x[i, 0].numpy()) for i in range(n))


def _write_one(job: tuple[Sample, str, tuple[str, ...], tuple[int, ...], int]) -> int:
    (index, cls, stem, image), out, corruptions, severities, seed = job
    for c in corruptions:
        for s in severities:
            folder = Path(out) / c / str(s) / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(corrupt_image(image, c, s, image_seed(seed, index, c, s))).save(folder / f"{stem}.png")
    return index


def write_corrupted(
    samples: Iterable[Sample],
    out: str | os.PathLike,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    workers: int = 1,
    total: int | None = None,
) -> Path:
    """Write every sample under every corruption and severity to `out` in the ImageNet-C layout.

    Returns `out`. `workers` > 1 corrupts in that many processes.
    """
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise ValueError(f"unknown corruptions {bad}; choose from {', '.join(CORRUPTIONS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = ((sample, str(out), tuple(corruptions), tuple(severities), seed) for sample in samples)
    bar = tqdm(total=total, desc="corrupting", unit="img", disable=None)
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=8):
                bar.update()
    else:
        for job in jobs:
            _write_one(job)
            bar.update()
    bar.close()
    manifest = {
        "library": f"imagecorruptions-imaug {metadata.version('imagecorruptions-imaug')}",
        "corruptions": list(corruptions), "severities": list(severities), "seed": seed, "images": total,
        "note": f"images under {MIN_SIZE} px reflect-padded to {MIN_SIZE} before corrupting and cropped back; "
                "grayscale corrupted as 3 equal channels, first channel kept",
    }
    (out / "corruptions.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
