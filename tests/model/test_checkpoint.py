"""Checkpoints: safetensors round trip with the config, and a named error for every bad file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mahia.model import (
    CheckpointError,
    build_model,
    checkpoint,
    get_config,
    load_checkpoint,
    random_inputs,
    save_checkpoint,
)
from mahia.model.checkpoint import CONFIG_KEY, save_safetensors_atomically, text_tokens_of, weights_sha256

TINY = get_config("tiny")


def test_round_trip_restores_weights_config_and_metadata(tmp_path: Path, generator: torch.Generator) -> None:
    model = build_model(TINY, seed=5).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"step": "12"})
    loaded, metadata = load_checkpoint(path, TINY)
    assert loaded.config == TINY and metadata["step"] == "12"
    assert metadata["format"] == "pt"  # the safetensors convention for torch files (transformers refuses others)
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


def test_the_whole_fit_message_lists_every_problem(tmp_path: Path) -> None:
    tensors = {k: v.clone() for k, v in build_model(TINY).state_dict().items()}
    del tensors["head.weight"], tensors["head.bias"]
    tensors["blocks.0.moe.w1"] = torch.zeros(1, 2, 3)
    tensors["blocks.0.moe.w2"] = torch.zeros(3)
    tensors["extra.bias"], tensors["extra.weight"] = torch.zeros(3), torch.zeros(3)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata={CONFIG_KEY: TINY.to_json()})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"checkpoint {path} does not fit the model: missing tensors: head.bias (2,), head.weight (2, 32)"
        " | unexpected tensors: extra.bias, extra.weight"
        " | mis-shaped tensors: blocks.0.moe.w1: file (1, 2, 3), expected (4, 128, 32); "
        "blocks.0.moe.w2: file (3,), expected (4, 32, 64)")


def test_save_creates_missing_folders_and_a_failed_save_leaves_the_old_file(tmp_path: Path) -> None:
    path = save_checkpoint(build_model(TINY, seed=1), tmp_path / "runs" / "a" / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="Key `w` is invalid"):  # safetensors' own error comes through
        save_safetensors_atomically({"w": "not a tensor"}, path, {})  # type: ignore[dict-item]
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["m.safetensors"]


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # beside it: os.replace is then a rename within one file system, so a reader sees the old or the new file
    written = []

    def recording_save_file(tensors, filename, metadata=None):
        written.append(Path(filename))
        return save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", recording_save_file)
    path = save_safetensors_atomically({"w": torch.ones(2)}, tmp_path / "m.safetensors", {"k": "v"})
    (tmp,) = written
    assert tmp.parent == tmp_path and tmp.name.startswith(".m.safetensors.") and tmp.name.endswith(".tmp")
    assert not tmp.exists() and path == tmp_path / "m.safetensors"


def test_a_bad_stored_config_and_every_mismatched_field_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={CONFIG_KEY: '{"name": "tiny", "colour": 1}'})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"checkpoint {path}: bad model config in metadata: model config has unknown fields: colour"
    good = save_checkpoint(build_model(TINY), tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(good, TINY.replace(top_k=1, num_experts=8))
    assert str(err.value) == (f"checkpoint {good} does not match config 'tiny': "
                              "num_experts: file has 4, expected 8; top_k: file has 2, expected 1")


def test_text_tokens_come_from_the_metadata_else_the_config() -> None:
    model = build_model(TINY)
    assert text_tokens_of(model, {"max_text_tokens": "48"}) == 48
    assert text_tokens_of(model, {}) == text_tokens_of(model, {"max_text_tokens": ""}) == TINY.max_seq_len


def test_weights_sha256_hashes_name_dtype_shape_and_bytes_in_name_order() -> None:
    module = torch.nn.Linear(3, 2)
    with torch.no_grad():
        module.weight.copy_(torch.arange(6.0).reshape(2, 3))
        module.bias.fill_(0.5)
    module.register_buffer("empty", torch.zeros(0, 4, dtype=torch.int64))
    expected = hashlib.sha256()
    for name, tensor in (("bias", module.bias), ("empty", module.empty), ("weight", module.weight)):
        expected.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        expected.update(tensor.detach().numpy().tobytes())
    assert weights_sha256(module) == expected.hexdigest()
    with torch.no_grad():
        module.bias[1] = 0.25  # one value changed: another hash
    assert weights_sha256(module) != expected.hexdigest()
    model = build_model(TINY, seed=3)
    assert (weights_sha256(model) == weights_sha256(build_model(TINY, seed=3))
            != weights_sha256(build_model(TINY, seed=4)))
