"""mahia-train on small slices of the real data: learning, resume, determinism, NaN stop and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

import mahia.train.trainer as trainer_module
from mahia.data import load_reviews
from mahia.data.reviews import REQUIRED_COLUMNS
from mahia.evaluate import predict
from mahia.model import CheckpointError, build_model, get_config, load_checkpoint, save_checkpoint
from mahia.model.checkpoint import read_checkpoint_metadata
from mahia.train import TrainConfig, TrainingError, train
from mahia.train.cli import main as train_cli
from mahia.train.state import TrainingProgress, load_optimizer_state, optimizer_path, save_training_state
from mahia.train.trainer import learning_rate

# A tiny model on 32 training rows and 24 val / test rows (both classes present): a second or two a run.
TINY = TrainConfig(model="tiny", batch_size=8, max_text_tokens=48, lr=3e-3, warmup_steps=2, save_every=2,
                   train_rows=32, eval_rows=24, baseline=False)


def slice_loss(model: torch.nn.Module, rows: int, max_len: int) -> float:
    train_split = load_reviews()["train"].subset(np.arange(rows))
    logits = torch.from_numpy(predict(model, train_split, max_len).logits)
    return float(F.cross_entropy(logits, torch.from_numpy(train_split.labels)))


def test_a_few_steps_reduce_the_loss_on_a_slice(tmp_path: Path) -> None:
    # One batch of 16 rows seen 10 times: the loss on it must fall well below its starting value.
    config = TINY.replace(train_rows=16, batch_size=16, epochs=10, lr=1e-2, warmup_steps=1, save_every=5)
    before = slice_loss(build_model(get_config("tiny"), seed=config.seed), 16, 48)
    result = train(config, tmp_path)
    assert result.steps == 10
    after = slice_loss(load_checkpoint(tmp_path / "last.safetensors")[0], 16, 48)
    assert after < 0.7 * before, f"loss on the training slice went from {before:.4f} to {after:.4f}"
    metrics = result.metrics
    assert set(metrics["model"]) == {"val", "test"}
    for split in ("val", "test"):
        assert {"accuracy", "roc_auc", "f1"} <= set(metrics["model"][split])
        loads = metrics["model"][split]["expert_load"]
        assert len(loads) == 2 and all(sum(layer) == pytest.approx(1.0) for layer in loads)
    assert (tmp_path / "metrics.json").is_file()


class Interrupt(Exception):
    pass


def test_resume_continues_the_step_count_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    config = TINY.replace(max_steps=6, epochs=2)  # 4 steps an epoch: the interruption falls mid-epoch 1
    whole = train(config, tmp_path / "whole")
    assert whole.steps == 6

    def stop_at_step_3(step: int, loss: float) -> None:
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "cut", on_step=stop_at_step_3)
    last = tmp_path / "cut" / "last.safetensors"
    assert read_checkpoint_metadata(last)["step"] == "2", "the step-2 checkpoint must survive the interruption"

    resumed = train(config, tmp_path / "cut", resume=last)
    assert resumed.steps == 6
    assert read_checkpoint_metadata(last)["step"] == "6"
    a, b = load_file(tmp_path / "whole" / "last.safetensors"), load_file(last)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between the resumed and the uninterrupted run"


def test_resume_refuses_a_different_setup(tmp_path: Path) -> None:
    train(TINY.replace(max_steps=2), tmp_path)
    with pytest.raises(TrainingError, match="batch_size: checkpoint has 8, now 4"):
        train(TINY.replace(max_steps=4, batch_size=4), tmp_path, resume=tmp_path / "last.safetensors")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_loss = trainer_module.training_loss
    calls = []

    def loss_turning_nan(*args, **kwargs):
        parts = real_loss(*args, **kwargs)
        calls.append(1)
        return parts._replace(total=parts.total * float("nan")) if len(calls) == 3 else parts

    monkeypatch.setattr(trainer_module, "training_loss", loss_turning_nan)
    with pytest.raises(TrainingError, match=r"loss is not finite \(nan\) at step 3 .*last good checkpoint .*step 2"):
        train(TINY.replace(max_steps=6), tmp_path)
    model, metadata = load_checkpoint(tmp_path / "last.safetensors")
    assert metadata["step"] == "2"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_same_seed_gives_the_same_weights_through_the_cli(tmp_path: Path) -> None:
    # The default checkpoint's code path (mahia-train, small config), shortened to 2 steps on a slice.
    args = ["--config", "small", "--steps", "2", "--batch-size", "4", "--max-text-tokens", "32", "--lr", "2e-3",
            "--warmup-steps", "30", "--seed", "0", "--train-rows", "8", "--eval-rows", "16", "--no-baseline"]
    runs = []
    for name in ("a", "b"):
        result = CliRunner().invoke(train_cli, [*args, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs.append(load_file(tmp_path / name / "best.safetensors"))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    init = build_model(get_config("small"), seed=0).state_dict()
    assert any(not torch.equal(init[k], runs[0][k]) for k in runs[0]), "training must change the weights"


def write_table(path: Path, rows: int, drop: str | None = None) -> Path:
    source = pq.read_table(trainer_module.load_reviews.__globals__["default_data_path"]())
    table = source.slice(0, rows).select([c for c in REQUIRED_COLUMNS if c != drop])
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "data file not found"),
    ("not_parquet", "not a readable parquet file"),
    ("wrong_columns", "lacks columns ['Age']"),
    ("empty_split", "split 'test' is empty"),
])
def test_bad_data_gives_a_clear_error(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "reviews.parquet"
    if case == "not_parquet":
        path.write_text("not a table")
    elif case == "wrong_columns":
        write_table(path, 50, drop="Age")
    elif case == "empty_split":
        write_table(path, 3)
    result = CliRunner().invoke(train_cli, ["--config", "tiny", "--steps", "1", "--data", str(path),
                                            "--out", str(tmp_path / "out"), "--no-baseline"])
    assert result.exit_code == 1
    assert message in result.output and str(path) in result.output or case == "empty_split" and message in result.output
    assert "Traceback" not in result.output


def test_text_budget_above_max_seq_len_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_cli, ["--config", "tiny", "--max-text-tokens", "161", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "exceeds the model's max_seq_len=160" in result.output


def test_distillation_from_a_teacher_checkpoint(tmp_path: Path) -> None:
    teacher = save_checkpoint(build_model(get_config("tiny"), seed=5), tmp_path / "teacher.safetensors")
    result = train(TINY.replace(max_steps=2, teacher=str(teacher), distill_weight=0.7), tmp_path / "run")
    assert result.steps == 2 and result.metrics["train_config"]["teacher"] == str(teacher)
    with pytest.raises(CheckpointError, match="teacher .* takes at most 160 tokens, training feeds 161"):
        train(TINY.replace(model="small", max_text_tokens=161, teacher=str(teacher)), tmp_path / "bad")


def test_optimiser_state_from_another_step_is_refused(tmp_path: Path) -> None:
    model = build_model(get_config("tiny"), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.head.bias.sum().backward()
    optimizer.step()
    path = tmp_path / "last.safetensors"
    save_training_state(model, optimizer, path, TrainingProgress(3, 0, 3, None), {})
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_optimizer_state(restored, path, 3)
    saved, loaded = optimizer.state_dict()["state"], restored.state_dict()["state"]
    assert saved.keys() == loaded.keys() and len(saved) == 1  # the head bias, the one parameter with a gradient
    assert all(torch.equal(saved[i][k], loaded[i][k]) for i in saved for k in saved[i])
    with pytest.raises(CheckpointError, match=rf"{optimizer_path(path).name} is from step 3, but .*from step 4"):
        load_optimizer_state(torch.optim.AdamW(model.parameters(), lr=1e-3), path, 4)


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    config = TrainConfig(lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    rates = [learning_rate(step, 14, config) for step in range(16)]
    assert rates[:5] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rel=1e-12)  # step 0 already trains
    assert rates[9] == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-12)  # half way through the cosine
    assert rates[14] == rates[15] == pytest.approx(1e-4, rel=1e-12)  # the floor, and no further
    assert learning_rate(0, 10, config.replace(warmup_steps=0)) == pytest.approx(1e-3, rel=1e-12)


def test_gradients_reach_the_optimiser_clipped_to_grad_clip(tmp_path: Path) -> None:
    norms = []

    def record_gradient_norm(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record_gradient_norm)
    try:
        train(TINY.replace(max_steps=2, grad_clip=1e-3), tmp_path)
    finally:
        handle.remove()
    # An untrained model's gradient norm is far above 1e-3: clipping brings each step's norm down to it.
    assert len(norms) == 2 and norms == pytest.approx([1e-3, 1e-3], rel=1e-4)


def test_best_checkpoint_is_the_evaluation_with_the_highest_val_auc(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_evaluate = trainer_module.evaluate
    scripted = iter([0.55, 0.75, 0.65])  # the val ROC AUC of the evaluations after steps 1, 2 and 3

    def evaluate_with_scripted_auc(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        return {**metrics, "roc_auc": next(scripted, metrics["roc_auc"])}

    monkeypatch.setattr(trainer_module, "evaluate", evaluate_with_scripted_auc)
    # 8 rows in batches of 8: one step an epoch, validated after each of the 3 epochs.
    result = train(TINY.replace(train_rows=8, epochs=3), tmp_path)
    assert result.steps == 3 and result.metrics["best_step"] == 2
    assert result.metrics["model"]["val"]["roc_auc"] == 0.75
    assert read_checkpoint_metadata(tmp_path / "best.safetensors")["best_val_roc_auc"] == "0.75"
    assert read_checkpoint_metadata(tmp_path / "last.safetensors")["step"] == "3"
