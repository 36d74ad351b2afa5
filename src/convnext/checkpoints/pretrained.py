"""The official ConvNeXt and ConvNeXt V2 releases (paper.md section 4 and the official READMEs) and their download
into the torch hub cache, with size and sha256 checks.

`RELEASES[model][tag]` names each file; `Release.size` / `Release.sha256` hold the published size and hash
where they are known and are verified when present. Every download also records the size and sha256 it
got in a `<file>.json` beside the file, and a cached file whose size no longer matches that record
(an interrupted copy, a truncated disk) is reported instead of being loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..data_config import DataSpec
from .errors import DownloadError

BASE_URL = "https://dl.fbaipublicfiles.com/convnext/"
# Base URL override, e.g. a mirror or, in the tests, http://127.0.0.1:PORT/.
URL_ENV = "CONVNEXT_WEIGHTS_URL"


@dataclass(frozen=True)
class Release:
    """One official weight file: its name under the base URL, its classifier size, the resolution it was
    trained and evaluated at and, where known, its size in bytes and sha256 (verified when set)."""

    file: str
    num_classes: int = 1000
    size: int | None = None
    sha256: str | None = None
    input_size: int = 224


def _family(size: str, in1k: bool, in1k_384: bool, in22k: bool) -> dict[str, Release]:
    tags: dict[str, Release] = {}
    if in1k:
        tags["in1k"] = Release(f"convnext_{size}_1k_224_ema.pth")
    if in1k_384:
        tags["in1k_384"] = Release(f"convnext_{size}_1k_384.pth", input_size=384)
    if in22k:
        tags["in22k_ft_in1k"] = Release(f"convnext_{size}_22k_1k_224.pth")
        tags["in22k_ft_in1k_384"] = Release(f"convnext_{size}_22k_1k_384.pth", input_size=384)
        tags["in22k"] = Release(f"convnext_{size}_22k_224.pth", num_classes=21841)
    return tags


def _v2_family(size: str, in22k: tuple[int, ...]) -> dict[str, Release]:
    # facebookresearch/ConvNeXt-V2 README (commit 2553895), which states no sizes or checksums. Tags as timm's.
    # Every 22K file is a 1000-class classifier: FCMAE, then 22K fine-tuning, then 1K fine-tuning.
    tags = {"fcmae_ft_in1k": Release(f"convnextv2/im1k/convnextv2_{size}_1k_224_ema.pt")}
    for res in in22k:
        suffix = "" if res == 224 else f"_{res}"
        tags[f"fcmae_ft_in22k_in1k{suffix}"] = Release(f"convnextv2/im22k/convnextv2_{size}_22k_{res}_ema.pt")
    # The FCMAE pretrained encoder alone: no final norm, no head (fine-tune it)
    tags["fcmae"] = Release(f"convnextv2/pt_only/convnextv2_{size}_1k_224_fcmae.pt", num_classes=0)
    return tags


# The first tag of each model is what pretrained=True loads. XL was trained on ImageNet-22K only.
RELEASES: dict[str, dict[str, Release]] = {
    "convnext_tiny": _family("tiny", True, False, True),
    "convnext_small": _family("small", True, False, True),
    "convnext_base": _family("base", True, True, True),
    "convnext_large": _family("large", True, True, True),
    "convnext_xlarge": _family("xlarge", False, False, True),
    "convnext_iso_small": {"in1k": Release("convnext_iso_small_1k_224_ema.pth")},
    "convnext_iso_base": {"in1k": Release("convnext_iso_base_1k_224_ema.pth")},
    "convnext_iso_large": {"in1k": Release("convnext_iso_large_1k_224_ema.pth")},
    "convnextv2_atto": _v2_family("atto", ()),
    "convnextv2_femto": _v2_family("femto", ()),
    "convnextv2_pico": _v2_family("pico", ()),
    "convnextv2_nano": _v2_family("nano", (224, 384)),
    "convnextv2_tiny": _v2_family("tiny", (224, 384)),
    "convnextv2_base": _v2_family("base", (224, 384)),
    "convnextv2_large": _v2_family("large", (224, 384)),
    "convnextv2_huge": _v2_family("huge", (384, 512)),
}


def find_release(model: str, tag: str | bool) -> Release:
    """The release for `model` and `tag` (True: the model's default); a wrong tag lists the valid ones."""
    tags = RELEASES.get(model, {})
    if not tags:
        have = ", ".join(RELEASES)
        raise ValueError(f"{model} has no official pretrained weights (those exist for {have}); "
                         "pass the path of a checkpoint instead: create_model(name, pretrained='file.pth').")
    if tag is True:
        return next(iter(tags.values()))
    if tag not in tags:
        raise ValueError(f"Unknown pretrained tag {tag!r} for {model}; valid tags: {', '.join(tags)} "
                         "(or a checkpoint path or URL).")
    return tags[tag]


def release_for_file(path: str | os.PathLike) -> Release | None:
    """The release a file is, by its name (a downloaded `convnext_tiny_1k_224_ema.pth` kept anywhere), or None."""
    name = os.path.basename(path)
    return next((r for tags in RELEASES.values() for r in tags.values() if r.file == name), None)


def release_data_config(release: Release) -> DataSpec:
    """The input format and class names of an official release: RGB, ImageNet mean/std, bicubic, the
    paper's eval (crop_pct 0.875 at 224; squashed to 384 x 384 at 384) and the ImageNet-1K or -22K names."""
    spec = DataSpec(class_names=tuple(imagenet_class_names(release.num_classes)))
    return spec.at_size(release.input_size) if release.input_size != 224 else spec


def release_url(release: Release) -> str:
    """Where `release` is downloaded from: the official base URL, or $CONVNEXT_WEIGHTS_URL if set."""
    base = os.environ.get(URL_ENV) or BASE_URL
    return base.rstrip("/") + "/" + release.file


def cache_dir() -> Path:
    """The torch hub checkpoint cache (`torch.hub.get_dir()/checkpoints`, set by $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str, *, size: int | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """The cached copy of `url`, downloaded first if needed, checked against `size`/`sha256` when given.

    A file name of torch hub's `name-<hex>.ext` form also gives a hash prefix to check, as with
    `torch.hub.load_state_dict_from_url(check_hash=True)`.
    """
    dst = cache_dir() / os.path.basename(url.split("?")[0])
    if sha256 is None and (m := re.search(r"-([a-f0-9]{8,})\.", dst.name)):
        sha256 = m.group(1)
    if dst.exists():
        _verify_cached(dst, size, sha256)
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Writes to a temporary file and moves it into place once the hash matches: never a partial file.
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=sha256, progress=progress)
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(
            f"Could not download {url} ({getattr(e, 'reason', e)}). If this machine is offline, fetch the file "
            f"elsewhere and put it at {dst}, or pass its local path: create_model(name, pretrained='/path/to/"
            f"{dst.name}') (CLI: --weights PATH). ${URL_ENV} sets another base URL (a mirror)."
        ) from e
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        raise DownloadError(f"Downloaded {url} but its sha256 does not match the expected {sha256}: {e}. The file "
                            "was not kept; the server or a proxy may be serving a different or damaged file.") from e
    got = dst.stat().st_size
    if size is not None and got != size:
        dst.unlink()
        raise DownloadError(f"Downloaded {url} but it has {got} bytes instead of {size}; the file was not kept.")
    _record(dst)
    return dst


def _record(path: Path) -> None:
    digest = _sha256(path)
    path.with_name(path.name + ".json").write_text(json.dumps({"size": path.stat().st_size, "sha256": digest}))


def _verify_cached(path: Path, size: int | None, sha256: str | None) -> None:
    record_file = path.with_name(path.name + ".json")
    recorded = json.loads(record_file.read_text()) if record_file.exists() else {}
    expected = size if size is not None else recorded.get("size")
    got = path.stat().st_size
    if expected is not None and got != expected:
        raise DownloadError(f"The cached {path} has {got} bytes instead of {expected}: it is truncated or "
                            "was replaced. Delete it to download it again.")
    if sha256 is not None and not _sha256(path).startswith(sha256):
        raise DownloadError(f"The cached {path} does not match its expected sha256 {sha256}; delete it to download "
                            "it again.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=4)
def imagenet_class_names(num_classes: int) -> list[str]:
    """Human-readable class names: ImageNet-1K (1000) or -22K (21841) from timm's metadata, else "class i"."""
    from timm.data import ImageNetInfo

    subset = {1000: "imagenet-1k", 21841: "imagenet-22k"}.get(num_classes)
    if subset is None:
        return [f"class {i}" for i in range(num_classes)]
    info = ImageNetInfo(subset)
    return [info.index_to_description(i) for i in range(num_classes)]
