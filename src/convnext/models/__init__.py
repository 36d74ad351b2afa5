"""The reference networks: ConvNeXt (hierarchical and isotropic), its block, ConvNeXt V2's GRN block, the roadmap
designs, the registry.

Plain PyTorch in the official state-dict layout, nothing else: weights come from `convnext.checkpoints`,
speed from `convnext.fast`, and `convnext.create_model` puts the three together.
"""

from .convnext import ConvNeXt, ConvNeXtFeatures
from .isotropic import ConvNeXtIsotropic
from .layers import GRN, Block, BlockV2, LayerNorm2d
from .registry import IN22K_CLASSES, MODELS, ModelSpec, build_model, list_models, unknown_model

__all__ = [
    "GRN", "Block", "BlockV2", "ConvNeXt", "ConvNeXtFeatures", "ConvNeXtIsotropic", "IN22K_CLASSES", "LayerNorm2d",
    "MODELS", "ModelSpec", "build_model", "list_models", "unknown_model",
]
