"""Builtins that build or reshape values rather than map entries: `ones`, `zeros`, `sum`,
`max`, `min`, `diag`.

They share the Walker (checker.py) with the scalar functions, so the checker, the interpreter
and the dataflow builder read them the same way; this module only knows their shape and
interval rules. None of them is approximated, so none takes `on` or `tol`:

    ones(k), zeros(k)       [k] of ones / zeros; ones(r, c) is [r, c]; a size is a compile-time
                            positive integer or `n` (ones(n) is the token axis' ones)
    sum(x)                  over the first axis: [n, k] → [k], [k, c] → [c], [k] → []
    max(u, v), min(u, v)    elementwise, broadcasting like `+`; exact with ReLUs
                            (max(u, v) = v + relu(u − v)), so no domain is needed
    diag(v), diag(M)        [k] → [k, k] with v on the diagonal; [k, k] → [k], its diagonal
                            (numpy's np.diag); exact, but compiled with ReLUs gated by the
                            identity, which need bounds on the argument (the checker's)
    stack(a, b, ...)        numpy's np.stack on axis 0: k scalars → [k], k vectors [d] → [k, d]
                            (d may be n: [k, n]); exact (constant selections)
    tril(M, k), triu(M, k)  the entries on and below (above) the k-th diagonal of a small matrix,
                            the others 0 (k defaults to 0); exact
    outer(u, v)             u vᵀ of two vectors [a], [b] → [a, b]; exact (one head)
"""
from __future__ import annotations

import math

from .types import (TOKEN, Ty, _interval, check_holdable, diagonal_interval, elementwise_shape,
                    fmt_shape, is_square)


def call_structural(walker, e, env):
    """Check (and, through walker.apply, evaluate) one structural builtin call."""
    if e.domain is not None or e.tol is not None:
        raise walker.err(f"{e.func}() is exact: it takes no domain or tolerance, and an "
                         f"'on'/'tol' right after a call binds to that call", e.loc,
                         expected=f"parentheses around what the 'on' is for, e.g. "
                                  f"1 / ({e.func}(...)) on [lo, hi]")
    if e.func in ("ones", "zeros"):
        return _fill(walker, e, env)
    if e.func == "stack":
        return _stack(walker, e, env)
    if e.func in ("tril", "triu"):
        return _triangle(walker, e, env)
    if e.func == "outer":
        return _outer(walker, e, env)
    arity = 1 if e.func in ("sum", "diag") else 2
    if len(e.args) != arity:
        raise walker.err(f"{e.func}() takes {arity} argument{'s' * (arity > 1)}, got {len(e.args)}",
                         e.loc, expected=f"{e.func}(" + ", ".join("uv"[:arity] if arity > 1 else "x") + ")")
    args = tuple(walker.eval(a, env) for a in e.args)
    for a, val in zip(e.args, args):
        walker.require_size(e.func, a, val)
    if e.func == "diag":
        return _diag(walker, e, args[0])
    if e.func == "sum":
        x = args[0]
        if x.ty.shape == ():
            raise walker.err("sum() of a scalar", e.args[0].loc, expected="a vector or matrix")
        # over a small axis of k entries, the sum lies in k [lo, hi]; over tokens, n is unknown
        k = x.ty.shape[0]
        lo, hi = (k * x.ty.lo, k * x.ty.hi) if x.ty.bounded and k != TOKEN else (None, None)
        walker.note_token_sum(e, (x.ty.lo, x.ty.hi) if k == TOKEN and x.ty.bounded else None)
        return walker.apply("sum", Ty(x.ty.shape[1:], lo=lo, hi=hi), args, e)
    return _max_min(walker, e, args)


def _fill(walker, e, env):
    if len(e.args) not in (1, 2):
        raise walker.err(f"{e.func}() takes 1 or 2 sizes, got {len(e.args)}", e.loc,
                         expected=f"{e.func}(k) or {e.func}(r, c)")
    shape = []
    for a in e.args:
        if getattr(a, "id", None) == TOKEN and TOKEN not in env:
            shape.append(TOKEN)
            continue
        k = walker.const_of(a, f"a size of {e.func}()", env)
        if not (math.isfinite(k) and k == int(k) and k >= 1):
            raise walker.err(f"a size must be a positive integer, got {k:g}", a.loc,
                             expected="a dim, a positive integer, or n")
        shape.append(int(k))
    shape = tuple(shape)
    check_holdable(shape, e.loc, walker.src)
    value = 1.0 if e.func == "ones" else 0.0
    return walker.apply("fill", Ty(shape, lo=value, hi=value, flag=True,
                                   symmetric=is_square(shape)), (), (e, value))


def _diag(walker, e, x):
    shape = x.ty.shape
    if len(shape) == 1 and shape[0] != TOKEN:
        out = (shape[0], shape[0])
    elif is_square(shape) and TOKEN not in shape:
        out = (shape[0],)
    else:
        raise walker.err(f"diag() of a {fmt_shape(shape)} value", e.args[0].loc,
                         expected="a small vector [k] (gives [k, k]) or a square matrix [k, k] "
                                  "(gives its diagonal [k])")
    t = x.ty
    lo = hi = None
    if len(out) == 1:           # a matrix's diagonal: its diagonal bounds where it has them
        lo, hi = diagonal_interval(t) or (None, None)
    elif t.bounded:
        lo, hi = min(t.lo, 0.0), max(t.hi, 0.0)
    return walker.apply("diag", Ty(out, lo=lo, hi=hi, symmetric=len(out) == 2,
                                   diag=(t.lo, t.hi) if len(out) == 2 and t.bounded else None),
                        (x,), e)


def _max_min(walker, e, args):
    a, b = args
    ta, tb = a.ty, b.ty
    shape = elementwise_shape("+", ta, tb, e.loc, walker.src)
    pick = max if e.func == "max" else min
    const = pick(ta.const, tb.const) if ta.const is not None and tb.const is not None else None
    lo = hi = None
    if ta.bounded and tb.bounded:
        lo, hi = pick(ta.lo, tb.lo), pick(ta.hi, tb.hi)
    sym = (ta.symmetric or ta.shape == ()) and (tb.symmetric or tb.shape == ())
    return walker.apply(e.func, Ty(shape, const=const, lo=lo, hi=hi, symmetric=bool(sym)), args, e)


def _stack(walker, e, env):
    if not e.args:
        raise walker.err("stack() needs at least one value", e.loc, expected="stack(a, b, ...)")
    args = tuple(walker.eval(a, env) for a in e.args)
    first = args[0].ty.shape
    for a, val in zip(e.args, args):
        walker.require_size("stack", a, val)
        if val.ty.shape != first:
            raise walker.err(f"stack() needs values of one shape: the first is {fmt_shape(first)}, "
                             f"this one {fmt_shape(val.ty.shape)}", a.loc,
                             expected=f"a value of shape {fmt_shape(first)}")
    if len(first) > 1:
        raise walker.err(f"stack() of {fmt_shape(first)} values would have 3 axes", e.args[0].loc,
                         expected="scalars (giving [k]) or vectors [d] (giving [k, d])")
    shape = (len(args),) + first
    check_holdable(shape, e.loc, walker.src)
    tys = [a.ty for a in args]
    lo = hi = None
    if all(t.bounded for t in tys):
        lo, hi = min(t.lo for t in tys), max(t.hi for t in tys)
    return walker.apply("stack", Ty(shape, lo=lo, hi=hi, sign=all(t.sign for t in tys),
                                    flag=all(t.flag for t in tys)), args, e)


def _triangle(walker, e, env):
    if len(e.args) not in (1, 2):
        raise walker.err(f"{e.func}() takes 1 or 2 arguments, got {len(e.args)}", e.loc,
                         expected=f"{e.func}(M) or {e.func}(M, k)")
    m = walker.eval(e.args[0], env)
    walker.require_size(e.func, e.args[0], m)
    shape = m.ty.shape
    if len(shape) != 2 or TOKEN in shape:
        raise walker.err(f"{e.func}() of a {fmt_shape(shape)} value", e.args[0].loc,
                         expected="a small matrix [r, c] (no token axis)")
    k = 0
    if len(e.args) == 2:
        v = walker.const_of(e.args[1], f"the diagonal of {e.func}()", env)
        if not (math.isfinite(v) and v == int(v)):
            raise walker.err(f"the diagonal of {e.func}() must be an integer, got {v:g}",
                             e.args[1].loc, expected="0 (the main diagonal), -1 below it, 1 above")
        k = int(v)
    t = m.ty
    lo = hi = None
    if t.bounded:
        lo, hi = min(t.lo, 0.0), max(t.hi, 0.0)
    return walker.apply(e.func, Ty(shape, lo=lo, hi=hi, flag=t.flag), (m,), (e, k))


def _outer(walker, e, env):
    if len(e.args) != 2:
        raise walker.err(f"outer() takes 2 arguments, got {len(e.args)}", e.loc,
                         expected="outer(u, v)")
    args = tuple(walker.eval(a, env) for a in e.args)
    for a, val in zip(e.args, args):
        walker.require_size("outer", a, val)
        if len(val.ty.shape) != 1:
            raise walker.err(f"outer() takes two vectors; this is {fmt_shape(val.ty.shape)}",
                             a.loc, expected="a vector [k] (v[:, 0] turns a [k, 1] into one)")
    shape = args[0].ty.shape + args[1].ty.shape
    check_holdable(shape, e.loc, walker.src)
    lo, hi = _interval("*", args[0].ty, args[1].ty)
    return walker.apply("outer", Ty(shape, lo=lo, hi=hi, sign=args[0].ty.sign and args[1].ty.sign),
                        args, e)
