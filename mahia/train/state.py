"""Training state on disk: model checkpoints with training metadata, and the optimiser's state beside them.

Both are safetensors files written atomically (temporary file, then rename); nothing is pickled. The
optimiser file repeats the step so that a resume can check the pair belongs together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mahia.model import CheckpointError, MahiaX, save_checkpoint
from mahia.model.checkpoint import save_safetensors_atomically

TRAIN_CONFIG_KEY = "mahia_train_config"


@dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands: optimiser steps done, the epoch in progress and batches of it already done."""

    step: int
    epoch: int
    batch_in_epoch: int
    best_val_roc_auc: float | None


def optimizer_path(checkpoint: str | Path) -> Path:
    """The optimiser-state file that belongs to a training checkpoint."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".optim.safetensors")


def progress_metadata(progress: TrainingProgress) -> dict[str, str]:
    """String metadata recording a run's progress."""
    return {"step": str(progress.step), "epoch": str(progress.epoch), "batch_in_epoch": str(progress.batch_in_epoch),
            "best_val_roc_auc": "" if progress.best_val_roc_auc is None else repr(progress.best_val_roc_auc)}


def read_progress(metadata: dict[str, str], source: str) -> TrainingProgress:
    """The progress stored in a training checkpoint's metadata, or a CheckpointError naming the file."""
    try:
        best = metadata["best_val_roc_auc"]
        return TrainingProgress(int(metadata["step"]), int(metadata["epoch"]), int(metadata["batch_in_epoch"]),
                                float(best) if best else None)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {source} has no training progress metadata ({exc}): "
                              "it was not written by mahia-train") from None


def save_training_state(model: MahiaX, optimizer: torch.optim.Optimizer, path: Path, progress: TrainingProgress,
                        metadata: dict[str, str]) -> None:
    """Write the optimiser state, then the model checkpoint, both atomically and stamped with the step."""
    stamp = {**metadata, **progress_metadata(progress)}
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    groups = [{k: v for k, v in group.items()} for group in state["param_groups"]]
    save_safetensors_atomically(tensors, optimizer_path(path),
                                {"param_groups": json.dumps(groups), "step": str(progress.step)})
    save_checkpoint(model, path, stamp)


def load_optimizer_state(optimizer: torch.optim.Optimizer, checkpoint: Path, step: int) -> None:
    """Restore the optimiser state saved beside `checkpoint`; its step must match the checkpoint's."""
    path = optimizer_path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"cannot resume from {checkpoint}: its optimiser state {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 -- safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"optimiser state {path} is not a readable safetensors file: {exc}") from None
    if metadata.get("step") != str(step):
        raise CheckpointError(f"optimiser state {path} is from step {metadata.get('step')}, but {checkpoint} is "
                              f"from step {step}: the pair does not belong together")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = json.loads(metadata["param_groups"])
    expected = [len(g["params"]) for g in optimizer.state_dict()["param_groups"]]
    if [len(g["params"]) for g in groups] != expected:
        raise CheckpointError(f"optimiser state {path} has parameter groups of sizes "
                              f"{[len(g['params']) for g in groups]}, expected {expected}")
    optimizer.load_state_dict({"state": state, "param_groups": groups})
