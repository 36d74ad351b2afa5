"""convnext: "A ConvNet for the 2020s" (Liu et al., CVPR 2022) as a library and a command-line tool."""

from .checkpoints import load, load_state_dict, save
from .malloc import tune_malloc
from .models import IN22K_CLASSES, ConvNeXt, ConvNeXtFeatures, ConvNeXtIsotropic, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "IN22K_CLASSES", "ConvNeXt", "ConvNeXtFeatures", "ConvNeXtIsotropic", "create_model", "list_models",
    "load", "load_state_dict", "save", "tune_malloc",
]
