"""long_conv's two ONNX lowerings (MatMul DFT, ONNX DFT) against the eager reference on ONNX Runtime (CPU).

    python benchmarks/long_conv_lowering.py --threads 1 --shapes 1x96x133,8x96x389,8x768x517,8x96x1029,1x96x2053

Each shape is batch x channels x length; prints a Markdown row per shape and direction with the median
latency of each and its relative error against the float64 reference. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse

import onnxruntime as ort
import torch
from torch.export import Dim

from mahia.export import onnx_lowering
from mahia.export.stages import quiet_exporters
from mahia.kernels import reference

from common import median_seconds


class LongConv(torch.nn.Module):
    """One mahia::long_conv call, to export on its own."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, x: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        """y = long_conv(x, filt)."""
        return torch.ops.mahia.long_conv(x, filt, self.causal)


def session(lowering, causal: bool, threads: int) -> ort.InferenceSession:
    """An ORT session of one long_conv exported with `lowering`, dynamic in batch, channels and length."""
    length, batch, channels = (Dim("length", min=2, max=4096), Dim("batch", min=1, max=64),
                               Dim("channels", min=2, max=2048))
    args = (torch.randn(2, 4, 17), torch.randn(4, 17 if causal else 33))
    with quiet_exporters():
        program = torch.onnx.export(LongConv(causal), args, dynamo=True, opset_version=onnx_lowering.OPSET,
                                    optimize=True,
                                    custom_translation_table={torch.ops.mahia.long_conv.default: lowering},
                                    dynamic_shapes=({0: batch, 1: channels, 2: length},
                                                    {0: channels, 1: length if causal else 2 * length - 1}))
    model = program.model_proto
    del model.graph.value_info[:]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    """Print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", default="1x96x133,8x96x389,8x768x517,8x96x1029,1x96x2053")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print("| direction | B x D x L | MatMul DFT (ms) | ONNX DFT (ms) | eager torch.fft (ms) | "
          "rel. error MatMul / DFT |")
    print("|---|---|---|---|---|---|")
    for causal in (True, False):
        sessions = {"matmul": session(onnx_lowering.long_conv_matmul, causal, args.threads),
                    "dft": session(onnx_lowering.long_conv_dft, causal, args.threads)}
        for b, d, n in shapes:
            x, filt = torch.randn(b, d, n), torch.randn(d, n if causal else 2 * n - 1)
            want = reference.long_conv(x.double(), filt.double(), causal)
            times, errors = {}, {}
            for name, s in sessions.items():
                feed = {i.name: a.numpy() for i, a in zip(s.get_inputs(), (x, filt))}
                got = torch.from_numpy(s.run(None, feed)[0]).double()
                errors[name] = float((got - want).norm() / want.norm())
                times[name] = median_seconds(lambda: s.run(None, feed), args.repeats) * 1e3
            eager = median_seconds(lambda: reference.long_conv(x, filt, causal), args.repeats) * 1e3
            print(f"| {'causal' if causal else 'two-sided'} | {b} x {d} x {n} | {times['matmul']:.2f} | "
                  f"{times['dft']:.2f} | {eager:.2f} | {errors['matmul']:.1e} / {errors['dft']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
