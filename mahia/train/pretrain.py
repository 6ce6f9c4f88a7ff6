"""Self-supervised pretraining: masked-word prediction over the training split's titles and texts.

A fraction of each text's word tokens (never [CLS] or padding) is chosen; as in BERT, 80% of the chosen become the
mask token, 10% a random word id and 10% stay, and the model predicts the original ids there. The prediction
reads the final normalised token states (the model's `final_norm` output) through the transposed text embedding
(tied weights): pretraining adds no parameter, and fine-tuning starts from the same model. The tabular tokens
stand before the text in those states and are fed as in fine-tuning.

The mask token is the hashed id of "[mask]", a string the tokenizer never produces as one token (it splits it in
three); like every hashed id it shares its embedding row with the few words that hash to the same id.

In a distributed run every rank masks the same global batch (the same seeded generator) and keeps its rows; the
loss is the mean over the global batch's predicted words (DataParallel.rank_masked_word_loss).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from mahia.data import ReviewsDataset
from mahia.data.tokenizer import token_id
from mahia.model import MahiaX
from mahia.model.config import FIRST_WORD_ID
from mahia.model.mahia_x import ModelOutput
from mahia.train.config import TrainConfig
from mahia.train.distributed import DataParallel
from mahia.train.errors import TrainingError
from mahia.train.losses import moe_losses
from mahia.train.monitor import StepLog, parameter_blocks, step_record
from mahia.train.optim import apply_gradients, epoch_batches, learning_rate, make_optimizer, text_lengths

MASK_WORD = "[mask]"
IGNORE = -100  # cross_entropy's ignore_index: positions that are not predicted


def mask_id(vocab_size: int) -> int:
    """The mask token's id."""
    return token_id(MASK_WORD, vocab_size)


def mask_words(input_ids: Tensor, attention_mask: Tensor, fraction: float, vocab_size: int,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(masked input_ids, targets): targets hold the original id where a word was chosen, IGNORE elsewhere."""
    is_word = (input_ids >= FIRST_WORD_ID) & attention_mask.bool()
    chosen = is_word & (torch.rand(input_ids.shape, generator=generator) < fraction)
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(FIRST_WORD_ID, vocab_size, input_ids.shape, generator=generator)
    masked = torch.where(chosen & (action < 0.8), mask_id(vocab_size), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, torch.where(chosen, input_ids, IGNORE)


def masked_word_loss(model: MahiaX, inputs: dict[str, Tensor], targets: Tensor,
                     reduction: str = "mean") -> tuple[Tensor, ModelOutput]:
    """Cross-entropy of the predicted word ids at the chosen positions (their mean, or with reduction "sum" their
    sum), and the model's output (for the MoE losses).

    `inputs` carry the masked input_ids. The token states are captured from the model's final_norm; the text
    positions follow the tabular tokens.
    """
    states: list[Tensor] = []
    handle = model.final_norm.register_forward_hook(lambda module, args, out: states.append(out))
    try:
        output = model.forward_with_router_logits(**inputs)
    finally:
        handle.remove()
    text_states = states[0][:, states[0].shape[1] - targets.shape[1]:]
    chosen = targets != IGNORE
    if not bool(chosen.any()):
        return text_states.sum() * 0.0, output  # no word to predict in this batch (e.g. only empty texts)
    logits = text_states[chosen].float() @ model.embedding.text.weight.float().T
    return F.cross_entropy(logits, targets[chosen], reduction=reduction), output


def pretrain(model: MahiaX, train: ReviewsDataset, config: TrainConfig, max_len: int, device: torch.device,
             log: StepLog, after_step: Callable[[str, int, float], None], console: Console,
             parallel: DataParallel | None = None) -> dict[str, object]:
    """config.pretrain_epochs of masked-word prediction (its own AdamW and warmup + cosine schedule peaking at
    pretrain_lr, gradients clipped and logged like fine-tuning); returns metrics.json's "pretrain" summary.
    With `parallel` (a distributed run) each rank computes its rows of every batch."""
    optimizer = make_optimizer(model, config)
    blocks = parameter_blocks(model)
    peak = config.pretrain_lr or config.lr
    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.pretrain_epochs * batches_per_epoch
    generator = torch.Generator().manual_seed(config.seed)
    lengths = functools.cache(lambda: text_lengths(train, max_len))
    top_k, vocab = model.config.effective_top_k, model.config.vocab_size
    started, step = time.perf_counter(), 0
    model.train()
    with Progress(TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, disable=console.quiet) as bar:
        task = bar.add_task("", total=total)
        for epoch in range(config.pretrain_epochs):
            for rows in epoch_batches(len(train), config.batch_size, config.seed, epoch, config.length_groups,
                                      lengths):
                inputs, _ = train.batch(rows, max_len, vocab)
                masked, targets = mask_words(inputs["input_ids"], inputs["attention_mask"], config.mask_fraction,
                                             vocab, generator)
                inputs = {**inputs, "input_ids": masked}
                if parallel is not None:
                    inputs, targets = parallel.local_batch(inputs, targets)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                targets = targets.to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    mlm, output = masked_word_loss(model, inputs, targets, "mean" if parallel is None else "sum")
                if parallel is None:
                    balance, z = moe_losses(output, top_k)
                    loss = backpropagated = mlm + config.aux_loss_weight * balance + config.z_loss_weight * z
                else:  # the global batch's terms, and this rank's share of them to backpropagate
                    backpropagated, (loss, mlm, balance, z) = parallel.rank_masked_word_loss(
                        mlm, int((targets != IGNORE).sum()), output, top_k, config.aux_loss_weight,
                        config.z_loss_weight)
                if not torch.isfinite(loss):
                    raise TrainingError(f"pretraining loss is not finite ({float(loss)}) at step {step + 1}: "
                                        f"masked word {float(mlm)}; stopped. Try a lower --pretrain-lr")
                lr = learning_rate(step, total, config, peak)
                norm, per_block = apply_gradients(backpropagated, optimizer, blocks, config.grad_clip, lr)
                step += 1
                losses = {k: float(v.detach()) for k, v in
                          (("loss", loss), ("masked_word", mlm), ("load_balance", balance), ("z_loss", z))}
                log.append(step_record("pretrain", step, lr, losses, norm, per_block, config.grad_clip))
                after_step("pretrain", step, losses["loss"])
                recent = [r["masked_word"] for r in log.phase("pretrain")[-20:]]
                bar.update(task, completed=step, description=f"masked-word loss {sum(recent) / len(recent):.3f}")
    records = log.phase("pretrain")
    first, last = records[:50], records[-50:]
    return {"epochs": config.pretrain_epochs, "steps": step, "lr": peak, "mask_fraction": config.mask_fraction,
            "seconds": round(time.perf_counter() - started, 1),
            "masked_word_loss_first_50": sum(r["masked_word"] for r in first) / len(first),
            "masked_word_loss_last_50": sum(r["masked_word"] for r in last) / len(last)}
