"""What the checker knows about a value (`Ty`), and the shape and interval rules of the
operators, apart from the walk itself (checker.py) so that the builtins that build or reshape
values (structural.py) can use them without importing the walker back.

Shapes are tuples whose entries are ints or the token axis ``"n"``; ``shape is None`` marks a
multiple of the identity `I` whose size is fixed by the first square matrix it meets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ProgramError

TOKEN = "n"


def fmt_shape(shape) -> str:
    if shape is None:
        return "I (any square size)"
    return "[" + ", ".join(str(s) for s in shape) + "]"


@dataclass(frozen=True)
class Ty:
    """What the checker knows about a value. `lo`/`hi` bound every entry (None: unknown)."""
    shape: tuple | None
    const: float | None = None       # compile-time scalar value
    lo: float | None = None
    hi: float | None = None
    sign: bool = False               # every entry is -1 or +1
    flag: bool = False               # every entry is 0 or 1
    symmetric: bool = False
    # declared norms of an input (and of its transpose, negation, `on`): only products of
    # declared values get bounds from them (norm_product_bound), never a computed value,
    # whose norm would grow with every iteration of a loop
    norm: float | None = None        # 2-norm of a vector, spectral norm of a matrix
    token_norm: float | None = None  # 2-norm of each token's vector ([n, k]: rows; [k, n]: columns)
    # lo/hi are an input's declared range (`in [lo, hi]`, ...), kept like the norms: products
    # of two such values get bounds (declared_product_interval)
    declared: bool = False
    # bounds on the diagonal entries of a small square matrix where they are tighter than
    # lo/hi: I's are 1, a mean Gram matrix A.T @ A / n has them >= 0, so that
    # 1 / diag(A.T @ A / n + 0.5 * I) needs no declared domain (diagonal_interval). Not
    # carried by a loop's state (steady_state._join drops it): a hull bounds entries only
    diag: tuple[float, float] | None = None

    @property
    def is_token(self) -> bool:
        return self.shape is not None and TOKEN in self.shape

    @property
    def bounded(self) -> bool:
        return self.lo is not None and self.hi is not None and math.isfinite(self.lo) and math.isfinite(self.hi)


@dataclass
class Val:
    """A value during a walk: its type plus whatever the walker attaches (array, graph node)."""
    ty: Ty
    data: Any = None


# ---- type rules ----------------------------------------------------------------------------

def _interval(op, a: Ty, b: Ty):
    if not (a.bounded and b.bounded):
        return None, None
    if op == "+":
        return a.lo + b.lo, a.hi + b.hi
    if op == "-":
        return a.lo - b.hi, a.hi - b.lo
    if op == "*":
        c = [a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi]
        return min(c), max(c)
    if op == "/" and (b.lo > 0 or b.hi < 0):
        c = [a.lo / b.lo, a.lo / b.hi, a.hi / b.lo, a.hi / b.hi]
        return min(c), max(c)
    return None, None


def diagonal_interval(t: Ty) -> tuple[float, float] | None:
    """Bounds on the diagonal entries of t's value: its `diag` narrowed by its entries' bounds,
    or those bounds alone (None where neither is known). Of a scalar or a [k] vector that
    meets a matrix's diagonal in `+ - * /` (broadcast), its own entries' bounds."""
    entries = (t.lo, t.hi) if t.bounded else None
    if t.diag is None or entries is None:
        return t.diag or entries
    return max(t.diag[0], entries[0]), min(t.diag[1], entries[1])


def diagonal_rule(op: str, a: Ty, b: Ty, square: bool = False) -> tuple[float, float] | None:
    """The diagonal's bounds for an entrywise `a op b` whose result is a small square matrix
    (or I's shapeless multiples), where an operand has diagonal bounds of its own; else None
    (the entries' bounds say as much). `square`: a value times itself."""
    if a.diag is None and b.diag is None:
        return None
    da, db = diagonal_interval(a), diagonal_interval(b)
    if da is None or db is None:
        return None
    x, y = Ty((), lo=da[0], hi=da[1]), Ty((), lo=db[0], hi=db[1])
    lo, hi = power_interval(x, 2) if square else _interval(op, x, y)
    return None if lo is None else (lo, hi)


def same_expression(x, y) -> bool:
    """Whether two expressions of one statement are the same text up to where they stand:
    equal nodes with equal fields, source locations aside. Within one expression nothing is
    reassigned and every form is a function of its operands, so such twins take one value."""
    if type(x) is not type(y):
        return False
    if isinstance(x, (tuple, list)):
        return len(x) == len(y) and all(same_expression(u, v) for u, v in zip(x, y))
    fields = getattr(x, "__dataclass_fields__", None)
    if fields is None:
        return x == y
    return all(same_expression(getattr(x, f), getattr(y, f)) for f in fields if f != "loc")


def power_interval(a: Ty, p: float):
    """Bounds on x ** p for x in [a.lo, a.hi] (p a whole number >= 1, or 0.5 and -1 where the
    checker found them defined)."""
    if not a.bounded:
        return None, None
    lo, hi = a.lo, a.hi
    if p == 0.5:
        return (math.sqrt(lo), math.sqrt(hi)) if lo >= 0 else (None, None)
    if p == -1.0:
        return (1 / hi, 1 / lo) if lo > 0 or hi < 0 else (None, None)
    if p != int(p) or p < 1:
        return None, None
    try:
        ends = [lo ** p, hi ** p]
    except OverflowError:
        return None, None
    if int(p) % 2 == 0 and lo < 0 < hi:
        return 0.0, max(ends)
    return min(ends), max(ends)


def elementwise_shape(op: str, a: Ty, b: Ty, loc, src) -> tuple | None:
    sa, sb = a.shape, b.shape
    if sa is None or sb is None:
        other = sb if sa is None else sa
        if other is None or other == ():
            if op in "*/" or other is None:
                return None
        if op in "+-" and is_square(other) and TOKEN not in other:
            return other
        if op in "*/" and other == ():
            return None
        if op == "*" and is_square(other) and TOKEN not in other:
            return other                 # M * I: the diagonal of M (exact, selection heads)
        raise ProgramError(f"cannot combine I with a value of shape {fmt_shape(other)} using '{op}'",
                           loc, expected="I added to or multiplied entrywise with a square matrix, "
                                         "or I scaled by a scalar", source=src)
    if sa == sb:
        return sa
    if sa == () or (is_unit(sa) and len(sa) <= len(sb)):
        return sb
    if sb == () or (is_unit(sb) and len(sb) <= len(sa)):
        return sa
    _refuse_outer_broadcast(op, sa, sb, loc, src)
    # per-token scaling: [n] with [n, k] (numpy would need u[:, None])
    for x, y in ((sa, sb), (sb, sa)):
        if x == (TOKEN,) and len(y) == 2 and y[0] == TOKEN:
            return y
        if len(x) == 1 and x[0] != TOKEN and len(y) == 2 and y[1] == x[0]:
            return y                  # numpy's broadcast: the vector meets every row
    raise ProgramError(f"shapes {fmt_shape(sa)} and {fmt_shape(sb)} do not match for '{op}'",
                       loc, expected="equal shapes, a scalar, or [n] or [k] with [n, k]"
                       + small_matrix_diag_hint(op, sa, sb), source=src)


def small_matrix_diag_hint(op: str, sa, sb) -> str:
    """A small matrix times or divided by a vector along one of its axes (EM's means over
    each cluster's weight, [3, 2] / [3]): no broadcast reads it (numpy aligns a vector with
    the last axis: [3, 2] / [2] divides columns, as numpy does), but diag
    scales rows or columns. The clause to add to the error's expected text, or ""."""
    if op not in "*/" or not (sa and sb):
        return ""
    mat, vec = (sa, sb) if len(sa) == 2 and len(sb) == 1 else \
        (sb, sa) if op == "*" and len(sb) == 2 and len(sa) == 1 else (None, None)
    if mat is None or TOKEN in mat:
        return ""
    by = "1 / b" if op == "/" else "b"
    hint = "" if op == "*" else " (with 1 / b on [lo, hi])"
    what = "divide" if op == "/" else "scale"
    if vec[0] == mat[0]:
        return f"; to {what} row i of the matrix a by b_i (b the vector), diag({by}) @ a{hint}"
    if vec[0] == mat[1]:
        return f"; to {what} column j of the matrix a by b_j (b the vector), a @ diag({by}){hint}"
    return ""


def is_unit(shape) -> bool:
    """[1] or [1, 1]: one entry, broadcast like a scalar against a value of as many axes or
    more (numpy's rule for them)."""
    return shape is not None and len(shape) >= 1 and all(d == 1 for d in shape)


def _refuse_outer_broadcast(op, sa, sb, loc, src) -> None:
    """numpy would broadcast [k] against [m, 1] to [m, k] (an outer product): say so, and how
    to write what was more likely meant."""
    for x, y in ((sa, sb), (sb, sa)):
        if len(x) == 1 and len(y) == 2 and y[1] == 1 and TOKEN not in (x[0], y[0]):
            raise ProgramError(
                f"shapes {fmt_shape(sa)} and {fmt_shape(sb)} do not match for '{op}': numpy would "
                f"broadcast them to [{y[0]}, {x[0]}], an outer product", loc,
                expected="v[:, 0] to use a [k, 1] value as a [k] vector, or outer(u, v) for "
                         "the outer product", source=src)


def matmul_shape(a: Ty, b: Ty, loc, src) -> tuple | None:
    sa, sb = a.shape, b.shape
    if sa is None:
        return sb
    if sb is None:
        return sa
    if sa == () or sb == ():
        raise ProgramError("'@' needs vectors or matrices, not a scalar", loc,
                           expected="'*' to scale by a scalar", source=src)
    la = sa if len(sa) == 2 else (None, sa[0])      # 1-D left operand acts as a row
    lb = sb if len(sb) == 2 else (sb[0], None)      # 1-D right operand acts as a column
    if la[1] != lb[0]:
        raise ProgramError(f"inner dimensions of {fmt_shape(sa)} @ {fmt_shape(sb)} differ "
                           f"({la[1]} vs {lb[0]})", loc,
                           expected=f"a right operand whose first axis is {la[1]}", source=src)
    return tuple(x for x in (la[0], lb[1]) if x is not None)


def norm_product_bound(a: Ty, b: Ty) -> float | None:
    """A bound on every entry of a @ b from declared norms (Cauchy–Schwarz: an entry is a row
    of a times a column of b, and |x·y| <= |x| |y|): an attention score `K @ q` with
    `K : [n, d] assume row_norm <= 1` and `q : [d] assume norm <= 1` lies in [-1, 1]. A
    spectral norm bounds every row and column; a token's vector is a row of [n, k] data and a
    column of its transpose. None where no such pair is declared."""
    sa, sb = a.shape or (), b.shape or ()
    rows = a.norm if a.norm is not None else (
        a.token_norm if len(sa) == 2 and sa[0] == TOKEN else None)
    cols = b.norm if b.norm is not None else (
        b.token_norm if len(sb) == 2 and sb[1] == TOKEN else None)
    return None if rows is None or cols is None else rows * cols


def declared_product_interval(a: Ty, b: Ty, square: bool) -> tuple[float | None, float | None]:
    """Bounds on every entry of a @ b where both factors have declared ranges and the axis
    the product sums over is a small one of k entries: k times the range of one term (of a
    square, where a and b are one value: `v0 @ v0 >= 0`, so `sqrt(v0 @ v0)` needs no domain).
    Only declared values, as for the norms: a computed value's range would grow with every
    iteration of a loop. Over the tokens the count is n, known only at run time."""
    if not (a.declared and b.declared and a.bounded and b.bounded and a.shape):
        return None, None
    k = a.shape[-1]
    if k == TOKEN:
        return None, None
    lo, hi = power_interval(a, 2) if square else _interval("*", a, b)
    return k * lo, k * hi


def is_square(shape) -> bool:
    """A [k, k] matrix ([n, n] never gets this far: check_holdable refuses it)."""
    return shape is not None and len(shape) == 2 and shape[0] == shape[1]


def check_holdable(shape, loc, src):
    if shape is None:
        return
    if len(shape) > 2:
        raise ProgramError(f"values have at most 2 axes, got {fmt_shape(shape)}", loc, source=src)
    if shape.count(TOKEN) > 1:
        raise ProgramError(f"the target cannot hold an {fmt_shape(shape)} value (one column per "
                           "token, so at most one token axis)", loc,
                           expected="a product that contracts the token axis, e.g. A.T @ B", source=src)


def _divisible(sa, sb) -> bool:
    """Shapes `/` accepts: a scalar or equal-shaped divisor, a scalar numerator (1 / u), token
    data divided per token by an [n] value, or a matrix's rows divided entrywise by a [k]
    vector (numpy's broadcast of [r, k] / [k]: per-feature scaling, C / sqrt(var)), and a [k]
    vector by a matrix's rows ([k] / [r, k], numpy's broadcast the other way: u * (1 / M))."""
    if sb == () or sa == sb or sa == () or (is_unit(sb) and sa is not None and len(sb) <= len(sa)):
        return True
    if sa is not None and len(sa) == 2 and sb == (sa[1],) and sa[1] != TOKEN:
        return True
    if sb is not None and len(sb) == 2 and sa == (sb[1],) and sb[1] != TOKEN:
        return True
    return sb == (TOKEN,) and sa is not None and len(sa) == 2 and sa[0] == TOKEN
