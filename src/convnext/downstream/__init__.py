"""Downstream tasks (paper Tables 3, 4): Mask R-CNN on COCO and UperNet on ADE20K with a ConvNeXt backbone."""

from __future__ import annotations

from .backbone import ConvNeXtFPN, create_backbone
from .detection import DETECTORS, create_detector, detector_flops, detector_macs, list_detectors
from .segmentation import SEGMENTERS, UperNet, create_segmenter, list_segmenters, segmentation_loss, segmenter_flops

__all__ = [
    "ConvNeXtFPN", "UperNet", "create_backbone", "create_detector", "create_segmenter", "detector_flops",
    "detector_macs", "downstream_flops", "list_detectors", "list_segmenters", "segmentation_loss", "segmenter_flops",
]


def downstream_flops(name: str, size: tuple[int, int] | None = None) -> dict[str, float | str | None] | None:
    """GMACs and params (M) of a downstream model beside the paper's, counted as mmdet/mmseg did, for
    `convnext flops maskrcnn_convnext_tiny --size 1280x800`; None if `name` is not a downstream model.

    `size` is (H, W): default 800x1280 for detectors, 512x2048 for segmenters (the paper's "1280x800" and
    "2048x512"; both networks' counts depend only on H x W when the sides are multiples of 32).
    """
    if name in DETECTORS:
        return detector_flops(name, size or (800, 1280))
    if name in SEGMENTERS:
        return segmenter_flops(name, size or (512, 2048))
    return None
