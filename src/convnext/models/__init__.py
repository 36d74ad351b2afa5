"""The ConvNeXt model family."""

from .convnext import ConvNeXt, ConvNeXtFeatures
from .isotropic import ConvNeXtIsotropic
from .layers import Block, LayerNorm2d
from .registry import IN22K_CLASSES, MODELS, create_model, list_models

__all__ = [
    "Block", "ConvNeXt", "ConvNeXtFeatures", "ConvNeXtIsotropic", "IN22K_CLASSES", "LayerNorm2d", "MODELS",
    "create_model", "list_models",
]
