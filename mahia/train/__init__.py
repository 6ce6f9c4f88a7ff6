"""Training MAHIA-X on the reviews data: the loop, losses, resumable state, the baseline and the default
model's provenance (evaluation lives in mahia.evaluate)."""

from mahia.train.config import TrainConfig
from mahia.train.losses import distillation_loss, training_loss
from mahia.train.trainer import TrainingError, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "distillation_loss", "train", "training_loss"]
