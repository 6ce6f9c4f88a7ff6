"""Training state on disk (mahia.train.state) directly: progress metadata, the optimiser file beside the
checkpoint, and a named refusal for every pair that does not belong together."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mahia.model import CheckpointError, build_model, get_config
from mahia.model.checkpoint import read_checkpoint_metadata
from mahia.train.state import (
    TrainingProgress,
    load_optimizer_state,
    optimizer_path,
    progress_metadata,
    read_progress,
    save_training_state,
)


def test_progress_round_trips_through_string_metadata() -> None:
    for progress in (TrainingProgress(12, 1, 4, 0.8125), TrainingProgress(0, 0, 0, None)):
        assert read_progress(progress_metadata(progress), "x") == progress
    assert progress_metadata(TrainingProgress(12, 1, 4, 0.1)) == {"step": "12", "epoch": "1", "batch_in_epoch": "4",
                                                                 "best_val_roc_auc": "0.1"}
    assert progress_metadata(TrainingProgress(3, 0, 3, None))["best_val_roc_auc"] == ""
    for broken in ({"step": "1", "epoch": "0", "batch_in_epoch": "1"},
                   {**progress_metadata(TrainingProgress(1, 0, 1, None)), "step": "one"}):
        with pytest.raises(CheckpointError,
                           match=r"^checkpoint m.safetensors has no training progress metadata \(.+\): "
                                 "it was not written by mahia-train$"):
            read_progress(broken, "m.safetensors")


def _trained(groups: int = 1) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model(get_config("tiny"), seed=0)
    params = list(model.parameters())
    param_groups = [{"params": params[:2], "lr": 1e-3},
                    {"params": params[2:], "lr": 5e-4, "weight_decay": 0.0}][:groups] \
        if groups == 2 else [{"params": params, "lr": 1e-3}]
    optimizer = torch.optim.AdamW(param_groups)
    for _ in range(2):
        optimizer.zero_grad()
        (model.head.bias.sum() + model.head.weight.square().sum()).backward()
        optimizer.step()
    return model, optimizer


def test_the_optimiser_state_and_its_groups_come_back_exactly(tmp_path: Path) -> None:
    model, optimizer = _trained(groups=2)
    path = tmp_path / "runs" / "last.safetensors"
    path.parent.mkdir()
    save_training_state(model, optimizer, path, TrainingProgress(2, 0, 2, 0.75), {"trained": "true"})
    assert optimizer_path(path) == tmp_path / "runs" / "last.optim.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.optim.safetensors", "last.safetensors"]
    metadata = read_checkpoint_metadata(path)
    assert metadata["trained"] == "true" and read_progress(metadata, str(path)) == TrainingProgress(2, 0, 2, 0.75)
    model_again, _ = _trained(groups=2)
    restored = torch.optim.AdamW([{"params": list(model_again.parameters())[:2]},
                                  {"params": list(model_again.parameters())[2:]}], lr=1.0)
    load_optimizer_state(restored, path, 2)
    saved, loaded = optimizer.state_dict(), restored.state_dict()
    # lr, weight decay, betas ... of each group (JSON gives betas back as a list, which AdamW unpacks alike)
    assert [{**g, "betas": tuple(g["betas"])} for g in loaded["param_groups"]] == saved["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys() and len(saved["state"]) == 2  # the head's two tensors
    for index, values in saved["state"].items():
        assert values.keys() == loaded["state"][index].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(loaded["state"][index][k]))
                   for k, v in values.items())


def test_each_pair_that_does_not_belong_together_is_refused_by_name(tmp_path: Path) -> None:
    model, optimizer = _trained()
    path = tmp_path / "last.safetensors"
    save_training_state(model, optimizer, path, TrainingProgress(7, 0, 7, None), {})
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(CheckpointError) as err:
        load_optimizer_state(fresh, path, 8)
    assert str(err.value) == (f"optimiser state {optimizer_path(path)} is from step 7, but {path} is from step 8: "
                              "the pair does not belong together")
    params = list(model.parameters())
    split = torch.optim.AdamW([{"params": params[:3]}, {"params": params[3:]}], lr=1e-3)
    with pytest.raises(CheckpointError) as err:
        load_optimizer_state(split, path, 7)
    assert str(err.value) == (f"optimiser state {optimizer_path(path)} has parameter groups of sizes [{len(params)}], "
                              f"expected [3, {len(params) - 3}]")
    optimizer_path(path).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(CheckpointError, match=f"^optimiser state {optimizer_path(path)} is not a readable safetensors "
                                              "file: "):
        load_optimizer_state(fresh, path, 7)
    save_file({"state.0.step": torch.ones(())}, str(optimizer_path(path)))  # no step in its metadata
    with pytest.raises(CheckpointError, match="is from step None, but"):
        load_optimizer_state(fresh, path, 7)
    optimizer_path(path).unlink()
    with pytest.raises(CheckpointError) as err:
        load_optimizer_state(fresh, path, 7)
    assert str(err.value) == f"cannot resume from {path}: its optimiser state {optimizer_path(path)} is missing"
