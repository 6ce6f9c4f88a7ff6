"""Eager prediction: a model's logits, task metrics and per-expert load on a data split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mahia.data import ReviewsDataset, iter_batches, length_sorted_order
from mahia.evaluate.metrics import (
    classification_metrics,
    expert_assignment_counts,
    load_fractions,
    logits_to_prob_positive,
)
from mahia.model import MahiaX


@dataclass(frozen=True)
class Predictions:
    """Logits [N, 2] in dataset order and the expert assignment counts [n_layers, E] they produced."""

    logits: np.ndarray
    expert_counts: np.ndarray


@torch.no_grad()
def predict(model: MahiaX, dataset: ReviewsDataset, max_len: int, batch_size: int = 64,
            device: str | torch.device = "cpu") -> Predictions:
    """Eval-mode logits of every row (texts cut to max_len tokens), in the dataset's order."""
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    config = model.config
    logits = np.zeros((len(dataset), config.num_classes), dtype=np.float32)
    counts = torch.zeros(config.n_layers, config.num_experts, dtype=torch.float64)
    autocast = torch.device(device).type == "cuda"
    try:
        order = length_sorted_order(dataset, max_len)
        for batch in iter_batches(dataset, batch_size, max_len, config.vocab_size, order):
            inputs = {k: v.to(device) for k, v in batch.inputs.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                output = model.forward_with_router_logits(**inputs)
            logits[batch.rows] = output.logits.float().cpu().numpy()
            for layer, router_logits in enumerate(output.router_logits):
                counts[layer] += expert_assignment_counts(router_logits, output.token_mask,
                                                          config.effective_top_k).cpu()
    finally:
        model.train(was_training)
    return Predictions(logits, counts.numpy())


def evaluate(model: MahiaX, dataset: ReviewsDataset, max_len: int, batch_size: int = 64,
             device: str | torch.device = "cpu") -> dict[str, object]:
    """Task metrics of the model on `dataset`, plus each MoE layer's per-expert load fractions."""
    predictions = predict(model, dataset, max_len, batch_size, device)
    probabilities = logits_to_prob_positive(predictions.logits)
    metrics: dict[str, object] = dict(classification_metrics(dataset.labels, probabilities))
    metrics["expert_load"] = [load_fractions(torch.from_numpy(layer)) for layer in predictions.expert_counts]
    return metrics
