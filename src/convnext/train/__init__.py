"""Training: recipes and config, the one loop every task shares, classification on it, optimizer groups,
schedules, EMA and checkpoints.

    from convnext.train import load_config, train
    result = train(load_config("fashion_mnist", ["optim.epochs=2"]))
"""

from .classification import ClassificationTask, TrainResult, train
from .config import Config, ConfigError, load_config
from .loop import LoopConfig, LoopState, NonFiniteLossError, Task, run

__all__ = ["ClassificationTask", "Config", "ConfigError", "LoopConfig", "LoopState", "NonFiniteLossError", "Task",
           "TrainResult", "load_config", "run", "train"]
