"""Latency of exported ONNX graphs against the eager fp32 model on the CPU, measured interleaved.

    python benchmarks/latency.py ARTIFACT_DIR [ARTIFACT_DIR ...] --shapes 1x128,8x128,8x384 --threads 2

Each ARTIFACT_DIR is one `mahia-export` output; the eager model is the embedded default (or
--checkpoint) and must have the weights every manifest records (sha256). Inputs are real test-split
reviews padded to batch x seq. Every round runs each runner at each shape (one warm-up, then --repeats
timed runs), so a machine whose speed drifts (a shared VM) slows all runners alike rather than whichever
ran last. Prints the median of each runner and its speed-up against eager as Markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from mahia.export import stages
from mahia.export.config import ModelSource
from mahia.export.parity import real_samples


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads and no inter-op parallelism."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    """Print the latency table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact_dirs", type=Path, nargs="+")
    parser.add_argument("--checkpoint", type=Path, default=None, help="eager weights (default: the embedded default)")
    parser.add_argument("--shapes", default="1x128,8x128,8x384", help="comma-separated BATCHxSEQ")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = stages.load_model(ModelSource(checkpoint=args.checkpoint))
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    feeds = real_samples(loaded.config, shapes)
    runners: dict[str, list[Callable[[], object]]] = {
        "eager fp32": [lambda f={k: torch.from_numpy(v) for k, v in feed.items()}: loaded.model(**f) for feed in feeds]}
    for directory in args.artifact_dirs:
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest["model"]["weights_sha256"] != loaded.weights_sha256:
            raise SystemExit(f"{directory}: exported from other weights than {loaded.source} "
                             f"(sha256 {manifest['model']['weights_sha256'][:12]} vs {loaded.weights_sha256[:12]})")
        session = ort_session(directory / manifest["onnx"]["file"], args.threads)
        runners[f"ORT {manifest['precision']['name']}"] = [lambda s=session, f=feed: s.run(None, f) for feed in feeds]

    seconds: dict[tuple[str, int], list[float]] = {(name, i): [] for name in runners for i in range(len(shapes))}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, calls in runners.items():
                for i, call in enumerate(calls):
                    call()
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        call()
                        seconds[name, i].append(time.perf_counter() - start)

    names = list(runners)
    print(f"{loaded.label}; {args.threads} threads; {args.rounds} rounds x {args.repeats} runs per shape; "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| batch x seq | " + " | ".join(f"{n} (ms)" for n in names) + " | "
          + " | ".join(f"{n} vs eager" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    for i, (batch, seq) in enumerate(shapes):
        median = {n: 1e3 * statistics.median(seconds[n, i]) for n in names}
        print(f"| {batch} x {seq} | " + " | ".join(f"{median[n]:.1f}" for n in names) + " | "
              + " | ".join(f"{median['eager fp32'] / median[n]:.2f}x" for n in names[1:]) + " |")


if __name__ == "__main__":
    main()
