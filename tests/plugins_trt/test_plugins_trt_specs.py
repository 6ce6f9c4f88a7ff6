"""TensorRT plugin specs (mahia/plugins_trt/): their launch formulas are the launch plans' own launches in plugin
order, at many concrete shapes (plan() is the ground truth); the formulas are branch-free in the dynamic sizes
and use only what TensorRT's shape expressions offer (sympy evaluator); the declared shapes hold the plans'
buffers; the nodes carry their attributes in registration order."""

from __future__ import annotations

import inspect
import math

import onnx
import pytest
import torch

from mahia.kernels.triton import moe_ffn as moe_kernel
from mahia.model import CONFIGS as MODEL_CONFIGS
from mahia.plugins_trt import CHAINS, PLUGINS, long_conv, moe_ffn
from mahia.plugins_trt.nodes import chain_nodes
from mahia.plugins_trt.sizes import Expr, symbolic
from mahia.plugins_trt.specs import DTYPES as SPEC_DTYPES
from mahia.plugins_trt.specs import FLOAT, allowed_dtypes, bind, launch_formula, node_attributes, output_dtypes, walk

BATCHES = (1, 3, 8, 16)
LENGTHS = (1, 6, 37, 42, 128, 133, 517)  # the profile's text lengths 1, 37, 128, 512 plus the 5 tabular tokens
DTYPES = ("float32", "float16", "bfloat16")
MODELS = [MODEL_CONFIGS[name] for name in ("tiny", "small", "base")]
# Declared larger than the plan's buffer on purpose (mahia/plugins_trt/moe_ffn.py's docstring): output -> why.
WIDENED = {"valid": "carries T to MoePlan", "sorted_ids": "linear in T for MoeDown", "act": "rows of sorted_ids"}


def op_inputs(op: str, cfg, batch: int, length: int, dtype: str) -> tuple[dict, dict]:
    """(shapes, dtypes) of an op's tensor inputs for a model config at batch x length."""
    tokens = batch * length
    d, h, e = cfg.d_model, cfg.expert_hidden, cfg.num_experts
    if op == "gate_combine":
        shapes = {"branches": (batch, length, d, 3), "logits": (batch, length, 3)}
    elif op == "long_conv":
        shapes = {"x": (batch, d, length), "filt": (d, length)}
    elif op == "ssd_scan":
        heads, p, n = cfg.ssm_heads, cfg.ssm_head_dim, cfg.d_state
        shapes = {"x": (batch, length, heads, p), "dt": (batch, length, heads), "a": (heads,),
                  "b": (batch, length, n), "c": (batch, length, n)}
    else:
        shapes = {"x": (tokens, d), "router_logits": (tokens, e), "mask": (tokens,), "w1": (e, 2 * h, d),
                  "w2": (e, d, h)}
    dtypes = {name: dtype for name in shapes} | {"mask": "bool"}
    if op == "moe_ffn_fp8":
        shapes.update(w1_scale=(e, 2 * h), w2_scale=(e, d))
        dtypes.update(w1="float8_e4m3fn", w2="float8_e4m3fn", w1_scale="float32", w2_scale="float32")
    return shapes, dtypes


def cases():
    """(chain, shapes, dtypes, attributes, tactics) over batches, lengths, model sizes, dtypes and attributes."""
    for cfg in MODELS:
        for batch in BATCHES:
            for length in LENGTHS:
                dtype = DTYPES[(batch + length) % 3]
                yield CHAINS["gate_combine"], *op_inputs("gate_combine", cfg, batch, length, dtype), {}, {}
                for causal in (0, 1):
                    shapes, dtypes = op_inputs("long_conv", cfg, batch, length, dtype)
                    if not causal:
                        shapes["filt"] = (cfg.d_model, 2 * length - 1)
                    for tactic in range(1, len(long_conv.CONFIGS) + 1):
                        yield CHAINS["long_conv"], shapes, dtypes, {"causal": causal}, {"LongConv": tactic}
                for chunk in (cfg.chunk_size, 100):  # 100: not a power of two, the kernels use 64
                    shapes, dtypes = op_inputs("ssd_scan", cfg, batch, length, dtype)
                    for a_dtype in {dtype, "float32"}:
                        yield CHAINS["ssd_scan"], shapes, dtypes | {"a": a_dtype}, {"chunk": chunk}, {}
                for top_k in (1, cfg.top_k, cfg.num_experts):
                    for config in range(len(moe_kernel.CONFIGS)):
                        attrs = {"top_k": top_k, "block_m": moe_kernel.CONFIGS[config][1]["BLOCK_M"],
                                 "config": config, "num_experts": cfg.num_experts}
                        yield CHAINS["moe_ffn"], *op_inputs("moe_ffn", cfg, batch, length, dtype), attrs, {}
                        if dtype != "float32":
                            yield CHAINS["moe_ffn_fp8"], *op_inputs("moe_ffn_fp8", cfg, batch, length, dtype), attrs, {}


def formula_args(spec, formula) -> list[tuple[str, object]]:
    """The formula's arguments in plugin order: (parameter, buffer name) pointers and (name, value) scalars."""
    return ([(t.param, t.name) for t in spec.inputs] + [(name, value) for name, value in formula.scalars]
            + [(o.param, o.name) for o in spec.outputs])


def plan_args(launch) -> list[tuple[str, object]]:
    return [(a.name, a.buffer if a.is_pointer else a.value) for a in launch.args]


@pytest.fixture
def three_kernel_routing(monkeypatch):
    """plan() with the parallel routing at every token count, as TensorRT runs it."""
    monkeypatch.setattr(moe_kernel, "ONE_PROGRAM_ROUTING", 0)


def test_launch_formulas_equal_the_plans_launches_in_plugin_order(three_kernel_routing):
    checked: dict[str, int] = {}
    for chain, shapes, dtypes, attrs, tactics in cases():
        for node in walk(chain, shapes, dtypes, attrs, tactics):
            spec, sizes = node.spec, node.sizes
            inputs = dict(zip((t.name for t in spec.inputs), node.input_shapes, strict=True))
            where = f"{spec.name} at {inputs} {attrs} {tactics}"
            plan = spec.plan(sizes)
            [step] = [s.plugin_order() for s in plan.launches if s.kernel == spec.kernel]
            formula = launch_formula(sizes)
            assert (formula.module, formula.entry) == (step.module, step.kernel), where
            assert formula.grid == step.grid, where
            assert formula.block == step.block and formula.num_stages == step.num_stages, where
            assert formula.constexprs == step.constexprs, where
            assert formula_args(spec, formula) == plan_args(step), where
            for tensor, shape, dtype in zip([*spec.inputs, *spec.outputs], [*node.input_shapes, *node.output_shapes],
                                            [*node.input_dtypes, *node.output_dtypes], strict=True):
                buffer = plan.buffer(tensor.name)
                assert buffer.dtype == getattr(torch, dtype), f"{where}: {tensor.name}"
                if tensor.name not in WIDENED:
                    assert math.prod(shape) == buffer.numel, f"{where}: {tensor.name} {shape} vs {buffer.numel}"
                else:
                    assert buffer.numel <= math.prod(shape), f"{where}: {tensor.name} {shape} vs {buffer.numel}"
            checked[spec.name] = checked.get(spec.name, 0) + 1
    assert set(checked) == set(PLUGINS)
    assert min(checked.values()) >= 80, checked


def test_moe_declared_rows_bound_the_plans_rows_and_give_back_max_blocks(three_kernel_routing):
    for tokens in (1, 37, 255, 256, 257, 4136):
        for num_experts, top_k in ((4, 2), (8, 2), (8, 8), (5, 1)):
            for _, cfg in moe_kernel.CONFIGS:
                block_m = cfg["BLOCK_M"]
                plan = moe_kernel.plan(tokens, 16, 16, num_experts, top_k, 0.0, torch.float32, config=cfg)
                rows = tokens * top_k + (num_experts + 1) * (block_m - 1)
                max_rows = plan.buffer("sorted_ids").numel
                assert rows - block_m < max_rows <= rows
                assert rows // block_m == plan.buffer("block_expert").numel


def test_formulas_are_branch_free_in_the_dynamic_sizes(three_kernel_routing):
    """Evaluated on sympy symbols for the dynamic sizes (B, L, T), every formula yields an expression, never a
    branch (Expr refuses bool, comparisons, reflected operators, % and / as TensorRT's ShapeExpr does), and the
    expression equals the int evaluation at concrete sizes."""
    alg, sym = symbolic()
    batch, length, tokens = sym("B"), sym("L"), sym("T")
    checked = set()
    for cfg in MODELS:
        for dtype in DTYPES:
            for chain, attrs, tactics in symbolic_chains(cfg):
                shapes, dtypes = op_inputs(chain.op, cfg, 1, 1, "float16" if "fp8" in chain.op else dtype)
                dynamic = {"B": batch, "L": length, "T": tokens}
                shapes = {name: tuple(dynamic.get(dim, value) for dim, value in zip(symbolic_dims(chain.op, name),
                                                                                   shape, strict=False))
                          for name, shape in shapes.items()}
                if chain.op == "long_conv" and not attrs["causal"]:
                    shapes["filt"] = (cfg.d_model, length * 2 - 1)
                nodes = walk(chain, shapes, dtypes, attrs, tactics, alg)
                for b, l in ((1, 1), (3, 37), (16, 517)):
                    values = {"B": b, "L": l, "T": b * l}
                    ints = {name: tuple(concrete(v, values) for v in shape) for name, shape in shapes.items()}
                    for node, int_node in zip(nodes, walk(chain, ints, dtypes, attrs, tactics), strict=True):
                        formula, int_formula = launch_formula(node.sizes, alg), launch_formula(int_node.sizes)
                        assert [concrete(g, values) for g in formula.grid] == list(int_formula.grid), node.spec.name
                        assert [(n, concrete(v, values)) for n, v in formula.scalars] == list(int_formula.scalars)
                        assert [tuple(concrete(v, values) for v in shape) for shape in node.output_shapes] == [
                            tuple(s) for s in int_node.output_shapes], node.spec.name
                        checked.add(node.spec.name)
    assert checked == set(PLUGINS)


def symbolic_chains(cfg):
    yield CHAINS["gate_combine"], {}, {}
    for causal in (0, 1):
        for tactic in range(1, len(long_conv.CONFIGS) + 1):
            yield CHAINS["long_conv"], {"causal": causal}, {"LongConv": tactic}
    yield CHAINS["ssd_scan"], {"chunk": cfg.chunk_size}, {}
    for config in range(len(moe_kernel.CONFIGS)):
        attrs = {"top_k": cfg.top_k, "block_m": moe_kernel.CONFIGS[config][1]["BLOCK_M"], "config": config,
                 "num_experts": cfg.num_experts}
        yield CHAINS["moe_ffn"], attrs, {}
        yield CHAINS["moe_ffn_fp8"], attrs, {}


def symbolic_dims(op: str, name: str) -> tuple[str, ...]:
    """Which positions of an op input are the dynamic B, L or T (others static; at least the input's rank)."""
    if op == "gate_combine":
        return ("B", "L", "-", "-")
    if op == "long_conv":
        return ("B", "-", "L") if name == "x" else ("-", "L")
    if op == "ssd_scan":
        return ("-",) if name == "a" else ("B", "L", "-", "-")
    return ("T", "-", "-") if name in ("x", "router_logits", "mask") else ("-", "-", "-")


def concrete(value, values: dict) -> int:
    """An int or Expr evaluated at concrete B, L, T."""
    if isinstance(value, Expr):
        result = value.node.subs({s: values[s.name] for s in value.node.free_symbols})
        assert result.is_Integer, result
        return int(result)
    return value


def test_expr_refuses_what_tensorrt_shape_expressions_refuse():
    alg, sym = symbolic()
    n = sym("n")
    for bad in (lambda: 4 * n, lambda: 1 + n, lambda: n % 3, lambda: n / 2, lambda: bool(n), lambda: n < 3,
                lambda: max(n, 16), lambda: sum([n]), lambda: range(n)):
        with pytest.raises(TypeError):
            bad()
    assert concrete(alg.cdiv(n * 3 - 1, 4), {"n": 5}) == 4
    assert concrete(alg.max(n, 16), {"n": 5}) == 16 and alg.max(3, 16) == 16


def test_every_spec_matches_its_entry_kernels_signature():
    """Pointer parameters are the entry kernel's (inputs, then outputs, around its int32 scalars), in order."""
    import importlib

    for spec in PLUGINS.values():
        chain = next(c for c in CHAINS.values() if spec in c.plugins)
        shapes, dtypes = op_inputs(chain.op, MODEL_CONFIGS["tiny"], 2, 37,
                                   "float16" if chain.op == "moe_ffn_fp8" else "float32")
        attrs = moe_ffn.chain_attributes(4, 2, 74) | {"causal": 1, "chunk": 16}
        node = next(n for n in walk(chain, shapes, dtypes, attrs) if n.spec is spec)
        formula = launch_formula(node.sizes)
        entry = getattr(importlib.import_module(f"mahia.kernels.triton.{formula.module}"), formula.entry)
        params = [p for p, v in inspect.signature(entry.fn).parameters.items() if "constexpr" not in str(v.annotation)]
        assert params == [name for name, _ in formula_args(spec, formula)], spec.name


def test_names_attributes_and_dtype_rules():
    for name, spec in PLUGINS.items():
        assert name[0].isupper() and name.isalnum() and not name.startswith("TRT")
        assert not onnx.defs.has(name), f"{name} is an ONNX op name: TensorRT's parser would take the builtin"
        assert not set(spec.attrs) & {"outputs", "stream", "tactic", "plugin_namespace", "plugin_version", "aot"}
        names = [t.name for t in spec.inputs] + [o.name for o in spec.outputs]
        assert len(names) == len(set(names)) and not set(names) & set(spec.attrs), name
        assert all(o.dtype == FLOAT for o in spec.outputs if o.dtype not in ("float32", "int32")), name
    assert {name: d.onnx for name, d in SPEC_DTYPES.items()} == {
        "float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16,
        "float8_e4m3fn": onnx.TensorProto.FLOAT8E4M3FN, "int32": onnx.TensorProto.INT32, "bool": onnx.TensorProto.BOOL}
    spec = PLUGINS["SsdChunkStates"]
    assert output_dtypes(spec, ["bfloat16", "bfloat16", "float32", "bfloat16"]) == ["float32"]
    with pytest.raises(ValueError, match="input dt is float16, expected bfloat16"):
        output_dtypes(spec, ["bfloat16", "float16", "float32", "bfloat16"])
    assert allowed_dtypes(spec, 0, []) == ("float32", "float16", "bfloat16")
    assert allowed_dtypes(spec, 2, ["float16", "float16"]) == ("float16", "float32")
    assert allowed_dtypes(spec, 4, ["float16"] * 4) == ("float32",)
    assert allowed_dtypes(PLUGINS["MoeCombine"], 3, ["bfloat16", "float32", "int32"]) == ("bfloat16",)


def test_bind_names_the_input_whose_shape_disagrees_with_the_attributes():
    spec = PLUGINS["MoeCombine"]
    with pytest.raises(ValueError, match=r"MoeCombine: input weights has shape \[37, 2\], expected \[T, top_k\]"):
        bind(spec, [(37, 16), (37, 2), (37, 2)], {"top_k": 1}, ["float32", "float32", "int32"])
    with pytest.raises(ValueError, match="block_m=16 but tile config 1 has BLOCK_M 64"):
        bind(PLUGINS["MoeUp"], [(5, 8), (4, 12, 8), (5 * 2 + 5 * 15,), (5,)],
             {"top_k": 2, "block_m": 16, "config": 1}, ["float32", "float32", "int32", "int32"])
    with pytest.raises(ValueError, match="LongConv: input filt has shape"):
        bind(PLUGINS["LongConv"], [(2, 3, 7), (3, 7)], {"causal": 0}, ["float32", "float32"], tactic=1)


def test_chain_nodes_wire_by_name_with_attributes_in_registration_order():
    chain = CHAINS["moe_ffn"]
    attrs = moe_ffn.chain_attributes(num_experts=8, top_k=2, opt_tokens=8 * 133)
    assert attrs == {"top_k": 2, "block_m": 64, "config": 1, "num_experts": 8}
    nodes = chain_nodes(chain, ["h", "logits", "m", "W1", "W2"], "out", attrs, "layer0/moe")
    assert [n.plugin for n in nodes] == ["MoeTopk", "MoePlan", "MoeScatter", "MoeUp", "MoeDown", "MoeCombine"]
    assert nodes[3].inputs == ("h", "W1", "layer0/moe/sorted_ids", "layer0/moe/block_expert")
    assert nodes[-1].outputs == ("out",)
    proto = nodes[1].to_onnx()
    assert proto.domain == "mahia" and proto.op_type == "MoePlan" and proto.name == "layer0/moe/MoePlan"
    assert [a.name for a in proto.attribute] == ["plugin_namespace", "plugin_version", "aot", "top_k", "block_m",
                                                 "num_experts"]
    assert [onnx.helper.get_attribute_value(a) for a in proto.attribute] == [b"mahia", b"1", 1, 2, 64, 8]
    with pytest.raises(ValueError, match="expected exactly"):
        node_attributes(PLUGINS["MoePlan"], {"top_k": 2})
    written = [o for n in nodes for o in n.outputs]
    assert len(written) == len(set(written)), "every value has one writer"
    for op, chain in CHAINS.items():
        assert chain.plugins[-1].outputs[-1].name == chain.output, op


def test_the_specs_table_prints_every_plugin_with_its_symbolic_grid():
    from mahia.plugins_trt.table import render

    table = render()
    rows = [line for line in table.splitlines()[2:]]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(PLUGINS)
    assert "| MoeTopk | moe_ffn |" in table and "(ceiling(T/256), 1, 1) (at E=8)" in table
    assert "R = 2*T + 567" in table and "TK = R - 567" in table
