"""Candidate parity metrics on real exports: which one stays meaningful when a model's logits are near-constant
(untrained) and keeps the trained default's budgets as strict as they are.

For each case (MODEL:PRECISION, MODEL = a config name for its seeded untrained weights, `default` for the
embedded default, or a checkpoint path) it runs `mahia-export` (a failed parity is fine: the `.failed`
directory keeps the graphs), reruns every graph on the saved parity inputs and computes, per shape point,
against the eager reference r and the error e = out - r of the logits [B, C]:

    rel_l2          ||e|| / ||r||                                  (the metric until now)
    centred         the same on row-centred logits (what softmax sees)
    batch_spread    ||e|| / (sqrt(B C) * std of r over the point's rows)       (undefined at B = 1)
    pooled_spread   ||e|| / (sqrt(B C) * std of r over all points' rows)
    head_floor      ||e|| / max(||r||, ||W||_F ||f|| / sqrt(d)): the head's scale, f the eager pooled features
    features        ||df|| / ||f|| of the head's input (per-layer activation against its own scale; ONNX only)

    python benchmarks/parity_metrics.py tiny:fp8 tiny:int4 small:fp8 default:fp8 --out /tmp/parity-metrics
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mahia.default import load_model
from mahia.export.precisions import get_precision
from mahia.model import CONFIGS, ModelSource
from mahia.runtime.backends import get_backend

METRICS = ("rel_l2", "centred", "batch_spread", "pooled_spread", "head_floor", "features")


def source_of(model: str) -> tuple[ModelSource, list[str]]:
    """The model source and mahia-export's arguments for it."""
    if model == "default":
        return ModelSource.embedded_default(), []
    if model in CONFIGS:
        return ModelSource.from_config(model, 0), ["--config", model]
    return ModelSource.from_checkpoint(model), ["--checkpoint", model]


def pooled_features(model: torch.nn.Module, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The eager model's head input (pooled features) [B, d]."""
    captured = {}
    handle = model.head.register_forward_hook(lambda m, args, out: captured.setdefault("f", args[0]))
    try:
        with torch.inference_mode():
            model(**{k: torch.from_numpy(np.asarray(v)) for k, v in feed.items()})
    finally:
        handle.remove()
    return captured["f"].double().numpy()


def onnx_head_input(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The ONNX graph's head input per feed: the first input of the MatMul/Gemm whose output reaches `logits`."""
    graph_model = onnx.load(str(path))
    producers = {out: node for node in graph_model.graph.node for out in node.output}
    frontier, seen = ["logits"], set()
    while frontier:
        name = frontier.pop()
        node = producers.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type in ("MatMul", "Gemm", "MatMulIntegerToFloat", "MatMulNBits"):
            head_input = node.input[0]
            break
        frontier.extend(node.input)
    else:
        raise RuntimeError(f"{path}: no MatMul/Gemm found on the path to logits")
    graph_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(head_input))
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(session.run([head_input], feed)[0], dtype=np.float64) for feed in feeds]


def measure(model_name: str, precision: str, out_dir: Path, eval_rows: int | None) -> list[dict[str, object]]:
    """Export one case and compute every candidate metric at each backend and shape point."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    source, args = source_of(model_name)
    command = [str(Path(sys.executable).parent / "mahia-export"), *args, "--precision", precision,
               "--out", str(out_dir), "--json", "--quiet", *(["--eval-rows", str(eval_rows)] if eval_rows else [])]
    proc = subprocess.run(command, capture_output=True, text=True)
    summary = json.loads(proc.stdout)
    art = Path(summary["artifact_dir"])
    manifest = json.loads((art / "manifest.json").read_text())
    parity_passed = json.loads((art / "parity.json").read_text())["passed"]
    task = manifest["task"]
    feeds = [{k: np.asarray(v) for k, v in feed.items()} for feed in load_json(str(art / "inputs.json"))]
    eager = RunResults.load(str(art / "eager_outputs.json"))[0][1]
    reference = [np.asarray(it["logits"], dtype=np.float64) for it in eager]
    points = [tuple(p) for p in manifest["parity"]["points"]]
    loaded = load_model(source)
    weight = loaded.model.head.weight.detach().double().numpy()
    features = [pooled_features(loaded.model, f) for f in feeds]
    pooled_std = np.concatenate(reference).std(axis=0)
    rows = []
    for fmt, file in manifest["graphs"].items():
        backend = get_backend(fmt)
        runner = backend.load(art / file, manifest["inputs"])
        outs = [np.asarray(runner({k: torch.from_numpy(v) for k, v in f.items()}), dtype=np.float64) for f in feeds]
        graph_features = onnx_head_input(art / file, feeds) if fmt == "onnx" else [None] * len(feeds)
        for (batch, seq), r, out, f, gf in zip(points, reference, outs, features, graph_features):
            e = out - r
            n = np.sqrt(r.size)
            centre = lambda x: x - x.mean(axis=1, keepdims=True)  # noqa: E731
            spread = np.sqrt((r.std(axis=0) ** 2).mean()) if batch > 1 else np.nan
            head_scale = np.linalg.norm(weight) * np.linalg.norm(f) / np.sqrt(weight.shape[1])
            rows.append({
                "case": f"{model_name}:{precision}", "backend": backend.engine, "batch": batch, "seq": seq,
                "ref_norm": float(np.linalg.norm(r)), "max_abs": float(np.abs(e).max()),
                "rel_l2": float(np.linalg.norm(e) / np.linalg.norm(r)),
                "centred": float(np.linalg.norm(centre(e)) / max(np.linalg.norm(centre(r)), 1e-300)),
                "batch_spread": float(np.linalg.norm(e) / (n * spread)) if batch > 1 else None,
                "pooled_spread": float(np.linalg.norm(e) / (n * np.sqrt((pooled_std ** 2).mean()))),
                "head_floor": float(np.linalg.norm(e) / max(np.linalg.norm(r), head_scale)),
                "head_scale": float(head_scale),
                "features": None if gf is None else float(np.linalg.norm(gf - f) / np.linalg.norm(f)),
                "budget": get_precision(precision).max_rel_error, "parity_passed": parity_passed,
                "task": task})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="MODEL:PRECISION (MODEL: a config name, default, or a checkpoint)")
    parser.add_argument("--out", type=Path, default=None, help="artifacts and results.json (default: a temp dir)")
    parser.add_argument("--eval-rows", type=int, default=None, help="task-check rows (default: the whole test split)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="parity-metrics-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases:
        model_name, precision = case.rsplit(":", 1)
        rows += measure(model_name, precision, out / case.replace(":", "-").replace("/", "_"), args.eval_rows)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("| case | backend | B x L | logits norm | max abs | " + " | ".join(METRICS) + " | budget | parity |")
    print("|---|---|---|---|---|" + "---|" * len(METRICS) + "---|---|")
    for r in rows:
        values = " | ".join("n/a" if r[m] is None else f"{r[m]:.2e}" for m in METRICS)
        print(f"| {r['case']} | {r['backend']} | {r['batch']} x {r['seq']} | {r['ref_norm']:.2f} | "
              f"{r['max_abs']:.3f} | {values} | {r['budget']} | {'pass' if r['parity_passed'] else 'FAIL'} |")
    for case in dict.fromkeys(r["case"] for r in rows):
        task = next(r["task"] for r in rows if r["case"] == case)
        if "skipped" not in task:
            print(f"{case} task check: {'passed' if task['passed'] else 'FAILED'} on {task['rows']} rows: accuracy "
                  f"{task['deployed_accuracy']:.4f} vs eager {task['eager_accuracy']:.4f} "
                  f"({-task['accuracy_drop_pt']:+.2f} pt), argmax agreement {task['argmax_agreement']:.4f}")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
