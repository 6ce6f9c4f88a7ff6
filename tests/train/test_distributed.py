"""Distributed mahia-train on the CPU: 2 gloo processes against 1 process, DCP resume on 1 process, conversion.

The 2-process runs start the same `train()` the CLI calls, in processes that carry torchrun's variables
(torch.multiprocessing spawn), so the environment-driven path is the one torchrun takes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from mahia.model import CONFIGS, build_model, load_checkpoint, save_checkpoint
from mahia.train import TrainConfig, distill, train
from mahia.train.convert import convert
from mahia.train.distributed import DataParallel, local_rows, read_sharded_metadata
from mahia.train.monitor import STEP_LOG_NAME

# 32 training rows in batches of 8: 4 steps an epoch, 4 rows a rank. One thread a process (2 cores).
CONFIG = TrainConfig(model="tiny", batch_size=8, max_text_tokens=48, lr=3e-3, warmup_steps=2, save_every=2,
                     train_rows=32, eval_rows=24, max_steps=4, threads=1, baseline=False)
# MoE capacity is per rank (see mahia.train.distributed): with capacity_factor = num_experts / top_k every
# expert can take every token, nothing overflows, and 2 ranks must compute what 1 process computes. With
# tiny's own 1.25, the 2-rank curve differs from step 1 on (1.1e-3 relative, 6e-2 by step 4: assignments
# past a 4-row slice's capacity are not those past an 8-row batch's).
DROPLESS_TINY = CONFIGS["tiny"].replace(capacity_factor=CONFIGS["tiny"].num_experts / CONFIGS["tiny"].top_k)
# Measured: 7.3e-8 at most (float32; the two runs sum the same terms in different orders).
LOSS_RTOL = 1e-5


class Interrupt(Exception):
    pass


def record_gradient_norms(norms: list[float]) -> None:
    """Record the total gradient norm (before clipping) that each step's clip_grad_norm_ computes.

    Adam's update hardly changes when every gradient is scaled alike, so the loss curves alone would not
    catch a gradient off by a constant factor (a reduction that averages where it should sum): the norms do.
    """
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        norm = clip(*args, **kwargs)
        norms.append(float(norm.full_tensor() if isinstance(norm, DTensor) else norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording_clip


def stop_at(step: int, losses: list[float]):
    def on_step(done: int, loss: float) -> None:
        losses.append(loss)
        if done == step:
            raise Interrupt
    return on_step


def two_rank_worker(rank: int, port: int, out: str) -> None:
    """One of 2 ranks: torchrun's variables, then train() interrupted after step 3 (last.dcp holds step 2)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    CONFIGS["tiny"] = DROPLESS_TINY  # this process imported mahia afresh
    losses: list[float] = []
    norms: list[float] = []
    record_gradient_norms(norms)
    try:
        train(CONFIG, out, on_step=stop_at(3, losses))
    except Interrupt:
        torch.distributed.destroy_process_group()
    if rank == 0:
        Path(out, "curves.json").write_text(json.dumps({"losses": losses, "gradient_norms": norms}))


def pretrain_distill_worker(rank: int, port: int, out: str, config: TrainConfig, teachers: str) -> None:
    """One of 2 ranks running `config` to its end (pretraining and distillation); rank 0 writes the step log."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    CONFIGS["tiny"] = DROPLESS_TINY
    distill.teacher_cache_dir = lambda: Path(teachers)
    train(config, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relative_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in a)
    return (diff / sum(float(b[k].double().square().sum()) for k in b)) ** 0.5


def test_two_ranks_match_one_and_their_checkpoint_resumes_on_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CONFIGS, "tiny", DROPLESS_TINY)
    two = tmp_path / "two"
    mp.spawn(two_rank_worker, args=(free_port(), str(two)), nprocs=2)
    curves = json.loads((two / "curves.json").read_text())

    one_losses: list[float] = []
    one_norms: list[float] = []
    one_step_2 = tmp_path / "one-step-2.safetensors"

    def on_one_step(step: int, loss: float) -> None:
        one_losses.append(loss)
        if step == 3:  # last.safetensors holds step 2 until step 4 (save_every=2): the weights to compare below
            shutil.copy(tmp_path / "one" / "last.safetensors", one_step_2)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", torch.nn.utils.clip_grad_norm_)  # restored afterwards
    record_gradient_norms(one_norms)
    train(CONFIG, tmp_path / "one", on_step=on_one_step)
    assert len(curves["losses"]) == 3 and len(one_losses) == 4
    assert curves["losses"] == pytest.approx(one_losses[:3], rel=LOSS_RTOL)
    assert curves["gradient_norms"] == pytest.approx(one_norms[:3], rel=LOSS_RTOL)

    # The 2-rank DCP checkpoint (step 2) resumes in one plain process and continues the 1-process curve.
    sharded = two / "last.dcp"
    assert read_sharded_metadata(sharded)["step"] == "2"
    resumed: list[float] = []
    result = train(CONFIG, tmp_path / "resumed", resume=sharded, on_step=lambda step, loss: resumed.append(loss))
    assert result.steps == 4
    assert resumed == pytest.approx(one_losses[2:], rel=LOSS_RTOL)

    # Converted to safetensors, it loads with load_checkpoint and holds the 1-process weights of step 2.
    converted = convert(sharded, tmp_path / "converted.safetensors")
    model, metadata = load_checkpoint(converted, DROPLESS_TINY)
    assert metadata["step"] == "2" and metadata["trained"] == "true"
    assert relative_l2(model.state_dict(), load_file(one_step_2)) < 1e-5


def test_local_rows_cover_a_batch_in_order() -> None:
    for rows, world in ((8, 2), (7, 2), (5, 3), (3, 3)):
        blocks = [local_rows(rows, rank, world) for rank in range(world)]
        assert [i for b in blocks for i in range(rows)[b]] == list(range(rows))
        assert max(b.stop - b.start for b in blocks) - min(b.stop - b.start for b in blocks) <= 1


def test_a_batch_smaller_than_the_world_is_refused() -> None:
    parallel = DataParallel(rank=0, world_size=4, device=torch.device("cpu"), mesh=None)
    parallel.check_batches(train_rows=32, batch_size=8)
    with pytest.raises(ValueError, match="4 processes need at least 4 rows in every batch, but --batch-size 8 "
                                         "over 34 training rows leaves 2"):
        parallel.check_batches(train_rows=34, batch_size=8)


def test_two_ranks_match_one_in_pretraining_and_distillation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Masked-word pretraining (a mean over the global batch's predicted words) and KL + MSE distillation (means
    over rows) on 2 ranks: every step's loss terms and gradient norms (global and per block) are the 1-process
    ones."""
    monkeypatch.setitem(CONFIGS, "tiny", DROPLESS_TINY)
    teachers = tmp_path / "teachers"
    monkeypatch.setattr(distill, "teacher_cache_dir", lambda: teachers)
    teacher = save_checkpoint(build_model(DROPLESS_TINY, seed=5).eval(), tmp_path / "teacher.safetensors")
    config = CONFIG.replace(pretrain_epochs=1, max_steps=2, teacher=str(teacher), distill_mode="kl+mse")
    train(config, tmp_path / "one")  # first: it caches the teacher's targets for the 2 ranks
    mp.spawn(pretrain_distill_worker, args=(free_port(), str(tmp_path / "two"), config, str(teachers)), nprocs=2)
    one, two = ([json.loads(line) for line in (tmp_path / run / STEP_LOG_NAME).read_text().splitlines()]
                for run in ("one", "two"))
    assert [(r["phase"], r["step"]) for r in two] == [(r["phase"], r["step"]) for r in one] == \
        [("pretrain", s) for s in range(1, 5)] + [("finetune", 1), ("finetune", 2)]
    for a, b in zip(two, one):
        terms = [k for k in ("loss", "masked_word", "task", "distill", "load_balance", "z_loss", "grad_norm") if k in b]
        where = (b["phase"], b["step"])
        assert {k: a[k] for k in terms} == pytest.approx({k: b[k] for k in terms}, rel=LOSS_RTOL), where
        assert a["block_norms"] == pytest.approx(b["block_norms"], rel=LOSS_RTOL, abs=1e-9)
    assert all(r["distill"] > 0 for r in one if r["phase"] == "finetune")


def test_feature_matching_is_refused_in_a_distributed_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feature matching compares rows across ranks: a distributed run refuses it in one line, before any step."""
    monkeypatch.setattr(DataParallel, "start", classmethod(lambda cls, device: DataParallel(0, 2, torch.device("cpu"),
                                                                                               None)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = CONFIG.replace(teacher="tfidf", distill_mode="kl+features")
    with pytest.raises(ValueError, match="feature matching .* use kl or mse there"):
        train(config, tmp_path)
