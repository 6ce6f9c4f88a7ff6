"""Parity on its own (mahia.export.parity): each row's errors and verdict, the worst row, the JSON form,
Polygraphy's files, the eager reference, and a graph that cannot run, on a one-node ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mahia.export import parity
from mahia.export.config import Tolerances
from mahia.model import build_model, get_config, random_inputs
from mahia.runtime import get_backend

SPEC = {"x": {"dtype": "float32", "shape": ["batch", 2]}}


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_each_row_names_backend_point_and_output_with_its_three_errors(identity: Path) -> None:
    feeds = [{"x": np.array([[1.0, 2.0], [4.0, -8.0], [0.5, 1.0]], np.float32)},
             {"x": np.array([[3.0, 4.0]], np.float32)}]
    # the graph returns x; the reference is off by +0.5 in one element of the first feed and exact in the second
    reference = [{"logits": feeds[0]["x"] + np.array([[0, 0], [0, 0.5], [0, 0]], np.float32)},
                 {"logits": feeds[1]["x"]}]
    want = reference[0]["logits"].astype(np.float64)
    rel_l2 = 0.5 / np.linalg.norm(want)  # 0.056: the budget below is exactly this, which passes
    tolerances = Tolerances(atol=0.0, rtol=0.1, max_rel_error=rel_l2)
    result = parity.compare([parity.Graph(identity, get_backend("onnx"))], SPEC, feeds, reference, [(3, 2), (1, 2)],
                            tolerances)
    first, second = result.rows
    assert (first.backend, first.batch, first.seq, first.output) == ("onnxrt", 3, 2, "logits")
    assert first.max_abs_error == pytest.approx(0.5)
    assert first.max_elementwise_rel_error == pytest.approx(0.5 / 7.5)
    assert first.rel_l2_error == rel_l2 and first.ref_norm == np.linalg.norm(want)
    assert first.polygraphy_passed and first.passed  # 0.5 / 7.5 <= rtol 0.1 and rel. L2 <= its budget
    assert (second.batch, second.max_abs_error, second.rel_l2_error, second.passed) == (1, 0.0, 0.0, True)
    assert result.passed and result.tolerances == tolerances
    strict = parity.compare([parity.Graph(identity, get_backend("onnx"))], SPEC, feeds, reference, [(3, 2), (1, 2)],
                            Tolerances(atol=0.0, rtol=0.05, max_rel_error=1.0))
    assert [r.polygraphy_passed for r in strict.rows] == [False, True] and not strict.passed


def test_worst_row_and_json_form() -> None:
    tolerances = Tolerances(atol=1e-3, rtol=1e-3, max_rel_error=1e-2)

    def row(seq: int, rel_l2: float, passed: bool) -> parity.ParityRow:
        return parity.ParityRow("onnxrt", 1, seq, "logits", 0.1, 0.2, rel_l2, 1.0, passed, passed)

    passing = (row(1, 5e-3, True), row(2, 8e-3, True), row(3, 1e-3, True))
    assert parity.ParityResult(tolerances, passing).worst().seq == 2  # largest error within budget
    failing = parity.ParityResult(tolerances, (*passing, row(4, 1e-4, False)))
    assert failing.worst().seq == 4 and not failing.passed  # a failed row is worse than any passing one
    as_dict = failing.to_dict()
    assert as_dict["passed"] is False and as_dict["worst"]["seq"] == 4
    assert as_dict["tolerances"] == {"atol": 1e-3, "rtol": 1e-3, "max_rel_error": 1e-2}
    assert as_dict["rows"][1] == {"backend": "onnxrt", "batch": 1, "seq": 2, "output": "logits", "max_abs_error": 0.1,
                                  "max_elementwise_rel_error": 0.2, "rel_l2_error": 8e-3, "ref_norm": 1.0,
                                  "polygraphy_passed": True,
                                  "passed": True}
    empty = parity.ParityResult(tolerances, ())
    assert not empty.passed and empty.to_dict() == {"passed": False, "tolerances": as_dict["tolerances"], "rows": [],
                                                     "worst": None}


def test_a_graph_that_cannot_run_is_named(identity: Path) -> None:
    feeds = [{"x": np.ones((1, 3), np.float32)}]  # 3 features where the graph takes 2
    with pytest.raises(parity.ParityRunError, match=r"^running identity.onnx on the parity inputs failed: \S"):
        parity.compare([parity.Graph(identity, get_backend("onnx"))], SPEC, feeds, [{"logits": feeds[0]["x"]}],
                       [(1, 3)], Tolerances(atol=0.0, rtol=0.1, max_rel_error=1.0))


def test_runner_metadata_has_dynamic_dims_as_none(identity: Path) -> None:
    runner = parity._runtime_runner_class()("onnxrt", lambda: get_backend("onnx").load(identity, SPEC), SPEC)
    with runner:
        meta = runner.get_input_metadata()
        assert list(meta) == ["x"] and meta["x"].dtype == np.float32 and tuple(meta["x"].shape) == (None, 2)
        out = runner.infer({"x": np.ones((2, 2), np.float32)})
        assert list(out) == ["logits"] and np.array_equal(np.asarray(out["logits"]), np.ones((2, 2)))
        assert 0 < runner.last_inference_time() < 10  # seconds of this one run, not a clock reading


def test_eager_reference_and_polygraphy_files(tmp_path: Path, generator: torch.Generator) -> None:
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    tiny = get_config("tiny")
    model = build_model(tiny, seed=0).eval()
    batches = [random_inputs(tiny, 3, 9, generator), random_inputs(tiny, 1, 4, generator)]
    feeds = [{k: v.numpy() for k, v in b.items()} for b in batches]
    outputs = parity.eager_outputs(model, feeds)
    with torch.no_grad():
        for out, batch in zip(outputs, batches):
            assert list(out) == ["logits"] and out["logits"].dtype == np.float32
            np.testing.assert_array_equal(out["logits"], model(**batch).numpy())
    parity.save_polygraphy_files(feeds, outputs, tmp_path / "inputs.json", tmp_path / "eager_outputs.json")
    loaded_feeds = load_json(str(tmp_path / "inputs.json"))
    assert [list(f) for f in loaded_feeds] == [list(f) for f in feeds]
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(loaded_feeds, feeds) for k in a)
    results = RunResults.load(str(tmp_path / "eager_outputs.json"))
    (name, iterations), = results.items()
    assert name == parity.EAGER_RUNNER == "eager-pytorch-fp32"
    assert [it.runner_name for it in iterations] == [name, name]
    assert all(np.array_equal(it["logits"], out["logits"]) for it, out in zip(iterations, outputs))


class _FailingBackend:
    """A backend whose runner raises a multi-line error, as ONNX Runtime's do."""

    def __init__(self, engine: str) -> None:
        self.engine = engine

    def load(self, path: Path, inputs: dict):
        def run(feed):
            raise RuntimeError("while running the graph\n  at node 3\nthe cause: a shape mismatch")
        return run


def test_a_failed_run_names_every_graph_and_the_last_line_of_the_error(tmp_path: Path) -> None:
    graphs = [parity.Graph(tmp_path / "a.onnx", _FailingBackend("fake-a")),
              parity.Graph(tmp_path / "b.onnx", _FailingBackend("fake-b"))]
    feeds = [{"x": np.ones((1, 2), np.float32)}]
    with pytest.raises(parity.ParityRunError) as err:
        parity.compare(graphs, SPEC, feeds, [{"logits": feeds[0]["x"]}], [(1, 2)], Tolerances(0.0, 0.1, 1.0))
    assert str(err.value) == "running a.onnx, b.onnx on the parity inputs failed: the cause: a shape mismatch"


def test_atol_alone_passes_an_element_whose_reference_is_zero(identity: Path) -> None:
    feeds = [{"x": np.array([[1e-3, 2.0]], np.float32)}]
    reference = [{"logits": np.array([[0.0, 2.0]], np.float32)}]  # relative error of the first element: infinite
    graph = parity.Graph(identity, get_backend("onnx"))
    within = parity.compare([graph], SPEC, feeds, reference, [(1, 2)],
                            Tolerances(atol=1e-2, rtol=0.0, max_rel_error=1.0))
    outside = parity.compare([graph], SPEC, feeds, reference, [(1, 2)],
                             Tolerances(atol=1e-4, rtol=0.0, max_rel_error=1.0))
    assert within.rows[0].polygraphy_passed and not outside.rows[0].polygraphy_passed


def test_small_references_and_a_shape_mismatch(identity: Path) -> None:
    graph = parity.Graph(identity, get_backend("onnx"))
    feeds = [{"x": np.array([[0.11, 0.2]], np.float32)}]
    reference = [{"logits": np.array([[0.1, 0.2]], np.float32)}]  # |ref| < 1: no floor of 1 in either ratio
    (row,) = parity.compare([graph], SPEC, feeds, reference, [(1, 2)], Tolerances(0.0, 0.5, 1.0)).rows
    want = reference[0]["logits"].astype(np.float64)
    diff = feeds[0]["x"].astype(np.float64) - want
    assert row.rel_l2_error == pytest.approx(np.linalg.norm(diff) / np.linalg.norm(want), rel=1e-12)
    assert row.max_elementwise_rel_error == pytest.approx(abs(diff[0, 0]) / want[0, 0], rel=1e-12)
    # a graph output of another shape that would broadcast against the reference fails Polygraphy's check
    wide = [{"x": np.array([[0.1, 0.2], [0.1, 0.2]], np.float32)}]
    (row,) = parity.compare([graph], SPEC, wide, reference, [(2, 2)], Tolerances(0.0, 0.5, 1.0)).rows
    assert not row.polygraphy_passed and not row.passed


class _DoublingBackend:
    """A working backend of another engine whose graph returns twice its input."""

    engine = "doubling"

    def load(self, path: Path, inputs: dict):
        return lambda feed: 2 * feed["x"]


def test_every_graph_is_compared_with_the_eager_reference(identity: Path) -> None:
    # two graphs, as an export checks ONNX and .pt2: each against eager, not the second against the first
    feeds = [{"x": np.array([[1.0, 2.0]], np.float32)}]
    graphs = [parity.Graph(identity, get_backend("onnx")), parity.Graph(identity, _DoublingBackend())]
    result = parity.compare(graphs, SPEC, feeds, [{"logits": feeds[0]["x"]}], [(1, 2)], Tolerances(0.0, 0.1, 0.5))
    onnxrt, doubled = result.rows
    assert (onnxrt.backend, onnxrt.rel_l2_error, onnxrt.polygraphy_passed, onnxrt.passed) == ("onnxrt", 0.0, True, True)
    assert (doubled.backend, doubled.rel_l2_error, doubled.max_abs_error) == ("doubling", 1.0, 2.0)
    assert not doubled.polygraphy_passed and not doubled.passed and result.worst() == doubled
