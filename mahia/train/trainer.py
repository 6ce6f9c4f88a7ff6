"""The training loop: AdamW with warmup + cosine, MoE losses, optional pretraining (mahia.train.pretrain) and
distillation from cached teacher targets (mahia.train.distill), gradient clipping with per-step norms, validation,
best checkpoint, the step log and training curves (mahia.train.monitor)."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mahia.artifact import write_json_atomically
from mahia.data import DataConfig, DataError, ReviewsDataset, load_reviews
from mahia.evaluate import evaluate
from mahia.model import CheckpointError, MahiaX, ModelConfig, build_model, get_config, load_checkpoint, save_checkpoint
from mahia.model.checkpoint import read_checkpoint_metadata, weights_sha256
from mahia.train.baseline import run_baseline
from mahia.train.config import TrainConfig
from mahia.train.distill import TeacherTargets, load_teacher_targets
from mahia.train.distributed import (
    DataParallel,
    launched_by_torchrun,
    load_sharded,
    local_rows,
    read_sharded_metadata,
    save_full_checkpoint,
    save_sharded,
)
from mahia.train.errors import TrainingError
from mahia.train.losses import training_loss
from mahia.train.monitor import (
    CURVES_NAME,
    STEP_LOG_NAME,
    StepLog,
    parameter_blocks,
    plot_curves,
    step_record,
    summarise,
)
from mahia.train.optim import apply_gradients, epoch_batches, learning_rate, make_optimizer, text_lengths
from mahia.train.pretrain import pretrain
from mahia.train.state import (
    TRAIN_CONFIG_KEY,
    TrainingProgress,
    load_optimizer_state,
    progress_metadata,
    read_progress,
    save_training_state,
)

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"
LAST_SHARDED_NAME = "last.dcp"  # the resume point of a distributed run: a torch.distributed.checkpoint directory
PRETRAINED_NAME = "pretrained.safetensors"  # the weights after pretraining (`--init` starts another run from them)
METRICS_NAME = "metrics.json"
# Fields that may differ between a run and its resumption: they change how long or where it runs,
# not what it computes.
RESUMABLE_CHANGES = frozenset({"epochs", "max_steps", "save_every", "threads", "device", "baseline", "eval_batch_size"})
# The reproducible prefix: metrics.json records the first PREFIX_STEPS steps' losses and the weights hash after
# them, and `python -m mahia.train.reproduce prefix` re-runs just those steps and compares them bit for bit.
PREFIX_STEPS = 16


class _PrefixDone(Exception):
    """Raised after `stop_after` steps: the run ends with its prefix recorded."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    best_checkpoint: Path
    metrics: dict[str, object]
    steps: int
    main_process: bool = True  # False on the ranks other than 0 of a distributed run (their metrics are empty)


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


def _check_resumable(config: TrainConfig, stored: TrainConfig, source: Path) -> None:
    changed = [f"{k}: checkpoint has {getattr(stored, k)!r}, now {getattr(config, k)!r}"
               for k in TrainConfig.__dataclass_fields__
               if k not in RESUMABLE_CHANGES and getattr(stored, k) != getattr(config, k)]
    if changed:
        raise TrainingError(f"cannot resume from {source} with a different training setup: {'; '.join(changed)}")


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} requested but CUDA is not available")
    return device


def train(config: TrainConfig, out_dir: str | Path, resume: str | Path | None = None, command: str | None = None,
          console: Console | None = None, on_step: Callable[[int, float], None] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Pretrain (if asked), train, validating each epoch (and every eval_every steps) and at the end, keeping the
    best checkpoint; write metrics.json, the step log and the training curves.

    `on_step(step, loss)` is called after every fine-tuning step (tests use it to interrupt a run).
    `stop_after` ends the run after that many steps (pretraining steps first) without changing its schedule;
    metrics.json then holds only the command and the prefix record (what `reproduce prefix` compares).
    Under torchrun the processes train one model data-parallel (mahia.train.distributed); rank 0 writes the
    files and returns the metrics, the other ranks return empty metrics.
    """
    wall_started = time.perf_counter()
    run = _Run.start(config, Path(out_dir), console or Console(stderr=True))
    run.stop_after = stop_after
    try:
        if resume is not None:
            run.resume_from(Path(resume))
        else:
            run.log = StepLog(run.out_dir, write=run.is_main)
            if config.pretrain_epochs:
                run.pretrain_summary = pretrain(run.model, run.splits["train"], config, run.max_len, run.device,
                                                run.log, run.after_step, run.console, run.parallel)
                pretrained = {**run.metadata(), "trained": "false",  # not trained on the task: no task check
                              "label": f"{config.model}, masked-word pretraining only"}
                if run.parallel is None:
                    save_checkpoint(run.model, run.out_dir / PRETRAINED_NAME, pretrained)
                else:
                    save_full_checkpoint(run.model, run.out_dir / PRETRAINED_NAME, pretrained, run.parallel)
        if not run.is_main:
            run.parallel.barrier()  # rank 0 computes and caches the teacher's targets first; the others read them
        run.teacher = load_teacher_targets(config.teacher, run.splits["train"], run.splits["val"], run.max_len,
                                           run.model_config.num_classes, config.seed, run.device, run.console.print)
        if run.parallel is not None and run.is_main:
            run.parallel.barrier()
        run.run_steps(on_step)
    except _PrefixDone:
        metrics = {"command": command, "prefix": run.prefix}
        write_json_atomically(metrics, run.out_dir / METRICS_NAME)
        return TrainResult(run.out_dir, run.best_path, metrics, run.step)
    if run.parallel is not None:
        run.parallel.close()  # on an error a rank raises without it, and torchrun stops the others
        if not run.parallel.is_main:
            return TrainResult(run.out_dir, run.best_path, {}, run.step, main_process=False)
    metrics = run.final_metrics(command)
    metrics["wall_seconds_this_run"] = round(time.perf_counter() - wall_started, 1)
    write_json_atomically(metrics, run.out_dir / METRICS_NAME)
    return TrainResult(run.out_dir, run.best_path, metrics, run.step)


@dataclass
class _Run:
    """One training run: its data, model and optimiser, and where it stands (what a resume restores)."""

    config: TrainConfig
    out_dir: Path
    console: Console
    device: torch.device
    model_config: ModelConfig
    max_len: int  # tokens per text
    splits: dict[str, ReviewsDataset]
    data_hash: str  # the training rows' content hash: a resume must see the same rows
    model: MahiaX
    optimizer: torch.optim.Optimizer
    # The parameters by block (per-block gradient norms, clipping), taken before any forward: during FSDP2's
    # forward and backward the root's parameters are swapped for unsharded ones that hold no gradient after it.
    blocks: dict[str, list[torch.nn.Parameter]]
    log: StepLog  # the step log; in memory only until train() starts the file (or takes over a resumed run's)
    teacher: TeacherTargets | None = None
    stop_after: int | None = None
    prefix: dict[str, object] | None = None
    pretrain_summary: dict[str, object] | None = None
    validations: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_auc: float | None = None
    best_val: dict[str, object] | None = None  # the best checkpoint's val metrics, if it was found in this run
    validated_step: int | None = None
    losses: list[float] = field(default_factory=list)
    samples: int = 0
    train_seconds: float = 0.0
    parallel: DataParallel | None = None  # set under torchrun

    @classmethod
    def start(cls, config: TrainConfig, out_dir: Path, console: Console) -> _Run:
        """Data, a freshly initialised model (or init_checkpoint's weights; sharded under torchrun) and its
        optimiser."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        parallel = DataParallel.start(config.device) if launched_by_torchrun() else None
        device = parallel.device if parallel is not None else _device(config.device)
        if parallel is not None and not parallel.is_main:
            console = Console(quiet=True)
        model_config = get_config(config.model)
        max_len = text_budget(config, model_config.max_seq_len)
        splits = load_splits(config)
        model = build_model(model_config, seed=config.seed)
        if config.init_checkpoint is not None:
            model.load_state_dict(load_checkpoint(config.init_checkpoint, model_config)[0].state_dict())
        model = model.to(device).train()
        if parallel is not None:
            parallel.check_batches(len(splits["train"]), config.batch_size)
            if config.teacher is not None and "features" in config.distill_modes:
                raise ValueError("feature matching (--distill-mode features) compares every pair of rows of a batch, "
                                 "which no rank holds in a distributed run: use kl or mse there")
            model = parallel.shard(model)
        return cls(config, out_dir, console, device, model_config, max_len, splits, splits["train"].content_hash(),
                   model, make_optimizer(model, config), parameter_blocks(model), StepLog(out_dir, write=False),
                   parallel=parallel)

    @property
    def is_main(self) -> bool:
        """The process that writes files: the only one, or rank 0 of a distributed run."""
        return self.parallel is None or self.parallel.is_main

    @functools.cached_property
    def train_lengths(self) -> np.ndarray:
        """Encoded length of every training row (for length-grouped batches)."""
        return text_lengths(self.splits["train"], self.max_len)

    def after_step(self, phase: str, step: int, loss: float) -> None:
        """After each step of either phase: record the prefix when it is complete, stop if asked to."""
        records = self.log.records
        if self.prefix is None and self.parallel is None and len(records) == PREFIX_STEPS:
            self.prefix = {"steps": PREFIX_STEPS, "phase": records[0]["phase"],
                           "losses": [r["loss"] for r in records], "weights_sha256": weights_sha256(self.model)}
        if self.stop_after is not None and len(records) >= self.stop_after:
            raise _PrefixDone

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_NAME

    @property
    def last_path(self) -> Path:
        return self.out_dir / (LAST_NAME if self.parallel is None else LAST_SHARDED_NAME)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run: epochs over the training split, at most max_steps."""
        total = self.config.epochs * math.ceil(len(self.splits["train"]) / self.config.batch_size)
        return total if self.config.max_steps is None else min(total, self.config.max_steps)

    def resume_from(self, resume: Path) -> None:
        """Weights, optimiser state and progress of a checkpoint written by an earlier run of the same setup:
        a last.safetensors (single-process runs) or a last.dcp directory (distributed runs, any number of ranks)."""
        if resume.is_dir():
            metadata = read_sharded_metadata(resume, self.model_config)
        elif self.parallel is not None:
            raise TrainingError(f"a distributed run resumes from a {LAST_SHARDED_NAME} directory, not from {resume}")
        else:
            loaded, metadata = load_checkpoint(resume, self.model_config)
        if TRAIN_CONFIG_KEY not in metadata:
            raise CheckpointError(f"checkpoint {resume} has no training config: not written by mahia-train")
        _check_resumable(self.config, TrainConfig.from_json(metadata[TRAIN_CONFIG_KEY]), resume)
        if metadata.get("data_sha256") != self.data_hash:
            raise TrainingError(f"cannot resume from {resume}: it was trained on other data "
                                f"(data_sha256 {metadata.get('data_sha256')}, now {self.data_hash})")
        progress = read_progress(metadata, str(resume))
        if resume.is_dir():
            load_sharded(self.model, self.optimizer, resume)
        else:
            self.model.load_state_dict(loaded.state_dict())
            load_optimizer_state(self.optimizer, resume, progress.step)
        self.step, self.epoch, self.batch_in_epoch = progress.step, progress.epoch, progress.batch_in_epoch
        self.best_auc = progress.best_val_roc_auc
        self.validations = json.loads(metadata.get("validations", "[]"))
        self.prefix = json.loads(metadata.get("prefix", "null"))
        self.pretrain_summary = json.loads(metadata.get("pretrain", "null"))
        self.log = StepLog.resumed(self.out_dir, resume.parent, progress.step, write=self.is_main)
        self.console.print(f"resuming from {resume} at step {progress.step} (epoch {progress.epoch + 1}, "
                           f"batch {progress.batch_in_epoch})")

    def metadata(self) -> dict[str, str]:
        """Checkpoint metadata of the run at its current step."""
        return {TRAIN_CONFIG_KEY: self.config.to_json(), "data_sha256": self.data_hash,
                "max_text_tokens": str(self.max_len), "trained": "true",
                "label": f"{self.config.model}, trained by mahia-train on the reviews data, step {self.step}",
                "validations": json.dumps(self.validations), "prefix": json.dumps(self.prefix),
                "pretrain": json.dumps(self.pretrain_summary)}

    def progress(self) -> TrainingProgress:
        return TrainingProgress(self.step, self.epoch, self.batch_in_epoch, self.best_auc)

    def run_steps(self, on_step: Callable[[int, float], None] | None) -> None:
        """Epochs of seeded shuffles until total_steps, validating at each epoch's end and at the end."""
        started = time.perf_counter()
        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn())
        total_steps = self.total_steps
        with Progress(*columns, console=self.console, transient=False, disable=self.console.quiet) as bar:
            task = bar.add_task("", total=total_steps, completed=self.step)
            while self.step < total_steps:
                batches = epoch_batches(len(self.splits["train"]), self.config.batch_size, self.config.seed,
                                        self.epoch, self.config.length_groups, lambda: self.train_lengths)
                for rows in batches[self.batch_in_epoch:]:
                    if self.step >= total_steps:
                        break
                    inputs, labels = self.splits["train"].batch(rows, self.max_len, self.model_config.vocab_size)
                    loss = self.train_step(inputs, labels, total_steps, rows)
                    rate = self.samples / max(time.perf_counter() - started, 1e-9)
                    bar.update(task, completed=self.step,
                               description=f"loss {np.mean(self.losses[-20:]):.4f}  {rate:.1f} samples/s")
                    if on_step is not None:
                        on_step(self.step, loss)
                    if self.config.eval_every and self.step % self.config.eval_every == 0 and self.step < total_steps:
                        self.validate_and_save()
                    elif self.step % self.config.save_every == 0 and self.step < total_steps:
                        self.save_resume_point(rate, total_steps)
                if self.batch_in_epoch >= len(batches):
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if self.validated_step != self.step:
                        self.validate_and_save()
            if self.validated_step != self.step:
                self.validate_and_save()
        self.train_seconds = time.perf_counter() - started

    def save_resume_point(self, rate: float, total_steps: int) -> None:
        """The resume checkpoint (model, optimiser, progress) every save_every steps, with a progress line."""
        self.save_last(self.metadata())
        recent = np.mean(self.losses[-self.config.save_every:])
        self.console.print(f"step {self.step}/{total_steps}: loss {recent:.4f}, {rate:.1f} samples/s, "
                           f"lr {self.optimizer.param_groups[0]['lr']:.2e}")

    def train_step(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor, total_steps: int,
                   rows: np.ndarray | None = None) -> float:
        """One optimiser step on a batch (the training split's rows at `rows`, which distillation needs to find
        the teacher's targets); a non-finite loss stops the run naming the last good checkpoint."""
        config, device = self.config, self.device
        global_rows = len(labels)
        if self.parallel is not None:
            inputs, labels = self.parallel.local_batch(inputs, labels)
            if rows is not None:
                rows = rows[local_rows(global_rows, self.parallel.rank, self.parallel.world_size)]
        inputs = {k: v.to(device) for k, v in inputs.items()}
        labels = labels.to(device)
        pooled: list[torch.Tensor] = []  # the head's input, when feature matching needs it
        hook = self.model.head.register_forward_hook(lambda module, args, out: pooled.append(args[0])) \
            if self.teacher is not None and "features" in config.distill_modes else None
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                output = self.model.forward_with_router_logits(**inputs)
        finally:
            if hook is not None:
                hook.remove()
        teacher_logits = teacher_features = None
        if self.teacher is not None:
            teacher_logits, teacher_features = self.teacher.batch(rows, device)
        loss_args = (self.model_config.effective_top_k, config.aux_loss_weight, config.z_loss_weight, teacher_logits,
                     config.distill_temperature, config.distill_weight, config.distill_modes)
        if self.parallel is None:
            parts = training_loss(output, labels, *loss_args, pooled[0] if pooled else None, teacher_features)
            backpropagated = parts.total
        else:  # parts: the global batch's loss terms; backpropagated: this rank's share of them (see distributed.py)
            backpropagated, parts = self.parallel.rank_loss(output, labels, global_rows, *loss_args)
        if not torch.isfinite(parts.total):
            kept = f"the last good checkpoint is {self.last_path} (step {saved_step(self.last_path)})" \
                if self.last_path.exists() else "no checkpoint had been written yet"
            total, task_loss, balance, z = (float(t.detach()) for t in
                                            (parts.total, parts.task, parts.load_balance, parts.z_loss))
            raise TrainingError(f"loss is not finite ({total}) at step {self.step + 1} (epoch {self.epoch + 1}): "
                                f"task {task_loss}, load balance {balance}, z {z}; stopped, {kept}. Try a lower --lr")
        lr = learning_rate(self.step, total_steps, config)
        norm, per_block = apply_gradients(backpropagated, self.optimizer, self.blocks, config.grad_clip, lr)
        self.step += 1
        self.batch_in_epoch += 1
        self.samples += global_rows
        loss = parts.total.item()
        self.losses.append(loss)
        terms = {"loss": loss, "task": parts.task, "distill": parts.distill, "load_balance": parts.load_balance,
                 "z_loss": parts.z_loss}
        self.log.append(step_record("finetune", self.step, lr, terms, norm, per_block, config.grad_clip))
        self.after_step("finetune", self.step, loss)
        return loss

    def validate_and_save(self) -> None:
        """Validation metrics; the best checkpoint when they improve, the resume checkpoint always."""
        self.validated_step = self.step
        val = evaluate(self.model, self.splits["val"], self.max_len, self.config.eval_batch_size, self.device)
        if self.parallel is not None:  # every rank evaluated the whole split; rank 0's metrics decide for all
            val = self.parallel.broadcast(val)
        scores = {k: float(val[k]) for k in ("accuracy", "roc_auc", "f1", "log_loss")}
        self.validations.append({"step": self.step, "epoch": self.epoch, **scores})
        improved = self.best_auc is None or float(val["roc_auc"]) > self.best_auc
        if improved:
            self.best_auc, self.best_val = float(val["roc_auc"]), val
        stamp = {**self.metadata(), "val_metrics": json.dumps({k: v for k, v in val.items() if k != "expert_load"})}
        if improved:
            best_stamp = {**stamp, **progress_metadata(self.progress())}
            if self.parallel is None:
                save_checkpoint(self.model, self.best_path, best_stamp)
            else:
                save_full_checkpoint(self.model, self.best_path, best_stamp, self.parallel)
        self.save_last(stamp)
        self.console.print(f"step {self.step} epoch {self.epoch + 1}: val accuracy {val['accuracy']:.4f} roc_auc "
                           f"{val['roc_auc']:.4f} f1 {val['f1']:.4f}{' (best)' if improved else ''}")

    def save_last(self, metadata: dict[str, str]) -> None:
        """The resume point: model, optimiser and progress (one process: safetensors files; distributed: DCP)."""
        if self.parallel is None:
            save_training_state(self.model, self.optimizer, self.last_path, self.progress(), metadata)
        else:
            save_sharded(self.model, self.optimizer, self.last_path, {**metadata, **progress_metadata(self.progress())},
                         self.parallel)

    def final_metrics(self, command: str | None) -> dict[str, object]:
        """metrics.json: the best checkpoint's val and test metrics, the run's figures, and the baseline."""
        config, splits, train_set = self.config, self.splits, self.splits["train"]
        best_model, best_metadata = load_checkpoint(self.best_path, self.model_config)
        best_model.to(self.device)
        metrics: dict[str, object] = {
            "command": command,
            "train_config": json.loads(config.to_json()),
            "model_config": json.loads(self.model_config.to_json()),
            "data": {"sha256": train_set.source_sha256, "train_sha256": self.data_hash,
                     "rows": {name: len(split) for name, split in splits.items()}},
            "max_text_tokens": self.max_len,
            "steps": self.step,
            "best_step": int(best_metadata["step"]),
            "train_seconds_this_run": round(self.train_seconds, 1),  # the step loop, validation included
            "samples_per_second": round(self.samples / max(self.train_seconds, 1e-9), 2),
            "final_train_loss": float(np.mean(self.losses[-50:])) if self.losses else None,
            "validations": self.validations,
            "grad_norms": summarise(self.log, config.grad_clip),
            "step_log": STEP_LOG_NAME,
            "curves": plot_curves(self.log, self.validations, config.grad_clip, self.out_dir / CURVES_NAME).name,
            "prefix": self.prefix,
            "model": {"val": self.best_val or evaluate(best_model, splits["val"], self.max_len, config.eval_batch_size,
                                                       self.device),
                      "test": evaluate(best_model, splits["test"], self.max_len, config.eval_batch_size, self.device)},
        }
        if self.pretrain_summary is not None:
            metrics["pretrain"] = self.pretrain_summary
        if self.teacher is not None:
            metrics["teacher"] = self.teacher.info
        if config.baseline:
            metrics["baseline"] = {
                "full_text": run_baseline(train_set, splits["val"], splits["test"], None, config.seed),
                "same_text_as_model": run_baseline(train_set, splits["val"], splits["test"], self.max_len - 1,
                                                   config.seed)}
        return metrics


def saved_step(path: Path) -> str:
    """The step stored in a checkpoint's metadata, or '?' when it cannot be read."""
    try:
        return (read_sharded_metadata(path) if path.is_dir() else read_checkpoint_metadata(path)).get("step", "?")
    except CheckpointError:
        return "?"
