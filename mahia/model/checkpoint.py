"""Checkpoints: safetensors files with the model config (JSON) in their metadata; never unpickled."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mahia.model.config import ModelConfig
from mahia.model.mahia_x import MahiaX, build_model

CONFIG_KEY = "mahia_config"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def save_checkpoint(model: MahiaX, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write model weights + config atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    meta = {"format": "pt", **(metadata or {}), CONFIG_KEY: model.config.to_json()}
    return save_safetensors_atomically(tensors, path, meta)


def save_safetensors_atomically(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write a safetensors file through a temporary file in the same folder, renamed into place when complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The checkpoint's metadata, or a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None


def load_checkpoint(path: str | Path, config: ModelConfig | None = None) -> tuple[MahiaX, dict[str, str]]:
    """(model in eval mode, metadata) from a checkpoint; if `config` is given it must match the file's."""
    path = Path(path)
    metadata = read_checkpoint_metadata(path)
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"checkpoint {path} has no '{CONFIG_KEY}' metadata: not written by mahia")
    try:
        stored = ModelConfig.from_json(metadata[CONFIG_KEY])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: bad model config in metadata: {exc}") from None
    if config is not None and config != stored:
        diff = [f"{k}: file has {getattr(stored, k)!r}, expected {getattr(config, k)!r}"
                for k in ModelConfig.__dataclass_fields__ if getattr(stored, k) != getattr(config, k)]
        raise CheckpointError(f"checkpoint {path} does not match config {config.name!r}: {'; '.join(diff)}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {exc}") from None
    model = build_model(stored)  # weights are overwritten below; build_model leaves global RNG alone
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    return model.eval(), metadata


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError listing every missing, unexpected and mis-shaped tensor."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append("missing tensors: " + ", ".join(f"{k} {tuple(expected[k].shape)}" for k in missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    shaped = [f"{k}: file {tuple(tensors[k].shape)}, expected {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k].shape]
    if shaped:
        problems.append("mis-shaped tensors: " + "; ".join(shaped))
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model: " + " | ".join(problems))


def text_tokens_of(model: MahiaX, metadata: dict[str, str]) -> int:
    """Tokens per text the model was trained with (checkpoint metadata "max_text_tokens"), else its max_seq_len."""
    return int(metadata.get("max_text_tokens") or model.config.max_seq_len)


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, bytes) in name order: identifies the weights
    whatever file or process they came from (the manifest records it; mahia-eval checks it)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
