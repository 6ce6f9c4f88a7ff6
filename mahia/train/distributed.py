"""Data-parallel training on several processes: FSDP2 sharding, the rank-correct loss, sharded checkpoints.

`torchrun --nproc-per-node N -m mahia.train.cli ...` starts N processes; each reads its rank from the
variables torchrun sets and joins one process group (NCCL on GPUs, one GPU a process; gloo on CPUs).
What makes N processes compute what one process computes on the same global batch:

- Data: every rank builds the same global batch (the same seeded shuffle, the same padding) and keeps
  its contiguous block of rows (`local_rows`), so the blocks in rank order are the global batch.
- Loss: each rank's share of the global loss divides by global counts. The task loss (a mean over rows)
  and the distillation losses (soft-label KL and logit MSE, means over rows) are weighted by this rank's
  rows / all rows; pretraining's masked-word loss (a mean over the predicted words) is this rank's sum over
  its predicted words divided by all ranks' predicted words; the router z-loss is this rank's sum over its real tokens
  divided by all real tokens; the load-balancing loss E * sum_e f_e * P_e takes the global assignment
  fractions f_e (all-reduced counts; they carry no gradient) and this rank's router-probability sums
  divided by all real tokens. The shares add up to the one-process loss, so their gradients add up to
  its gradient. FSDP2 averages gradients over ranks, so each rank backpropagates N x its share.
- Clipping: `clip_grad_norm_` on FSDP2's DTensor parameters takes the norm of the whole reduced gradient
  across shards, the one-process norm.
- MoE capacity is per rank: each rank's experts take at most capacity_factor x its real tokens x k / E
  assignments (as in GShard and Switch Transformer; a global capacity would need every rank's routing
  before any expert runs). While no expert overflows, N ranks compute exactly what one process does.

Checkpoints: the resume point is a torch.distributed.checkpoint directory (each rank writes its shards;
it loads on any number of processes, or in one plain process), with the run's metadata in `mahia.json`;
`python -m mahia.train.convert` turns one into the single-file safetensors checkpoint that mahia-export
reads. The directory's `.metadata` file is a pickle (DCP's format): load only directories you wrote.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from mahia.artifact import write_json_atomically
from mahia.model import CheckpointError, MahiaX, ModelConfig
from mahia.model.checkpoint import CONFIG_KEY, save_safetensors_atomically
from mahia.model.mahia_x import ModelOutput
from mahia.train.losses import LossParts, training_loss

# What torchrun sets in each process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SIDECAR_NAME = "mahia.json"  # the run's metadata beside the shards of a distributed checkpoint


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (it sets WORLD_SIZE, also for one process)."""
    return "WORLD_SIZE" in os.environ


def local_rows(global_rows: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous block of a global batch of `global_rows` rows; block sizes differ by at most 1."""
    return slice(global_rows * rank // world_size, global_rows * (rank + 1) // world_size)


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run: its rank, the number of ranks, its device and mesh."""

    rank: int
    world_size: int
    device: torch.device
    mesh: DeviceMesh

    @classmethod
    def start(cls, device: str) -> DataParallel:
        """Join the process group torchrun describes: NCCL with GPU LOCAL_RANK for device cuda, gloo for cpu."""
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
        if missing:
            raise ValueError(f"distributed training needs the variables torchrun sets; missing: {', '.join(missing)}")
        rank, world_size, local_rank = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        kind = torch.device(device).type
        if kind == "cuda":
            if torch.cuda.device_count() <= local_rank:
                raise ValueError(f"process {rank} (local rank {local_rank}) needs GPU {local_rank}, "
                                 f"but {torch.cuda.device_count()} GPUs are visible")
            placed = torch.device("cuda", local_rank)
            torch.cuda.set_device(placed)
            if not dist.is_initialized():
                dist.init_process_group("nccl", device_id=placed)
        elif kind == "cpu":
            placed = torch.device("cpu")
            if not dist.is_initialized():
                dist.init_process_group("gloo")
        else:
            raise ValueError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not on {device!r}")
        return cls(rank, world_size, placed, init_device_mesh(kind, (world_size,)))

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, checkpoints and logs."""
        return self.rank == 0

    def check_batches(self, train_rows: int, batch_size: int) -> None:
        """Every rank must get rows of every batch, the last of an epoch included; else a ValueError."""
        last = train_rows % batch_size or batch_size
        if min(batch_size, last, train_rows) < self.world_size:
            raise ValueError(f"{self.world_size} processes need at least {self.world_size} rows in every batch, but "
                             f"--batch-size {batch_size} over {train_rows} training rows leaves "
                             f"{min(batch_size, last, train_rows)}: change --batch-size or --train-rows")

    def shard(self, model: MahiaX) -> MahiaX:
        """FSDP2 in place: one unit per block, then the root (embedding, fabric, memory, head).

        On GPUs the units compute with bfloat16 parameters and reduce gradients in float32; on CPUs all in float32.
        """
        if self.device.type == "cuda":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:
            policy = MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        # Training and evaluation call forward_with_router_logits, not forward: FSDP must hook it too.
        register_fsdp_forward_method(model, "forward_with_router_logits")
        return model

    def local_batch(self, inputs: dict[str, Tensor], labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """This rank's block of rows of a global batch."""
        rows = local_rows(len(labels), self.rank, self.world_size)
        return {name: tensor[rows] for name, tensor in inputs.items()}, labels[rows]

    def rank_loss(self, output: ModelOutput, labels: Tensor, global_rows: int, top_k: int, aux_loss_weight: float,
                  z_loss_weight: float, teacher_logits: Tensor | None = None, temperature: float = 2.0,
                  distill_weight: float = 0.5, modes: tuple[str, ...] = ("kl",)) -> tuple[Tensor, LossParts]:
        """(what this rank backpropagates, the global batch's loss terms for logging).

        The first is world_size x this rank's share of training_loss over the global batch (FSDP2 averages the
        gradients); the second holds, detached and summed over ranks, exactly what training_loss gives one
        process on the global batch (up to rounding and per-rank MoE capacity). The distillation `modes` must be
        means over rows (kl, mse): feature matching compares pairs of rows across ranks and is refused earlier.
        """
        task = training_loss(output, labels, top_k, 0.0, 0.0, teacher_logits, temperature, distill_weight, modes)
        row_share = len(labels) / global_rows
        load_balance, z_loss = self.moe_loss_shares(output, top_k)
        share = task.total * row_share + aux_loss_weight * load_balance + z_loss_weight * z_loss
        terms = torch.stack([share, task.task * row_share, task.distill * row_share, load_balance, z_loss])
        terms = terms.detach().float()
        dist.all_reduce(terms)
        return share * self.world_size, LossParts(*terms.unbind())

    def rank_masked_word_loss(self, word_loss_sum: Tensor, words: int, output: ModelOutput, top_k: int,
                              aux_loss_weight: float, z_loss_weight: float) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Pretraining's (what this rank backpropagates, the global batch's (total, masked-word, load-balancing,
        z) terms), as rank_loss for fine-tuning.

        `word_loss_sum` is the cross-entropy summed over this rank's `words` predicted words; the masked-word
        loss of the global batch is the mean over all ranks' predicted words (0 when there are none).
        """
        total_words = torch.tensor(float(words), device=word_loss_sum.device)
        dist.all_reduce(total_words)
        word_share = word_loss_sum / total_words.clamp(min=1.0)
        load_balance, z_loss = self.moe_loss_shares(output, top_k)
        share = word_share + aux_loss_weight * load_balance + z_loss_weight * z_loss
        terms = torch.stack([share, word_share, load_balance, z_loss]).detach().float()
        dist.all_reduce(terms)
        return share * self.world_size, tuple(terms.unbind())

    def moe_loss_shares(self, output: ModelOutput, top_k: int) -> tuple[Tensor, Tensor]:
        """This rank's shares of (load-balancing loss, router z-loss), each averaged over the MoE layers.

        The same losses as mahia.model.moe_aux_losses over the global batch's real tokens: the assignment
        counts and the real-token count are all-reduced, the probability and logsumexp sums stay local.
        """
        mask = output.token_mask.reshape(-1).bool()
        num_experts = output.router_logits[0].shape[-1]
        k = min(top_k, num_experts)
        logits = [layer[mask].float() for layer in output.router_logits]
        probs = [torch.softmax(layer, dim=-1) for layer in logits]
        counts = [F.one_hot(p.topk(k, dim=-1).indices, num_experts).sum(dim=(0, 1)).float() for p in probs]
        stats = torch.cat([torch.stack(counts).flatten(), mask.sum().float().reshape(1)]).detach()
        dist.all_reduce(stats)
        tokens = stats[-1]
        fractions = stats[:-1].reshape(len(probs), num_experts) / (tokens * k)
        load_balance = torch.stack([num_experts * (f * p.sum(dim=0)).sum() for f, p in zip(fractions, probs)]) / tokens
        z_loss = torch.stack([torch.logsumexp(layer, dim=-1).square().sum() for layer in logits]) / tokens
        return load_balance.mean(), z_loss.mean()

    def broadcast(self, value: object) -> object:
        """Rank 0's `value` on every rank (for decisions all ranks must share, such as keeping a checkpoint)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Leave the process group (after a barrier, so that no rank leaves while another still needs it)."""
        dist.barrier()
        dist.destroy_process_group()


def save_full_checkpoint(model: MahiaX, path: Path, metadata: dict[str, str], parallel: DataParallel) -> None:
    """The whole model as one safetensors checkpoint (the format of save_checkpoint), written by rank 0.

    Every rank must call it: the shards are gathered to rank 0's CPU memory.
    """
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if parallel.is_main:
        tensors = {name: tensor.contiguous() for name, tensor in state.items()}
        save_safetensors_atomically(tensors, path, {"format": "pt", **metadata, CONFIG_KEY: model.config.to_json()})


def save_sharded(model: MahiaX, optimizer: torch.optim.Optimizer, directory: Path, metadata: dict[str, str],
                 parallel: DataParallel) -> Path:
    """Model and optimiser state as a distributed checkpoint directory, each rank writing its shards.

    Written under a temporary name and renamed into place once complete, so an interrupted save keeps the
    previous checkpoint. `metadata` (strings, as in a safetensors checkpoint) goes to mahia.json with the
    model config.
    """
    staging = directory.with_name(f".{directory.name}.tmp")
    if parallel.is_main:
        shutil.rmtree(staging, ignore_errors=True)
    parallel.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=staging)
    if parallel.is_main:
        write_json_atomically({**metadata, CONFIG_KEY: model.config.to_json()}, staging / SIDECAR_NAME)
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        staging.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    parallel.barrier()
    return directory


def read_sharded_metadata(directory: Path, config: ModelConfig | None = None) -> dict[str, str]:
    """The metadata of a distributed checkpoint (mahia.json); with `config`, its model config must be that one."""
    path = directory / SIDECAR_NAME
    if not (directory / ".metadata").is_file() or not path.is_file():
        raise CheckpointError(f"{directory} is not a distributed checkpoint written by mahia-train "
                              f"(it needs .metadata and {SIDECAR_NAME})")
    try:
        metadata = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(metadata, dict) or CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path} has no '{CONFIG_KEY}': not written by mahia-train")
    if config is not None:
        stored = ModelConfig.from_json(metadata[CONFIG_KEY])
        if stored != config:
            diff = [f"{k}: checkpoint has {getattr(stored, k)!r}, expected {getattr(config, k)!r}"
                    for k in ModelConfig.__dataclass_fields__ if getattr(stored, k) != getattr(config, k)]
            raise CheckpointError(f"checkpoint {directory} does not match config {config.name!r}: {'; '.join(diff)}")
    return {str(k): str(v) for k, v in metadata.items()}


def load_sharded(model: MahiaX, optimizer: torch.optim.Optimizer | None, directory: Path) -> None:
    """Load a distributed checkpoint into a sharded or plain model (and optimiser), resharding as needed.

    Works with any number of processes, or in one process without a process group.
    """
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, checkpoint_id=directory)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"distributed checkpoint {directory} does not load into the model: {exc}") from None
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
