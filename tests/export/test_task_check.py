"""The export's task check: accuracy drop and argmax agreement on the test split, gated by a budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mahia import artifact
from mahia.data import load_reviews
from mahia.data.features import FeatureSpec
from mahia.export import task_check
from mahia.export.cli import main
from mahia.export.config import DimRange, ShapeProfile, TaskBudget, TaskCheckConfig
from mahia.export.task_check import TaskResult, check_task
from mahia.model import build_model, get_config, save_checkpoint

PROFILE = ShapeProfile(DimRange("batch", 1, 8, 16), DimRange("seq", 1, 128, 160))


@pytest.mark.parametrize("backend, file", [("onnx", "model.onnx"), ("pt2", "model.pt2")])
def test_the_exported_graph_of_the_same_weights_agrees_everywhere(tiny_export: dict, backend: str, file: str) -> None:
    model = build_model(get_config("tiny"), seed=0).eval()  # what `mahia-export --config tiny` exported
    result = check_task(model, 48, backend, tiny_export["dir"] / file, PROFILE, TaskCheckConfig(rows=97),
                        TaskBudget(0.05, 0.999))
    assert (result.rows, result.text_tokens, result.backend) == (97, 48, backend)
    assert result.agreement == 1.0 and result.accuracy_drop_pt == 0.0 and result.passed
    assert 0.0 < result.eager_accuracy < 1.0 and result.failure() == ""


def test_a_graph_of_other_weights_misses_the_budget(tiny_export: dict) -> None:
    other = build_model(get_config("tiny"), seed=0).eval()
    with torch.no_grad():  # swap the two classes' logits: every prediction the graph makes now differs
        other.head.weight.copy_(other.head.weight.flip(0))
        other.head.bias.copy_(other.head.bias.flip(0))
    result = check_task(other, 48, "onnx", tiny_export["dir"] / "model.onnx", PROFILE, TaskCheckConfig(rows=97),
                        TaskBudget(0.05, 0.999))
    assert result.agreement < 0.05 and not result.passed
    assert "argmax agreement" in result.failure()


def test_budget_verdicts_and_overrides() -> None:
    budget = TaskBudget(0.3, 0.99)
    assert TaskResult("onnx", 1000, 64, 0.900, 0.898, 0.995, budget).passed  # 0.2 pt drop
    missed = TaskResult("onnx", 1000, 64, 0.900, 0.895, 0.995, budget)  # 0.5 pt drop
    assert not missed.passed and missed.failure() == "accuracy drop 0.50 pt > 0.3 pt"
    assert TaskResult("onnx", 1000, 64, 0.900, 0.905, 0.995, budget).passed  # better than eager
    assert not TaskResult("onnx", 1000, 64, 0.900, 0.900, 0.980, budget).passed  # flips that cancel out
    relaxed = TaskCheckConfig(max_accuracy_drop_pt=1.0).budget(budget)
    assert relaxed == TaskBudget(1.0, 0.99)
    assert TaskResult("onnx", 1000, 64, 0.900, 0.895, 0.995, relaxed).passed
    with pytest.raises(ValueError, match="agreement in"):
        TaskBudget(0.1, 1.5)


def _trained_tiny(tmp_path: Path) -> Path:
    """A tiny checkpoint labelled trained (its weights are seeded): the export then runs the task check."""
    return save_checkpoint(build_model(get_config("tiny"), seed=0), tmp_path / "tiny.safetensors",
                           {"trained": "true", "max_text_tokens": "32"})


def _export(tmp_path: Path, *args: str, formats: str = "onnx"):
    return CliRunner().invoke(main, ["--checkpoint", str(_trained_tiny(tmp_path)), "--formats", formats, "--batch",
                                     "1:2:3", "--seq", "1:16:40", "--out", str(tmp_path / "out"), *args])


def test_a_trained_model_export_records_its_task_check(tmp_path: Path) -> None:
    result = _export(tmp_path, "--eval-rows", "64", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    task = json.loads(result.output)["task"]
    assert task["passed"] and task["rows"] == 64 and task["text_tokens"] == 32 and task["backend"] == "onnx"
    assert task["argmax_agreement"] == 1.0 and task["budget"] == {"max_accuracy_drop_pt": 0.05, "min_agreement": 0.999}
    (directory,) = (tmp_path / "out").glob("tiny-fp32-*")
    assert "## Task check" in (directory / "report.md").read_text()
    # the server's feature statistics travel with the artifact, listed (so sha256-checked) in the manifest
    assert "features.json" in json.loads((directory / "manifest.json").read_text())["files"]
    assert FeatureSpec.from_json((directory / "features.json").read_text()) == \
        FeatureSpec.from_dataset(load_reviews()["train"])


def test_a_missed_task_budget_fails_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The verdict is tested on real graphs above; here a stub result exercises what the pipeline does with a miss.
    # The pt2 format alone: the pipeline treats a miss alike in every format, and without the ONNX lowering an export
    # takes 10 s instead of 25 s (this test: 25-32 s instead of 35-56 s in `make test`).
    def missed(model, text_tokens, backend, graph, profile, config, budget) -> TaskResult:
        return TaskResult(backend, 10, text_tokens, 0.9, 0.8, 0.9, config.budget(budget))

    monkeypatch.setattr(task_check, "check_task", missed)
    result = _export(tmp_path, "--quiet", formats="pt2")
    assert result.exit_code == 1
    assert ("Task check FAILED on 10 test rows (pt2): accuracy drop 10.00 pt > 0.05 pt; argmax agreement 0.9000 "
            "< 0.999") in result.output
    (kept,) = (tmp_path / "out").glob("tiny-fp32-*")
    assert kept.name.endswith(artifact.FAILED_SUFFIX)
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["parity"]["passed"] is True
    assert manifest["task"]["passed"] is False
    relaxed = _export(tmp_path, "--quiet", "--max-accuracy-drop", "15", "--min-agreement", "0.5", formats="pt2")
    assert relaxed.exit_code == 0, relaxed.output


def test_an_untrained_model_skips_the_task_check(tiny_export: dict) -> None:
    manifest = json.loads((tiny_export["dir"] / "manifest.json").read_text())
    assert manifest["task"] == {"skipped": "the model is untrained: its task metrics would mean nothing"}


def test_budget_edges_both_misses_and_the_manifest_form() -> None:
    budget = TaskBudget(0.5, 0.99)
    edge = TaskResult("onnx", 200, 48, 0.900, 0.895, 0.99, budget)  # exactly 0.5 pt and exactly 0.99: both pass
    assert edge.accuracy_drop_pt == pytest.approx(0.5) and edge.passed and edge.failure() == ""
    both = TaskResult("pt2", 200, 48, 0.900, 0.880, 0.985, budget)
    assert not both.passed
    assert both.failure() == "accuracy drop 2.00 pt > 0.5 pt; argmax agreement 0.9850 < 0.99"
    assert not TaskResult("onnx", 200, 48, 0.900, 0.895, 0.9899, budget).passed  # agreement alone just under
    assert both.to_dict() == {"passed": False, "backend": "pt2", "split": "test", "rows": 200, "text_tokens": 48,
                              "eager_accuracy": 0.9, "deployed_accuracy": 0.88,
                              "accuracy_drop_pt": pytest.approx(2.0), "argmax_agreement": 0.985,
                              "budget": {"max_accuracy_drop_pt": 0.5, "min_agreement": 0.99}}
    assert TaskCheckConfig(min_agreement=0.9).budget(budget) == TaskBudget(0.5, 0.9)


def test_eager_and_deployed_see_the_same_batches_within_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    # the deployed graph is a stub that always says class 0: its accuracy is the share of label 0
    model = build_model(get_config("tiny"), seed=0).eval()
    eager_feeds, eager_logits, deployed_feeds = [], [], []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        eager_feeds.append(dict(kwargs))
        eager_logits.append(out.clone())

    model.register_forward_hook(record, with_kwargs=True)

    class AlwaysZero:
        def load(self, graph: Path, inputs: dict):
            def run(feed: dict[str, torch.Tensor]) -> np.ndarray:
                deployed_feeds.append(dict(feed))
                return np.tile(np.array([[1.0, 0.0]], np.float32), (feed["input_ids"].shape[0], 1))
            return run

    monkeypatch.setattr(task_check, "get_backend", lambda name: AlwaysZero())
    profile = ShapeProfile(DimRange("batch", 1, 4, 8), DimRange("seq", 40, 44, 48))
    result = check_task(model, 64, "stub", Path("unused.onnx"), profile, TaskCheckConfig(rows=30),
                        TaskBudget(0.05, 0.999))
    assert (result.rows, result.text_tokens, result.backend) == (30, 48, "stub")  # text tokens capped at seq max
    assert len(deployed_feeds) == len(eager_feeds) >= 30 / 8
    for deployed, eager in zip(deployed_feeds, eager_feeds):
        assert deployed.keys() == eager.keys() and all(torch.equal(deployed[k], eager[k]) for k in deployed)
        batch, seq = deployed["input_ids"].shape
        assert batch <= 8 and 40 <= seq <= 48  # padded up to the graph's minimum, never past its maximum
    assert any(int(f["input_ids"].ne(0).sum(1).max()) < 40 for f in deployed_feeds)  # some batch needed the padding
    labels = load_reviews()["test"].labels[:30]
    assert result.deployed_accuracy == pytest.approx(float((labels == 0).mean()))
    eager_zero = torch.cat(eager_logits).argmax(1).eq(0).double().mean().item()
    assert result.agreement == pytest.approx(eager_zero)


def test_a_result_at_the_margin_passes_and_names_no_miss() -> None:
    drop = TaskResult("onnx", 200, 48, 0.900, 0.895, 0.99, TaskBudget(0.5, 0.99)).accuracy_drop_pt
    at_margin = TaskResult("onnx", 200, 48, 0.900, 0.895, 0.99, TaskBudget(drop - 1e-9, 0.99))
    assert at_margin.accuracy_drop_pt == at_margin.budget.max_accuracy_drop_pt + 1e-9  # exactly at the 1e-9 margin
    assert at_margin.passed and at_margin.failure() == ""  # failure() names a miss exactly when passed is False
