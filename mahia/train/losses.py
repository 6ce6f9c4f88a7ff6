"""Training losses: the classification loss, the MoE auxiliary losses, and knowledge distillation (soft-label KL,
logit MSE, feature matching)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mahia.model import moe_aux_losses
from mahia.model.mahia_x import ModelOutput


class LossParts(NamedTuple):
    """The total loss that is optimised and each of its terms (for logging)."""

    total: Tensor
    task: Tensor
    distill: Tensor
    load_balance: Tensor
    z_loss: Tensor


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al.).

    The T^2 factor keeps its gradient scale comparable to the hard loss's across temperatures.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2


def logit_mse_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared difference of the row-centred logits (softmax ignores a row's shift), per logit."""
    student = student_logits.float() - student_logits.float().mean(dim=-1, keepdim=True)
    teacher = teacher_logits.float() - teacher_logits.float().mean(dim=-1, keepdim=True)
    return F.mse_loss(student, teacher)


def feature_matching_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Similarity-preserving feature matching (Tung & Mori, 2019): the batch's pairwise cosine similarities of the
    student's features [B, d_s] against the teacher's [B, d_t], mean squared difference. It needs no projection
    between the two feature spaces, so any teacher's features work and nothing is trained besides the model."""
    student = F.normalize(student_features.float(), dim=-1)
    teacher = F.normalize(teacher_features.float(), dim=-1)
    return F.mse_loss(student @ student.T, teacher @ teacher.T)


def moe_losses(output: ModelOutput, top_k: int) -> tuple[Tensor, Tensor]:
    """(load-balancing loss, router z-loss), each averaged over the model's MoE layers."""
    pairs = [moe_aux_losses(logits, output.token_mask, top_k) for logits in output.router_logits]
    load_balance = torch.stack([p[0] for p in pairs]).mean()
    z_loss = torch.stack([p[1] for p in pairs]).mean()
    return load_balance, z_loss


def training_loss(output: ModelOutput, labels: Tensor, top_k: int, aux_loss_weight: float, z_loss_weight: float,
                  teacher_logits: Tensor | None = None, temperature: float = 2.0,
                  distill_weight: float = 0.5, modes: tuple[str, ...] = ("kl",),
                  student_features: Tensor | None = None, teacher_features: Tensor | None = None) -> LossParts:
    """Hard cross-entropy (mixed with distillation when a teacher is given) plus weighted MoE losses.

    With a teacher: task part = (1 - distill_weight) * CE + distill_weight * (sum of the `modes` terms): "kl"
    distillation_loss at `temperature`, "mse" logit_mse_loss, "features" feature_matching_loss of the pooled
    features.
    """
    cross_entropy = F.cross_entropy(output.logits.float(), labels)
    load_balance, z_loss = moe_losses(output, top_k)
    if teacher_logits is None:
        distill = torch.zeros((), device=cross_entropy.device)
        task = cross_entropy
    else:
        terms = {"kl": lambda: distillation_loss(output.logits, teacher_logits, temperature),
                 "mse": lambda: logit_mse_loss(output.logits, teacher_logits),
                 "features": lambda: feature_matching_loss(student_features, teacher_features)}
        if "features" in modes and (student_features is None or teacher_features is None):
            raise ValueError("feature matching needs the student's and the teacher's features")
        distill = torch.stack([terms[mode]() for mode in modes]).sum()
        task = (1.0 - distill_weight) * cross_entropy + distill_weight * distill
    total = task + aux_loss_weight * load_balance + z_loss_weight * z_loss
    return LossParts(total, cross_entropy, distill, load_balance, z_loss)
