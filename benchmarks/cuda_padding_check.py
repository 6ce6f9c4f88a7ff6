"""Where the CUDA deployment's error at one parity point comes from: the bf16 deployable module of an artifact on
the GPU, with the reference ops and with the Triton ops, unpadded and padded to several buckets, and with cuBLAS's
reduced-precision bf16 reductions on and off, each against the eager fp32 model on the CPU.

    python3 benchmarks/cuda_padding_check.py ARTIFACT_DIR [--point 3x37] [--buckets 3x37,4x43,4x48] [--data F]

The point is one of the artifact's parity points, fed the same reviews as in benchmarks/cuda_backend_check.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from cuda_backend_check import review_feeds

from mahia.artifact import read_manifest
from mahia.kernels import use_reference_ops
from mahia.runtime.backends.cuda import deployable_module, rebuild_model
from mahia.runtime.backends.cuda_buckets import pad_inputs

from common import relative_error


def main() -> None:
    """One line per (ops, reduced-precision reductions, bucket)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--point", default="3x37")
    parser.add_argument("--buckets", default="3x37,4x43,4x48")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    manifest = read_manifest(args.artifact)
    model = rebuild_model(args.artifact, manifest)
    point = tuple(int(v) for v in args.point.split("x"))
    points = [tuple(p) for p in manifest.parity["points"]]  # the reviews cuda_backend_check.py feeds this point
    feed = review_feeds(manifest.model.config.vocab_size, points, args.data)[points.index(point)]
    with torch.inference_mode():
        want = model(**feed)
    module, _ = deployable_module(model, "bf16", "cuda")
    cuda_feed = {name: tensor.cuda() for name, tensor in feed.items()}
    print(f"{args.artifact.name} at {args.point}: eager fp32 logits {want.tolist()}")
    matmul = torch.backends.cuda.matmul
    for reduced in (True, False):
        matmul.allow_bf16_reduced_precision_reduction = reduced
        for reference in (True, False):
            for bucket in (tuple(int(v) for v in b.split("x")) for b in args.buckets.split(",")):
                with torch.inference_mode(), use_reference_ops(reference):
                    got = module(**pad_inputs(cuda_feed, *bucket))[:point[0]].float().cpu()
                print(f"{'reference' if reference else 'Triton':9s} ops, reduced-precision bf16 reductions "
                      f"{'on ' if reduced else 'off'}, bucket {bucket[0]} x {bucket[1]}: rel L2 "
                      f"{relative_error(got, want):.2e}  {[[round(v, 4) for v in row] for row in got.tolist()]}")


if __name__ == "__main__":
    main()
