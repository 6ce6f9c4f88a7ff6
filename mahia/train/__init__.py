"""Training MAHIA-X on the reviews data: the loop, losses, metrics, the baseline and evaluation."""

from mahia.train.config import TrainConfig
from mahia.train.evaluation import evaluate, predict
from mahia.train.losses import distillation_loss, training_loss
from mahia.train.metrics import classification_metrics
from mahia.train.trainer import TrainingError, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "classification_metrics", "distillation_loss", "evaluate",
           "predict", "train", "training_loss"]
