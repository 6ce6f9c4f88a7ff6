"""Per-layer sensitivity and mixed precision: quantize one layer at a time, measure the logit error on
calibration samples, then keep the most sensitive layers in float until an accuracy budget is met."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mahia.calibration.data import CalibrationError

# quantize(keep_float_layers, out_path) -> path of a graph with every other layer quantized
QuantizeFn = Callable[[frozenset[str], Path], Path]


@dataclass(frozen=True)
class OutputError:
    """Quantized vs. reference logits over a set of samples."""

    rel_l2_error: float  # ||out - ref|| / ||ref|| over every logit
    argmax_agreement: float  # fraction of samples whose predicted class is unchanged


@dataclass(frozen=True)
class LayerSensitivity:
    """The error when only this layer is quantized."""

    layer: str
    precision: str
    rel_l2_error: float
    argmax_agreement: float


@dataclass(frozen=True)
class MixedPlan:
    """A mixed-precision assignment: each layer's precision, and the error of the whole graph."""

    precisions: dict[str, str]  # layer -> "int8" / "fp8" / "fp32"
    error: OutputError
    budget: float
    steps: tuple[tuple[int, float], ...]  # (layers kept float, rel error) for each graph tried


def run_onnx(path: Path, feeds: Sequence[dict[str, np.ndarray]], threads: int = 0) -> np.ndarray:
    """Concatenated first output of an ONNX graph over the feeds (ONNX Runtime, CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def output_error(out: np.ndarray, reference: np.ndarray) -> OutputError:
    """Relative L2 error and argmax agreement of logits [N, C] against the reference."""
    out, reference = np.asarray(out, np.float64), np.asarray(reference, np.float64)
    rel = float(np.linalg.norm(out - reference) / max(np.linalg.norm(reference), 1e-300))
    return OutputError(rel, float((out.argmax(-1) == reference.argmax(-1)).mean()))


def layer_sensitivity(layers: Sequence[str], precision: str, quantize: QuantizeFn,
                      feeds: Sequence[dict[str, np.ndarray]], reference: np.ndarray) -> list[LayerSensitivity]:
    """Quantize each layer alone (every other one kept float) and measure the output error; most sensitive first."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mahia-sensitivity-") as tmp:
        for index, layer in enumerate(layers):
            path = quantize(frozenset(layers) - {layer}, Path(tmp) / f"layer{index}.onnx")
            error = output_error(run_onnx(path, feeds), reference)
            rows.append(LayerSensitivity(layer, precision, error.rel_l2_error, error.argmax_agreement))
            path.unlink()
    return sorted(rows, key=lambda r: -r.rel_l2_error)


def plan_mixed(sensitivity: Sequence[LayerSensitivity], precision: str, quantize: QuantizeFn,
               feeds: Sequence[dict[str, np.ndarray]], reference: np.ndarray, budget: float,
               float_error: OutputError, workdir: Path) -> tuple[MixedPlan, Path]:
    """Keep the most sensitive layers in float, as few as possible, so the relative error is <= budget.

    Returns the plan and the graph that meets it (a file in `workdir`, where every graph tried is
    written), or raises CalibrationError naming the layers that limit it.
    """
    if budget <= 0:
        raise CalibrationError(f"accuracy budget must be > 0 (a relative logit error), got {budget}")
    if float_error.rel_l2_error > budget:
        raise CalibrationError(f"no mixed assignment can meet accuracy budget {budget:.3g}: the float graph alone "
                               f"has relative error {float_error.rel_l2_error:.3g} against eager")
    order = [row.layer for row in sensitivity]
    tmp = Path(workdir)
    tried: dict[int, tuple[OutputError, Path]] = {}

    def attempt(kept: int) -> OutputError:
        if kept not in tried:
            path = quantize(frozenset(order[:kept]), tmp / f"mixed{kept}.onnx")
            tried[kept] = (output_error(run_onnx(path, feeds), reference), path)
        return tried[kept][0]

    # Bisection on how many of the most sensitive layers stay float (the error falls as more do).
    low, high = 0, len(order) - 1
    if attempt(high).rel_l2_error <= budget:
        while low < high:
            middle = (low + high) // 2
            if attempt(middle).rel_l2_error <= budget:
                high = middle
            else:
                low = middle + 1
        error, path = tried[high]
        plan = {layer: ("fp32" if i < high else precision) for i, layer in enumerate(order)}
        steps = tuple((k, tried[k][0].rel_l2_error) for k in sorted(tried))
        return MixedPlan(plan, error, budget, steps), path
    last = order[-1]
    raise CalibrationError(f"no mixed assignment meets accuracy budget {budget:.3g}: even with only the least "
                           f"sensitive layer {last} quantized the error is "
                           f"{tried[len(order) - 1][0].rel_l2_error:.3g}; the most limiting layers are "
                           + ", ".join(f"{r.layer} ({r.rel_l2_error:.3g} alone)" for r in sensitivity[:3]))


def sensitivity_markdown(rows: Sequence[LayerSensitivity], plan: MixedPlan | None = None) -> str:
    """The sensitivity table (and mixed plan) as Markdown."""
    lines = ["| layer | precision tried | rel. logit error (this layer alone) | argmax agreement |"
             + (" chosen |" if plan else ""), "|---|---|---|---|" + ("---|" if plan else "")]
    for r in rows:
        chosen = f" {plan.precisions[r.layer]} |" if plan else ""
        lines.append(f"| {r.layer} | {r.precision} | {r.rel_l2_error:.3e} | {r.argmax_agreement:.4f} |{chosen}")
    if plan:
        lines.append(f"\nWhole graph: rel. logit error {plan.error.rel_l2_error:.3e} (budget {plan.budget:.3g}), "
                     f"argmax agreement {plan.error.argmax_agreement:.4f}.")
    return "\n".join(lines) + "\n"


def sensitivity_json(rows: Sequence[LayerSensitivity], plan: MixedPlan | None = None) -> dict:
    """JSON-ready form of the sensitivity table and plan."""
    return {"layers": [asdict(r) for r in rows],
            "mixed": None if plan is None else {"precisions": plan.precisions, "error": asdict(plan.error),
                                                "budget": plan.budget, "steps": [list(s) for s in plan.steps]}}


def sensitivity_plot(rows: Sequence[LayerSensitivity], title: str, plan: MixedPlan | None = None) -> bytes:
    """A PNG bar chart of each layer's error when quantized alone (float-kept layers marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.28 * len(rows) + 1.2)))
    names = [r.layer for r in rows][::-1]
    errors = [max(r.rel_l2_error, 1e-12) for r in rows][::-1]
    colors = ["tab:red" if plan and plan.precisions.get(n) == "fp32" else "tab:blue" for n in names]
    ax.barh(names, errors, color=colors)
    ax.set_xscale("log")
    ax.set_xlabel("relative logit error, only this layer quantized")
    ax.set_title(title + (" (red: kept fp32)" if plan else ""), fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
