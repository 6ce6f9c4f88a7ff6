"""Plugin specs: what one TensorRT plugin node is, as data the graph side, TensorRT 11 (QDP), TensorRT-RTX and
ONNX Runtime all read.

A `PluginSpec` is one kernel launch of an op's launch plan (mahia/kernels/triton/plan.py, `Launch.plugin_order()`):
- `name`: the ONNX op_type and the QDP plugin name ("mahia::<name>"); node domain "mahia";
- `inputs` / `outputs`: in node (and kernel) order, each named like the plan's buffer, with the entry kernel's
  pointer parameter, its dims (names, see below) and its dtypes;
- `attrs`: the INT attributes in registration order (every one on every node, after `plugin_namespace`,
  `plugin_version` and `aot`: `node_attributes`);
- `derived`: sizes computed from dims and attributes (size algebra, mahia/plugins_trt/sizes.py);
- `launch`: the launch formula (grid, warps, stages, constexprs, int32 scalars in plugin order);
- `plan`: the op's launch plan at concrete sizes (its launch of `kernel` is the ground truth of the tests);
- `reference`: the launch's math in torch, writing exactly the elements the kernel writes (see POISON).

Dims are names: a dim name binds at its first occurrence in the inputs (static ones, listed in `static`, must be
build-time constants), `"3"` is a literal, `"2H"` binds H to half the dim, and attribute or derived names are
checked. An output's shape is its dims looked up the same way, so `derived` holds every shape formula.
Dtypes: "float" is the plugin's float type (float32, float16 or bfloat16: the dtype of its first input declared
("float",), the same wherever "float" is allowed); other names are fixed dtypes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mahia.plugins_trt.sizes import INTS, Algebra, Expr, Size

DOMAIN = "mahia"  # node domain and plugin namespace
PLUGIN_VERSION = "1"  # QDP creators are always version "1" (tensorrt/plugin/_plugin_class.py, 11.4)
FLOAT = "float"
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# Elements a kernel does not write hold these in the references' outputs (and in the GPU check's buffers), so a
# consumer that reads one produces NaN or an out-of-range index instead of a plausible number.
POISON_FLOAT = float("nan")
POISON_INT = -(2 ** 31)


@dataclass(frozen=True)
class DType:
    """One tensor dtype in each library's spelling."""

    name: str
    torch: torch.dtype
    onnx: int  # onnx.TensorProto data type (the numbers, so the GPU check needs no onnx)
    trt: str  # tensorrt.DataType member
    autotune: str  # trtp.AutoTuneCombination spelling


DTYPES = {d.name: d for d in (
    DType("float32", torch.float32, 1, "FLOAT", "FP32"),
    DType("float16", torch.float16, 10, "HALF", "FP16"),
    DType("bfloat16", torch.bfloat16, 16, "BF16", "BF16"),
    DType("float8_e4m3fn", torch.float8_e4m3fn, 17, "FP8", "FP8"),
    DType("int32", torch.int32, 6, "INT32", "INT32"),
    DType("bool", torch.bool, 9, "BOOL", "BOOL"),
)}
DTYPE_BY_TORCH = {d.torch: d.name for d in DTYPES.values()}


@dataclass(frozen=True)
class TensorSpec:
    """A plugin input: the plan buffer's name, the entry kernel's pointer parameter, dims, allowed dtypes."""

    name: str
    param: str
    dims: tuple[str, ...]
    dtypes: tuple[str, ...]


@dataclass(frozen=True)
class OutputSpec:
    """A plugin output: name, pointer parameter, dims (its shape formula, by name), dtype ("float" or fixed), and
    which elements the kernel writes (the rest are never read by the chain)."""

    name: str
    param: str
    dims: tuple[str, ...]
    dtype: str
    written: str = "all"


@dataclass(frozen=True)
class LaunchFormula:
    """One launch of an entry kernel: sizes are ints or expressions of the evaluator that computed them."""

    module: str  # mahia.kernels.triton.<module>
    entry: str  # the @triton.jit AOT entry kernel (plugin order)
    grid: tuple[Size, Size, Size]
    num_warps: int
    num_stages: int
    constexprs: tuple[tuple[str, object], ...]
    scalars: tuple[tuple[str, Size], ...]  # int32 scalar arguments, in order

    @property
    def block(self) -> tuple[int, int, int]:
        """Threads per program."""
        return (32 * self.num_warps, 1, 1)


@dataclass(frozen=True)
class PluginSpec:
    """One plugin node (see the module docstring)."""

    name: str
    op: str  # the mahia:: op whose plan this launch belongs to
    kernel: str  # the plan launch's kernel (its entry kernel is launch(...).entry)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[OutputSpec, ...]
    attrs: tuple[str, ...]
    static: tuple[str, ...]  # dims that must be build-time constants
    derived: tuple[tuple[str, Callable[[Sizes, Algebra], Size]], ...]
    launch: Callable[[Sizes, Algebra], LaunchFormula]
    plan: Callable[[Sizes], object]  # -> mahia.kernels.triton.plan.KernelPlan at int sizes
    reference: Callable[[Sizes, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    tactics: tuple[str, ...] = ()  # autotune tactics 1..n (names); () = tactic 0 only
    check: Callable[[Sizes], None] | None = None  # attribute consistency, raises ValueError

    @property
    def float_input(self) -> int | None:
        """Index of the input that fixes the float type (None: the plugin has none)."""
        return next((i for i, t in enumerate(self.inputs) if t.dtypes == (FLOAT,)), None)


@dataclass
class Sizes:
    """Dims, derived sizes and attributes of one plugin node by name (`s.T`, `s.top_k`), under one Algebra, with the
    I/O dtypes and the tactic."""

    spec: PluginSpec
    values: dict[str, Size]
    dtypes: dict[str, str] = field(default_factory=dict)
    tactic: int = 0

    def __getattr__(self, name: str) -> Size:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__['spec'].name}: no size or attribute {name!r}") from None

    @property
    def dtype(self) -> str | None:
        """The plugin's float type name, or None."""
        index = self.spec.float_input
        return None if index is None else self.dtypes[self.spec.inputs[index].name]

    @property
    def torch_dtype(self) -> torch.dtype:
        """The float type as a torch dtype."""
        return DTYPES[self.dtype].torch


_MULTIPLE = re.compile(r"(\d+)([A-Za-z_]\w*)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bind(spec: PluginSpec, shapes: Sequence[Sequence[Size]], attrs: Mapping[str, int],
         dtypes: Sequence[str] | None = None, alg: Algebra = INTS, tactic: int = 0) -> Sizes:
    """The Sizes of a node: input dims bound by name, attributes, derived sizes; with int shapes every repeated,
    literal, attribute and derived dim is checked (a mismatch raises ValueError naming the input)."""
    if len(shapes) != len(spec.inputs):
        raise ValueError(f"{spec.name}: {len(shapes)} inputs, expected {len(spec.inputs)} "
                         f"({', '.join(t.name for t in spec.inputs)})")
    missing = [a for a in spec.attrs if a not in attrs]
    unknown = [a for a in attrs if a not in spec.attrs]
    if missing or unknown:
        raise ValueError(f"{spec.name}: attributes {dict(attrs)}; expected exactly {list(spec.attrs)}")
    values: dict[str, Size] = {}
    for name in spec.attrs:
        if not _is_int(attrs[name]):
            raise ValueError(f"{spec.name}: attribute {name}={attrs[name]!r} is not an int")
        values[name] = int(attrs[name])
    derived = {name for name, _ in spec.derived}
    for tensor, shape in zip(spec.inputs, shapes, strict=True):
        if len(shape) != len(tensor.dims):
            raise ValueError(f"{spec.name}: input {tensor.name} has rank {len(shape)}, expected {len(tensor.dims)} "
                             f"[{', '.join(tensor.dims)}]")
        for token, value in zip(tensor.dims, shape, strict=True):
            multiple = _MULTIPLE.fullmatch(token)
            if token.isdigit() or token in values or token in derived:
                continue
            if multiple:
                factor, name = int(multiple.group(1)), multiple.group(2)
                if name not in values:
                    if not _is_int(value):
                        raise ValueError(f"{spec.name}: dim {token} of input {tensor.name} must be a build-time "
                                         "constant")
                    values[name] = value // factor
                continue
            if token in spec.static and not _is_int(value):
                raise ValueError(f"{spec.name}: dim {token} of input {tensor.name} must be a build-time constant")
            values[token] = value
    names = [t.name for t in spec.inputs]
    sizes = Sizes(spec, values, dict(zip(names, dtypes, strict=True)) if dtypes else {}, tactic)
    for name, formula in spec.derived:
        values[name] = formula(sizes, alg)
    for tensor, shape in zip(spec.inputs, shapes, strict=True):
        expected = dims_of(sizes, tensor.dims)
        if any(_is_int(a) and _is_int(e) and a != e for a, e in zip(shape, expected, strict=True)):
            raise ValueError(f"{spec.name}: input {tensor.name} has shape {list(shape)}, expected "
                             f"[{', '.join(tensor.dims)}] = {list(expected)} (attributes {dict(attrs)})")
    if spec.check is not None:
        spec.check(sizes)
    return sizes


def dims_of(sizes: Sizes, dims: Sequence[str]) -> tuple[Size, ...]:
    """A dims tuple looked up in sizes (literals as ints, "2H" as H * 2)."""
    out = []
    for token in dims:
        multiple = _MULTIPLE.fullmatch(token)
        if token.isdigit():
            out.append(int(token))
        elif multiple and multiple.group(2) not in sizes.values:
            raise ValueError(f"{sizes.spec.name}: {multiple.group(2)} is unbound")
        elif multiple:
            out.append(sizes.values[multiple.group(2)] * int(multiple.group(1)))
        else:
            out.append(sizes.values[token])
    return tuple(out)


def output_shapes(sizes: Sizes) -> list[tuple[Size, ...]]:
    """Each output's shape, in output order."""
    return [dims_of(sizes, out.dims) for out in sizes.spec.outputs]


def float_dtype(spec: PluginSpec, dtypes: Sequence[str]) -> str | None:
    """The plugin's float type from its input dtypes (names), checking every input against its allowed dtypes."""
    if len(dtypes) != len(spec.inputs):
        raise ValueError(f"{spec.name}: {len(dtypes)} inputs, expected {len(spec.inputs)} "
                         f"({', '.join(t.name for t in spec.inputs)})")
    index = spec.float_input
    dtype = None if index is None else dtypes[index]
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ValueError(f"{spec.name}: input {spec.inputs[index].name} is {dtype}, expected one of {FLOAT_DTYPES}")
    for tensor, got in zip(spec.inputs, dtypes, strict=True):
        allowed = [dtype if option == FLOAT else option for option in tensor.dtypes]
        if got not in allowed:
            raise ValueError(f"{spec.name}: input {tensor.name} is {got}, expected {' or '.join(allowed)}")
    return dtype


def output_dtypes(spec: PluginSpec, dtypes: Sequence[str]) -> list[str]:
    """Each output's dtype name from the input dtype names."""
    dtype = float_dtype(spec, dtypes)
    return [dtype if out.dtype == FLOAT else out.dtype for out in spec.outputs]


def allowed_dtypes(spec: PluginSpec, position: int, known: Sequence[str]) -> tuple[str, ...]:
    """Dtypes allowed at I/O position `position` (inputs, then outputs) given the dtypes of the positions before it
    (TensorRT's supports_format_combination asks in increasing order)."""
    index = spec.float_input
    bound = known[index] if index is not None and index < position else None
    if position < len(spec.inputs):
        options = spec.inputs[position].dtypes
        if bound is None:
            return tuple(d for o in options for d in (FLOAT_DTYPES if o == FLOAT else (o,)))
        return tuple(dict.fromkeys(bound if o == FLOAT else o for o in options))
    out = spec.outputs[position - len(spec.inputs)]
    return (bound,) if out.dtype == FLOAT else (out.dtype,)


def launch_formula(sizes: Sizes, alg: Algebra = INTS) -> LaunchFormula:
    """The plugin's launch at these sizes."""
    return sizes.spec.launch(sizes, alg)


def node_attributes(spec: PluginSpec, attrs: Mapping[str, int]) -> dict[str, object]:
    """The ONNX attributes of a node of this plugin, in order: plugin_namespace, plugin_version, aot=1, then the
    plugin's INT attributes in registration order (every one: a missing one shifts TensorRT's QDP arguments)."""
    missing = [a for a in spec.attrs if a not in attrs]
    unknown = [a for a in attrs if a not in spec.attrs]
    if missing or unknown:
        raise ValueError(f"{spec.name}: attributes {dict(attrs)}; expected exactly {list(spec.attrs)}")
    return {"plugin_namespace": DOMAIN, "plugin_version": PLUGIN_VERSION, "aot": 1,
            **{a: int(attrs[a]) for a in spec.attrs}}


def is_symbolic(value: Size) -> bool:
    """True for a size that is not a build-time int."""
    return isinstance(value, Expr) or not _is_int(value)


@dataclass(frozen=True)
class Chain:
    """An op as plugin nodes in launch order, wired by tensor name (each name has one writer: the op's inputs
    or one node's output); `attributes(**op parameters)` gives the chain's INT attributes, of which each node
    carries those its spec declares."""

    op: str
    inputs: tuple[str, ...]  # the op's tensor inputs, in op order
    output: str
    plugins: tuple[PluginSpec, ...]
    attributes: Callable[..., dict[str, int]]


@dataclass(frozen=True)
class NodeSizes:
    """One node of a chain at concrete sizes: its spec, Sizes, input shapes and dtypes, output shapes and dtypes."""

    spec: PluginSpec
    sizes: Sizes
    input_shapes: tuple[tuple[Size, ...], ...]
    input_dtypes: tuple[str, ...]
    output_shapes: tuple[tuple[Size, ...], ...]
    output_dtypes: tuple[str, ...]


def walk(chain: Chain, shapes: Mapping[str, Sequence[Size]], dtypes: Mapping[str, str],
         attributes: Mapping[str, int], tactics: Mapping[str, int] | None = None, alg: Algebra = INTS
         ) -> list[NodeSizes]:
    """Every node of a chain, from the op inputs' shapes and dtypes (by chain input name): each node's inputs are
    the op's or an earlier node's outputs, checked against the node's dims where sizes are ints."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    dtypes = dict(dtypes)
    nodes = []
    for spec in chain.plugins:
        in_shapes = tuple(shapes[t.name] for t in spec.inputs)
        in_dtypes = tuple(dtypes[t.name] for t in spec.inputs)
        sizes = bind(spec, in_shapes, {a: attributes[a] for a in spec.attrs}, in_dtypes, alg,
                     tactic=(tactics or {}).get(spec.name, 1 if spec.tactics else 0))
        out_dtypes = tuple(output_dtypes(spec, in_dtypes))
        out_shapes = tuple(output_shapes(sizes))
        for out, shape, dtype in zip(spec.outputs, out_shapes, out_dtypes, strict=True):
            shapes[out.name], dtypes[out.name] = shape, dtype
        nodes.append(NodeSizes(spec, sizes, in_shapes, in_dtypes, out_shapes, out_dtypes))
    return nodes
