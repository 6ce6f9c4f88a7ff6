"""Task metrics of a binary classifier (accuracy, ROC AUC, F1) and the MoE's per-expert load."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score
from torch import Tensor


def classification_metrics(labels: np.ndarray, prob_positive: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, ROC AUC, F1 / precision / recall of class 1, log loss and the majority-class accuracy.

    Predictions are prob_positive >= threshold. ROC AUC needs both classes among the labels.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    prob = np.asarray(prob_positive, dtype=np.float64).ravel()
    if labels.shape != prob.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {prob.shape} must have the same length")
    if labels.size == 0:
        raise ValueError("cannot compute metrics on an empty set")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("probabilities must be finite and in [0, 1]")
    if len(np.unique(labels)) < 2:
        raise ValueError("ROC AUC needs both classes among the labels; this set has only one")
    predicted = (prob >= threshold).astype(np.int64)
    positive_rate = float(labels.mean())
    return {
        "n": int(labels.size),
        "accuracy": float(accuracy_score(labels, predicted)),
        "roc_auc": float(roc_auc_score(labels, prob)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "log_loss": float(log_loss(labels, np.clip(prob, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "positive_rate": positive_rate,
        "majority_accuracy": max(positive_rate, 1.0 - positive_rate),
    }


def logits_to_prob_positive(logits: np.ndarray | Tensor) -> np.ndarray:
    """P(class 1) from [N, 2] logits, computed in float64."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"expected logits of shape [N, 2], got {tuple(logits.shape)}")
    return torch.softmax(logits, dim=-1)[:, 1].numpy()


def expert_assignment_counts(router_logits: Tensor, token_mask: Tensor, top_k: int) -> Tensor:
    """[E] number of top-k assignments each expert receives from the real tokens (mask = 1)."""
    logits = router_logits[token_mask.reshape(-1).bool()].float()
    num_experts = logits.shape[-1]
    k = min(top_k, num_experts)
    return F.one_hot(logits.topk(k, dim=-1).indices, num_experts).sum(dim=(0, 1)).to(torch.float64)


def load_fractions(counts: Tensor) -> list[float]:
    """Per-expert fractions of all assignments (sum to 1); uniform routing gives 1/E each."""
    total = counts.sum()
    if total <= 0:
        raise ValueError("no expert assignments were counted")
    return [float(c) for c in counts / total]
