"""Where the CUDA deployment's bf16 error at one parity point comes from, against the eager fp32 model on the CPU:

1. the bf16 deployable module on the GPU with the reference ops and with the Triton ops, unpadded and padded to
   several buckets, with cuBLAS's reduced-precision bf16 reductions on and off;
2. per module, the rel. error of its output in the bf16 module on the CPU and on the GPU (reference ops), the
   modules where the GPU's is over twice the CPU's and over 5e-3.

    python3 benchmarks/cuda_bf16_error.py ARTIFACT_DIR [--point 3x37] [--buckets 3x37,4x43,4x48] [--data F]

The point is one of the artifact's parity points, fed the same reviews as in benchmarks/cuda_backend_check.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from cuda_backend_check import review_feeds
from torch import nn

from mahia.artifact import read_manifest
from mahia.kernels import use_reference_ops
from mahia.runtime.backends.cuda import deployable_module, rebuild_model
from mahia.runtime.backends.cuda_buckets import pad_inputs

from common import relative_error


def module_outputs(module: nn.Module, feed: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """{module path: its (first) floating output, float64 on the CPU} of one reference-ops forward."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(path: str, output: object) -> None:
        tensor = output[0] if isinstance(output, tuple) else output
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            outputs[path] = tensor.detach().double().cpu()

    hooks = [sub.register_forward_hook(lambda _m, _i, out, path=path: keep(path, out))
             for path, sub in module.named_modules()]
    with torch.inference_mode(), use_reference_ops(True):
        module(**{name: tensor.to(device) for name, tensor in feed.items()})
    for hook in hooks:
        hook.remove()
    return outputs


def main() -> None:
    """Part 1: one line per (ops, reduced-precision reductions, bucket); part 2: one line per diverging module."""
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
    matmul.allow_bf16_reduced_precision_reduction = True
    fp32 = module_outputs(model, feed, "cpu")
    cpu = module_outputs(deployable_module(model, "bf16", "cpu")[0], feed, "cpu")
    gpu = module_outputs(module, feed, "cuda")
    print("\nmodule | CPU bf16 | GPU bf16  (rel. error of its output against fp32; GPU > 2x CPU and > 5e-3)")
    for path, reference in fp32.items():
        if path in cpu and path in gpu and cpu[path].shape == gpu[path].shape == reference.shape:
            on_cpu, on_gpu = relative_error(cpu[path], reference), relative_error(gpu[path], reference)
            if on_gpu > max(2 * on_cpu, 5e-3):
                print(f"{path or '(model)'} | {on_cpu:.2e} | {on_gpu:.2e}")


if __name__ == "__main__":
    main()
