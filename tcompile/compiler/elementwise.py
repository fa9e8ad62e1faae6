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

Every operation is a plain recursive function with one case per class. `PLFunction` and
`active_interval` say where a tree of one real leaf varies: a PL fit clamps outside its
domain, so a leaf that nothing bounds can still be fitted where clip, relu or a declared
domain makes the tree constant beyond an interval (`clip(A @ x, -2, 2) ** 2`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
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
BOUND = "bound"        # `(expr) on [lo, hi]`: the identity on a declared domain (the user's bound)
EXACT_PL = ("relu", "abs", "clip")     # exactly piecewise linear: no fit, no domain


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


def contains(e: Expr, sub: Expr) -> bool:
    """Whether `sub` is a subtree of e."""
    if e == sub:
        return True
    if isinstance(e, (Leaf, Const)):
        return False
    if isinstance(e, Call):
        return contains(e.arg, sub)
    return contains(e.a, sub) or contains(e.b, sub)


def substitute(e: Expr, sub: Expr, new: Expr) -> Expr:
    """e with every subtree equal to `sub` replaced by `new` (a leaf by the clamp of it, a
    bounded operand by its stored atom: lower.py)."""
    if e == sub:
        return new
    if isinstance(e, (Leaf, Const)):
        return e
    if isinstance(e, Call):
        return replace(e, arg=substitute(e.arg, sub, new))
    return type(e)(substitute(e.a, sub, new), substitute(e.b, sub, new))


def tolerances(e: Expr) -> list[float]:
    return [c.tol for c in calls(e) if c.tol is not None]


def evaluate(e: Expr, env: dict, clamped: bool = False):
    """e with each leaf's value from env (numbers or numpy arrays); exact functions.
    `clamped`: each call with a declared domain reads its argument clamped to that domain,
    which is what the compiled model computes when the call is its own piece (a PL fit is
    constant outside its domain), so a fused piece fitted this way means the same."""
    if isinstance(e, Leaf):
        return env[e.atom]
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Sum):
        return evaluate(e.a, env, clamped) + evaluate(e.b, env, clamped)
    if isinstance(e, Product):
        return evaluate(e.a, env, clamped) * evaluate(e.b, env, clamped)
    x = evaluate(e.arg, env, clamped)
    if clamped and e.domain is not None and e.func not in EXACT_PL:
        x = np.clip(x, *e.domain)
    if e.func == BOUND:
        return x
    with np.errstate(all="ignore"):
        return exact_function(e.func, *e.fargs)(x)


def scaled_product(e: Expr) -> tuple[float, int, int] | None:
    """(c, a, b) where e is c · a ⊙ b, a product of two leaves and numbers in any grouping
    (`3.2 * u * v` is (3.2·u)·v): what one product piece computes; None for any other tree."""
    c, atoms, todo = 1.0, [], [e]
    while todo:
        x = todo.pop()
        if isinstance(x, Product):
            todo += [x.b, x.a]
        elif isinstance(x, Const):
            c *= x.value
        elif isinstance(x, Leaf):
            atoms.append(x.atom)
        else:
            return None
    return (c, *atoms) if len(atoms) == 2 and c != 0.0 else None


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
    if e.func == BOUND:
        return f"({to_text(e.arg, names)}) on [{e.domain[0]:g}, {e.domain[1]:g}]"
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
    if isinstance(e, Call):         # constant only where env fixes every leaf it reads
        return None if not leaves(e) <= env.keys() else (0.0, float(evaluate(e, env)))
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


# ---- where a tree of one leaf varies ----------------------------------------------------------

@dataclass(frozen=True)
class PLFunction:
    """A continuous piecewise-linear function of one variable: its values at sorted knots,
    linear between them, and its slopes left of the first knot and right of the last."""
    knots: np.ndarray
    values: np.ndarray
    left: float
    right: float

    @staticmethod
    def affine(a: float, b: float) -> "PLFunction":
        return PLFunction(np.array([0.0]), np.array([b]), a, a)

    def __call__(self, x):
        x = np.asarray(x, dtype=float)
        y = np.interp(x, self.knots, self.values)
        y = np.where(x < self.knots[0], self.values[0] + self.left * (x - self.knots[0]), y)
        return np.where(x > self.knots[-1], self.values[-1] + self.right * (x - self.knots[-1]), y)

    @property
    def constant(self) -> bool:
        return self.left == 0.0 and self.right == 0.0 and np.ptp(self.values) == 0.0

    def segments(self):
        """(start, end, reference point, value there, slope) of every linear piece, the outer
        two infinite (their reference point is their knot)."""
        k, v = self.knots, self.values
        yield -math.inf, k[0], k[0], v[0], self.left
        for i in range(len(k) - 1):
            yield k[i], k[i + 1], k[i], v[i], (v[i + 1] - v[i]) / (k[i + 1] - k[i])
        yield k[-1], math.inf, k[-1], v[-1], self.right

    def crossings(self, level: float) -> list[float]:
        """Where the function meets `level` on a piece where it is not constant."""
        out = []
        for a, b, ref, value, slope in self.segments():
            if slope != 0.0:
                x = ref + (level - value) / slope
                if a <= x <= b:
                    out.append(float(x))
        return out

    def add(self, other: "PLFunction", c: float = 1.0) -> "PLFunction":
        """self + c·other."""
        k = np.union1d(self.knots, other.knots)
        return PLFunction(k, self(k) + c * other(k), self.left + c * other.left,
                          self.right + c * other.right)

    def scale(self, c: float) -> "PLFunction":
        return PLFunction(self.knots, c * self.values, c * self.left, c * self.right)

    def compose(self, outer, levels) -> "PLFunction":
        """outer(self) for a PL `outer` whose kinks are at `levels` (relu, abs, clip)."""
        k = np.union1d(self.knots, np.array(sum((self.crossings(lv) for lv in levels), [])))
        v = np.asarray(outer(self(k)), dtype=float)
        beyond = np.asarray(outer(self(np.array([k[0] - 1.0, k[-1] + 1.0]))), dtype=float)
        left, right = float(v[0] - beyond[0]), float(beyond[1] - v[-1])
        return PLFunction(k, v, left, right)

    def preimage_hull(self, lo: float, hi: float, within) -> tuple[float, float] | None:
        """The smallest interval holding every x in `within` with lo <= f(x) <= hi; None if
        there is no such x."""
        a, b = within
        pts = [x for x in (a, b) if math.isfinite(x)] + list(self.knots) + \
            [x for lv in (lo, hi) if math.isfinite(lv) for x in self.crossings(lv)]
        slack = 1e-12 * max(1.0, *(abs(x) for x in (lo, hi) if math.isfinite(x)))
        inside = [x for x in pts if a <= x <= b and lo - slack <= float(self(x)) <= hi + slack]
        start = -math.inf if not math.isfinite(a) and _stays_inside(self.left, self.values[0],
                                                                     lo, hi, -1) else None
        end = math.inf if not math.isfinite(b) and _stays_inside(self.right, self.values[-1],
                                                                 lo, hi, 1) else None
        if not inside and start is None and end is None:
            return None
        lo_x = start if start is not None else min(inside)
        hi_x = end if end is not None else max(inside)
        return float(lo_x), float(hi_x)


def _stays_inside(slope, value, lo, hi, direction) -> bool:
    """Whether an outer linear piece, going to ±inf, ends inside [lo, hi]."""
    if slope == 0.0:
        return lo <= value <= hi
    return (hi == math.inf) if slope * direction > 0 else (lo == -math.inf)


def pl_of(e: Expr, leaf: int, env: dict) -> PLFunction | None:
    """e as an exact PL function of the leaf (the other leaves fixed by env), or None where
    it is not PL (a smooth call, a product of two functions of the leaf, an unknown leaf)."""
    if isinstance(e, Leaf):
        if e.atom == leaf:
            return PLFunction.affine(1.0, 0.0)
        return PLFunction.affine(0.0, float(env[e.atom])) if e.atom in env else None
    if isinstance(e, Const):
        return PLFunction.affine(0.0, float(e.value))
    if isinstance(e, Call):
        if leaf not in leaves(e):
            return PLFunction.affine(0.0, float(evaluate(e, env)))
        if e.func not in EXACT_PL + (BOUND,):
            return None
        inner = pl_of(e.arg, leaf, env)
        if inner is None:
            return None
        if e.func == BOUND:
            return inner
        levels = list(e.fargs) if e.func == "clip" else [0.0]
        return inner.compose(exact_function(e.func, *e.fargs), levels)
    a, b = pl_of(e.a, leaf, env), pl_of(e.b, leaf, env)
    if a is None or b is None:
        return None
    if isinstance(e, Sum):
        return a.add(b)
    if a.constant:
        return b.scale(float(a.values[0]))
    if b.constant:
        return a.scale(float(b.values[0]))
    return None


def clamp_set(c: Call) -> tuple[float, float] | None:
    """Where a call reads its argument: clip's bounds, relu's [0, inf), a declared domain
    (outside it the compiled call is constant); None for abs and undeclared calls."""
    if c.func == "clip":
        return tuple(c.fargs)
    if c.func == "relu":
        return (0.0, math.inf)
    if c.func == "abs":
        return None
    return c.domain


def active_interval(e: Expr, leaf: int, env: dict, bounds: tuple = (-math.inf, math.inf),
                    declared_only: bool = False, exact_only: bool = False):
    """An interval of the leaf outside which e (its calls clamped to their domains) is
    constant: the leaf's bounds narrowed by every clip, relu and declared domain it passes
    through, through PL steps exactly (else the argument's own interval). None: e does not
    depend on the leaf. `declared_only`: narrow by declared domains only — outside that
    interval some declared domain is left, so the compiled piece is wrong there (its domain
    check); clip and relu saturate exactly and need no check. `exact_only`: by clip and relu
    only — outside that interval e itself, not only its compiled piece, is constant."""
    if isinstance(e, Leaf):
        return tuple(bounds) if e.atom == leaf else None
    if isinstance(e, Const):
        return None
    if isinstance(e, Call):
        inner = active_interval(e.arg, leaf, env, bounds, declared_only, exact_only)
        clamp = clamp_set(e)
        if declared_only and e.func in EXACT_PL or exact_only and e.func not in EXACT_PL:
            clamp = None
        if inner is None or clamp is None:
            return inner
        f = pl_of(e.arg, leaf, env)
        if f is None:
            return inner
        return f.preimage_hull(*clamp, inner)
    parts = [x for x in (active_interval(e.a, leaf, env, bounds, declared_only, exact_only),
                         active_interval(e.b, leaf, env, bounds, declared_only, exact_only))
             if x is not None]
    if not parts:
        return None
    return min(p[0] for p in parts), max(p[1] for p in parts)


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


__all__ = ["scaled_product", "Leaf", "Const", "Sum", "Product", "Call", "Expr", "Elementwise", "leaves", "calls",
           "tolerances", "evaluate", "to_text", "affine", "pulled_back_domains", "shape_key",
           "PLFunction", "pl_of", "active_interval", "BOUND", "EXACT_PL"]
