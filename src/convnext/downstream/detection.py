"""Mask R-CNN and Cascade Mask R-CNN with a ConvNeXt + FPN backbone, built from torchvision's detection
models (paper Table 3); the cascade RoI heads are in `cascade.py`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from ..flops import count_params
from ..models import MODELS, ConvNeXt
from .backbone import ConvNeXtFPN, backbone_for
from .cascade import CascadeRoIHeads

# The paper's Table 3 (reference/paper.md section 7): Mask R-CNN 3x, GMACs at 1280x800, params in millions.
# Cascade: box AP from reference/paper.md; GMACs/params are Table 3's (T 741G/86M, S 827G/108M, B 964G/146M).
PAPER_DETECTION: dict[str, dict[str, float]] = {
    "maskrcnn_convnext_tiny": {"gmacs": 262, "params": 48, "box_ap": 46.2, "mask_ap": 41.7},
    "cascade_maskrcnn_convnext_tiny": {"gmacs": 741, "params": 86, "box_ap": 50.4},
    "cascade_maskrcnn_convnext_small": {"gmacs": 827, "params": 108, "box_ap": 51.9},
    "cascade_maskrcnn_convnext_base": {"gmacs": 964, "params": 146, "box_ap": 52.7},
}

DETECTORS: dict[str, str] = {f"{kind}_{n}": n for kind in ("maskrcnn", "cascade_maskrcnn")
                             for n, s in MODELS.items() if s.cls is ConvNeXt}

# mmdet's multi-scale training of the 3x schedule: short side drawn from 480..800 (step 32), long side <= 1333.
MULTISCALE_MIN_SIZES = tuple(range(480, 801, 32))


class ConvNeXtMaskRCNN(MaskRCNN):
    """torchvision's `MaskRCNN` on a `ConvNeXtFPN` backbone, with the layer-wise lr decay groups of the
    official mmdet `LearningRateDecayOptimizerConstructor` (`decay_type="layer_wise"`).

    `layer_group` follows `ConvNeXt.layer_group` for the backbone's stem, stages and downsampling layers;
    the backbone's output norms `norm0..3`, the FPN and the heads are the head group (full lr), as in the
    official constructor, which matches only `downsample_layers` and `stages` names.
    """

    backbone: ConvNeXtFPN

    @property
    def num_layer_groups(self) -> int:
        """Backbone layer groups (6 for T, 12 for S/B/L/XL: the official configs' `num_layers`)."""
        return self.backbone.body.num_layer_groups

    def layer_group(self, param_name: str) -> int:
        """Layer-wise lr decay group of a parameter: 0 (stem) .. num_layer_groups + 1 (FPN and heads)."""
        prefix = "backbone.body."
        if param_name.startswith(prefix):
            name = param_name[len(prefix):]
            if name.startswith(("downsample_layers.", "stages.")):
                return self.backbone.body.layer_group(name)
        return self.num_layer_groups + 1


def create_detector(
    name: str,
    num_classes: int = 91,
    *,
    pretrained_backbone: bool | str = False,
    drop_path_rate: float = 0.0,
    min_size: int | tuple[int, ...] = MULTISCALE_MIN_SIZES,
    max_size: int = 1333,
    fpn_channels: int = 256,
    box_head_dim: int = 1024,
    mask_head_dim: int = 256,
    backbone_kwargs: dict[str, Any] | None = None,
    **maskrcnn_kwargs: Any,
) -> ConvNeXtMaskRCNN:
    """Build a torchvision `MaskRCNN` (`ConvNeXtMaskRCNN`) whose backbone is ConvNeXt + FPN (P2-P6, 256 channels).

    "cascade_maskrcnn_*" names replace its RoI heads by `CascadeRoIHeads`: three stages, each with a
    4-conv (+ BN) 1-FC box head and its own mask head, as the official Cascade Mask R-CNN config.

    Args:
        name: "maskrcnn_convnext_tiny", "cascade_maskrcnn_convnext_tiny" etc. (`list_detectors()`).
        num_classes: classes including background 0, as torchvision counts them (91 for COCO's category ids;
            81 for a contiguous 80-class mapping as in mmdet).
        pretrained_backbone: passed to `create_model(..., pretrained=)`: a classification checkpoint path in
            any layout the project reads, or a release tag; False for random initialisation.
        drop_path_rate: the backbone's stochastic depth (the paper: 0.4 for T).
        min_size: short side(s) the model's own transform resizes to; a tuple draws one per training batch
            (multi-scale training) and uses the last at evaluation.
        max_size: cap on the long side.
        fpn_channels: FPN width.
        box_head_dim: width of the box head's two fully connected layers (1024 in the paper's setup).
        mask_head_dim: width of the mask head's four 3x3 convs and its deconv (256 in the paper's setup).
        backbone_kwargs: extra `create_model` arguments (e.g. `depths=`, `dims=` for tiny test models).
        **maskrcnn_kwargs: passed to torchvision's `MaskRCNN` (RPN/RoI settings).

    The result's `config` rebuilds it: `create_detector(**model.config)`.
    """
    backbone_kwargs = dict(backbone_kwargs or {})
    body = backbone_for(name, DETECTORS, "detector", pretrained_backbone, drop_path_rate, backbone_kwargs)
    cascade = name.startswith("cascade_")
    stages = 3 if cascade else 1
    # torchvision's default heads, with their widths exposed so tests can use small ones; the cascade's box
    # heads are mmdet's Shared4Conv1FCBBoxHead (torchvision's FastRCNNConvFCHead with BatchNorm)
    box_heads = [FastRCNNConvFCHead((fpn_channels, 7, 7), [fpn_channels] * 4, [box_head_dim], nn.BatchNorm2d)
                 if cascade else TwoMLPHead(fpn_channels * 7 * 7, box_head_dim) for _ in range(stages)]
    box_predictors = [FastRCNNPredictor(box_head_dim, num_classes) for _ in range(stages)]
    mask_heads = [MaskRCNNHeads(fpn_channels, (mask_head_dim,) * 4, 1) for _ in range(stages)]
    mask_predictors = [MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes) for _ in range(stages)]
    model = ConvNeXtMaskRCNN(
        ConvNeXtFPN(body, fpn_channels), num_classes=None, min_size=min_size, max_size=max_size,
        box_head=box_heads[0], box_predictor=box_predictors[0], mask_head=mask_heads[0],
        mask_predictor=mask_predictors[0], **maskrcnn_kwargs)
    if cascade:
        rh = model.roi_heads
        model.roi_heads = CascadeRoIHeads(
            rh.box_roi_pool, box_heads, box_predictors, rh.mask_roi_pool, mask_heads, mask_predictors,
            batch_size_per_image=rh.fg_bg_sampler.batch_size_per_image,
            positive_fraction=rh.fg_bg_sampler.positive_fraction, score_thresh=rh.score_thresh,
            nms_thresh=rh.nms_thresh, detections_per_img=rh.detections_per_img)
    model.config = {"name": name, "num_classes": num_classes, "drop_path_rate": drop_path_rate,
                    "min_size": min_size, "max_size": max_size, "fpn_channels": fpn_channels,
                    "box_head_dim": box_head_dim, "mask_head_dim": mask_head_dim,
                    "backbone_kwargs": backbone_kwargs, **maskrcnn_kwargs}
    return model


def list_detectors() -> list[str]:
    """Names `create_detector` accepts."""
    return list(DETECTORS)


@torch.no_grad()
def detector_macs(model: MaskRCNN, size: tuple[int, int] = (800, 1280), num_proposals: int = 1000,
                  num_masks: int = 100) -> int:
    """Multiply-accumulates of a Mask R-CNN forward the way mmdet's `get_flops.py` counted the paper's 262G.

    mmdet's `forward_dummy` runs backbone + FPN + RPN head on the (H, W) image, the box head on 1000 random
    proposals and the mask head on the first 100 of them (for a cascade: every stage's box and mask head);
    RoIAlign, NMS and post-processing are not counted.
    We count the same modules with `torch.utils.flop_counter` (convolutions and matmuls only), feeding the
    heads pooled features of the right shape, so the count runs on the meta device.
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = size
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        feats = model.backbone(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))
        model.rpn.head(list(feats.values()))
        c, rh = model.backbone.out_channels, model.roi_heads
        cascade = isinstance(rh, CascadeRoIHeads)
        stages = zip(rh.box_heads, rh.box_predictors, rh.mask_heads, rh.mask_predictors, strict=True) if cascade \
            else [(rh.box_head, rh.box_predictor, rh.mask_head, rh.mask_predictor)]
        for box_head, box_predictor, mask_head, mask_predictor in stages:
            box_predictor(box_head(torch.zeros(num_proposals, c, *_pool_size(rh.box_roi_pool), device=p.device,
                                               dtype=p.dtype)))
            mask_predictor(mask_head(torch.zeros(num_masks, c, *_pool_size(rh.mask_roi_pool), device=p.device,
                                                 dtype=p.dtype)))
    model.train(was_training)
    return counter.get_total_flops() // 2


def _pool_size(pool: nn.Module) -> tuple[int, int]:
    size = pool.output_size
    return (size, size) if isinstance(size, int) else tuple(size)


def detector_flops(name: str = "maskrcnn_convnext_tiny", size: tuple[int, int] = (800, 1280),
                   num_classes: int = 81) -> dict[str, float | str | None]:
    """GMACs (mmdet's counting, see `detector_macs`) and params (M) of a detector built on the meta device,
    beside the paper's figures; `num_classes=81` is mmdet's COCO head (80 classes + background)."""
    with torch.device("meta"):
        model = create_detector(name, num_classes)
    paper = PAPER_DETECTION.get(name, {})
    return {"gmacs": detector_macs(model, size) / 1e9, "params": count_params(model) / 1e6,
            # the paper's figures are for its own input size only
            "paper_gmacs": paper.get("gmacs") if tuple(size) == (800, 1280) else None,
            "paper_params": paper.get("params"), "size": f"{size[0]}x{size[1]}"}
