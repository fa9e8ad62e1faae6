"""The reference interpreter: the program run in numpy float64 with exact scalar functions.

It is the oracle every compiled model is judged against, so it is deliberately plain: the
checker's walk with numpy arrays attached, one problem at a time (a leading batch axis is a
Python loop). Input validation lives here too (`validate_inputs`), shared with the encoder, so
bad data is refused with the same words whichever path it takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import ast
from .checker import TOKEN, Ty, Val, Walker, fmt_shape, resolve_params
from ..errors import InputError
from .functions import EXACT, clip
from .parser import parse_file

SIGN_TOL = 0.0          # a sign input must be exactly ±1
ASSUME_RTOL = 1e-9      # slack on declared bounds (row_norm, norm, range, spectrum)


# ---- inputs --------------------------------------------------------------------------------

def validate_inputs(program: ast.Program, params: dict[str, float], inputs: dict) -> tuple[dict[str, np.ndarray], int | None, int | None]:
    """Check names, shapes, finiteness and assumptions; return (arrays, batch size, n).

    Arrays come back float64 and batched: shape (B, *declared) with the token axis filled in.
    The batch size is None when no input had a batch axis (B = 1 then, squeezed by callers).
    """
    walker = Walker(program, params)
    decls = {d.name: d for d in program.inputs}
    unknown = sorted(set(inputs) - set(decls))
    if unknown:
        raise InputError(f"unknown input{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                         f"the program takes: {', '.join(decls) or 'none'}")
    missing = [name for name in decls if name not in inputs]
    if missing:
        raise InputError(f"missing input{'s' * (len(missing) > 1)} {', '.join(missing)}; "
                         f"expected shapes: " + ", ".join(
                             f"{m} {fmt_shape(walker.input_type(decls[m]).shape)}" for m in missing))
    arrays: dict[str, np.ndarray] = {}
    batch: int | None = None
    n: int | None = None
    for name, decl in decls.items():
        ty = walker.input_type(decl)
        raw = inputs[name]
        try:
            arr = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"input '{name}' must be numeric with shape {fmt_shape(ty.shape)}, "
                             f"got {type(raw).__name__}") from None
        rank = len(ty.shape)
        if arr.ndim not in (rank, rank + 1):
            raise InputError(f"input '{name}' must have shape {fmt_shape(ty.shape)} (optionally with a "
                             f"leading batch axis), got shape {list(arr.shape)}")
        if arr.ndim == rank + 1:
            if batch is not None and arr.shape[0] != batch:
                raise InputError(f"input '{name}' has batch size {arr.shape[0]}, but other inputs "
                                 f"have batch size {batch}")
            batch = arr.shape[0]
            core = arr.shape[1:]
        else:
            core = arr.shape
        for axis, (want, got) in enumerate(zip(ty.shape, core)):
            if want == TOKEN:
                if n is not None and got != n:
                    raise InputError(f"input '{name}' has {got} tokens on axis {axis}, but other "
                                     f"inputs have n = {n}")
                n = got
            elif want != got:
                raise InputError(f"input '{name}' must have shape {fmt_shape(ty.shape)}, got shape "
                                 f"{list(core)} (axis {axis} should be {want})")
        if n == 0:
            raise InputError(f"input '{name}' has no tokens (n = 0)")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"input '{name}' contains NaN or infinity")
        arrays[name] = arr
    for name, arr in arrays.items():
        rank = len(walker.input_type(decls[name]).shape)
        if arr.ndim == rank:
            arr = arr[None]
        if batch is not None and arr.shape[0] == 1 and batch != 1:
            arr = np.broadcast_to(arr, (batch, *arr.shape[1:]))
        arrays[name] = arr
        for q in decls[name].qualifiers:
            _check_assumption(name, arr, q, walker)
    return arrays, batch, n


def _check_assumption(name: str, arr: np.ndarray, q: ast.Qualifier, walker: Walker):
    if q.kind == "sign":
        bad = arr[np.abs(np.abs(arr) - 1.0) > SIGN_TOL]
        if bad.size:
            raise InputError(f"input '{name}' is declared 'sign': every entry must be -1 or +1, "
                             f"got {bad.flat[0]:g}")
    elif q.kind == "flag":
        bad = arr[(arr != 0.0) & (arr != 1.0)]
        if bad.size:
            raise InputError(f"input '{name}' is declared 'flag': every entry must be 0 or 1, "
                             f"got {bad.flat[0]:g}")
    elif q.kind == "range":
        lo = walker.const_of(q.interval.lo, "")
        hi = walker.const_of(q.interval.hi, "")
        slack = ASSUME_RTOL * max(1.0, abs(lo), abs(hi))
        if arr.size and (arr.min() < lo - slack or arr.max() > hi + slack):
            raise InputError(f"input '{name}' is declared in [{lo:g}, {hi:g}], got values in "
                             f"[{arr.min():g}, {arr.max():g}]")
    elif q.kind == "row_norm":
        bound = walker.const_of(q.bound, "")
        worst = float(np.linalg.norm(arr, axis=-1).max())
        if worst > bound * (1 + ASSUME_RTOL):
            raise InputError(f"input '{name}' is declared row_norm <= {bound:g}, got a row of norm "
                             f"{worst:.6g}")
    elif q.kind == "norm":
        bound = walker.const_of(q.bound, "")
        mats = arr if arr.ndim >= 3 else arr.reshape(arr.shape[0], -1, 1) if arr.ndim == 2 else arr.reshape(-1, 1, 1)
        worst = float(np.linalg.norm(mats, ord=2, axis=(-2, -1)).max())
        if worst > bound * (1 + ASSUME_RTOL):
            raise InputError(f"input '{name}' is declared norm <= {bound:g}, got norm {worst:.6g}")
    elif q.kind in ("symmetric", "spectrum"):
        asym = float(np.abs(arr - np.swapaxes(arr, -1, -2)).max())
        if asym > ASSUME_RTOL * max(1.0, float(np.abs(arr).max())):
            raise InputError(f"input '{name}' is declared {q.kind}: it must be symmetric, got "
                             f"max |M - M.T| = {asym:.3g}")
        if q.kind == "spectrum":
            lo = walker.const_of(q.interval.lo, "")
            hi = walker.const_of(q.interval.hi, "")
            eig = np.linalg.eigvalsh((arr + np.swapaxes(arr, -1, -2)) / 2)
            slack = ASSUME_RTOL * max(1.0, abs(lo), abs(hi))
            if eig.min() < lo - slack or eig.max() > hi + slack:
                raise InputError(f"input '{name}' is declared spectrum in [{lo:g}, {hi:g}], got "
                                 f"eigenvalues in [{eig.min():.6g}, {eig.max():.6g}]")


# ---- evaluation ----------------------------------------------------------------------------

class NumpyWalker(Walker):
    """The checker's walk with float64 arrays attached. One problem (no batch axis)."""

    def __init__(self, program, params, n: int | None):
        super().__init__(program, params)
        self.n = n

    def apply(self, op, ty: Ty, args, node) -> Val:
        return Val(ty, self._compute(op, ty, [a.data for a in args], [a.ty for a in args], node))

    def _compute(self, op, ty, xs, tys, node):
        if op == "const":
            return np.float64(ty.const)
        if op == "n":
            return np.float64(self.n)
        if op == "I":
            return _ScaledIdentity(1.0)
        if op == "neg":
            return -xs[0]
        if op == "T":
            x = xs[0]
            return x if isinstance(x, _ScaledIdentity) or np.ndim(x) < 2 else x.T
        if op == "sum":
            return xs[0].sum(axis=0)
        if op == "call":
            e, _domain, _tol = node
            if e.func == "clip":
                return clip(xs[0], float(xs[1]), float(xs[2]))
            with np.errstate(all="ignore"):
                return EXACT[e.func](xs[0])
        a, b = (_resolve(x, other) for x, other in ((xs[0], xs[1]), (xs[1], xs[0])))
        ta, tb = tys
        if op == "@":
            if isinstance(a, _ScaledIdentity):
                return _ScaledIdentity(a.scale * b.scale) if isinstance(b, _ScaledIdentity) else a.scale * b
            if isinstance(b, _ScaledIdentity):
                return a * b.scale
            return a @ b
        if op == "**":
            if isinstance(a, _ScaledIdentity):
                return _ScaledIdentity(a.scale ** float(b))
            return np.power(a, float(b))
        if isinstance(a, _ScaledIdentity) or isinstance(b, _ScaledIdentity):
            return _scaled_identity_op(op, a, b)
        a, b = _align_tokens(a, ta, b, tb)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[op](a, b)


class _ScaledIdentity:
    """c·I whose size is not known yet (the checker's shape None)."""

    def __init__(self, scale):
        self.scale = scale

    def __mul__(self, c):
        return _ScaledIdentity(self.scale * c)

    __rmul__ = __mul__

    def __neg__(self):
        return _ScaledIdentity(-self.scale)


def _resolve(x, other):
    """Give c·I a size when it meets a square matrix."""
    if isinstance(x, _ScaledIdentity) and isinstance(other, np.ndarray) and other.ndim == 2:
        return x.scale * np.eye(other.shape[0])
    return x


def _scaled_identity_op(op, a, b):
    """Arithmetic among unsized multiples of I (and scalars): the result is one too."""
    sa = a.scale if isinstance(a, _ScaledIdentity) else a
    sb = b.scale if isinstance(b, _ScaledIdentity) else b
    both = isinstance(a, _ScaledIdentity) and isinstance(b, _ScaledIdentity)
    if op == "*":
        return _ScaledIdentity(sa * sb)
    if op == "/":
        return _ScaledIdentity(sa / sb)
    if both and op in "+-":
        return _ScaledIdentity(sa + sb if op == "+" else sa - sb)
    raise AssertionError("the checker allows no other mix of unsized I")  # pragma: no cover


def _align_tokens(a, ta: Ty, b, tb: Ty):
    """[n] with [n, k]: scale each token's row (numpy would need u[:, None])."""
    if ta.shape == (TOKEN,) and tb.shape is not None and len(tb.shape) == 2 and tb.shape[0] == TOKEN:
        return a[:, None], b
    if tb.shape == (TOKEN,) and ta.shape is not None and len(ta.shape) == 2 and ta.shape[0] == TOKEN:
        return a, b[:, None]
    return a, b


def interpret_program(program: ast.Program, params: dict | None = None, **inputs) -> dict[str, np.ndarray]:
    values = resolve_params(program, params)
    Walker(program, values).run()                    # check first: errors name the program
    arrays, batch, n = validate_inputs(program, values, inputs)
    size = next(iter(arrays.values())).shape[0] if arrays else 1
    results: dict[str, list] = {}
    for b in range(size):
        walker = NumpyWalker(program, values, n)
        walker.inputs = set(arrays)
        env = {name: Val(walker.input_type(d), arrays[name][b]) for name, d in
               ((d.name, d) for d in program.inputs)}
        for name, val in walker.run(env).items():
            results.setdefault(name, []).append(np.asarray(val.data, dtype=np.float64))
    out = {name: np.stack(v) for name, v in results.items()}
    return out if batch is not None else {k: v[0] for k, v in out.items()}


def interpret(path, params: dict | None = None, **inputs) -> dict[str, np.ndarray]:
    """Run the program at `path` on `inputs` (numpy arrays; a leading batch axis is optional)."""
    return interpret_program(parse_file(Path(path)), params, **inputs)

