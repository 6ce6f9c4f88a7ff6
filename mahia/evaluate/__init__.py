"""Evaluation: task metrics, eager prediction on a data split, and an exported artifact's deployments next to
the eager model they came from (`mahia-eval`)."""

from mahia.evaluate.metrics import classification_metrics, logits_to_prob_positive
from mahia.evaluate.prediction import Predictions, evaluate, predict

__all__ = ["Predictions", "classification_metrics", "evaluate", "logits_to_prob_positive", "predict"]
