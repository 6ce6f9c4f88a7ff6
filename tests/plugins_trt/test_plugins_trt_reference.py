"""The per-launch references of the TensorRT plugins (mahia/plugins_trt/<op>.py) against the real entry kernels,
launched under the Triton interpreter exactly as a plugin launches them (launch formula: grid, int32 scalars in
plugin order, constexprs) at small odd shapes, each node on the outputs of the kernels before it; every output
is pre-filled with poison, so the elements each kernel writes must be exactly those its reference writes. Then
each chain of references against the op's own reference in float64."""

from __future__ import annotations

import importlib
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import torch  # noqa: E402

from mahia.kernels.triton import gate_combine as gate_kernel  # noqa: E402
from mahia.kernels.triton.launch import is_interpreted, mma_dtype  # noqa: E402
from mahia.plugins_trt import CHAINS, long_conv, moe_ffn  # noqa: E402
from mahia.plugins_trt.specs import DTYPES, POISON_FLOAT, POISON_INT, launch_formula, walk  # noqa: E402
from mahia.plugins_trt.verify import TOLERANCE, example_inputs, op_reference, run_references, written_rel_error  # noqa: E402

pytestmark = pytest.mark.skipif(not is_interpreted(gate_kernel.gate_combine_kernel),
                                reason="triton was imported without TRITON_INTERPRET=1 in this process; "
                                "tests/test_kernels_triton.py shows how the interpreter suite runs in a subprocess")


def op_case(op: str, dims: dict, dtype: str, a_dtype: str | None = None) -> tuple[dict, dict]:
    """(shapes, dtypes) of an op's inputs from named sizes."""
    B, L, T = dims.get("B"), dims.get("L"), dims.get("T")  # noqa: N806
    if op == "gate_combine":
        shapes = {"branches": (B, L, dims["D"], 3), "logits": (B, L, 3)}
    elif op == "long_conv":
        shapes = {"x": (B, dims["D"], L), "filt": (dims["D"], L if dims["causal"] else 2 * L - 1)}
    elif op == "ssd_scan":
        H, P, N = dims["H"], dims["P"], dims["N"]  # noqa: N806
        shapes = {"x": (B, L, H, P), "dt": (B, L, H), "a": (H,), "b": (B, L, N), "c": (B, L, N)}
    else:
        D, H, E = dims["D"], dims["H"], dims["E"]  # noqa: N806
        shapes = {"x": (T, D), "router_logits": (T, E), "mask": (T,), "w1": (E, 2 * H, D), "w2": (E, D, H)}
        if op == "moe_ffn_fp8":
            shapes |= {"w1_scale": (E, 2 * H), "w2_scale": (E, D)}
    dtypes = {name: dtype for name in shapes} | {"mask": "bool", "w1_scale": "float32", "w2_scale": "float32"}
    if op == "moe_ffn_fp8":
        dtypes |= {"w1": "float8_e4m3fn", "w2": "float8_e4m3fn"}
    if a_dtype:
        dtypes["a"] = a_dtype
    return shapes, {k: v for k, v in dtypes.items() if k in shapes}


CASES = [
    ("gate_combine", {"B": 3, "L": 37, "D": 40}, "float32", {}, {}),
    ("gate_combine", {"B": 1, "L": 5, "D": 300}, "bfloat16", {}, {}),
    *[("long_conv", {"B": 3, "L": 37, "D": 5, "causal": c}, "float32", {"causal": c}, {"LongConv": t})
      for c in (0, 1) for t in range(1, len(long_conv.CONFIGS) + 1)],
    ("long_conv", {"B": 1, "L": 300, "D": 2, "causal": 1}, "float16", {"causal": 1}, {"LongConv": 3}),
    ("ssd_scan", {"B": 2, "L": 37, "H": 2, "P": 16, "N": 16}, "float32", {"chunk": 16}, {}),
    ("ssd_scan", {"B": 1, "L": 150, "H": 2, "P": 24, "N": 16}, "bfloat16", {"chunk": 128}, {}),  # cb blocks 2x2
    ("moe_ffn", {"T": 300, "D": 16, "H": 24, "E": 5}, "float32", moe_ffn.chain_attributes(5, 2, 37), {}),
    ("moe_ffn", {"T": 37, "D": 16, "H": 24, "E": 4}, "bfloat16", moe_ffn.chain_attributes(4, 4, 37), {}),
    ("moe_ffn_fp8", {"T": 37, "D": 32, "H": 16, "E": 4}, "float16", moe_ffn.chain_attributes(4, 2, 37), {}),
]


def launch_interpreted(node, tensors: dict) -> dict[str, torch.Tensor]:
    """Launch a node's entry kernel as the plugin does, outputs pre-filled with poison."""
    spec, formula = node.spec, launch_formula(node.sizes)
    outputs = {out.name: torch.full(shape, POISON_INT if dtype == "int32" else POISON_FLOAT,
                                    dtype=DTYPES[dtype].torch)
               for out, shape, dtype in zip(spec.outputs, node.output_shapes, node.output_dtypes, strict=True)}
    entry = getattr(importlib.import_module(f"mahia.kernels.triton.{formula.module}"), formula.entry)
    constexprs = {k: mma_dtype(v, entry) if k == "MMA" else v for k, v in formula.constexprs}
    args = ([tensors[t.name] for t in spec.inputs] + [value for _, value in formula.scalars]
            + [outputs[o.name] for o in spec.outputs])
    entry[formula.grid](*args, **constexprs, num_warps=formula.num_warps, num_stages=formula.num_stages)
    return outputs


@pytest.mark.parametrize("op, dims, dtype, attrs, tactics", CASES,
                         ids=[f"{c[0]}-{c[2]}-{'-'.join(f'{k}{v}' for k, v in c[1].items())}-{c[4]}" for c in CASES])
def test_each_reference_writes_what_its_kernel_writes(generator, op, dims, dtype, attrs, tactics):
    shapes, dtypes = op_case(op, dims, dtype, "float32" if op == "ssd_scan" and dtype == "bfloat16" else None)
    tensors = example_inputs(op, shapes, dtypes, generator)
    for node in walk(CHAINS[op], shapes, dtypes, attrs, tactics):
        inputs = {t.name: tensors[t.name] for t in node.spec.inputs}
        kernel_out = launch_interpreted(node, inputs)
        ref_out = node.spec.reference(node.sizes, {k: v.double() if v.is_floating_point() else v
                                                   for k, v in inputs.items()})
        for out, out_dtype in zip(node.spec.outputs, node.output_dtypes, strict=True):
            got, want = kernel_out[out.name], ref_out[out.name]
            where = f"{node.spec.name}.{out.name} seed {generator.initial_seed()}"
            assert got.shape == want.shape, where
            if out_dtype == "int32":
                assert torch.equal(got, want.to(torch.int32)), where
            else:
                assert torch.equal(torch.isnan(got.double()), torch.isnan(want.double())), f"{where}: written elements"
                assert written_rel_error(got, want) < TOLERANCE[dtype], where
        tensors.update(kernel_out)
    final = tensors[CHAINS[op].output]
    ref = op_reference(op, {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()
                            if k in CHAINS[op].inputs}, attrs)
    assert written_rel_error(final, ref) < TOLERANCE[dtype], f"seed {generator.initial_seed()}"


@pytest.mark.parametrize("op, dims, attrs", [
    ("gate_combine", {"B": 3, "L": 37, "D": 96}, {}),
    ("long_conv", {"B": 3, "L": 37, "D": 6, "causal": 0}, {"causal": 0}),
    ("long_conv", {"B": 1, "L": 517, "D": 3, "causal": 1}, {"causal": 1}),
    ("ssd_scan", {"B": 3, "L": 37, "H": 4, "P": 24, "N": 16}, {"chunk": 100}),
    ("ssd_scan", {"B": 1, "L": 517, "H": 2, "P": 8, "N": 16}, {"chunk": 256}),
    ("moe_ffn", {"T": 3 * 37, "D": 32, "H": 48, "E": 8}, moe_ffn.chain_attributes(8, 2, 8 * 133)),
    ("moe_ffn", {"T": 300, "D": 16, "H": 8, "E": 8}, moe_ffn.chain_attributes(8, 8, 300)),
    ("moe_ffn_fp8", {"T": 37, "D": 32, "H": 48, "E": 4}, moe_ffn.chain_attributes(4, 1, 37)),
])
def test_chain_of_references_equals_the_op_reference_in_float64(generator, op, dims, attrs):
    shapes, dtypes = op_case(op, dims, "float64")
    inputs = example_inputs(op, shapes, dtypes, generator)
    tensors = run_references(CHAINS[op], inputs, attrs, {"LongConv": 2})
    ref = op_reference(op, inputs, attrs)
    assert tensors[CHAINS[op].output].dtype == torch.float64
    # moe_ffn_fp8's reference dequantizes its weights in float32 (mahia/kernels/reference/moe_ffn_fp8.py).
    bound = 1e-6 if op == "moe_ffn_fp8" else 1e-12
    assert written_rel_error(tensors[CHAINS[op].output], ref) < bound, f"seed {generator.initial_seed()}"
