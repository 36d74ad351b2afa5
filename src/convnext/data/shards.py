"""WebDataset tar shards: read as a map-style data set by a per-shard index, and written by `convnext shard`.

Layout read and written: the standard WebDataset one. Each sample is a run of consecutive tar members sharing a
key (`<key>.jpg`/`.jpeg`/`.png`/`.webp` for the image, `<key>.cls` for the label as a decimal integer, optional
`<key>.json` metadata); the class names, when known, are in `classes.json` beside the shards.

Why an index rather than streaming: each shard is scanned once (tar headers and the small .cls members only) for
the byte offset and size of every sample's image and its label, and the index is cached beside the shard
(`<shard>.idx.json`, or under ~/.cache/convnext/shard-index when the shard's folder is read-only). A shard set is
then a map-style Dataset of `(image, target, bad_path)` items like `CheckedImageFolder`, so `ResumableSampler`
gives what it gives folders: every sample at most once per epoch over all ranks and loader workers (the
`N mod global batch` samples left over are dropped, different ones each epoch), shuffling from (seed, epoch), and
an exact mid-epoch resume, with no shard-to-rank assignment to get wrong. The cost is one `pread` per image at a
random offset instead of sequential reads: benchmarks/input_pipeline.py measures it against webdataset's
sequential reader.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import io
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .datasets import DataError, decode_image

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
INDEX_FORMAT = "convnext-shard-index/1"
MANIFEST_FORMAT = "convnext-shards/1"
CLASSES_FILE, MANIFEST_FILE = "classes.json", "manifest.json"
_MAX_OPEN_SHARDS = 64  # per process: a worker that reads 1024 shards must stay under the usual 1024-fd limit


def _needs(package: str, what: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise DataError(f"{what} needs the {package} package: pip install 'convnext[data]'") from e


# ---- finding shards --------------------------------------------------------------------------------------------

def resolve_shards(spec: str, root: str | os.PathLike = "") -> list[Path]:
    """The shard files that `spec` names, in order.

    `spec` is a brace pattern (`train-{000000..001023}.tar`), a glob (`train-*.tar`), a `::`-separated list, a
    text file listing one shard per line, a folder (its .tar files), or a split name: `train` means
    `<root>/train-*.tar` or else `<root>/train/*.tar` (what `convnext shard` writes). Relative names are under
    `root`. Raises a DataError naming what is missing.
    """
    braceexpand = _needs("braceexpand", "data.dataset=wds")
    spec = str(spec).strip()
    base = Path(root) if root else Path()
    if not spec:
        raise DataError("No shards given: set data.train_split / data.val_split to a shard pattern")
    listing = base / spec
    if spec.endswith(".txt") and listing.is_file():
        lines = [s.strip() for s in listing.read_text().splitlines() if s.strip() and not s.startswith("#")]
        return _check_shards([listing.parent / s for s in lines], f"the shard list {listing}")
    items = [p for part in spec.split("::") for p in braceexpand.braceexpand(part.strip())]
    paths: list[Path] = []
    for item in items:
        p = base / item
        if any(c in item for c in "*?["):
            found = sorted(Path(f) for f in globlib.glob(str(p)))
            if not found:
                raise DataError(f"No shard matches {p}. Check data.root and the shard pattern.")
            paths += found
        elif p.is_dir():
            found = sorted(p.glob("*.tar"))
            if not found:
                raise DataError(f"Shard folder {p} holds no .tar files")
            paths += found
        elif len(items) == 1 and not p.exists() and "." not in Path(item).name:
            paths += _split_shards(base, item)
        else:
            paths.append(p)
    return _check_shards(paths, repr(spec) + (f" under {base}" if root else ""))


def _split_shards(base: Path, split: str) -> list[Path]:
    for pattern in (f"{split}-*.tar", f"{split}/*.tar"):
        found = sorted(base.glob(pattern))
        if found:
            return found
    raise DataError(f"No shards for split {split!r} in {base}: expected {base}/{split}-*.tar or "
                    f"{base}/{split}/*.tar, or set the split to a shard pattern such as "
                    f"'{split}-{{000000..000099}}.tar'")


def _check_shards(paths: list[Path], what: str) -> list[Path]:
    if not paths:
        raise DataError(f"No shards in {what}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of the {len(paths)} shards of {what} do not exist, e.g. {missing[0]}. "
                        f"Check data.root and the pattern (braces like {{000000..000099}} expand to every name).")
    compressed = [p for p in paths if p.suffix in (".gz", ".tgz", ".bz2", ".xz", ".zst")]
    if compressed:
        raise DataError(f"{compressed[0]} is compressed: samples cannot be read by offset from a compressed tar. "
                        f"Decompress the shards (e.g. gunzip) or rewrite them with `convnext shard`.")
    return paths


# ---- the per-shard index ---------------------------------------------------------------------------------------

def _index_paths(shard: Path) -> list[Path]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convnext" / "shard-index"
    digest = hashlib.sha1(str(shard.resolve()).encode()).hexdigest()[:16]
    return [shard.with_name(shard.name + ".idx.json"), cache / f"{digest}-{shard.name}.idx.json"]


def shard_index(shard: str | os.PathLike, rebuild: bool = False) -> dict:
    """`{keys, offsets, sizes, exts, labels}` of a shard's samples (offset and size of each image in the tar),
    read from its cached index when that matches the shard's size and mtime, built (and cached) otherwise."""
    shard = Path(shard)
    st = shard.stat()
    stamp = {"format": INDEX_FORMAT, "shard_bytes": st.st_size, "shard_mtime_ns": st.st_mtime_ns}
    candidates = _index_paths(shard)
    if not rebuild:
        for p in candidates:
            try:
                index = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if all(index.get(k) == v for k, v in stamp.items()):
                return index
    log.info(f"indexing {shard} (once: the index is cached)")
    index = {**stamp, **_scan(shard)}
    for p in candidates:  # beside the shard if its folder is writable, else in the user's cache
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(index, separators=(",", ":")))
            os.replace(tmp, p)  # atomic: ranks indexing the same shard at once write the same bytes
            break
        except OSError:
            continue
    return index


def _scan(shard: Path) -> dict:
    """One pass over the tar headers: group consecutive members by key as webdataset does."""
    from webdataset.tariterators import base_plus_ext

    keys, offsets, sizes, exts, labels = [], [], [], [], []
    current: dict = {}

    def finish():
        if not current:
            return
        key = current["key"]
        image = next((e for e in IMAGE_EXTS if e in current), None)
        if image is None:
            raise DataError(f"Sample {key!r} of shard {shard} has no image (.{', .'.join(IMAGE_EXTS)}); it has "
                            f"{', '.join(sorted(k for k in current if k != 'key')) or 'nothing'}")
        if "cls" not in current:
            raise DataError(f"Sample {key!r} of shard {shard} has no .cls label member")
        keys.append(key)
        offsets.append(current[image][0])
        sizes.append(current[image][1])
        exts.append(image)
        labels.append(current["cls"])

    try:
        tf = tarfile.open(shard, "r:")  # plain tar only: offsets into a compressed stream are useless
    except tarfile.TarError as e:
        raise DataError(f"{shard} is not a readable uncompressed tar file ({e})") from e
    with tf:
        try:
            for m in tf:
                if not m.isreg():
                    continue
                key, ext = base_plus_ext(m.name)
                if key is None or ("/" not in m.name and m.name.startswith("__")):
                    continue  # webdataset skips names without an extension and top-level __meta__ members
                if key != current.get("key"):
                    finish()
                    current = {"key": key}
                ext = ext.lower()
                if ext == "cls":
                    text = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                    try:
                        current["cls"] = int(text)
                    except ValueError:
                        raise DataError(f"Sample {key!r} of shard {shard}: label {text[:40]!r} in {m.name} is "
                                        f"not an integer class index") from None
                elif ext in IMAGE_EXTS and ext not in current:
                    current[ext] = (m.offset_data, m.size)
                else:
                    current.setdefault(ext, None)
        except tarfile.TarError as e:
            raise DataError(f"Shard {shard} is damaged after {len(keys)} samples ({e}); rewrite it") from e
        finish()
    if not keys:
        raise DataError(f"Shard {shard} holds no samples")
    return {"keys": keys, "offsets": offsets, "sizes": sizes, "exts": exts, "labels": labels}


# ---- the data set ----------------------------------------------------------------------------------------------

class ShardDataset(torch.utils.data.Dataset):
    """WebDataset shards as a map-style data set of `(image, target, bad_path)`: the image decoded (RGB PIL) and
    transformed, or `(None, target, "<shard>:<key>.<ext>")` when it cannot be decoded (a DataError instead when
    `bad_images="stop"`), as `CheckedImageFolder` does.

    `classes`: the class names; by default those in `classes.json` beside the shards, else "0".."N-1".
    """

    def __init__(self, shards: Sequence[str | os.PathLike], transform: Callable | None = None,
                 bad_images: str = "skip", classes: Sequence[str] | None = None, name: str = "train") -> None:
        self.shards = [str(p) for p in shards]
        self.transform, self.bad_images, self.name = transform, bad_images, name
        # threads: on network storage, indexing the shards not yet indexed waits on I/O more than on Python
        with ThreadPoolExecutor(min(16, len(self.shards))) as pool:
            indexes = list(pool.map(shard_index, self.shards))
        _check_manifests(self.shards, indexes)
        counts = [len(ix["keys"]) for ix in indexes]
        # numpy arrays, not lists of Python objects: loader workers share them without copy-on-write growth
        self.shard_of = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        self.offsets = np.concatenate([np.asarray(ix["offsets"], np.int64) for ix in indexes])
        self.sizes = np.concatenate([np.asarray(ix["sizes"], np.int64) for ix in indexes])
        self.exts = np.concatenate([np.asarray([IMAGE_EXTS.index(e) for e in ix["exts"]], np.uint8)
                                    for ix in indexes])
        self.keys = np.concatenate([np.asarray(ix["keys"], dtype=str) for ix in indexes])
        self.targets = np.concatenate([np.asarray(ix["labels"], np.int64) for ix in indexes])
        own = read_classes(Path(self.shards[0]).parent)
        if classes is not None and own is not None and list(own) != list(classes):
            raise DataError(f"The classes.json beside {self.shards[0]} does not match the training classes "
                            f"({len(own)} vs {len(classes)} names, e.g. {own[:3]} vs {list(classes)[:3]}); "
                            f"validation shards must use the training class map")
        classes = classes if classes is not None else own
        if classes is None:
            classes = [str(i) for i in range(int(self.targets.max()) + 1)]
        self.classes = list(classes)
        bad = np.flatnonzero((self.targets < 0) | (self.targets >= len(self.classes)))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"Sample {self.keys[i]!r} of {self.shards[self.shard_of[i]]} has label "
                            f"{self.targets[i]}, outside the {len(self.classes)} classes "
                            f"({len(bad)} such samples); check classes.json and the .cls members")
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:  # file descriptors do not travel to spawned workers
        return {**self.__dict__, "_fds": {}}

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def read(self, index: int) -> bytes:
        """The encoded image bytes of sample `index`."""
        s = int(self.shard_of[index])
        fd = self._fds.get(s)
        if fd is None:
            if len(self._fds) >= _MAX_OPEN_SHARDS:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
        size = int(self.sizes[index])
        data = os.pread(fd, size, int(self.offsets[index]))  # no shared file position: safe across workers
        if len(data) != size:
            raise OSError(f"shard ends {size - len(data)} bytes early (truncated?)")
        return data

    def where(self, index: int) -> str:
        """`<shard>:<key>.<ext>`, how an image of a shard is named in messages."""
        return f"{self.shards[self.shard_of[index]]}:{self.keys[index]}.{IMAGE_EXTS[self.exts[index]]}"

    def __getitem__(self, index: int):
        target = int(self.targets[index])
        try:
            img = decode_image(self.read(index))
        except Exception as e:  # PIL raises many types for broken files
            if self.bad_images == "stop":
                raise DataError(f"Cannot read image {self.where(index)}: {e}. Fix or rewrite the shard, or set "
                                f"data.bad_images=skip to skip unreadable images.") from e
            return None, target, self.where(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, target, None


def read_classes(folder: Path) -> list[str] | None:
    """The class names in `folder/classes.json` (a list, or a {name: index} map), or None without one."""
    p = Path(folder) / CLASSES_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise DataError(f"{p} is not valid JSON ({e})") from e
    if isinstance(data, dict):
        data = [name for name, _ in sorted(data.items(), key=lambda kv: kv[1])]
    if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
        raise DataError(f"{p} must be a list of class names (index order) or a {{name: index}} map")
    return data


def _check_manifests(shards: list[str], indexes: list[dict]) -> None:
    """Shards written by `convnext shard` must hold the counts its manifest recorded: a shard cut short by an
    interrupted copy, or an extra stale shard, is an error rather than a silently different data set."""
    manifests: dict[Path, dict] = {}
    for shard, ix in zip(shards, indexes, strict=True):
        folder = Path(shard).parent
        if folder not in manifests:
            p = folder / MANIFEST_FILE
            try:
                m = json.loads(p.read_text()) if p.is_file() else {}
            except ValueError:
                m = {}
            manifests[folder] = {n: c for s in m.get("splits", {}).values() for n, c in s.get("shards", {}).items()}
        expected = manifests[folder].get(Path(shard).name)
        if manifests[folder] and expected is None:
            raise DataError(f"Shard {shard} is not in {folder / MANIFEST_FILE}: a stale shard from an earlier "
                            f"write? Remove it or rewrite the folder with `convnext shard`.")
        if expected is not None and expected != len(ix["keys"]):
            raise DataError(f"Shard {shard} holds {len(ix['keys'])} samples but {folder / MANIFEST_FILE} says "
                            f"{expected}: it was changed or only partly written. Rewrite it with `convnext shard`.")


# ---- writing ---------------------------------------------------------------------------------------------------

def parse_size(text: str | int | float) -> int:
    """Bytes from '256MB', '1.5GiB', '500k' or a plain number."""
    import re

    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m:
        raise ValueError(f"Cannot read size {text!r}: write e.g. 256MB, 1GB or 1000000")
    unit = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * unit ** " kmgt".index(m.group(2) or " "))


def _load_source_image(item: tuple) -> tuple:
    """(ext, bytes, None) for one source image, checked by decoding it; (None, None, error) if unreadable.
    Runs in the writer's worker processes."""
    kind, ref = item
    try:
        if kind == "array":  # a Fashion-MNIST-like uint8 array: lossless PNG
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(ref).save(buf, "PNG")
            return "png", buf.getvalue(), None
        data = Path(ref).read_bytes()
        img = decode_image(data)
        ext = Path(ref).suffix.lower().lstrip(".")
        if ext not in IMAGE_EXTS:  # bmp, tiff, gif, ...: stored as PNG of the RGB image training would see
            buf = io.BytesIO()
            img.save(buf, "PNG")
            return "png", buf.getvalue(), None
        return ext, data, None
    except Exception as e:
        return None, None, f"{type(e).__name__}: {e}"


def _source_splits(src: str | os.PathLike, splits: Sequence[str]):
    """[(split, classes, [(kind, ref, label, source_name)])] of an ImageFolder root or Fashion-MNIST."""
    from .datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, CheckedImageFolder, fashion_mnist

    src = Path(FASHION_MNIST_DIR if str(src) == "fashion_mnist" else src)
    if (src / "train-images-idx3-ubyte.gz").exists():
        out = []
        for split in splits:
            if split not in ("train", "val"):
                raise DataError(f"Fashion-MNIST has the splits train and val (its t10k test set), not {split!r}")
            x, y = fashion_mnist(src, train=split == "train")
            x = x[:, 0].numpy()
            items = [("array", x[i], int(y[i]), f"{split}/{i}") for i in range(len(x))]
            out.append((split, list(FASHION_MNIST_CLASSES), items))
        return out
    if not src.is_dir():
        raise DataError(f"Source {src} does not exist: give an ImageFolder root (holding {'/, '.join(splits)}/) "
                        f"or fashion_mnist")
    present = [s for s in splits if (src / s).is_dir()]
    if not present:
        raise DataError(f"{src} has none of the split folders {', '.join(splits)}: give the folder that holds "
                        f"them, or name the splits with --splits")
    out, classes = [], None
    for split in present:
        folder = CheckedImageFolder(src / split, expected_classes=classes)
        classes = classes or folder.classes
        items = [("file", p, t, str(Path(p).relative_to(src))) for p, t in folder.samples]
        out.append((split, classes, items))
    return out


def write_shards(src: str | os.PathLike, out: str | os.PathLike, splits: Sequence[str] = ("train", "val"),
                 max_size: int = 256 * 10**6, max_count: int | None = None, shuffle: bool = True, seed: int = 0,
                 workers: int = 1, log: Callable[[str], None] = print) -> dict:
    """Write the splits of an ImageFolder root (or Fashion-MNIST) as WebDataset shards `out/<split>-%06d.tar`
    of about `max_size` bytes, with `classes.json`, an index per shard, and `manifest.json` (shard -> samples),
    written last after every shard was read back and checked. Unreadable images are reported and skipped.

    `shuffle` (default) stores the samples in a seeded random order, which streaming readers with a small
    shuffle buffer need; our reader shuffles globally either way. Returns the manifest.
    """
    wds = _needs("webdataset", "convnext shard")
    out = Path(out)
    sources = _source_splits(src, splits)
    out.mkdir(parents=True, exist_ok=True)
    old = [p.name for split, _, _ in sources for p in out.glob(f"{split}-*.tar")]
    if old:
        raise DataError(f"{out} already holds shards ({old[0]}, ...): write to an empty folder, or remove them")
    classes = sources[0][1]
    manifest: dict = {"format": MANIFEST_FORMAT, "source": str(src), "classes": CLASSES_FILE, "shuffle": shuffle,
                      "seed": seed, "max_size": max_size, "splits": {}}
    (out / CLASSES_FILE).write_text(json.dumps(classes, indent=0) + "\n")
    for split, _, items in sources:
        order = np.random.default_rng(seed).permutation(len(items)) if shuffle else np.arange(len(items))
        items = [items[i] for i in order]
        written: dict[str, list[tuple[str, int, int]]] = {}  # shard -> [(key, label, crc32 of image)]
        skipped, nbytes, count = [], 0, 0
        writer = wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxsize=max_size, maxcount=max_count or 10**12,
                                 verbose=0, encoder=False, mtime=0)
        with writer, _pool(workers) as pool:
            loaded = pool(_load_source_image, [(kind, ref) for kind, ref, _, _ in items])
            for (_, _, label, name), (ext, data, err) in zip(items, loaded, strict=True):
                if err is not None:
                    skipped.append(name)
                    log(f"skipped unreadable image {name}: {err}")
                    continue
                key = f"{count:08d}"
                count += 1
                meta = json.dumps({"path": name, "class": classes[label]}).encode()
                writer.write({"__key__": key, ext: data, "cls": str(label).encode(), "json": meta})
                written.setdefault(Path(writer.fname).name, []).append((key, label, zlib.crc32(data)))
                nbytes += len(data)
        if not count:
            raise DataError(f"No readable image in split {split} of {src}")
        counts = verify_shards(out, written)
        manifest["splits"][split] = {"samples": sum(counts.values()), "bytes": nbytes, "shards": counts,
                                     "skipped": skipped}
        log(f"{split}: {sum(counts.values())} samples in {len(counts)} shards ({nbytes / 1e6:.1f} MB of images), "
            f"{len(skipped)} unreadable image(s) skipped")
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST_FILE)
    return manifest


def _pool(workers: int):
    """A context giving `map(fn, items)`: in this process for one worker, else an ordered process pool."""
    import contextlib
    import multiprocessing

    @contextlib.contextmanager
    def ctx():
        if workers <= 1:
            yield map
            return
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield lambda fn, items: pool.imap(fn, items, chunksize=16)

    return ctx()


def verify_shards(out: Path, written: dict[str, list[tuple[str, int, int]]]) -> dict[str, int]:
    """Read every written shard back twice, with webdataset's own streaming reader (any WebDataset user can read
    it) and through our index (offsets and labels are right); both must give exactly the samples written.
    Returns shard name -> sample count."""
    import webdataset as wds

    counts = {}
    for name, expected in written.items():
        path = out / name
        seen = []
        for sample in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
            image = next(sample[e] for e in IMAGE_EXTS if e in sample)
            seen.append((sample["__key__"], int(sample["cls"]), zlib.crc32(image)))
        index = shard_index(path, rebuild=True)
        via_index = []
        with open(path, "rb") as f:
            for key, off, size, label in zip(index["keys"], index["offsets"], index["sizes"], index["labels"],
                                             strict=True):
                f.seek(off)
                via_index.append((key, label, zlib.crc32(f.read(size))))
        for how, got in (("webdataset's reader", seen), ("the shard index", via_index)):
            if got != expected:
                first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                             min(len(got), len(expected)))
                raise DataError(f"Verification failed for {path}: {how} read {len(got)} samples, {len(expected)} "
                                f"were written; first difference at sample {first}. The disk may be full or failing.")
        counts[name] = len(expected)
    return counts


def index_shards(shards: Iterable[str | os.PathLike], log: Callable[[str], None] = print) -> dict[str, int]:
    """(Re)build and cache the index of existing shards, checking their layout; shard -> sample count. Training
    builds missing indexes itself, but doing it once ahead keeps every rank of a job from scanning every shard."""
    counts = {}
    for p in shards:
        counts[str(p)] = len(shard_index(p, rebuild=True)["keys"])
        log(f"{p}: {counts[str(p)]} samples")
    return counts
