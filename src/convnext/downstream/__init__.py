"""Downstream tasks (paper Tables 3, 4): Mask R-CNN on COCO and UperNet on ADE20K with a ConvNeXt backbone."""

from .backbone import ConvNeXtFPN, create_backbone
from .detection import create_detector, detector_flops, detector_macs, list_detectors
from .segmentation import UperNet, create_segmenter, list_segmenters, segmentation_loss, segmenter_flops

__all__ = [
    "ConvNeXtFPN", "UperNet", "create_backbone", "create_detector", "create_segmenter", "detector_flops",
    "detector_macs", "list_detectors", "list_segmenters", "segmentation_loss", "segmenter_flops",
]
