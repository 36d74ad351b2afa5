"""Robustness evaluation (paper Table 8): ImageNet-C mCE, ImageNet-A/-R 200-class protocols, Sketch, and
ImageNet-C-style corrupted copies of any data set."""

from .evaluate import class_indices, evaluate_corruptions, image_folder, top1_error
from .metrics import (
    ALEXNET_ERRORS,
    CORRUPTIONS,
    SEVERITIES,
    alexnet_clean_error,
    corruption_errors,
    mce,
    relative_mce,
    summarize,
    unnormalized_mce,
)
from .subsets import imagenet_synsets, masked_predictions, subset_indices

__all__ = [
    "ALEXNET_ERRORS", "CORRUPTIONS", "SEVERITIES", "alexnet_clean_error", "class_indices", "corruption_errors",
    "evaluate_corruptions", "image_folder", "imagenet_synsets", "masked_predictions", "mce", "relative_mce",
    "subset_indices", "summarize", "top1_error", "unnormalized_mce",
]
