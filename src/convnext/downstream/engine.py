"""Detection and segmentation on the shared training loop (`convnext.train.loop`): a task made of the pieces
`convnext train-detection` / `train-segmentation` assemble, loading a trained model back, and plots.

Iteration-based like mmdet/mmseg (the paper's 3x schedule and 160k iterations: `LRSchedule("step")` and
`LRSchedule("poly")` with mmcv's warmup ratio); everything else (AdamW groups with layer decay, torchrun/DDP,
SyncBatchNorm on CUDA, atomic rotating checkpoints with exact resume, logs) is the loop's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints.io import load_checkpoint
from ..plots import line_plot
from ..train.loop import Task


class DownstreamTask(Task):
    """A downstream task from its parts: `loss(model, batch, device)` returns a dict of losses (summed for the
    backward pass); `evaluate(model)` returns metrics, among them `metric` (higher is better) for best.pt, on rank
    0 alone; `model_config` rebuilds the model (`create_detector(**cfg)` / `create_segmenter(**cfg)`)."""

    evaluate_on_every_rank = False  # COCO / mIoU evaluation gathers every prediction: rank 0 runs it alone

    def __init__(self, name: str, model: nn.Module, train_set: torch.utils.data.Dataset,
                 collate_fn: Callable[[list], Any],
                 loss_fn: Callable[[nn.Module, Any, torch.device], dict[str, torch.Tensor]],
                 evaluate_fn: Callable[[nn.Module], dict[str, Any]], metric: str, model_config: dict[str, Any]) -> None:
        self.name, self.model, self.train_set, self.metric, self.model_config = name, model, train_set, metric, \
            model_config
        self.collate_fn, self.loss_fn, self.evaluate_fn = collate_fn, loss_fn, evaluate_fn

    def collate(self, items: list) -> Any:
        return self.collate_fn(items)

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
        return self.loss_fn(model, batch, device)

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        metrics = self.evaluate_fn(model)
        model.train()
        return metrics

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"model_config": self.model_config}

    def describe(self) -> str:
        return f"{self.name}, {len(self.train_set)} training samples"

    def plot(self, metrics: Path, out_dir: Path) -> dict[str, Path]:
        return plot_downstream(metrics, out_dir, self.metric)


def load_trained(path: str | Path, build: Callable[..., nn.Module]) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a downstream checkpoint (`best.pt` or `last-*.pt`): rebuilt from its stored config with
    `build` (`create_detector` / `create_segmenter`), weights loaded. Returns (model, checkpoint)."""
    ck = load_checkpoint(path)
    if ck.get("task") not in ("detection", "segmentation") or "model_config" not in ck:
        raise ValueError(f"{path} is not a detection or segmentation checkpoint: pass a best.pt or last-*.pt "
                         f"written by train-detection / train-segmentation")
    model = build(**ck["model_config"])
    model.load_state_dict(ck["model"])
    return model, ck


def plot_downstream(metrics_path: Path, out_dir: Path, metric: str) -> dict[str, Path]:
    """loss.png (training losses against iterations) and metrics.png (`metric` and friends per evaluation)."""
    if not metrics_path.exists():
        return {}
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    steps = {r["step"]: r for r in records if r["type"] == "step"}  # a resumed run may repeat: keep the latest
    evals = {r["step"]: r for r in records if r["type"] == "eval"}
    paths = {}
    for name, rows, keys in (("loss", steps, [k for k in next(iter(steps.values()), {}) if k.startswith("loss")]),
                             ("metrics", evals, [k for k in (metric, metric.replace("bbox", "segm"), "mAcc")
                                                 if k in next(iter(evals.values()), {})])):
        if not rows or not keys:
            continue
        xs = sorted(rows)
        series = [(k, [rows[x][k] for x in xs]) for k in dict.fromkeys(keys)]
        paths[name] = line_plot(out_dir / f"{name}.png", xs, series, "iteration",
                                marker="o" if name == "metrics" else None)
    return paths
