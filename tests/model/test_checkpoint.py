"""Checkpoints: safetensors round trip with the config, and a named error for every bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mahia.model import CheckpointError, build_model, get_config, load_checkpoint, random_inputs, save_checkpoint
from mahia.model.checkpoint import CONFIG_KEY

TINY = get_config("tiny")


def test_round_trip_restores_weights_config_and_metadata(tmp_path: Path, generator: torch.Generator) -> None:
    model = build_model(TINY, seed=5).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"step": "12"})
    loaded, metadata = load_checkpoint(path, TINY)
    assert loaded.config == TINY and metadata["step"] == "12"
    inputs = random_inputs(TINY, 2, 9, generator)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs), model(**inputs))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "no temporary file may stay behind"


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CheckpointError, match=r"corrupt.safetensors is not a readable safetensors file"):
        load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.safetensors"
    good = save_checkpoint(build_model(TINY), tmp_path / "good.safetensors").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.safetensors"):
        load_checkpoint(truncated)


def test_config_mismatch_names_fields(tmp_path: Path) -> None:
    path = save_checkpoint(build_model(TINY), tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match=r"does not match config 'small'.*d_model: file has 32, expected 96"):
        load_checkpoint(path, get_config("small"))


def test_foreign_file_without_config(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError, match=f"no '{CONFIG_KEY}' metadata"):
        load_checkpoint(path)


def test_missing_unexpected_and_misshaped_tensors_are_listed(tmp_path: Path) -> None:
    tensors = {k: v.clone() for k, v in build_model(TINY).state_dict().items()}
    del tensors["head.weight"]
    tensors["blocks.0.moe.w1"] = torch.zeros(1, 2, 3)
    tensors["extra.bias"] = torch.zeros(3)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata={CONFIG_KEY: TINY.to_json()})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "missing tensors: head.weight (2, 32)" in message
    assert "unexpected tensors: extra.bias" in message
    assert "blocks.0.moe.w1: file (1, 2, 3), expected (4, 128, 32)" in message


def test_config_with_the_same_name_but_another_field_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(build_model(TINY), tmp_path / "tiny.safetensors")
    other = TINY.replace(top_k=1)
    assert other.name == TINY.name and TINY.top_k == 2
    with pytest.raises(CheckpointError, match=r"does not match config 'tiny': top_k: file has 2, expected 1$"):
        load_checkpoint(path, other)
