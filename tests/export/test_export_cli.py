"""End-to-end `mahia-export` on the tiny config (run once per test session, shared by every test that
reads its artifact directory), the report's Polygraphy command, and every bad-input case."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from mahia import artifact
from mahia.artifact import directory as artifact_directory
from mahia.export.cli import main
from mahia.model import build_model, get_config, save_checkpoint
from tests.conftest import BIN


def test_export_passes_and_writes_every_artifact(tiny_export: dict) -> None:
    directory, summary = tiny_export["dir"], tiny_export["summary"]
    assert re.fullmatch(r"tiny-fp32-[0-9a-f]{10}", directory.name)
    assert summary["status"] == "passed" and summary["parity"]["passed"]
    expected = {"model.onnx", "model.pt2", "inputs.json", "eager_outputs.json", "parity.json", "report.md",
                "manifest.json"}
    assert {p.name for p in directory.iterdir()} == expected
    assert not list(directory.parent.glob(".*")), "no temporary directory may remain"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["schema_version"] == artifact.SCHEMA_VERSION and manifest["status"] == "passed"
    assert manifest["command"][:3] == ["mahia-export", "--config", "tiny"]
    assert manifest["model"]["trained"] is False and "untrained" in manifest["model"]["label"]
    assert manifest["dims"] == {"batch": {"min": 1, "opt": 8, "max": 16}, "seq": {"min": 1, "opt": 128, "max": 160}}
    assert manifest["inputs"]["input_ids"] == {"dtype": "int64", "shape": ["batch", "seq"]}
    # 160 text + 5 tabular tokens at most: long_conv is lowered to MatMul DFTs (ONNX DFT only above 1,024)
    assert manifest["onnx"]["file"] == "model.onnx" and manifest["onnx"]["long_conv"] == "long_conv_matmul"
    assert [s["name"] for s in manifest["stages"]] == ["load", "export", "lower", "build", "verify", "package"]
    assert {"torch", "onnx", "onnxruntime", "polygraphy"} <= set(manifest["packages"])
    for name, record in manifest["files"].items():
        assert artifact.sha256_file(directory / name) == record["sha256"], name
        assert (directory / name).stat().st_size == record["bytes"], name
    for stage in ("load (", "export (", "lower (", "build (", "verify ("):  # rich progress names each stage, timed
        assert stage in tiny_export["stderr"]


def test_parity_covers_profile_points_and_both_backends(tiny_export: dict) -> None:
    parity = json.loads((tiny_export["dir"] / "parity.json").read_text())
    points = {(r["batch"], r["seq"]) for r in parity["rows"]}
    assert points == {(1, 1), (8, 128), (16, 160), (3, 37)}
    assert {r["backend"] for r in parity["rows"]} == {"onnxrt", "pt2"}
    assert all(r["rel_l2_error"] <= 1e-5 and r["passed"] for r in parity["rows"])


def test_report_polygraphy_command_passes_when_typed(tiny_export: dict) -> None:
    report = (tiny_export["dir"] / "report.md").read_text()
    (command,) = [line.strip() for line in report.splitlines() if line.strip().startswith("polygraphy run")]
    assert "--load-inputs inputs.json --load-outputs eager_outputs.json --atol" in command
    argv = shlex.split(command)
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=tiny_export["dir"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASSED" in proc.stdout + proc.stderr


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("args, message", [
    (["--precision", "int9"], "'int9' is not one of"),
    (["--formats", "onnx,tflite"], "unknown format 'tflite'"),
    (["--batch", "8:4:2"], "expected min <= opt <= max"),
    (["--batch", "0:1:2"], "must be >= 1"),
    (["--seq", "1:x:8"], "'x' is not an integer"),
    (["--seq", "1:8"], "expected MIN:OPT:MAX"),
    (["--config", "unknown"], "'unknown' is not one of"),
    (["--atol", "-1"], "--atol"),
])
def test_bad_options_fail_with_one_line_error(args: list[str], message: str, tmp_path: Path) -> None:
    result = _invoke("--config", "tiny", "--out", str(tmp_path), *args) if "--config" not in args else \
        _invoke("--out", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not list(tmp_path.iterdir())


def test_format_the_precision_does_not_produce_is_refused(tmp_path: Path) -> None:
    result = _invoke("--config", "tiny", "--precision", "bf16", "--formats", "onnx", "--out", str(tmp_path))
    assert result.exit_code == 2 and "precision 'bf16' produces pt2; cannot write onnx" in result.output


def test_sequence_range_beyond_the_model_is_refused(tmp_path: Path) -> None:
    result = _invoke("--config", "tiny", "--seq", "1:8:1000", "--out", str(tmp_path))
    assert result.exit_code == 2 and "exceeds max_seq_len=160" in result.output
    assert not list(tmp_path.glob("tiny-*")) and not list(tmp_path.glob(".*"))


def test_missing_corrupt_and_mismatched_checkpoints_are_refused(tmp_path: Path) -> None:
    missing = _invoke("--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "a"))
    assert missing.exit_code == 2 and "checkpoint not found" in missing.output and "nope.safetensors" in missing.output
    corrupt_file = tmp_path / "corrupt.safetensors"
    corrupt_file.write_bytes(os.urandom(64))
    corrupt = _invoke("--checkpoint", str(corrupt_file), "--out", str(tmp_path / "a"))
    assert corrupt.exit_code == 2 and "corrupt.safetensors is not a readable safetensors file" in corrupt.output
    tiny_file = save_checkpoint(build_model(get_config("tiny")), tmp_path / "tiny.safetensors")
    mismatch = _invoke("--config", "small", "--checkpoint", str(tiny_file), "--out", str(tmp_path / "a"))
    assert mismatch.exit_code == 2 and "does not match config 'small'" in mismatch.output
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())


def test_unwritable_output_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _invoke("--config", "tiny", "--out", str(blocker))
    assert result.exit_code == 1 and f"output path {blocker} exists and is not a directory" in result.output
    nested = _invoke("--config", "tiny", "--out", str(blocker / "sub"))
    assert nested.exit_code == 1 and ("not writable" in nested.output or "cannot write" in nested.output)


def test_disk_full_during_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # the kernel reports ENOSPC when data reaches the disk
    monkeypatch.setattr(artifact_directory.os, "fsync", no_space)
    result = _invoke("--config", "tiny", "--formats", "pt2", "--batch", "1:2:2", "--seq", "1:8:16", "--quiet",
                     "--out", str(tmp_path))
    assert result.exit_code == 1
    assert f"disk full while writing {tmp_path}" in result.output and "model.pt2" in result.output
    assert list(tmp_path.iterdir()) == []


def test_help_shows_examples() -> None:
    result = _invoke("--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "mahia-export --config tiny" in result.output
    assert "fp16" in result.output and "bf16" in result.output
