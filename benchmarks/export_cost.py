"""Export cost on CPU: wall time and peak RSS of the whole fp32 `mahia-export` (small, base), then ONNX
Runtime fp32 latency vs eager PyTorch fp32 at batch 1 x 128 and 8 x 512 on the exported artifacts.

    .venv/bin/python benchmarks/export_cost.py [--configs small,base] [--out /tmp/mahia-bench] [--repeats 5]

Each export runs as its own process (os.wait4 gives that process's peak RSS). Latency: median of
--repeats timed runs after one warm-up, same real inputs for both, --threads threads for both
(default 1: on a 2-core machine shared with other jobs, 2-thread OpenMP runs measure contention).
Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import cpu_model, median_seconds

DEFAULT_SHAPES = "1x128,8x512"


def run_export(config: str, out: Path) -> dict:
    """Wall time and peak RSS (MiB) of one export process."""
    exe = Path(sys.executable).parent / "mahia-export"
    start = time.perf_counter()
    pid = os.posix_spawn(str(exe), [str(exe), "--config", config, "--out", str(out), "--json", "--quiet"], os.environ,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, str(out / f"{config}.json"),
                                        os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                                       (os.POSIX_SPAWN_OPEN, 2, str(out / f"{config}.err"),
                                        os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mahia-export --config {config} failed:\n{(out / f'{config}.err').read_text()[-3000:]}")
    summary = json.loads((out / f"{config}.json").read_text())
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "summary": summary}


def measure_latency(artifact_dir: Path, config_name: str, repeats: int, threads: int,
                    shapes: tuple[tuple[int, int], ...]) -> dict:
    """ORT fp32 vs eager fp32 median latency at each shape that fits the model and the exported profile."""
    import onnxruntime as ort

    import mahia.runtime as runtime
    from mahia.data import feeds_at_points
    from mahia.model import build_model, get_config

    deployment = runtime.load(artifact_dir, backend="onnx")  # verifies the files first
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(artifact_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    torch.set_num_threads(threads)
    eager = build_model(get_config(config_name), seed=0).eval()
    dims = deployment.manifest["dims"]
    results = {}
    for batch, seq in shapes:
        if not (dims["batch"]["min"] <= batch <= dims["batch"]["max"]
                and dims["seq"]["min"] <= seq <= dims["seq"]["max"]):
            results[(batch, seq)] = None
            continue
        (feed,) = feeds_at_points(deployment.config, [(batch, seq)])
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

        def run_eager() -> None:
            with torch.inference_mode():
                eager(**tensors)

        ort_s = median_seconds(lambda: session.run(["logits"], feed), repeats)
        eager_s = median_seconds(run_eager, repeats)
        results[(batch, seq)] = {"ort_ms": ort_s * 1e3, "eager_ms": eager_s * 1e3, "speedup": eager_s / ort_s}
    return results


def compare_optimizers(config_name: str, threads: int, repeats: int) -> list[str]:
    """Markdown rows: the same portable graph unoptimised, through the onnxscript optimizer (the pipeline's
    choice), onnxslim (alone and after onnxscript) and ORT offline optimisation; nodes, size, time, latency."""
    import onnx
    import onnxruntime as ort
    import onnxslim

    from mahia.data import feeds_at_points
    from mahia.export import stages
    from mahia.export.config import DimRange
    from mahia.export.flavours import get_flavour
    from mahia.model import ModelSource

    loaded = stages.load_model(ModelSource.from_config(config_name))
    profile = stages.resolve_profile(loaded.config, DimRange("batch", 1, 8, 16), None)
    program = stages.export_program(loaded.model, profile)
    with stages.quiet_exporters():
        raw = torch.onnx.export(program, (), kwargs=stages.example_inputs(loaded.config, profile), dynamo=True,
                                opset_version=21, dynamic_shapes=stages.dynamic_shapes(profile),
                                input_names=list(stages.INPUT_NAMES), output_names=["logits"], optimize=False,
                                custom_translation_table=get_flavour("portable").translations(
                                    stages.lowering_sizes(loaded.config, profile))).model_proto
    del raw.graph.value_info[:]
    start = time.perf_counter()
    optimized = stages.lower_to_onnx(program, loaded.config, profile, 21)
    variants = {"none (optimize=False)": (raw, 0.0),
                "onnxscript optimizer (chosen; export + optimise)": (optimized, time.perf_counter() - start)}
    for name, source in (("onnxslim alone", raw), ("onnxscript then onnxslim", optimized)):
        start = time.perf_counter()
        slim = onnxslim.slim(onnx.load_from_string(source.SerializeToString()))
        del slim.graph.value_info[:]
        variants[name] = (slim, time.perf_counter() - start)
    for level, name in ((ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "onnxscript then ORT offline basic"),
                        (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "onnxscript then ORT offline extended")):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.optimized_model_filepath = f"/tmp/mahia-ort-offline-{int(level)}.onnx"
        start = time.perf_counter()
        ort.InferenceSession(optimized.SerializeToString(), options, providers=["CPUExecutionProvider"])
        variants[name] = (onnx.load(options.optimized_model_filepath), time.perf_counter() - start)
    feeds = feeds_at_points(loaded.config, [(1, 128), (8, min(384, loaded.config.max_seq_len))])
    with torch.inference_mode():
        ref = loaded.model(**{k: torch.from_numpy(v) for k, v in feeds[0].items()}).numpy()
    rows = []
    for name, (model, seconds) in variants.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        domains = ", ".join(sorted({n.domain or "ai.onnx" for n in model.graph.node}))
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            out = session.run(["logits"], feeds[0])[0]
        except Exception as exc:  # a broken graph is a result of this comparison, reported as such
            rows.append(f"| {name} | {len(model.graph.node)} | | {seconds:.1f} | "
                        f"fails in ORT: {str(exc).splitlines()[0][:120]} | | | {domains} |")
            continue
        err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        ms = [median_seconds(lambda f=f: session.run(["logits"], f), repeats) * 1e3 for f in feeds]
        rows.append(f"| {name} | {len(model.graph.node)} | {model.ByteSize() / 1e6:.2f} | {seconds:.1f} | "
                    f"{ms[0]:.1f} | {ms[1]:.1f} | {err:.1e} | {domains} |")
    return rows


def main() -> None:
    """Run the benchmark and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,base")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mahia-export-bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for eager and ORT in the latency runs (the export itself keeps defaults)")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="latency points BATCHxSEQ, comma-separated (outside a config's profile: n/a)")
    parser.add_argument("--optimizers", default=None, metavar="CONFIG",
                        help="only compare ONNX optimisers on this config's graph (no export timing)")
    args = parser.parse_args()
    shapes = tuple(tuple(int(v) for v in point.split("x")) for point in args.shapes.split(","))
    if args.optimizers:
        print(f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/export_cost.py', *sys.argv[1:]])}`  ")
        print(f"Device: {cpu_model()}, {os.cpu_count()} cores, {args.threads} thread(s); "
              f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ")
        print()
        print("| optimiser | nodes | MB | seconds | ORT 1x128 (ms) | ORT 8x384 (ms) | rel L2 err 1x128 | op domains |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(compare_optimizers(args.optimizers, args.threads, args.repeats)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for config in args.configs.split(","):
        export = run_export(config, args.out)
        print(f"{config}: export {export['wall_s']:.1f} s, peak RSS {export['peak_rss_mib']:.0f} MiB", file=sys.stderr)
        lat = measure_latency(Path(export["summary"]["artifact_dir"]), config, args.repeats, args.threads, shapes)
        rows.append((config, export, lat))
    print(f"Command: `{' '.join(['.venv/bin/python', 'benchmarks/export_cost.py', *sys.argv[1:]])}`  ")
    print(f"Device: {cpu_model()}, {os.cpu_count()} cores; latency with {args.threads} thread(s) for both backends; "
          f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}  ")
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at the end "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}  ")
    print()
    header = "| config | export wall (s) | peak RSS (MiB) | stages (s) |"
    header += "".join(f" eager {b}x{s} (ms) | ORT {b}x{s} (ms) | ORT speed-up {b}x{s} |" for b, s in shapes)
    print(header)
    print("|" + "---|" * (4 + 3 * len(shapes)))
    for config, export, lat in rows:
        stages = ", ".join(f"{s['name']} {s['seconds']:.1f}" for s in export["summary"]["stages"]
                           if s["name"] != "package")
        cells = f"| {config} | {export['wall_s']:.1f} | {export['peak_rss_mib']:.0f} | {stages} |"
        for shape in shapes:
            m = lat[shape]
            cells += " n/a (outside profile) | n/a | n/a |" if m is None else \
                f" {m['eager_ms']:.1f} | {m['ort_ms']:.1f} | {m['speedup']:.2f}x |"
        print(cells)


if __name__ == "__main__":
    main()
