"""FCMAE pretraining on the shared training loop: `pretrain(cfg)` runs a `task: fcmae` recipe end to end
(`convnext pretrain`), resumable and torchrun-ready like `convnext train`.

The labels of the data set are not used. Each evaluation reports the masked reconstruction loss on the
validation images under masks drawn from a fixed seed, so that evaluations compare. Fine-tune the result with a
classification recipe whose `model.init` is the run's `last-*.pt` (the encoder is taken from it; the final norm
and the head start fresh): `convnext train --recipe fcmae_ft_fashion_mnist --set model.init=...`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import SeededDataset, build_datasets, class_names, collate_skipping
from ..data_config import data_spec
from ..distributed import all_reduce_sum, init_distributed
from ..plots import line_plot
from ..train.config import Config, ConfigError
from ..train.loop import (
    LoopState,
    Task,
    amp_dtype,
    read_metrics,
    recipe_loop_config,
    resolve_device,
    run,
    seed_everything,
)
from .fcmae import FCMAE, build_fcmae

EVAL_MASK_SEED = 0  # the validation loss is measured under the same masks at every evaluation


class FCMAETask(Task):
    """Masked reconstruction loss on the training images; the same loss on the validation images."""

    name = "fcmae"

    def __init__(self, model: FCMAE, train_set, val_set, cfg: Config, device: torch.device,
                 meta: dict[str, Any]) -> None:
        self.model, self.train_set, self.val_set, self.cfg, self.device, self.meta = \
            model, train_set, val_set, cfg, device, meta
        self.channels_last, self.amp = cfg.run.channels_last, amp_dtype(cfg.run.amp, device)
        info = init_distributed(device.type)
        self.val_loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(SeededDataset(val_set), list(range(info.rank, len(val_set), info.world_size))),
            batch_size=cfg.optim.batch_size, num_workers=cfg.data.num_workers, collate_fn=collate_skipping)

    def loss(self, model: nn.Module, batch, device: torch.device) -> dict[str, torch.Tensor]:
        images = batch[0].to(device, non_blocking=True)  # the labels are not used
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return {"loss": model(images)[0]}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        model.eval()
        g = torch.Generator().manual_seed(EVAL_MASK_SEED)
        total, n = 0.0, 0
        for images, _, _ in self.val_loader:
            if images is None:
                continue
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                loss = model(images.to(self.device), generator=g)[0]
            total, n = total + float(loss) * len(images), n + len(images)
        total, n = all_reduce_sum([total, n], self.device)
        return {"val_loss": total / max(n, 1)}

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.meta

    def describe(self) -> str:
        m = self.model.module if hasattr(self.model, "module") else self.model
        return (f"FCMAE pretraining of {self.meta['model_config']['model']}, {len(self.train_set)} train / "
                f"{len(self.val_set)} val images, mask ratio {m.mask_ratio}, patches of {m.patch_size} px")

    def plot(self, metrics: Path, out_dir: Path) -> dict[str, Path]:
        records = list(read_metrics(metrics))
        steps = {r["step"]: r for r in records if r["type"] == "step"}
        evals = {r["step"]: r for r in records if r["type"] == "eval"}
        if not steps:
            return {}
        xs = sorted(steps)
        series = [("train loss", [steps[x]["loss"] for x in xs])]
        path = line_plot(out_dir / "loss.png", xs, series, "step", "masked reconstruction loss", marker=None)
        if evals:
            ex = sorted(evals)
            line_plot(out_dir / "val_loss.png", ex, [("val loss", [evals[x]["val_loss"] for x in ex])], "step",
                      "masked reconstruction loss")
        return {"loss": path}


def build_model(cfg: Config, in_chans: int) -> FCMAE:
    """The recipe's FCMAE: its `model` section's encoder with the `fcmae` section's decoder and masking."""
    m = cfg.model
    if m.init:
        raise ConfigError("model.init is for fine-tuning; FCMAE pretraining starts from a fresh encoder")
    return build_fcmae(m.name, in_chans=m.in_chans or in_chans, drop_path_rate=m.drop_path_rate, **m.kwargs,
                       **asdict(cfg.fcmae))


def pretrain(cfg: Config, callbacks: Sequence[Callable[[LoopState], None]] = ()) -> dict[str, Any]:
    """Run the FCMAE recipe `cfg` (task: fcmae) and return the run's summary; rank 0 writes everything under
    `run.out_dir/run.name`: checkpoints whose weights fine-tune through `model.init`, metrics, plots."""
    if cfg.task != "fcmae":
        raise ConfigError(f"{cfg.recipe} is a {cfg.task} recipe: run it with `convnext train`")
    device = resolve_device(cfg.run.device)
    info = init_distributed(device.type)
    seed_everything(cfg.run.seed)  # the same initial weights in every process and every run
    train_set, val_set, _, in_chans = build_datasets(cfg.data)
    model = build_model(cfg, in_chans)
    encoder = {k: v for k, v in model.config.items() if k != "fcmae"}
    meta = {"model_config": {**encoder, "num_classes": 0},  # the encoder: what fine-tuning builds from this file
            "fcmae": model.config["fcmae"],
            "data_config": data_spec(cfg.data, in_chans, class_names(train_set)).to_dict()}
    task = FCMAETask(model, train_set, val_set, cfg, device, meta)
    return run(task, recipe_loop_config(cfg, info.world_size, len(train_set)), callbacks)
