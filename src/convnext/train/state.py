"""Training state on disk: atomic checkpoint writes, keep-last-N rotation, RNG capture and restore.

A training checkpoint is a plain dict that `torch.load(path, weights_only=True)` reads: tensors, numbers,
strings, lists and dicts only (the config is stored as a dict, RNG states as tensors and lists):

    {"task": "classification" | ..., "model": state_dict (official layout), "model_config": what rebuilds the
     model ({"model": name, **build_model arguments}), "data_config": DataSpec.to_dict(), "ema": state_dict | None,
     "optimizer": ..., "scaler": ... | None, "epoch": int, "step_in_epoch": int, "global_step": int,
     "best": {...}, "config": the resolved recipe, "rng": {...}}

best.pt / best_ema.pt hold the same but the optimizer, EMA, scaler and RNG state (and "metrics"). Reading one:
`convnext.checkpoints.io.load_checkpoint`.

`epoch`/`step_in_epoch` say where training continues: the next batch is batch `step_in_epoch` of `epoch`.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints.io import atomic_write


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` that a reader (or a crash) sees either not at all or complete, never half-written."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def capture_rng() -> dict[str, Any]:
    """Every RNG state that training draws from: torch (CPU and CUDA), numpy (timm's Mixup), Python (timm's
    RandAugment), as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_num, np_state[2:])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states `capture_rng` took."""
    torch.set_rng_state(state["torch"].cpu())
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _num(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


class CheckpointManager:
    """Writes `last-<step>.pt` (keeping the newest `keep_last`), `best.pt` and `best_ema.pt` in a run folder."""

    pattern = re.compile(r"last-(\d+)\.pt$")

    def __init__(self, directory: str | os.PathLike, keep_last: int = 2) -> None:
        self.dir = Path(directory)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """The rotating checkpoints, oldest first."""
        found = [(int(m.group(1)), p) for p in self.dir.glob("last-*.pt") if (m := self.pattern.search(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest rotating checkpoint, or None."""
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write `last-<step>.pt`, then drop the oldest beyond `keep_last` (only after the new one is complete)."""
        path = self.dir / f"last-{step:08d}.pt"
        atomic_save(state, path)
        for old in self.checkpoints()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, state: dict[str, Any], ema: bool = False) -> Path:
        """Write `best.pt` (or `best_ema.pt`): the weights only, with the config and the metric."""
        path = self.dir / ("best_ema.pt" if ema else "best.pt")
        atomic_save(state, path)
        return path
