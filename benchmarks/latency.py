"""Latency of exported ONNX graphs against the eager fp32 model on the CPU, each in its own process, interleaved.

    python benchmarks/latency.py ARTIFACT_DIR [ARTIFACT_DIR ...] --shapes 1x128,8x128,8x384 --threads 2

Each ARTIFACT_DIR is one `mahia-export` output; the eager model is the embedded default (or
--checkpoint) and must have the weights every manifest records (sha256). Inputs are real test-split
reviews padded to batch x seq. Each round measures every runner in a fresh process, so that neither
framework's idle threads (torch's OpenMP pool, ONNX Runtime's spinning workers) share the 2 cores with
the other's work; one warm-up then --repeats timed runs per shape; rounds alternate the runners, so a machine
whose speed drifts (a shared VM) slows all of them alike. Prints, per shape, each runner's median over
all runs and its speed-up against eager: the median over rounds of the per-round ratio, with its range.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import run_seconds


def measure(runner: str, checkpoint: Path | None, shapes: list[tuple[int, int]], threads: int,
            repeats: int) -> list[list[float]]:
    """Seconds of each timed run per shape for one runner ("eager" or an artifact directory), in this process."""
    import torch

    from mahia.data import feeds_at_points
    from mahia.export import stages
    from mahia.model import ModelSource

    torch.set_num_threads(threads)
    loaded = stages.load_model(ModelSource.from_checkpoint(checkpoint) if checkpoint
                               else ModelSource.embedded_default())
    feeds = feeds_at_points(loaded.config, shapes)
    if runner == "eager":
        calls = [lambda f={k: torch.from_numpy(v) for k, v in feed.items()}: loaded.model(**f) for feed in feeds]
    else:
        import onnxruntime as ort

        manifest = json.loads((Path(runner) / "manifest.json").read_text())
        if manifest["model"]["weights_sha256"] != loaded.weights_sha256:
            raise SystemExit(f"{runner}: exported from other weights than {loaded.source}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(Path(runner) / manifest["onnx"]["file"]), options,
                                       providers=["CPUExecutionProvider"])
        calls = [lambda f=feed: session.run(None, f) for feed in feeds]
    with torch.inference_mode():
        return [run_seconds(call, repeats) for call in calls]


def main() -> None:
    """Print the latency table (or, with --measure, one runner's JSON for the parent process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact_dirs", type=Path, nargs="*")
    parser.add_argument("--checkpoint", type=Path, default=None, help="eager weights (default: the embedded default)")
    parser.add_argument("--shapes", default="1x128,8x128,8x384", help="comma-separated BATCHxSEQ")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.measure:
        print(json.dumps(measure(args.measure, args.checkpoint, shapes, args.threads, args.repeats)))
        return

    labels = {"eager": "eager fp32"}
    for directory in args.artifact_dirs:
        manifest = json.loads((directory / "manifest.json").read_text())
        labels[str(directory)] = f"ORT {manifest['precision']['name']}"
    runs: dict[str, list[list[list[float]]]] = {r: [] for r in labels}  # runner -> round -> shape -> seconds
    for _ in range(args.rounds):
        for runner in labels:
            command = [sys.executable, __file__, "--measure", runner, "--shapes", args.shapes, "--threads",
                       str(args.threads), "--repeats", str(args.repeats)]
            if args.checkpoint:
                command += ["--checkpoint", str(args.checkpoint)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[runner].append(json.loads(done.stdout.strip().splitlines()[-1]))

    names = list(labels)
    print(f"{args.threads} threads; {args.rounds} rounds x {args.repeats} runs per shape and runner, "
          f"each round a fresh process per runner; "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| batch x seq | " + " | ".join(f"{labels[n]} (ms)" for n in names) + " | "
          + " | ".join(f"{labels[n]} vs eager (range)" for n in names[1:]) + " |")
    print("|---" * (2 * len(names)) + "|")
    for i, (batch, seq) in enumerate(shapes):
        median = {n: 1e3 * statistics.median(t for r in runs[n] for t in r[i]) for n in names}
        cells = []
        for n in names[1:]:
            ratios = [statistics.median(e[i]) / statistics.median(o[i]) for e, o in zip(runs["eager"], runs[n])]
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| {batch} x {seq} | " + " | ".join(f"{median[n]:.1f}" for n in names) + " | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
