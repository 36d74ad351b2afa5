"""convnext: "A ConvNet for the 2020s" (Liu et al., CVPR 2022) as a library and a command-line tool."""

from .api import create_model, load, read_source, save
from .checkpoints import load_state_dict
from .data.transforms import transform
from .data_config import DataSpec
from .fast import freeze, optimize
from .malloc import tune_malloc
from .models import IN22K_CLASSES, ConvNeXt, ConvNeXtFeatures, ConvNeXtIsotropic, list_models

__version__ = "0.1.0"

__all__ = [
    "IN22K_CLASSES", "ConvNeXt", "ConvNeXtFeatures", "ConvNeXtIsotropic", "DataSpec", "create_model", "freeze",
    "list_models", "load", "load_state_dict", "optimize", "read_source", "save", "transform",
    "tune_malloc",
]
