"""Where ONNX Runtime spends its time on an exported graph: per op type, from ORT's own profiler.

    python benchmarks/ort_profile.py ARTIFACT_DIR --shape 8x384 --threads 2

Runs the artifact's ONNX graph (the file its manifest names) on real test-split inputs of the given
batch x seq, 10 times after a warm-up, and prints each op type's share of the summed kernel time.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnxruntime as ort

from mahia.data import feeds_at_points
from mahia.model import ModelConfig

RUNS = 10


def main() -> None:
    """Print the per-op-type table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--shape", default="1x128", help="BATCHxSEQ")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    manifest = json.loads((args.artifact_dir / "manifest.json").read_text())
    config = ModelConfig.from_json(json.dumps(manifest["model"]["config"]))
    batch, seq = (int(v) for v in args.shape.split("x"))
    (feed,) = feeds_at_points(config, [(batch, seq)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="mahia-ort-profile-")) / "profile")
    session = ort.InferenceSession(str(args.artifact_dir / manifest["onnx"]["file"]), options,
                                   providers=["CPUExecutionProvider"])
    session.run(["logits"], feed)
    for _ in range(RUNS):
        session.run(["logits"], feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    seconds, count = collections.Counter(), collections.Counter()
    for event in kernels:
        seconds[event["args"]["op_name"]] += event["dur"]
        count[event["args"]["op_name"]] += 1
    total = sum(seconds.values())
    print(f"{manifest['onnx']['file']} at {batch} x {seq}, {args.threads} thread(s): "
          f"{total / (RUNS + 1) / 1000:.1f} ms of kernel time per run (profiler on), "
          f"{sum(count.values()) // (RUNS + 1)} nodes")
    print("| op type | share | ms per run | nodes |")
    print("|---|---|---|---|")
    for op, us in seconds.most_common(args.top):
        print(f"| {op} | {100 * us / total:.1f} % | {us / (RUNS + 1) / 1000:.2f} | {count[op] // (RUNS + 1)} |")


if __name__ == "__main__":
    main()
