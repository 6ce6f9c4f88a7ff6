"""Quantized exports on the CPU: calibration-method comparison, accuracy deltas and INT8 latency.

    python benchmarks/quantize.py --config small --calib-samples 512 --eval-samples 256

Per precision/method: relative logit error and argmax agreement against eager fp32 on test-split
reviews, and the accuracy delta (points) against the labels. Prints Markdown; --json writes every
number. Latency of the exported graphs: benchmarks/latency.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from mahia.calibration.awq import awq_scales
from mahia.calibration.data import CalibrationDataConfig, load_calibration_data
from mahia.calibration.onnx_names import parameter_index, quantizable_nodes
from mahia.calibration.quantize import QuantizeOptions, int4_nodes, quantize_int4, quantize_qdq
from mahia.calibration.ranges import collect_ranges
from mahia.calibration.sensitivity import output_error
from mahia.calibration.statistics import METHODS, METHODS_FOR_GRID, MethodConfig
from mahia.calibration.table import build_table
from mahia.data import load_reviews
from mahia.export import stages
from mahia.export.config import DimRange
from mahia.model import build_model, get_config, load_checkpoint

THREADS = 2


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def modelopt_variants(fp32_path: Path, calibration, tmp: Path, nodes: list[str],
                      kept_float: list[str]) -> list[tuple[str, str, Path]]:
    """ModelOpt's ONNX quantizer on our fp32 graph, calibrated on the same reviews (padded to one length).

    It quantizes the MatMul/Gemm nodes ours does (`nodes`; by default it would also quantize the DFT
    MatMuls, Mul, Add, Sigmoid, TopK ...; its int4 path ignores that list, so the nodes ours keeps float
    are excluded as well), with its own methods (int8 entropy or max, fp8 max, int4
    awq_clip); unquantized parts stay float32 (its default converts them to fp16, for TensorRT) and
    calibration runs on ONNX Runtime's CPU provider.
    """
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise SystemExit(f"--modelopt needs NVIDIA ModelOpt ({exc}); install it with: .venv/bin/pip install "
                         "nvidia-modelopt==0.47.0 onnx-graphsurgeon lief cppimport nvidia-ml-py") from None
    batches = calibration.numpy_batches()
    length = max(b["input_ids"].shape[1] for b in batches)
    data = {name: np.concatenate([np.pad(b[name], [(0, 0), (0, length - b[name].shape[1])])
                                  if name in ("input_ids", "attention_mask") else b[name] for b in batches])
            for name in batches[0]}
    batch = batches[0]["input_ids"].shape[0]
    shapes = ",".join(f"{name}:{'x'.join(str(d) for d in (batch, *data[name].shape[1:]))}" for name in data)
    variants = []
    # int4 awq_lite is left out: ModelOpt 0.47.0 without cupy fails in it (int4.py:1330, `ndarray.get`).
    for precision, method, extra in (("int8", "entropy", {}), ("int8", "max", {}), ("fp8", "max", {}),
                                     ("int4", "awq_clip", {"block_size": 128})):
        out = tmp / f"modelopt-{precision}-{method}.onnx"
        quantize(str(fp32_path), quantize_mode=precision, calibration_data=data, calibration_method=method,
                 calibration_shapes=shapes, calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=str(out),
                 nodes_to_quantize=nodes, nodes_to_exclude=kept_float, log_level="WARNING", **extra)
        variants.append((precision, f"ModelOpt {method}", out))
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small")
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained weights (default: seeded, untrained)")
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--eval-samples", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--modelopt", action="store_true",
                        help="add NVIDIA ModelOpt's ONNX quantizer (int8 entropy/max, fp8 max, int4 awq_clip) "
                             "on the same graph and calibration reviews")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        label = f"checkpoint {args.checkpoint}"
    else:
        model = build_model(get_config(args.config), seed=0).eval()
        label = f"{args.config}, seed 0, untrained"
    config = model.config
    splits = load_reviews()
    tmp = Path(tempfile.mkdtemp(prefix="mahia-bench-quantize-"))
    profile = stages.resolve_profile(config, DimRange("batch", 1, 8, 16), None)
    fp32_path = tmp / "model.onnx"
    onnx.save(stages.lower_to_onnx(stages.export_program(model, profile), config, profile, 21), str(fp32_path))
    graph = onnx.load(str(fp32_path))

    start = time.perf_counter()
    calibration = load_calibration_data(config, CalibrationDataConfig(args.calib_samples), dataset=splits["train"])
    ranges = collect_ranges(model, calibration, METHODS)
    collect_seconds = time.perf_counter() - start
    nodes = quantizable_nodes(graph, ranges.names(), parameter_index(model))

    evaluation = load_calibration_data(config, CalibrationDataConfig(args.eval_samples, split="test", seed=1),
                                       dataset=splits["test"])
    feeds = evaluation.numpy_batches()
    with torch.inference_mode():
        reference = np.concatenate([model(**b).numpy() for b in evaluation.batches])
    labels = evaluation.labels.numpy()
    eager_accuracy = float((reference.argmax(-1) == labels).mean())

    variants: list[tuple[str, str, Path]] = []
    for precision, grid in (("int8", "int8"), ("fp8", "fp8")):
        for method in METHODS_FOR_GRID[grid]:
            table = build_table(ranges, nodes, MethodConfig(method, grid=grid), include_eager=False)
            path = quantize_qdq(fp32_path, table, tmp / f"{precision}-{method}.onnx", QuantizeOptions(precision))
            variants.append((precision, method, path))
    int4_targets = int4_nodes(graph, parameter_index(model))
    for block in (32, 64, 128):
        variants.append(("int4", f"rtn, block {block}", quantize_int4(fp32_path, tmp / f"int4-{block}.onnx", block,
                                                                    parameter_index(model))))
        scales = awq_scales(graph, int4_targets, calibration.numpy_batches(), block)
        variants.append(("int4", f"awq, block {block}", quantize_int4(fp32_path, tmp / f"int4-awq-{block}.onnx", block,
                                                                    parameter_index(model), awq=scales)))
    if args.modelopt:
        candidates = quantizable_nodes(graph, parameters=parameter_index(model))
        variants += modelopt_variants(fp32_path, calibration, tmp, [n.node for n in candidates if not n.keep_float],
                                      [n.node for n in candidates if n.keep_float])
    rows = []
    for precision, method, path in variants:
        try:
            sess = session(path)
            out = np.concatenate([sess.run(None, f)[0] for f in feeds])
        except Exception as exc:  # a quantizer's graph ONNX Runtime cannot run is a result, not a crash
            rows.append({"precision": precision, "method": method, "failed": str(exc).splitlines()[0][:300]})
            continue
        error = output_error(out, reference)
        accuracy = float((out.argmax(-1) == labels).mean())
        rows.append({"precision": precision, "method": method, "rel_l2_error": error.rel_l2_error,
                     "argmax_agreement": error.argmax_agreement, "accuracy": accuracy,
                     "accuracy_delta_pt": 100 * (accuracy - eager_accuracy)})

    result = {"model": label, "config": config.name, "calib_samples": calibration.samples,
              "calib_hash": calibration.content_hash, "eval_samples": evaluation.samples,
              "eager_accuracy": eager_accuracy, "collect_seconds": collect_seconds,
              "threads": THREADS, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
              "date_utc": time.strftime("%Y-%m-%d", time.gmtime()), "accuracy": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Model: {label}; calibration {calibration.samples} train samples (hash {calibration.content_hash[:12]}), "
          f"ranges collected in {collect_seconds:.1f} s; evaluation {evaluation.samples} test samples, "
          f"eager accuracy {100 * eager_accuracy:.2f} %\n")
    print("| precision | method | rel. logit error | argmax agreement | accuracy delta (pt) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['precision']} | {r['method']} | fails in ONNX Runtime: {r['failed']} | | |")
        else:
            print(f"| {r['precision']} | {r['method']} | {r['rel_l2_error']:.3e} | {r['argmax_agreement']:.4f} | "
                  f"{r['accuracy_delta_pt']:+.2f} |")


if __name__ == "__main__":
    main()
