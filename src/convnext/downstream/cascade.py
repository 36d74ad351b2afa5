"""Cascade Mask R-CNN RoI heads on torchvision's `RoIHeads` (paper Table 3), as mmdet's `CascadeRoIHead`.

Three stages with IoU thresholds 0.5 / 0.6 / 0.7 and box-coder weights (10, 10, 5, 5) x 1 / 2 / 3, each with
its own box head (4 convs + BN + 1 FC, mmdet's `Shared4Conv1FCBBoxHead` as the official ConvNeXt config) and
its own mask head; stage losses are weighted 1 / 0.5 / 0.25. Each stage trains on proposals refined by the
previous one. At test time boxes are refined through the stages, class scores are the mean of the three
stages' softmax, and the masks of the final boxes are the mean of the three mask heads' probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops


class CascadeRoIHeads(RoIHeads):
    """torchvision `RoIHeads` with a cascade of box stages and one mask head per stage."""

    def __init__(self, box_roi_pool: nn.Module, box_heads: Sequence[nn.Module], box_predictors: Sequence[nn.Module],
                 mask_roi_pool: nn.Module, mask_heads: Sequence[nn.Module], mask_predictors: Sequence[nn.Module],
                 stage_iou: Sequence[float] = (0.5, 0.6, 0.7), stage_weights: Sequence[float] = (1.0, 0.5, 0.25),
                 batch_size_per_image: int = 512, positive_fraction: float = 0.25, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100) -> None:
        super().__init__(box_roi_pool, None, None, stage_iou[0], stage_iou[0], batch_size_per_image,
                         positive_fraction, (10.0, 10.0, 5.0, 5.0), score_thresh, nms_thresh, detections_per_img,
                         mask_roi_pool, None, None)
        self.box_heads, self.box_predictors = nn.ModuleList(box_heads), nn.ModuleList(box_predictors)
        self.mask_heads, self.mask_predictors = nn.ModuleList(mask_heads), nn.ModuleList(mask_predictors)
        self.stage_weights = tuple(stage_weights)
        self.matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in stage_iou]
        self.coders = [det_utils.BoxCoder((10.0 * k, 10.0 * k, 5.0 * k, 5.0 * k)) for k in (1, 2, 3)]

    def has_mask(self) -> bool:
        return True

    def _stage(self, s: int, features, proposals, image_shapes) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.box_heads[s](self.box_roi_pool(features, proposals, image_shapes))
        return self.box_predictors[s](x)

    def _refine(self, s: int, proposals, regression, labels, image_shapes) -> list[torch.Tensor]:
        """Each proposal regressed by stage s's prediction for `labels` (class-specific), clipped."""
        boxes = self.coders[s].decode(regression.detach(), proposals)
        boxes = boxes[torch.arange(len(labels), device=labels.device), labels]
        out = []
        for b, shape in zip(boxes.split([len(p) for p in proposals]), image_shapes, strict=True):
            out.append(box_ops.clip_boxes_to_image(b, shape))
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return self._inference(features, proposals, image_shapes), {}
        losses: dict[str, torch.Tensor] = {}
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        for s, w in enumerate(self.stage_weights):
            self.proposal_matcher, self.box_coder = self.matchers[s], self.coders[s]
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            class_logits, regression = self._stage(s, features, proposals, image_shapes)
            loss_cls, loss_box = fastrcnn_loss(class_logits, regression, labels, regression_targets)
            pos = [torch.where(lab > 0)[0] for lab in labels]
            mask_props = [p[i] for p, i in zip(proposals, pos, strict=True)]
            mask_idxs = [m[i] for m, i in zip(matched_idxs, pos, strict=True)]
            mask_logits = self.mask_predictors[s](self.mask_heads[s](
                self.mask_roi_pool(features, mask_props, image_shapes)))
            loss_mask = maskrcnn_loss(mask_logits, mask_props, gt_masks, gt_labels, mask_idxs)
            losses.update({f"loss_classifier_{s}": w * loss_cls, f"loss_box_reg_{s}": w * loss_box,
                           f"loss_mask_{s}": w * loss_mask})
            if s + 1 < len(self.stage_weights):
                # positives move with their ground-truth class, negatives with the predicted one (as mmdet)
                cat = torch.cat(labels)
                cat = torch.where(cat > 0, cat, class_logits[:, 1:].argmax(1) + 1)
                proposals = self._refine(s, proposals, regression, cat, image_shapes)
        return [], losses

    def _inference(self, features, proposals, image_shapes) -> list[dict[str, torch.Tensor]]:
        probs = []
        for s in range(len(self.stage_weights)):
            class_logits, regression = self._stage(s, features, proposals, image_shapes)
            probs.append(F.softmax(class_logits, -1))
            if s + 1 < len(self.stage_weights):
                proposals = self._refine(s, proposals, regression, class_logits[:, 1:].argmax(1) + 1, image_shapes)
        self.box_coder = self.coders[-1]  # postprocess_detections decodes the last stage's regression
        mean = torch.stack(probs).mean(0)
        boxes, scores, labels = self.postprocess_detections(mean.clamp(min=1e-12).log(), regression, proposals,
                                                            image_shapes)
        result = [{"boxes": b, "labels": lab, "scores": sc} for b, sc, lab in zip(boxes, scores, labels, strict=True)]
        feats = self.mask_roi_pool(features, boxes, image_shapes)
        stage_probs = [maskrcnn_inference(pred(head(feats)), labels)
                       for head, pred in zip(self.mask_heads, self.mask_predictors, strict=True)]
        for i, r in enumerate(result):
            r["masks"] = torch.stack([p[i] for p in stage_probs]).mean(0)
        return result
