"""mahia-eval: an exported artifact's task metrics next to the eager model's, on real test rows."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mahia.evaluate.cli import main as eval_cli
from mahia.model import build_model, get_config, save_checkpoint


def test_fp32_artifact_matches_eager_metrics(tiny_export: dict, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(eval_cli, [str(tiny_export["dir"]), "--rows", "96", "--batch-size", "16",
                                           "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names[0].startswith("eager fp32 (config tiny") and names[1:] == ["onnx fp32", "pt2 fp32"]
    eager = report["results"][0]
    assert report["rows"] == 96 and eager["n"] == 96
    for row in report["results"][1:]:
        assert row["prediction_agreement"] == 1.0
        assert row["max_abs_logit_diff"] < 1e-4
        assert row["delta_accuracy"] == 0.0 and abs(row["delta_roc_auc"]) < 1e-6
    assert "onnx fp32" in result.output and "d accuracy" in result.output


def test_eager_model_with_other_weights_is_refused(tiny_export: dict, tmp_path: Path) -> None:
    other = save_checkpoint(build_model(get_config("tiny"), seed=1), tmp_path / "other.safetensors")
    result = CliRunner().invoke(eval_cli, [str(tiny_export["dir"]), "--checkpoint", str(other), "--rows", "8"])
    assert result.exit_code == 1
    assert "exported from other weights" in result.output and "Traceback" not in result.output


def test_not_an_artifact_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(eval_cli, [str(tmp_path), "--rows", "8"])
    assert result.exit_code == 1 and "manifest.json is missing" in result.output


def test_eager_only_on_a_checkpoint(tmp_path: Path) -> None:
    ckpt = save_checkpoint(build_model(get_config("tiny"), seed=0), tmp_path / "tiny.safetensors")
    result = CliRunner().invoke(eval_cli, ["--checkpoint", str(ckpt), "--rows", "40", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "val split, 40 rows, texts cut to 160 tokens" in result.output
