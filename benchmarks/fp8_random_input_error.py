"""Why mahia-bench's fp8 rel err on `--config` runs is no parity measure: its scales are calibrated on real reviews,
its timed inputs are random, and E4M3 clamps what lies past the calibrated ranges.

    PYTHONPATH=$PWD python3 benchmarks/fp8_random_input_error.py [--config base] [--shape 2x64] [--data REVIEWS]

On the CPU (the reference ops; the FP8 GEMMs through torch._scaled_mm's CPU kernel), random weights (seed 0) and
random full-length inputs (seed 0), as mahia-bench builds them: the bf16 deployment's rel. L2 error against the
eager fp32 model, the fp8 deployment's with scales calibrated as mahia-bench calibrates them (16 real reviews here),
and with the linear layers' scales taken from the timed inputs themselves (their amax / 448; the experts then keep
FP8 weights with bf16 activations, as without calibrated expert ranges). Also the inputs that exceed their
calibrated range the most.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from mahia.bench.cli import calibrated_scales
from mahia.model import build_model, get_config
from mahia.model.inputs import random_inputs
from mahia.runtime.backends.cuda import deployable_module
from mahia.runtime.backends.cuda_fp8 import scales_from_ranges


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def main() -> None:
    """Print the three errors and the five inputs furthest past their calibrated range."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--shape", default="2x64")
    parser.add_argument("--data", default=None, help="reviews parquet file (default: the installed one)")
    args = parser.parse_args()
    config = get_config(args.config)
    model = build_model(config, 0).eval()
    batch, seq = (int(v) for v in args.shape.split("x"))
    inputs = random_inputs(config, batch, seq, torch.Generator().manual_seed(0), full=True)
    amax: dict[str, float] = {}

    def record(path: str) -> object:
        return lambda module, args_: amax.__setitem__(f"{path}:input", float(args_[0].abs().max()))

    hooks = [m.register_forward_pre_hook(record(p)) for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.inference_mode():
        reference = model(**inputs)
    for hook in hooks:
        hook.remove()
    calibrated = calibrated_scales(model, 16, args.data)
    runs = [("bf16", "bf16", None), ("fp8, scales from 16 real reviews", "fp8", calibrated),
            ("fp8, linear layers' scales from the timed inputs", "fp8", scales_from_ranges(amax))]
    print(f"{config.name}, random weights and inputs, {args.shape}, CPU")
    for label, precision, scales in runs:
        with torch.inference_mode():
            out = deployable_module(model, precision, "cpu", scales)[0](**inputs)
        print(f"{label:>50}: rel err {relative_error(out, reference):.3f}")
    over = sorted(((amax[f"{name}:input"] / (scale * 448), name) for name, scale in calibrated.items()
                   if f"{name}:input" in amax), reverse=True)[:5]
    print("inputs furthest past their calibrated amax: " + ", ".join(f"{name} {ratio:.2f}x" for ratio, name in over))


if __name__ == "__main__":
    main()
