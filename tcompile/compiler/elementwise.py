"""The elementwise algebra: expression trees over stored values that one MLP piece computes.

The lowering (lower.py) collects every elementwise subexpression — scalar functions, products,
sums and constants — into a tree whose leaves are atoms (values with rows). pieces.py turns a
tree into ReLU units. The trees are small typed values with their operations beside them, so
neither side reads tuples by position:

    Leaf(atom)                       a stored value, read entry by entry
    Const(value)                     a compile-time number
    Sum(a, b), Product(a, b)         entrywise a + b, a * b
    Call(func, fargs, arg, domain, tol)
                                     func(arg; *fargs), fitted on `domain` within `tol`

Every operation is a plain recursive function with one case per class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from .approx import exact_function


@dataclass(frozen=True)
class Leaf:
    atom: int


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Sum:
    a: "Expr"
    b: "Expr"


@dataclass(frozen=True)
class Product:
    a: "Expr"
    b: "Expr"


@dataclass(frozen=True)
class Call:
    func: str
    fargs: tuple                       # extra constant arguments (clip's bounds)
    arg: "Expr"
    domain: tuple | None               # declared `on [lo, hi]`, if any
    tol: float | None                  # the call's (or its statement's) error budget
    rel: bool = False                  # that budget is relative (`tol rel eps`): |err| <= eps |f|
    note: str = field(default="", compare=False)   # why a direct fit (refine.choose), for the report
    line: int | None = field(default=None, compare=False)   # the source line that calls it


Expr = Union[Leaf, Const, Sum, Product, Call]
MINUS_ONE = Const(-1.0)


@dataclass
class Elementwise:
    """A node's value while it is still symbolic: `expr`, and whether it is a product of two
    real atoms (`product`: a product piece of budget `tol`, not a unary function)."""
    expr: Expr
    product: bool = False
    tol: float | None = None
    rel: bool = False                  # `tol` is relative


def leaves(e: Expr) -> set[int]:
    if isinstance(e, Leaf):
        return {e.atom}
    if isinstance(e, Const):
        return set()
    if isinstance(e, Call):
        return leaves(e.arg)
    return leaves(e.a) | leaves(e.b)


def calls(e: Expr) -> list[Call]:
    """Every Call in e, outermost first."""
    if isinstance(e, (Leaf, Const)):
        return []
    if isinstance(e, Call):
        return [e] + calls(e.arg)
    return calls(e.a) + calls(e.b)


def tolerances(e: Expr) -> list[float]:
    return [c.tol for c in calls(e) if c.tol is not None]


def evaluate(e: Expr, env: dict):
    """e with each leaf's value from env (numbers or numpy arrays); exact functions."""
    if isinstance(e, Leaf):
        return env[e.atom]
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Sum):
        return evaluate(e.a, env) + evaluate(e.b, env)
    if isinstance(e, Product):
        return evaluate(e.a, env) * evaluate(e.b, env)
    with np.errstate(all="ignore"):
        return exact_function(e.func, *e.fargs)(evaluate(e.arg, env))


def to_text(e: Expr, names: dict, top: bool = True) -> str:
    """Readable source-like text (labels in the report): leaves by their variable names."""
    if isinstance(e, Leaf):
        return names.get(e.atom, f"t{e.atom}")
    if isinstance(e, Const):
        return f"{e.value:g}"
    if isinstance(e, Sum):
        a, b = e.a, e.b
        if isinstance(b, Product) and b.a == MINUS_ONE:
            text = f"{to_text(a, names, False)} - {to_text(b.b, names, False)}"
        elif isinstance(a, Product) and a.a == MINUS_ONE:
            text = f"{to_text(b, names, False)} - {to_text(a.b, names, False)}"
        else:
            text = f"{to_text(a, names, False)} + {to_text(b, names, False)}"
        return text if top else f"({text})"
    if isinstance(e, Product):
        if e.a == MINUS_ONE:
            return f"-{to_text(e.b, names, False)}"
        if e.b == MINUS_ONE:
            return f"-{to_text(e.a, names, False)}"
        return f"{to_text(e.a, names, False)}*{to_text(e.b, names, False)}"
    return f"{e.func}({to_text(e.arg, names)})"


def affine(e: Expr, leaf: int | None, env: dict) -> tuple[float, float] | None:
    """(α, β) with e = α·leaf + β when the other leaves take their values in env (fixed signs),
    else None (e is not affine in the leaf)."""
    if isinstance(e, Leaf):
        if e.atom == leaf:
            return (1.0, 0.0)
        return (0.0, float(env[e.atom])) if e.atom in env else None
    if isinstance(e, Const):
        return (0.0, float(e.value))
    if isinstance(e, Call):
        return None if leaf in leaves(e) else (0.0, float(evaluate(e, env)))
    a, b = affine(e.a, leaf, env), affine(e.b, leaf, env)
    if a is None or b is None:
        return None
    if isinstance(e, Sum):
        return (a[0] + b[0], a[1] + b[1])
    if a[0] == 0.0:
        return (a[1] * b[0], a[1] * b[1])
    if b[0] == 0.0:
        return (b[1] * a[0], b[1] * a[1])
    return None


def pulled_back_domains(e: Expr, leaf: int, env: dict) -> list[tuple[float, float]]:
    """The leaf intervals the calls' declared domains imply (through affine paths only)."""
    out = []
    for c in calls(e):
        aff = affine(c.arg, leaf, env)
        if c.domain is not None and aff is not None and aff[0] != 0.0:
            lo, hi = ((d - aff[1]) / aff[0] for d in c.domain)
            out.append((min(lo, hi), max(lo, hi)))
    return out


def shape_key(e: Expr, cont: int | None, gates) -> tuple:
    """e with its leaves renamed (the real leaf `u`, the gates s0, s1, …), sums and products
    in a canonical order: the same function of (u, signs) gives the same key, so the fits of
    an unrolled loop's iterations are shared."""
    rename = {cont: "u", **{g: f"s{i}" for i, (g, _) in enumerate(gates)}}

    def walk(x):
        if isinstance(x, Leaf):
            return ("leaf", rename.get(x.atom, x.atom))
        if isinstance(x, Const):
            return ("const", x.value)
        if isinstance(x, Call):
            return ("call", x.func, x.fargs, walk(x.arg), x.domain, x.tol, x.rel)
        a, b = sorted((walk(x.a), walk(x.b)), key=repr)      # + and * commute
        return ("add" if isinstance(x, Sum) else "mul", a, b)
    return walk(e)


__all__ = ["Leaf", "Const", "Sum", "Product", "Call", "Expr", "Elementwise", "leaves", "calls",
           "tolerances", "evaluate", "to_text", "affine", "pulled_back_domains", "shape_key"]
