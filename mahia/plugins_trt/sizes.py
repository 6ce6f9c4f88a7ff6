"""The size algebra: every plugin's output shapes and launch parameters are written once, as plain Python over
sizes, and evaluated by several evaluators.

A formula may use `+ - * //` with an int or another size on the RIGHT (`n * 4`, never `4 * n`) and the helpers
`alg.cdiv`, `alg.max`, `alg.min` of the `Algebra` it is given; nothing else on a size (no `if`, no comparison,
no `%`, no `/`, no reflected operator): exactly what TensorRT's `trtp.ShapeExpr` offers (tensorrt/plugin/
_tensor.py, 11.4: no `__radd__`/`__rmul__`, `bool()` raises unless constant). Build-time constants (static
dims such as d_model, and the attributes) are plain ints, and formulas may branch on those.

Evaluators:
- `INTS`: Python ints (tests, the ONNX Runtime wiring check, the GPU launch check);
- `symbolic()`: `Expr` around sympy expressions, which also refuses everything ShapeExpr refuses, so a CPU test
  proves a formula is branch-free in the dynamic sizes and evaluable by TensorRT;
- `Expr` over TensorRT-RTX `IDimensionExpr`s (mahia.plugins_trt.rtx) and TensorRT 11's own `ShapeExpr`
  (mahia.plugins_trt.qdp), built on the same `Algebra` shape.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Size = Any  # an int, an Expr, or a backend's own expression (TensorRT 11's trtp.ShapeExpr)


@dataclass(frozen=True)
class Algebra:
    """How one evaluator computes ceil-division, max and min of sizes (ints or its expressions)."""

    name: str
    cdiv: Callable[[Size, Size], Size]
    max: Callable[[Size, Size], Size]
    min: Callable[[Size, Size], Size]


def _int_cdiv(a: int, b: int) -> int:
    return -(-a // b)


INTS = Algebra("int", _int_cdiv, builtins.max, builtins.min)


class Backend:
    """Node arithmetic of one symbolic evaluator: `binary(op, a, b)` with op in add, sub, mul, floordiv, cdiv,
    max, min on two backend nodes, and `constant(int)`."""

    def binary(self, op: str, a: object, b: object) -> object:  # pragma: no cover - interface
        raise NotImplementedError

    def constant(self, value: int) -> object:  # pragma: no cover - interface
        raise NotImplementedError


class Expr:
    """A symbolic size in one backend, with exactly the arithmetic of TensorRT's ShapeExpr."""

    __slots__ = ("node", "backend")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, node: object, backend: Backend):
        self.node = node
        self.backend = backend

    def _apply(self, op: str, other: object) -> Expr:
        if isinstance(other, Expr):
            return Expr(self.backend.binary(op, self.node, other.node), self.backend)
        if isinstance(other, int) and not isinstance(other, bool):
            return Expr(self.backend.binary(op, self.node, self.backend.constant(other)), self.backend)
        raise TypeError(f"size formula: {op} of a size and {type(other).__name__} {other!r}")

    def __add__(self, other: object) -> Expr:
        return self._apply("add", other)

    def __sub__(self, other: object) -> Expr:
        return self._apply("sub", other)

    def __mul__(self, other: object) -> Expr:
        return self._apply("mul", other)

    def __floordiv__(self, other: object) -> Expr:
        return self._apply("floordiv", other)

    def _refuse(self, *_: object) -> None:
        raise TypeError("size formula: only + - * // with the size on the left, and alg.cdiv/max/min, "
                        "work on a TensorRT shape expression")

    __radd__ = __rsub__ = __rmul__ = __rfloordiv__ = _refuse
    __mod__ = __rmod__ = __truediv__ = __rtruediv__ = __pow__ = __neg__ = _refuse
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _refuse  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise TypeError("size formula: branched on a dynamic size (TensorRT's ShapeExpr has no truth value)")

    def __index__(self) -> int:
        raise TypeError("size formula: used a dynamic size as a Python int")

    __int__ = __index__

    def __repr__(self) -> str:
        return f"Expr({self.node})"


def expr_algebra(name: str, backend: Backend) -> Algebra:
    """The Algebra of Expr in `backend`: ints stay ints when both operands are ints."""

    def lifted(op: str, python: Callable[[int, int], int]) -> Callable[[Size, Size], Size]:
        def apply(a: Size, b: Size) -> Size:
            if not isinstance(a, Expr) and not isinstance(b, Expr):
                return python(a, b)
            a_node = a.node if isinstance(a, Expr) else backend.constant(a)
            b_node = b.node if isinstance(b, Expr) else backend.constant(b)
            return Expr(backend.binary(op, a_node, b_node), backend)
        return apply

    return Algebra(name, lifted("cdiv", _int_cdiv), lifted("max", builtins.max), lifted("min", builtins.min))


class SympyBackend(Backend):
    """sympy expressions: floor and ceiling of exact rationals, Max and Min."""

    def __init__(self) -> None:
        import sympy

        self.sympy = sympy

    def binary(self, op: str, a: object, b: object) -> object:
        sp = self.sympy
        return {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
                "floordiv": lambda: sp.floor(a / b), "cdiv": lambda: sp.ceiling(a / b),
                "max": lambda: sp.Max(a, b), "min": lambda: sp.Min(a, b)}[op]()

    def constant(self, value: int) -> object:
        return self.sympy.Integer(value)


def symbolic() -> tuple[Algebra, Callable[[str], Expr]]:
    """(the sympy Algebra, a function making a positive integer symbol of a name as an Expr)."""
    import sympy

    backend = SympyBackend()
    return expr_algebra("sympy", backend), lambda name: Expr(sympy.Symbol(name, integer=True, positive=True), backend)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1), for build-time constants only (as triton.next_power_of_2)."""
    if isinstance(n, Expr) or not isinstance(n, int) or n < 1:
        raise TypeError(f"next_power_of_2 takes a build-time int >= 1, got {n!r}")
    return 1 << (n - 1).bit_length()
