"""Indexing and slicing, numpy's basic indexing with compile-time subscripts: `x[i]`,
`x[a:b]`, `M[i, :]`, `M[:, j]`, `M[i, j]`, `A[:, j]`, `x[::2]`.

Every subscript is a compile-time integer (a number, a param, arithmetic on them), or a slice
`start:stop:step` of such integers; an integer subscript drops its axis, a slice keeps it. So
what a subscript picks is known when the program is compiled: the checker turns it into the
list of positions it keeps (`AxisPick`), and the interpreter and the dataflow builder both read
that list (the compiled model multiplies by constant 0/1 selections: exact).

The token axis `n` is indexed only where the positions do not depend on n: a non-negative
index `A[i, :]`, or a slice with non-negative start and stop `A[0:4, :]`; the compiled model
then needs more than the largest such index tokens, and the data is refused with fewer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import ast
from .types import TOKEN, Ty, check_holdable, fmt_shape


@dataclass(frozen=True)
class AxisPick:
    """What a subscript keeps of one axis: the positions `picks` (None: the whole axis, in
    order) and whether the axis is dropped (an integer subscript)."""
    picks: tuple[int, ...] | None
    drop: bool = False


def index_value(walker, e: ast.Index, env):
    """Check (and, through walker.apply, evaluate) `value[subscripts]`."""
    base = walker.eval(e.value, env)
    shape = base.ty.shape
    if shape is None:
        raise walker.err("I cannot be indexed: its size is unknown here", e.value.loc,
                         expected="a value of known shape, e.g. ones(k) or a matrix")
    if shape == ():
        raise walker.err("a scalar cannot be indexed", e.value.loc,
                         expected="a vector [k] or a matrix [r, c]")
    if len(e.subscripts) > len(shape):
        raise walker.err(f"too many subscripts: a {fmt_shape(shape)} value has {len(shape)} "
                         f"ax{'is' if len(shape) == 1 else 'es'}, indexed with "
                         f"{len(e.subscripts)}", e.subscripts[len(shape)].loc,
                         expected=f"at most {len(shape)} subscript{'s' * (len(shape) > 1)}")
    subs = list(e.subscripts) + [None] * (len(shape) - len(e.subscripts))
    picks = tuple(_axis(walker, s, size, axis, env)
                  for axis, (s, size) in enumerate(zip(subs, shape)))
    out = tuple(size if p.picks is None else len(p.picks)
                for p, size in zip(picks, shape) if not p.drop)
    check_holdable(out, e.loc, walker.src)
    t = base.ty
    symmetric = t.symmetric and len(out) == 2 and picks[0] == picks[1]
    ty = Ty(out, lo=t.lo, hi=t.hi, sign=t.sign, flag=t.flag, symmetric=symmetric)
    return walker.apply("index", ty, (base,), (e, picks))


def _axis(walker, s, size, axis: int, env) -> AxisPick:
    if s is None:
        return AxisPick(None)
    token = size == TOKEN
    if not isinstance(s, ast.Slice):
        i = _integer(walker, s, "an index", env)
        if token:
            if i < 0:
                raise walker.err(f"index {i} counts from the end of the token axis, whose length "
                                 "n is known only at run time", s.loc,
                                 expected="a non-negative token index (token i is row i of the "
                                          "data)")
            return AxisPick((i,), drop=True)
        if not -size <= i < size:
            raise walker.err(f"index {i} is out of range for axis {axis}, of length {size}",
                             s.loc, expected=f"an index from {-size} to {size - 1}")
        return AxisPick((i % size,), drop=True)
    step = 1 if s.step is None else _integer(walker, s.step, "a slice step", env)
    if step == 0:
        raise walker.err("a slice step cannot be 0", s.step.loc, expected="a non-zero integer")
    start = None if s.start is None else _integer(walker, s.start, "a slice start", env)
    stop = None if s.stop is None else _integer(walker, s.stop, "a slice stop", env)
    if token:
        return _token_slice(walker, s, start, stop, step)
    kept = tuple(range(*slice(start, stop, step).indices(size)))
    if not kept:
        raise walker.err(f"this slice of axis {axis} (length {size}) is empty", s.loc,
                         expected="a slice that keeps at least one position")
    return AxisPick(None if kept == tuple(range(size)) else kept)


def _token_slice(walker, s: ast.Slice, start, stop, step) -> AxisPick:
    """A slice of the token axis: all of it, or fixed positions, which cannot depend on n: the
    end it runs towards must be given (going up) and no bound may count from the end."""
    if start is None and stop is None and step == 1:
        return AxisPick(None)
    fixed = (stop is not None and stop >= 0 and (start or 0) >= 0) if step > 0 else \
        (start is not None and start >= 0 and (stop is None or stop >= 0))
    if not fixed:
        raise walker.err("this slice of the token axis keeps a number of tokens that depends on "
                         "n, known only at run time", s.loc,
                         expected="the whole axis ':', or fixed non-negative bounds such as 0:4 "
                                  "(a small vector of those tokens)")
    kept = tuple(range(start or 0, stop, step)) if step > 0 else \
        tuple(range(start, -1 if stop is None else stop, step))
    if not kept:
        raise walker.err("this slice of the token axis is empty", s.loc,
                         expected="start < stop (start > stop going down)")
    return AxisPick(kept)


def _integer(walker, e, what: str, env) -> int:
    v = walker.const_of(e, what, env)
    if not (math.isfinite(v) and v == int(v)):
        raise walker.err(f"{what} must be an integer, got {v:g}", e.loc,
                         expected="an integer: a number, a param, or arithmetic on them")
    return int(v)


def select(x, picks: tuple[AxisPick, ...]):
    """numpy: `x` with each axis reduced to its picks (the interpreter's meaning)."""
    import numpy as np
    out = np.asarray(x)
    for axis in reversed(range(len(picks))):
        p = picks[axis]
        if p.picks is None:
            continue
        out = np.take(out, p.picks[0] if p.drop else list(p.picks), axis=axis)
    return out


def token_reach(picks: tuple[AxisPick, ...], shape) -> int:
    """How many tokens the subscript needs (0 if it does not index the token axis)."""
    return max((max(p.picks) + 1 for p, size in zip(picks, shape)
                if size == TOKEN and p.picks is not None), default=0)

