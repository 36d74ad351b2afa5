"""Reading and writing checkpoint files safely: safetensors, or torch.load(weights_only=True) with exactly the
one extra class official training checkpoints need (argparse.Namespace); atomic writes.

Never unpickles code: a file whose pickle names any other global (a function to call, a class to build) is
refused before anything in it runs (see docs/checkpoints.md, "Security").
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, UnsafeCheckpointError
from .layouts import to_official

# The official training checkpoints pickle their command-line arguments; nothing else beyond tensors and
# plain containers is allowed.
SAFE_GLOBALS = [argparse.Namespace]
# Where the weights sit in a wrapped checkpoint, in order of preference: the official code ("model",
# "model_ema"), timm ("state_dict", "state_dict_ema") and common training scripts.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
# Weight files looked for inside a checkpoint directory (ours and HF transformers' save_pretrained).
DIR_FILES = ("model.safetensors", "pytorch_model.bin")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The object a checkpoint file holds (a state dict, or a dict wrapping one), read without running
    pickled code. `path` may be a .safetensors, .pth/.pt/.bin file or a directory holding one of `DIR_FILES`."""
    path = weights_file(path)
    kind = _sniff(path)
    if kind == "safetensors":
        _check_safetensors_complete(path)
        return load_file(path)
    if kind == "zip":
        try:
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path} is truncated or corrupt ({path.stat().st_size} bytes; the zip archive "
                                  f"cannot be read: {e}). Download or save it again.") from e
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"`{found.group(1)}`" if found else "an object that is not a tensor or a plain container"
        raise UnsafeCheckpointError(
            f"Refused to load {path}: its pickle would call or build {what}, which is neither a tensor, a plain "
            "container nor argparse.Namespace. Loading such a file can run arbitrary code, so nothing in it was "
            "executed. If you trust the file and where it came from, load it yourself with torch.load(path, "
            "weights_only=False) and save the state dict again with convnext.save or safetensors."
        ) from None
    except (EOFError, RuntimeError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read as a torch checkpoint "
                              f"({type(e).__name__}: {e}). Download or save it again.") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a dict wrapping one.")
    return dict(obj)


def weights_file(path: str | os.PathLike) -> Path:
    """The weights file of `path`: itself, or the first of `DIR_FILES` inside a directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint not found: {path}")
    if path.is_dir():
        for name in DIR_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a directory without any of {', '.join(DIR_FILES)}.")
    return path


def unwrap_state_dict(obj: Mapping[str, Any], key: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object: `obj[key]` if given, else the first of `WRAPPER_KEYS`
    holding one, else `obj` itself; a DDP "module." or torch.compile "_orig_mod." prefix is removed."""
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"The checkpoint has no {key!r}; its top-level keys are {sorted(obj)[:10]}.")
        obj = obj[key]
    elif not _is_state_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and _is_state_dict(obj[k])), None)
        if inner is None:
            raise CheckpointError(f"No state dict found in this checkpoint; its top-level keys are {sorted(obj)[:10]}."
                                  " Pass key=... (CLI: --key) to say which entry holds the weights.")
        obj = inner
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict(path: str | os.PathLike, key: str | None = None, layout: str | None = None
                    ) -> dict[str, torch.Tensor]:
    """Read any ConvNeXt checkpoint (official, timm, torchvision or HF layout; wrapped or not; ours) and return
    its weights in the official layout. `key` picks the entry of a wrapped checkpoint (e.g. "model_ema");
    `layout` skips detection."""
    return to_official(unwrap_state_dict(read_checkpoint(path), key), layout)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` and move the temporary file onto `path` only once it is complete and on disk, so that
    an interrupted save (or a crash) never replaces a good file by a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint (`last-*.pt`, `best.pt`, `best_ema.pt`) safely (`weights_only=True`), with a
    clear error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"Cannot read checkpoint {path}: {e}. Is it a complete torch checkpoint?") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not a convnext training checkpoint (no 'model' entry)")
    return ckpt


def write_state_dict(obj: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a state dict: safetensors if `path` ends in .safetensors (tensors only), else torch.save (which
    may wrap it, e.g. the official {"model": ...})."""
    if str(path).endswith(".safetensors"):
        tensors = {k: v.contiguous() for k, v in obj.items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    else:
        atomic_write(path, lambda tmp: torch.save(dict(obj), tmp))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _sniff(path: Path) -> str:
    """"safetensors", "zip" (torch.save) or "pickle" (legacy torch.save), from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    raise CheckpointError(f"{path} is not a checkpoint: neither safetensors nor a torch.save file "
                          f"({path.stat().st_size} bytes, starts with {head[:8]!r}).")


def _check_safetensors_complete(path: Path) -> None:
    """Compare the size the safetensors header promises with the file's, to name truncation as such."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n)) if 8 + n <= size else None
        except ValueError:
            header = None
    if header is None:
        raise CheckpointError(f"{path} is truncated or corrupt: its safetensors header cannot be read "
                              f"({size} bytes). Download or save it again.")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CheckpointError(f"{path} is truncated or corrupt: its header describes {8 + n + end} bytes but the "
                              f"file has {size}. Download or save it again.")
