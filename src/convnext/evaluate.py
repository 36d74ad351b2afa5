"""Top-1/top-5 evaluation: the function training uses and the `convnext eval` command.

    convnext eval --weights runs/fashion_mnist/best.pt --data fashion_mnist
    convnext eval --weights convnext_tiny_1k_224_ema.pth --model convnext_tiny --data /data/imagenet --split val
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of `targets` are among the top-k `logits`, for each k (k larger than the classes counts all)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets[:, None])
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


TTA_MODES: tuple[str, ...] = ("none", "hflip")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, tta: str = "none") -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of `model` over `loader`, summed over all ranks.

    `loader` yields `(images, targets)` or `(images, targets, bad_paths)`; under torchrun each rank should
    see its own shard (no padding duplicates), and the counts are all-reduced so every rank gets the total.
    `tta="hflip"` scores each image by the mean of its and its mirror image's class probabilities (the loss is
    then the cross-entropy of that mean), for models trained with horizontal flips.
    """
    from .distributed import all_reduce_sum

    if tta not in TTA_MODES:
        raise ValueError(f"Unknown test-time augmentation {tta!r}: use one of {', '.join(TTA_MODES)}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = top1 = top5 = 0
    loss = 0.0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for batch in loader:
        x, y = batch[0], batch[1]
        if x is None:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if tta == "hflip" and x.dim() != 4:
            raise ValueError(f"tta='hflip' mirrors NCHW image batches; got a {x.dim()}-D input")
        with autocast:
            logits = model(x).float()
            if tta == "hflip":
                # log of the mean probability, in log space so that it stays finite where both views' softmax
                # underflows: top-k and the cross-entropy below then score the averaged prediction
                logits = torch.logaddexp(logits.log_softmax(1), model(x.flip(3)).float().log_softmax(1)) - math.log(2)
        c1, c5 = topk_correct(logits, y)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    n, top1, top5, loss = all_reduce_sum([n, top1, top5, loss], device)
    model.train(was_training)
    if n == 0:
        raise ValueError("Evaluation saw no images")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": int(n)}


def load_for_eval(weights: str, model_name: str | None = None, num_classes: int | None = None,
                  in_chans: int | None = None) -> tuple[nn.Module, dict[str, Any], nn.Module | None]:
    """A model with `weights`: a training checkpoint of ours (rebuilt from the config inside it) or any layout
    `create_model(name, pretrained=path)` reads (then `model_name` is needed).

    Returns (model, config dict, EMA model): the EMA model holds the EMA weights that a full training checkpoint
    (`last-*.pt` of a run with EMA) carries beside the model's, and is None for every other file."""
    from .api import create_model

    path = Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"Weights {path} not found")
    if path.suffix == ".pt":
        from .checkpoints.io import load_checkpoint

        ck = load_checkpoint(path)
        cfg = ck.get("config")
        if "model_config" in ck:
            from .api import model_from_config

            def rebuild(state: dict) -> nn.Module:
                model = model_from_config(ck["model_config"])
                model.load_state_dict(state)
                return model

            return rebuild(ck["model"]), cfg, (rebuild(ck["ema"]) if ck.get("ema") is not None else None)
        if not cfg:
            raise ValueError(f"{path} has no config; pass --model NAME to read it as plain weights")
        m, res = cfg["model"], cfg.get("resolved", {})
        kwargs = dict(num_classes=m.get("num_classes") or res["num_classes"],
                      in_chans=m.get("in_chans") or (1 if cfg["data"]["dataset"] == "fashion_mnist" else 3),
                      **m.get("kwargs", {}))
        if m.get("layer_scale_init_value") is not None:
            kwargs["layer_scale_init_value"] = m["layer_scale_init_value"]
        def build(state: dict) -> nn.Module:
            model = create_model(model_name or m["name"], **kwargs)
            model.load_state_dict(state)
            return model

        return build(ck["model"]), cfg, (build(ck["ema"]) if ck.get("ema") is not None else None)
    if not model_name:
        raise ValueError(f"{path} is not a convnext training checkpoint: pass --model NAME (e.g. convnext_tiny)")
    kw = {} if num_classes is None else {"num_classes": num_classes}
    if in_chans:
        kw["in_chans"] = in_chans
    return create_model(model_name, pretrained=str(path), **kw), {}, None
