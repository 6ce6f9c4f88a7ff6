"""Training monitor: per-step gradient norms (global and per block) and losses in a step log, the run's
validations, a summary for metrics.json, and a PNG of the training curves beside the checkpoint.

The step log `steps.jsonl` holds one JSON object a step: phase ("pretrain" or "finetune"), step (1-based in its
phase), lr, loss and its terms, grad_norm (global L2 norm before clipping), clipped, block_norms (per block, before
clipping). Blocks are the model's top-level parts, each of `blocks` by index: embedding, fabric, blocks.0, ...,
memory_norm, memory, final_norm, head.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

STEP_LOG_NAME = "steps.jsonl"
CURVES_NAME = "training_curves.png"
PHASES = ("pretrain", "finetune")


def block_name(parameter_name: str) -> str:
    """The block a parameter belongs to: its top-level module, with the index for `blocks`."""
    parts = parameter_name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" and len(parts) > 2 else parts[0]


def parameter_blocks(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by block, in module order."""
    blocks: dict[str, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            blocks.setdefault(block_name(name), []).append(parameter)
    return blocks


def gradient_norms(blocks: Mapping[str, Sequence[nn.Parameter]]) -> tuple[float, dict[str, float]]:
    """(global L2 norm, per-block L2 norms) of the current gradients; parameters without a gradient count 0.

    Sharded gradients (FSDP2's DTensors in a distributed run) add their local shards' squares, summed over the
    ranks in one all-reduce: every rank gets the norms of the whole gradient.
    """
    sharded = False
    sums = []
    for parameters in blocks.values():
        squares = []
        for p in parameters:
            if p.grad is None:
                continue
            grad = p.grad.detach()
            if isinstance(grad, DTensor):
                sharded, grad = True, grad.to_local()
            squares.append(torch.linalg.vector_norm(grad.float()) ** 2)
        sums.append(torch.stack(squares).sum() if squares else torch.zeros(()))
    totals = torch.stack([t.to(sums[0].device) for t in sums]) if sums else torch.zeros(0)
    if sharded:
        dist.all_reduce(totals)
    per_block = {name: math.sqrt(float(t)) for name, t in zip(blocks, totals.cpu())}
    return math.sqrt(sum(v * v for v in per_block.values())), per_block


class StepLog:
    """Append-only step log of one run directory (steps.jsonl), kept in memory as well."""

    def __init__(self, out_dir: Path, keep: Iterable[dict] = (), write: bool = True) -> None:
        """`write` False keeps the log in memory only (the ranks other than 0 of a distributed run)."""
        self.path = out_dir / STEP_LOG_NAME
        self.records = list(keep)
        self.write = write
        if write:
            with open(self.path, "w") as f:  # a fresh run starts it; a resume rewrites what it keeps
                f.writelines(json.dumps(r) + "\n" for r in self.records)

    @classmethod
    def resumed(cls, out_dir: Path, source_dir: Path, finetune_step: int, write: bool = True) -> StepLog:
        """The log of a run resumed from a checkpoint in `source_dir`: that run's pretraining records and its
        fine-tuning records up to `finetune_step`."""
        path = source_dir / STEP_LOG_NAME
        lines = path.read_text().splitlines() if path.is_file() else []
        keep = [r for r in map(json.loads, lines) if r["phase"] != "finetune" or r["step"] <= finetune_step]
        return cls(out_dir, keep, write)

    def append(self, record: dict) -> None:
        """Add one step's record (written at once, so an interrupted run keeps its log)."""
        self.records.append(record)
        if not self.write:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def phase(self, phase: str) -> list[dict]:
        """The records of one phase, in step order."""
        return [r for r in self.records if r["phase"] == phase]


def step_record(phase: str, step: int, lr: float, losses: Mapping[str, float], grad_norm: float,
                block_norms: Mapping[str, float], grad_clip: float) -> dict:
    """One line of the step log."""
    return {"phase": phase, "step": step, "lr": lr,
            **{k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in losses.items()},
            "grad_norm": grad_norm, "clipped": bool(grad_clip > 0 and grad_norm > grad_clip),
            "block_norms": dict(block_norms)}


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"first": float(v[0]), "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "max": float(v.max()), "max_step": int(v.argmax()) + 1, "last": float(v[-1])}


def summarise(log: StepLog, grad_clip: float) -> dict[str, object]:
    """metrics.json's "grad_norms": per phase, the global norm's statistics, how often it was clipped, and each
    block's median and max."""
    summary: dict[str, object] = {"clip": grad_clip}
    for phase in PHASES:
        records = log.phase(phase)
        if not records:
            continue
        clipped = sum(r["clipped"] for r in records)
        blocks = records[0]["block_norms"]
        summary[phase] = {
            "steps": len(records), "clipped_steps": clipped, "clipped_fraction": clipped / len(records),
            "global": _stats([r["grad_norm"] for r in records]),
            "per_block": {b: {"median": float(np.median([r["block_norms"][b] for r in records])),
                              "max": float(max(r["block_norms"][b] for r in records))} for b in blocks}}
    return summary


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_curves(log: StepLog, validations: Sequence[Mapping[str, float]], grad_clip: float, path: Path) -> Path:
    """training_curves.png: loss per step (and a 25-step mean), global and per-block gradient norms with the clip
    threshold, and the validation accuracy and ROC AUC; pretraining steps come first on the step axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pretrain_steps = len(log.phase("pretrain"))
    labelled = [p for p in PHASES if log.phase(p)][-1:]  # legend entries once, from the last phase
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    loss_ax, norm_ax, val_ax = axes
    for phase, colour in zip(PHASES, ("tab:purple", "tab:blue")):
        records = log.phase(phase)
        if not records:
            continue
        x = np.arange(1, len(records) + 1) + (pretrain_steps if phase == "finetune" else 0)
        loss = np.array([r["loss"] for r in records])
        loss_ax.plot(x, loss, color=colour, alpha=0.25, linewidth=0.7)
        smooth = _smooth(loss, 25)
        loss_ax.plot(x[len(x) - len(smooth):], smooth, color=colour, label=f"{phase} loss (25-step mean)")
        norm_ax.plot(x, [r["grad_norm"] for r in records], color="black", linewidth=0.8,
                     label="global" if phase in labelled else None)
        for i, block in enumerate(records[0]["block_norms"]):
            norm_ax.plot(x, [r["block_norms"][block] for r in records], linewidth=0.5, alpha=0.7,
                         color=plt.cm.tab20(i % 20), label=block if phase in labelled else None)
    if grad_clip > 0:
        norm_ax.axhline(grad_clip, color="red", linestyle="--", linewidth=0.8, label=f"clip {grad_clip:g}")
    if pretrain_steps:
        for ax in axes:
            ax.axvline(pretrain_steps + 0.5, color="grey", linestyle=":", linewidth=0.8)
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend(fontsize=8)
    norm_ax.set_yscale("log")
    norm_ax.set_ylabel("gradient L2 norm (before clipping)")
    norm_ax.legend(fontsize=6, ncol=4)
    if validations:
        x = [v["step"] + pretrain_steps for v in validations]
        val_ax.plot(x, [v["accuracy"] for v in validations], "o-", label="val accuracy")
        val_ax.plot(x, [v["roc_auc"] for v in validations], "s-", label="val ROC AUC")
        val_ax.legend(fontsize=8)
    val_ax.set_ylabel("validation")
    val_ax.set_xlabel("optimiser step" + (f" (pretraining: 1..{pretrain_steps})" if pretrain_steps else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
