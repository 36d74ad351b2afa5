"""Image classification on the shared loop: `train(cfg)` runs a recipe end to end (`convnext train`).

The recipe (train/config.py) says which model, data, optimisation and run settings; this module turns it into a
`ClassificationTask` (model, data, Mixup/CutMix + label-smoothed loss, top-1/top-5 evaluation) and a
`LoopConfig`, runs `loop.run`, and reports a `TrainResult`. Reuse it for any classifier:
`train(cfg, model=my_module, train_set=..., val_set=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import create_model
from ..data.datasets import (
    DataError,
    SeededDataset,
    build_datasets,
    build_test_set,
    class_names,
    collate_skipping,
)
from ..data_config import data_spec
from ..distributed import init_distributed
from ..evaluate import evaluate
from ..plots import plot_metrics
from .config import Config, ConfigError
from .loop import LoopState, Task, recipe_loop_config, resolve_device, run, seed_everything


@dataclass
class TrainResult:
    """What a finished run reports (also in `<run_dir>/summary.json`)."""

    run_dir: str
    best_top1: float = 0.0
    best_top5: float = 0.0
    best_epoch: float = -1
    best_ema_top1: float | None = None
    best_ema_top5: float | None = None
    final_top1: float = 0.0
    final_ema_top1: float | None = None
    test_top1: float | None = None  # the final weights on the test set, evaluated once at the end
    test_ema_top1: float | None = None
    epochs: float = 0
    steps: int = 0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0
    img_per_s: float = 0.0
    bad_images: int = 0
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The one-screen summary printed at the end of a run."""
        lines = ["", f"Run finished: {self.run_dir}",
                 f"  best top-1 {self.best_top1:.2f}%  top-5 {self.best_top5:.2f}%  (epoch {self.best_epoch:g})"]
        if self.best_ema_top1 is not None:
            lines.append(f"  best EMA top-1 {self.best_ema_top1:.2f}%  top-5 {self.best_ema_top5:.2f}%")
        lines += [
            f"  final top-1 {self.final_top1:.2f}%" + (f"  EMA {self.final_ema_top1:.2f}%"
                                                        if self.final_ema_top1 is not None else ""),
            f"  {self.epochs:g} epochs, {self.steps} steps, training {self.train_time_s / 60:.1f} min, "
            f"wall-clock {self.wall_time_s / 60:.1f} min, {self.img_per_s:.0f} img/s",
        ]
        if self.test_top1 is not None:
            lines.append(f"  test top-1 {self.test_top1:.2f}% (final weights)" + (
                f"  EMA {self.test_ema_top1:.2f}%" if self.test_ema_top1 is not None else "")
                + "  - the test set, once; choices were made on the validation set")
        if self.bad_images:
            lines.append(f"  skipped {self.bad_images} unreadable images (listed in the log above)")
        lines.append("  files:")
        lines += [f"    {k:11s} {v}" for k, v in self.files.items() if v]
        return "\n".join(lines)


class ClassificationTask(Task):
    """Cross-entropy (soft targets under Mixup/CutMix, label smoothing otherwise) and top-1/top-5 on the
    validation set (and once, at the end, on the test set), each rank evaluating its shard, in fp32."""

    name = "classification"
    metric = "top1"

    def __init__(self, model: nn.Module, train_set, val_set, num_classes: int, cfg: Config, device: torch.device,
                 meta: dict[str, Any], test_set=None) -> None:
        self.model, self.train_set, self.val_set, self.cfg, self.device = model, train_set, val_set, cfg, device
        self.meta = meta
        self.channels_last = cfg.run.channels_last
        self.mixup = _mixup(cfg, num_classes)
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            self.criterion: nn.Module = SoftTargetCrossEntropy()  # Mixup's soft targets carry the smoothing
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.data.label_smoothing)
        info = init_distributed(device.type)
        if info.distributed and cfg.run.strategy == "fsdp" and len(val_set) % info.world_size:
            # FSDP's forward is a collective: every rank must run the same number of evaluation batches.
            raise DataError(f"Under FSDP the {len(val_set)} validation images must split evenly over "
                            f"{info.world_size} ranks; set data.limit_val to a multiple of {info.world_size}")
        self.val_loader = self._loader(val_set, info)
        self.test_loader = self._loader(test_set, info) if test_set is not None else None

    def _loader(self, dataset, info) -> torch.utils.data.DataLoader:
        """Each rank's shard (the counts are all-reduced), without augmentation."""
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(SeededDataset(dataset), list(range(info.rank, len(dataset), info.world_size))),
            batch_size=self.cfg.optim.batch_size * 2, num_workers=self.cfg.data.num_workers,
            collate_fn=collate_skipping, pin_memory=self.device.type == "cuda")

    def collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*items, strict=True)
        return torch.stack(xs), torch.as_tensor(ys)

    def loss(self, model: nn.Module, batch, device: torch.device) -> dict[str, torch.Tensor]:
        x, y = batch
        if self.mixup is not None and len(x) % 2:
            x, y = x[:-1], y[:-1]  # timm's Mixup pairs images: a skipped unreadable one leaves an odd batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        return {"loss": self.criterion(model(x), y)}

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        # in fp32 whatever the training precision, as `convnext eval` does: figures compare across CPUs and runs
        m = evaluate(model, self.val_loader, self.device, channels_last=self.channels_last, tta=self.cfg.run.tta)
        return {"top1": m["top1"], "top5": m["top5"], "val_loss": m["loss"]}

    def test(self, model: nn.Module) -> dict[str, Any]:
        if self.test_loader is None:
            return {}
        m = evaluate(model, self.test_loader, self.device, channels_last=self.channels_last, tta=self.cfg.run.tta)
        return {"top1": m["top1"], "top5": m["top5"], "loss": m["loss"]}

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.meta

    def describe(self) -> str:
        return f"{len(self.train_set)} train / {len(self.val_set)} val images"

    def plot(self, metrics: Path, out_dir: Path) -> dict[str, Path]:
        return plot_metrics(metrics, out_dir)

    def summarize(self, s: dict[str, Any]) -> dict[str, Any]:
        best, best_ema, final = s["best"]["metrics"] or {}, s["best"]["ema_metrics"], s["final"]
        steps_per_epoch = s["steps"] / max(s["epochs"], 1e-9)
        return TrainResult(
            run_dir=s["run_dir"], best_top1=best.get("top1", 0.0), best_top5=best.get("top5", 0.0),
            best_epoch=s["best"]["step"] / steps_per_epoch if best else -1,
            best_ema_top1=best_ema["top1"] if best_ema else None,
            best_ema_top5=best_ema["top5"] if best_ema else None, final_top1=final.get("top1", 0.0),
            final_ema_top1=final.get("ema_top1"), test_top1=s["test"].get("top1"),
            test_ema_top1=s["test"].get("ema_top1"), epochs=s["epochs"], steps=s["steps"],
            train_time_s=s["train_time_s"], wall_time_s=s["wall_time_s"], img_per_s=s["samples_per_s"],
            bad_images=s["bad_images"], files=s["files"]).__dict__


def build_model(cfg: Config, num_classes: int, in_chans: int) -> nn.Module:
    """The recipe's model, optimized; from `model.init` when fine-tuning: a training checkpoint, an FCMAE
    encoder, a release tag or weights in any layout (the head is re-initialised with `head_init_scale` when the
    number of classes differs)."""
    m = cfg.model
    kwargs: dict[str, Any] = dict(num_classes=m.num_classes or num_classes, in_chans=m.in_chans or in_chans,
                                  drop_path_rate=m.drop_path_rate, head_init_scale=m.head_init_scale, **m.kwargs)
    if m.layer_scale_init_value is not None:
        kwargs["layer_scale_init_value"] = m.layer_scale_init_value
    return create_model(m.name, pretrained=m.init or False, **kwargs)


def train(cfg: Config, model: nn.Module | None = None, train_set=None, val_set=None, num_classes: int | None = None,
          callbacks: Sequence[Callable[[LoopState], None]] = ()) -> TrainResult:
    """Train with the recipe `cfg` and return the result; rank 0 writes everything under `run.out_dir/run.name`.

    By default the model and data come from the recipe. Pass `model` (any nn.Module classifier; layer-wise decay
    needs `layer_group`/`num_layer_groups`) and/or `train_set`/`val_set` (map-style data sets of
    `(image_tensor, label)`) to train something else with the same loop. `callbacks` run after every step.
    """
    if cfg.task != "classification":
        raise ConfigError(f"{cfg.recipe} is a {cfg.task} recipe: run it with `convnext pretrain`")
    device = resolve_device(cfg.run.device)
    info = init_distributed(device.type)
    seed_everything(cfg.run.seed)  # the model's initial weights: the same in every process and every run
    test_set = None
    if train_set is None or val_set is None:
        built = build_datasets(cfg.data)
        train_set, val_set = train_set or built[0], val_set or built[1]
        num_classes, in_chans = num_classes or built[2], built[3]
        test_set = build_test_set(cfg.data)
    else:
        in_chans = int(train_set[0][0].shape[0])  # images are (C, H, W) tensors
        num_classes = num_classes or len(class_names(train_set) or ()) or None
    if model is None:
        model = build_model(cfg, num_classes, in_chans)
    meta: dict[str, Any] = {"data_config": data_spec(cfg.data, in_chans, class_names(train_set)).to_dict()}
    if getattr(model, "config", None):
        meta["model_config"] = dict(model.config)
    task = ClassificationTask(model, train_set, val_set, num_classes, cfg, device, meta, test_set)
    loop = recipe_loop_config(cfg, info.world_size, len(train_set))
    return TrainResult(**run(task, loop, callbacks))


def _mixup(cfg: Config, num_classes: int):
    if cfg.data.mixup <= 0 and cfg.data.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.data.mixup, cutmix_alpha=cfg.data.cutmix, prob=cfg.data.mixup_prob,
                 switch_prob=cfg.data.mixup_switch_prob, label_smoothing=cfg.data.label_smoothing,
                 num_classes=num_classes)


__all__ = ["ClassificationTask", "TrainResult", "build_model", "train"]
