"""Training: recipes and config, the loop, optimizer groups and schedule, EMA, distributed, checkpoints.

    from convnext.train import load_config, train
    result = train(load_config("fashion_mnist", ["optim.epochs=2"]))
"""

from .config import Config, ConfigError, load_config
from .engine import NonFiniteLossError, TrainResult, train

__all__ = ["Config", "ConfigError", "NonFiniteLossError", "TrainResult", "load_config", "train"]
