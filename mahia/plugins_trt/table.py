"""The plugin specs as a Markdown table (`python -m mahia.plugins_trt.table`): per plugin its op, inputs, outputs
(dims and dtypes), INT attributes in registration order, entry kernel, and grid and shape formulas printed by the
sympy evaluator of the size algebra. Dynamic sizes (B, L, T, R, TK) stay symbols; where a formula needs a static
size as an int (tile choices, padded expert counts) the `base` config's sizes are used and the row says so."""

from __future__ import annotations

from mahia.model.config import CONFIGS
from mahia.plugins_trt import CHAINS, PLUGINS, moe_ffn
from mahia.plugins_trt.sizes import Expr, symbolic
from mahia.plugins_trt.specs import FLOAT, PluginSpec, bind, launch_formula

_BASE = CONFIGS["base"]
# The base config's op sizes and the attributes its export writes (MoE tile config at the default profile's opt
# token count, 8 x (128 + tabular tokens)).
BASE_STATIC = {"ssd_scan": {"H": _BASE.ssm_heads, "P": _BASE.ssm_head_dim, "N": _BASE.d_state},
               "moe_ffn": {"D": _BASE.d_model, "H": _BASE.expert_hidden, "E": _BASE.num_experts},
               "gate_combine": {"D": _BASE.d_model}, "long_conv": {"D": _BASE.d_model}}
BASE_STATIC["moe_ffn_fp8"] = BASE_STATIC["moe_ffn"]
BASE_ATTRS = {"causal": 1, "chunk": _BASE.chunk_size,
              **moe_ffn.chain_attributes(_BASE.num_experts, _BASE.top_k, 8 * (128 + _BASE.num_tabular_tokens))}
DYNAMIC = ("B", "L", "T", "R", "TK")


def _show(value: object) -> str:
    return str(value.node) if isinstance(value, Expr) else str(value)


def _row(spec: PluginSpec) -> str:
    alg, sym = symbolic()
    statics, derived = {}, {name for name, _ in spec.derived}
    for static_as_symbols in (True, False):
        shapes = []
        for tensor in spec.inputs:
            shape = []
            for token in tensor.dims:
                name = token.lstrip("0123456789")
                if token.isdigit():
                    shape.append(int(token))
                elif name in DYNAMIC or token in derived or token in spec.attrs:
                    shape.append(sym(token))  # derived and attribute dims are checked on ints only
                elif static_as_symbols and name == token:
                    shape.append(sym(token))
                else:
                    statics[name] = BASE_STATIC[spec.op][name]
                    shape.append(statics[name] * int(token[:-len(name)] or 1))
            shapes.append(shape)
        try:
            sizes = bind(spec, shapes, {a: BASE_ATTRS[a] for a in spec.attrs},
                         ["bfloat16" if FLOAT in t.dtypes else t.dtypes[0] for t in spec.inputs], alg,
                         tactic=1 if spec.tactics else 0)
            formula = launch_formula(sizes, alg)
            break
        except (TypeError, ValueError):
            statics = {}
    grid = ", ".join(_show(g) for g in formula.grid)
    inputs = "<br>".join(f"{t.name} [{', '.join(t.dims)}] {'/'.join(t.dtypes)}" for t in spec.inputs)
    outputs = "<br>".join(f"{o.name} [{', '.join(o.dims)}] {o.dtype}" + ("" if o.written == "all" else
                                                                         f" (written: {o.written})")
                          for o in spec.outputs)
    formulas = "<br>".join(f"{name} = {_show(sizes.values[name])}" for name, _ in spec.derived)
    scalars = ", ".join(name for name, _ in formula.scalars)
    at = f" (at {', '.join(f'{k}={v}' for k, v in statics.items())})" if statics else ""
    tactics = f"; tactics {', '.join(spec.tactics)}" if spec.tactics else ""
    return (f"| {spec.name} | {spec.op} | {inputs} | {outputs} | {', '.join(spec.attrs) or '-'} | {formula.entry} | "
            f"({grid}){at}, block {formula.block[0]}{tactics} | {scalars} | {formulas or '-'} |")


def render() -> str:
    """The Markdown table of every plugin, chain by chain."""
    lines = ["| plugin | op | inputs (node order) | outputs | INT attributes (order) | entry kernel | grid | "
             "int32 scalars (order) | sizes |", "|" + " --- |" * 9]
    seen = set()
    for chain in CHAINS.values():
        for spec in chain.plugins:
            if spec.name not in seen:
                seen.add(spec.name)
                lines.append(_row(spec))
    assert seen == set(PLUGINS)
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
