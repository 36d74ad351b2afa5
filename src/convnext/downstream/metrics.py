"""Downstream metrics: COCO box/mask AP with pycocotools, and mIoU from a confusion matrix (as mmseg)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import IGNORE_INDEX
from .inference import segment

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class MeanIoU:
    """Accumulates a confusion matrix over predictions and reports mIoU, mAcc and aAcc in percent.

    Classes that never occur in the labels nor in the predictions have no IoU (NaN) and are left out of the
    mean, as mmseg's `nanmean`; pixels labelled `ignore_index` are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: `pred` and `target` are integer class maps of the same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
        keep = target != self.ignore_index
        t, p = target[keep].long().cpu(), pred[keep].long().cpu()
        if t.numel() and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(f"label values must be in 0..{self.num_classes - 1} or {self.ignore_index} (ignore), "
                             f"found {int(t.min())}..{int(t.max())}")
        self.confusion += torch.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes)

    def compute(self) -> dict[str, Any]:
        """{"mIoU", "mAcc", "aAcc"} in percent and the per-class "IoU" list (NaN where undefined)."""
        cm = self.confusion.double()
        tp, gt, pred = cm.diag(), cm.sum(1), cm.sum(0)
        union = gt + pred - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        return {"mIoU": 100 * float(iou.nanmean()), "mAcc": 100 * float(acc.nanmean()),
                "aAcc": 100 * float(tp.sum() / cm.sum().clamp(min=1)), "IoU": (100 * iou).tolist()}


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Iterable, num_classes: int, scales: Sequence[float] = (1.0,),
                          flip: bool = False, mode: str = "whole", crop: int = 512, stride: int = 341,
                          device: str | torch.device = "cpu") -> dict[str, Any]:
    """mIoU of `model` over `loader` (batches of (image, label at original size)); see `segment` for the
    single-/multi-scale and whole/slide options."""
    metric = MeanIoU(num_classes)
    for images, labels in loader:
        probs = segment(model, images.to(device), labels.shape[-2:], scales, flip, mode, crop, stride)
        metric.update(probs.argmax(1), labels)
    return metric.compute()


def coco_results(outputs: dict[int, dict[str, torch.Tensor]], mask_threshold: float = 0.5) -> tuple[list, list]:
    """torchvision detector outputs per image id -> COCO result lists (boxes as xywh; masks as RLE)."""
    from pycocotools import mask as mask_util

    boxes, segms = [], []
    for image_id, out in outputs.items():
        b = out["boxes"].detach().cpu().double()
        xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()
        scores, labels = out["scores"].tolist(), out["labels"].tolist()
        rles = []
        if "masks" in out and len(scores):
            m = (out["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
            rles = mask_util.encode(np.asfortranarray(m.transpose(1, 2, 0)))
        for k, (box, score, label) in enumerate(zip(xywh, scores, labels, strict=True)):
            common = {"image_id": int(image_id), "category_id": int(label), "score": float(score)}
            boxes.append({**common, "bbox": box})
            if rles:
                segms.append({**common, "segmentation": rles[k]})
    return boxes, segms


def coco_evaluate(coco_gt: Any, outputs: dict[int, dict[str, torch.Tensor]],
                  iou_types: Sequence[str] = ("bbox", "segm")) -> dict[str, float]:
    """COCO AP (percent) of detector outputs keyed by image id: "bbox_AP", "bbox_AP50", ..., "segm_AP", ...

    Only the images in `outputs` are evaluated. An IoU type with no detections scores 0.
    """
    boxes, segms = coco_results(outputs)
    return _cocoeval(coco_gt, {"bbox": boxes, "segm": segms}, sorted(outputs), iou_types)


def _cocoeval(coco_gt: Any, results: dict[str, list], image_ids: list[int], iou_types: Sequence[str]) -> dict:
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if not results[iou_type]:
            metrics.update({f"{iou_type}_{k}": 0.0 for k in COCO_STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            dt = coco_gt.loadRes(results[iou_type])
            ev = COCOeval(coco_gt, dt, iou_type)
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # pycocotools' -1 means "no ground truth of this size": NaN, not a negative AP
        metrics.update({f"{iou_type}_{k}": 100 * float(v) if v >= 0 else float("nan")
                        for k, v in zip(COCO_STATS, ev.stats[:6], strict=True)})
    return metrics


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader: Iterable, coco_gt: Any,
                       device: str | torch.device = "cpu") -> dict[str, float]:
    """COCO box and mask AP of a torchvision detector over `loader` (batches of (images, targets))."""
    model.eval()
    results: dict[str, list] = {"bbox": [], "segm": []}
    image_ids: list[int] = []
    for images, targets in loader:
        preds = model([im.to(device) for im in images])
        ids = [int(t["image_id"]) for t in targets]
        # masks become RLE per batch: full-size probability maps of a whole data set would not fit in memory
        boxes, segms = coco_results(dict(zip(ids, preds, strict=True)))
        results["bbox"] += boxes
        results["segm"] += segms
        image_ids += ids
    return _cocoeval(coco_gt, results, sorted(image_ids), ("bbox", "segm"))
