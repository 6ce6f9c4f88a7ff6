"""Training losses: the classification loss, the MoE auxiliary losses, and knowledge distillation."""

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


def moe_losses(output: ModelOutput, top_k: int) -> tuple[Tensor, Tensor]:
    """(load-balancing loss, router z-loss), each averaged over the model's MoE layers."""
    pairs = [moe_aux_losses(logits, output.token_mask, top_k) for logits in output.router_logits]
    load_balance = torch.stack([p[0] for p in pairs]).mean()
    z_loss = torch.stack([p[1] for p in pairs]).mean()
    return load_balance, z_loss


def training_loss(output: ModelOutput, labels: Tensor, top_k: int, aux_loss_weight: float, z_loss_weight: float,
                  teacher_logits: Tensor | None = None, temperature: float = 2.0,
                  distill_weight: float = 0.5) -> LossParts:
    """Hard cross-entropy (mixed with distillation when a teacher is given) plus weighted MoE losses.

    With a teacher: task part = (1 - distill_weight) * CE + distill_weight * distillation_loss.
    """
    cross_entropy = F.cross_entropy(output.logits.float(), labels)
    load_balance, z_loss = moe_losses(output, top_k)
    if teacher_logits is None:
        distill = torch.zeros((), device=cross_entropy.device)
        task = cross_entropy
    else:
        distill = distillation_loss(output.logits, teacher_logits, temperature)
        task = (1.0 - distill_weight) * cross_entropy + distill_weight * distill
    total = task + aux_loss_weight * load_balance + z_loss_weight * z_loss
    return LossParts(total, cross_entropy, distill, load_balance, z_loss)
