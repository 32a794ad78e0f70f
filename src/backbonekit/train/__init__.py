"""Training, evaluation and prediction for backbonekit models (needs the ``train`` extra).

Models never import this package.
"""

from .config import TrainConfig, resolve_config
from .trainer import TrainResult, evaluate_checkpoint, predict, train

__all__ = ["TrainConfig", "TrainResult", "evaluate_checkpoint", "predict", "resolve_config", "train"]
