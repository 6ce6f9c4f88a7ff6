"""Alternative ONNX spellings of the same computation, timed on ONNX Runtime (CPU): why the lowerings read as they do.

    python benchmarks/ort_patterns.py --threads 2

Each pair computes the same tensor (checked bit for bit) at the shape it has in `small` at 8 x 384
(389 tokens with the tabular ones): the gate's weighted sum of 3 branches, the SSD causal mask, the
long convolution's even/odd split of its input and the interleaving of its even/odd outputs. Prints
the median latency of each spelling as Markdown.
"""

import argparse

import numpy as np
import onnxruntime as ort
from onnxscript import BOOL, FLOAT, script
from onnxscript import opset21 as op

from common import median_seconds

B, L, D, HEADS, CHUNKS, CHUNK = 8, 389, 96, 4, 7, 64


@script()
def gate_mul_reducesum(b: FLOAT[B, L, D, 3], w: FLOAT[B, L, 3]) -> FLOAT[B, L, D]:
    return op.ReduceSum(op.Mul(b, op.Unsqueeze(w, [-2])), [-1], keepdims=0)


@script()
def gate_batched_matmul(b: FLOAT[B, L, D, 3], w: FLOAT[B, L, 3]) -> FLOAT[B, L, D]:
    return op.Squeeze(op.MatMul(b, op.Unsqueeze(w, [-1])), [-1])


@script()
def mask_where(d: FLOAT[B, HEADS, CHUNKS, CHUNK, CHUNK],
               m: BOOL[CHUNK, CHUNK]) -> FLOAT[B, HEADS, CHUNKS, CHUNK, CHUNK]:
    return op.Exp(op.Where(m, d, op.Constant(value_float=-float("inf"))))


@script()
def mask_add(d: FLOAT[B, HEADS, CHUNKS, CHUNK, CHUNK], m: BOOL[CHUNK, CHUNK]) -> FLOAT[B, HEADS, CHUNKS, CHUNK, CHUNK]:
    additive = op.Where(m, op.Constant(value_float=0.0), op.Constant(value_float=-float("inf")))
    return op.Exp(op.Add(d, additive))


@script()
def split_strided_slices(x: FLOAT[B, D, L]) -> (FLOAT[B, D, 195], FLOAT[B, D, 195]):
    padded = op.Pad(x, [0, 0, 0, 0, 0, 1])
    return op.Slice(padded, [0], [390], [2], [2]), op.Slice(padded, [1], [390], [2], [2])


@script()
def split_pairs(x: FLOAT[B, D, L]) -> (FLOAT[B, D, 195], FLOAT[B, D, 195]):
    even, odd = op.Split(op.Reshape(op.Pad(x, [0, 0, 0, 0, 0, 1]), [8, 96, -1, 2]), axis=-1, num_outputs=2)
    return op.Squeeze(even, [-1]), op.Squeeze(odd, [-1])


@script()
def interleave_transpose(even: FLOAT[B, D, 195], odd: FLOAT[B, D, 195]) -> FLOAT[B, D, 390]:
    stacked = op.Concat(op.Unsqueeze(even, [0]), op.Unsqueeze(odd, [0]), axis=0)
    return op.Reshape(op.Transpose(stacked, perm=[1, 2, 3, 0]), [8, 96, -1])


@script()
def interleave_concat(even: FLOAT[B, D, 195], odd: FLOAT[B, D, 195]) -> FLOAT[B, D, 390]:
    return op.Reshape(op.Concat(op.Unsqueeze(even, [-1]), op.Unsqueeze(odd, [-1]), axis=-1), [8, 96, -1])


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    causal = np.tril(np.ones((CHUNK, CHUNK), bool))
    x = rng.standard_normal((B, D, L))
    gate = {"b": rng.standard_normal((B, L, D, 3)), "w": rng.random((B, L, 3))}
    mask = {"d": rng.standard_normal((B, HEADS, CHUNKS, CHUNK, CHUNK)), "m": causal}
    even, odd = rng.standard_normal((2, B, D, 195))
    pairs = [  # (what, [(spelling, its feed), (spelling, its feed)])
        ("gate: weighted sum of 3 branches", [(gate_mul_reducesum, gate), (gate_batched_matmul, gate)]),
        ("SSD causal mask, then Exp", [(mask_where, mask), (mask_add, mask)]),
        ("long_conv input: even / odd samples", [(split_strided_slices, {"x": x}), (split_pairs, {"x": x})]),
        ("long_conv output: interleave even / odd", [(interleave_transpose, {"even": even, "odd": odd}),
                                                      (interleave_concat, {"even": even, "odd": odd})]),
    ]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(f"| computation ({args.threads} threads) | spelling | ms | spelling | ms |")
    print("|---|---|---|---|---|")
    for title, spellings in pairs:
        cells, outputs = [], []
        for function, feed in spellings:
            feed = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feed.items()}
            session = ort.InferenceSession(function.to_model_proto().SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            outputs.append(session.run(None, feed))
            cells.append(f"{function.name} | {1e3 * median_seconds(lambda: session.run(None, feed), args.repeats):.3f}")
        if not all(np.array_equal(a, b) for a, b in zip(*outputs)):
            raise SystemExit(f"{title}: the two spellings disagree")
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
