"""The training loop: AdamW with warmup + cosine, MoE losses, optional distillation, validation, best checkpoint."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mahia.data import DataConfig, DataError, ReviewsDataset, load_reviews
from mahia.model import CheckpointError, MahiaX, build_model, get_config, load_checkpoint, save_checkpoint
from mahia.model.checkpoint import read_checkpoint_metadata
from mahia.train.baseline import run_baseline
from mahia.train.config import TrainConfig
from mahia.train.evaluation import evaluate
from mahia.train.losses import training_loss
from mahia.train.state import (TRAIN_CONFIG_KEY, TrainingProgress, load_optimizer_state, progress_metadata,
                               read_progress, save_training_state)

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"
METRICS_NAME = "metrics.json"
# Fields that may differ between a run and its resumption: they change how long or where it runs,
# not what it computes.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "save_every", "threads", "device", "baseline", "eval_batch_size"})


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, mismatched resume); the message says what and where."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    best_checkpoint: Path
    metrics: dict[str, object]
    steps: int


def write_json_atomically(data: object, path: Path) -> None:
    """JSON to a temporary file in the same folder, then renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def learning_rate(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warmup to config.lr over warmup_steps, then cosine decay to lr * min_lr_ratio at total_steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(total_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def text_budget(config: TrainConfig, max_seq_len: int) -> int:
    """Tokens per text during training and evaluation: max_text_tokens, at most the model's max_seq_len."""
    if config.max_text_tokens is None:
        return max_seq_len
    if config.max_text_tokens > max_seq_len:
        raise ValueError(f"max_text_tokens={config.max_text_tokens} exceeds the model's max_seq_len={max_seq_len}")
    return config.max_text_tokens


def load_splits(config: TrainConfig) -> dict[str, ReviewsDataset]:
    """The train / val / test splits, limited to train_rows / eval_rows rows; each must be usable."""
    splits = load_reviews(DataConfig(path=config.data_path))
    limits = {"train": config.train_rows, "val": config.eval_rows, "test": config.eval_rows}
    for name, limit in limits.items():
        if limit is not None:
            splits[name] = splits[name].subset(np.arange(min(limit, len(splits[name]))))
        if len(splits[name]) == 0:
            raise DataError(f"split {name!r} is empty")
        if name != "train" and len(np.unique(splits[name].labels)) < 2:
            raise DataError(f"split {name!r} ({len(splits[name])} rows) holds only one class: "
                            "its ROC AUC is undefined; use more rows")
    return splits


def parameter_groups(model: MahiaX, weight_decay: float) -> list[dict[str, object]]:
    """Weight decay on matrices (linear, expert and embedding weights); none on norms, biases and vectors."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _check_resumable(config: TrainConfig, stored: TrainConfig, source: Path) -> None:
    changed = [f"{k}: checkpoint has {getattr(stored, k)!r}, now {getattr(config, k)!r}"
               for k in TrainConfig.__dataclass_fields__
               if k not in RESUMABLE_CHANGES and getattr(stored, k) != getattr(config, k)]
    if changed:
        raise TrainingError(f"cannot resume from {source} with a different training setup: {'; '.join(changed)}")


def _load_teacher(config: TrainConfig, device: torch.device, max_len: int) -> MahiaX | None:
    if config.teacher is None:
        return None
    teacher, _ = load_checkpoint(config.teacher)
    if teacher.config.num_classes != get_config(config.model).num_classes:
        raise CheckpointError(f"teacher {config.teacher} has {teacher.config.num_classes} classes, "
                              f"the student {get_config(config.model).num_classes}")
    if teacher.config.max_seq_len < max_len:
        raise CheckpointError(f"teacher {config.teacher} takes at most {teacher.config.max_seq_len} tokens, "
                              f"training feeds {max_len}: lower max_text_tokens")
    return teacher.to(device).eval().requires_grad_(False)


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} requested but CUDA is not available")
    return device


def train(config: TrainConfig, out_dir: str | Path, resume: str | Path | None = None, command: str | None = None,
          console: Console | None = None, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train, validating each epoch and at the end, keeping the best checkpoint; write metrics.json.

    `on_step(step, loss)` is called after every optimiser step (tests use it to interrupt a run).
    """
    wall_started = time.perf_counter()
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    model_config = get_config(config.model)
    max_len = text_budget(config, model_config.max_seq_len)
    splits = load_splits(config)
    train_set = splits["train"]
    data_hash = train_set.content_hash()
    teacher = _load_teacher(config, device, max_len)

    model = build_model(model_config, seed=config.seed).to(device).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    progress = TrainingProgress(step=0, epoch=0, batch_in_epoch=0, best_val_roc_auc=None)
    if resume is not None:
        resume = Path(resume)
        loaded, metadata = load_checkpoint(resume, model_config)
        if TRAIN_CONFIG_KEY not in metadata:
            raise CheckpointError(f"checkpoint {resume} has no training config: not written by mahia-train")
        _check_resumable(config, TrainConfig.from_json(metadata[TRAIN_CONFIG_KEY]), resume)
        if metadata.get("data_sha256") != data_hash:
            raise TrainingError(f"cannot resume from {resume}: it was trained on other data "
                                f"(data_sha256 {metadata.get('data_sha256')}, now {data_hash})")
        model.load_state_dict(loaded.state_dict())
        progress = read_progress(metadata, str(resume))
        load_optimizer_state(optimizer, resume, progress.step)
        console.print(f"resuming from {resume} at step {progress.step} (epoch {progress.epoch + 1}, "
                      f"batch {progress.batch_in_epoch})")

    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    base_metadata = {TRAIN_CONFIG_KEY: config.to_json(), "data_sha256": data_hash, "max_text_tokens": str(max_len),
                     "trained": "true"}

    def run_metadata(at_step: int) -> dict[str, str]:
        return {**base_metadata, "label": f"{config.model}, trained by mahia-train on the reviews data, step {at_step}"}

    last_path, best_path = out_dir / LAST_NAME, out_dir / BEST_NAME
    losses: list[float] = []
    samples = 0
    started = time.perf_counter()
    step, epoch, batch_in_epoch = progress.step, progress.epoch, progress.batch_in_epoch
    best_auc = progress.best_val_roc_auc
    validated_step: int | None = None
    best_val: dict[str, object] | None = None  # the best checkpoint's val metrics, if it was found in this run

    def validate_and_save() -> None:
        nonlocal best_auc, best_val, validated_step
        validated_step = step
        val = evaluate(model, splits["val"], max_len, config.eval_batch_size, device)
        improved = best_auc is None or float(val["roc_auc"]) > best_auc
        if improved:
            best_auc, best_val = float(val["roc_auc"]), val
        state = TrainingProgress(step, epoch, batch_in_epoch, best_auc)
        stamp = {**run_metadata(step), "val_metrics": json.dumps({k: v for k, v in val.items() if k != "expert_load"})}
        if improved:
            save_checkpoint(model, best_path, {**stamp, **progress_metadata(state)})
        save_training_state(model, optimizer, last_path, state, stamp)
        console.print(f"step {step} epoch {epoch + 1}: val accuracy {val['accuracy']:.4f} roc_auc {val['roc_auc']:.4f} "
                      f"f1 {val['f1']:.4f}{' (best)' if improved else ''}")

    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=total_steps, completed=step)
        while step < total_steps:
            order = np.random.default_rng([config.seed, epoch]).permutation(len(train_set))
            batches = range(batch_in_epoch * config.batch_size, len(order), config.batch_size)
            for start in batches:
                if step >= total_steps:
                    break
                inputs, labels = train_set.batch(order[start:start + config.batch_size], max_len,
                                                 model_config.vocab_size)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                labels = labels.to(device)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total_steps, config)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    output = model.forward_with_router_logits(**inputs)
                    teacher_logits = None
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = teacher(**inputs)
                parts = training_loss(output, labels, model_config.effective_top_k, config.aux_loss_weight,
                                      config.z_loss_weight, teacher_logits, config.distill_temperature,
                                      config.distill_weight)
                if not torch.isfinite(parts.total):
                    kept = f"the last good checkpoint is {last_path} (step {saved_step(last_path)})" \
                        if last_path.is_file() else "no checkpoint had been written yet"
                    total, task_loss, balance, z = (float(t.detach()) for t in
                                                    (parts.total, parts.task, parts.load_balance, parts.z_loss))
                    raise TrainingError(f"loss is not finite ({total}) at step {step + 1} (epoch {epoch + 1}): "
                                        f"task {task_loss}, load balance {balance}, z {z}; stopped, {kept}. "
                                        "Try a lower --lr")
                optimizer.zero_grad(set_to_none=True)
                parts.total.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                batch_in_epoch += 1
                samples += len(labels)
                loss_value = parts.total.item()
                losses.append(loss_value)
                rate = samples / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=step,
                           description=f"loss {np.mean(losses[-20:]):.4f}  {rate:.1f} samples/s")
                if on_step is not None:
                    on_step(step, loss_value)
                if step % config.save_every == 0 and step < total_steps:
                    save_training_state(model, optimizer, last_path,
                                        TrainingProgress(step, epoch, batch_in_epoch, best_auc), run_metadata(step))
                    console.print(f"step {step}/{total_steps}: loss {np.mean(losses[-config.save_every:]):.4f}, "
                                  f"{rate:.1f} samples/s, lr {optimizer.param_groups[0]['lr']:.2e}")
            if batch_in_epoch * config.batch_size >= len(order):
                epoch, batch_in_epoch = epoch + 1, 0
                validate_and_save()
        if validated_step != step:
            validate_and_save()
    train_seconds = time.perf_counter() - started

    best_model, best_metadata = load_checkpoint(best_path, model_config)
    best_model.to(device)
    metrics: dict[str, object] = {
        "command": command,
        "train_config": json.loads(config.to_json()),
        "model_config": json.loads(model_config.to_json()),
        "data": {"sha256": train_set.source_sha256, "train_sha256": data_hash,
                 "rows": {name: len(split) for name, split in splits.items()}},
        "max_text_tokens": max_len,
        "steps": step,
        "best_step": int(best_metadata["step"]),
        "train_seconds_this_run": round(train_seconds, 1),  # the step loop, validation included
        "samples_per_second": round(samples / max(train_seconds, 1e-9), 2),
        "final_train_loss": float(np.mean(losses[-50:])) if losses else None,
        "model": {"val": best_val or evaluate(best_model, splits["val"], max_len, config.eval_batch_size, device),
                  "test": evaluate(best_model, splits["test"], max_len, config.eval_batch_size, device)},
    }
    if config.baseline:
        metrics["baseline"] = {"full_text": run_baseline(train_set, splits["val"], splits["test"], None, config.seed),
                               "same_text_as_model": run_baseline(train_set, splits["val"], splits["test"],
                                                                  max_len - 1, config.seed)}
    metrics["wall_seconds_this_run"] = round(time.perf_counter() - wall_started, 1)
    write_json_atomically(metrics, out_dir / METRICS_NAME)
    return TrainResult(out_dir, best_path, metrics, step)


def saved_step(path: Path) -> str:
    """The step stored in a checkpoint's metadata, or '?' when it cannot be read."""
    try:
        return read_checkpoint_metadata(path).get("step", "?")
    except CheckpointError:
        return "?"
