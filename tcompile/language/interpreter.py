"""The reference interpreter: the program run in numpy float64 with exact scalar functions.

It is the oracle every compiled model is judged against, so it is deliberately plain: the
checker's walk with numpy arrays attached, one problem at a time (a leading batch axis is a
Python loop). Inputs are checked by `validate_inputs` (inputs.py), which the encoder shares,
so bad data is refused with the same words whichever path it takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import ast
from .checker import TOKEN, Ty, Val, Walker, resolve_params
from .functions import EXACT, clip
from .indexing import select, token_reach
from ..errors import InputError
from .inputs import validate_inputs
from .parser import parse_file

# ---- evaluation ----------------------------------------------------------------------------

class NumpyWalker(Walker):
    """The checker's walk with float64 arrays attached. One problem (no batch axis)."""
    types_only = False          # computes values: every iteration is walked

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
        if op == "bound":          # the user's bound: trusted, the value unchanged
            return xs[0]
        if op == "T":
            x = xs[0]
            return x if isinstance(x, _ScaledIdentity) or np.ndim(x) < 2 else x.T
        if op == "sum":
            return xs[0].sum(axis=0)
        if op == "diag":
            return np.diag(xs[0])
        if op == "index":
            return self._index(xs[0], tys[0], node)
        if op == "stack":
            return np.stack([np.asarray(x, dtype=np.float64) for x in xs])
        if op in ("tril", "triu"):
            return (np.tril if op == "tril" else np.triu)(xs[0], node[1])
        if op == "outer":
            return np.outer(xs[0], xs[1])
        if op == "fill":
            return np.full([self.n if k == TOKEN else k for k in ty.shape], node[1])
        if op in ("max", "min"):
            a, b = _align_tokens(*_resolve_pair(*xs), tys[0], tys[1])
            return (np.maximum if op == "max" else np.minimum)(a, b)
        if op == "call":
            e = node[0]
            if e.func == "clip":
                return clip(xs[0], float(xs[1]), float(xs[2]))
            with np.errstate(all="ignore"):
                return EXACT[e.func](xs[0])
        a, b = _resolve_pair(*xs)
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
        a, b = _align_tokens(a, b, ta, tb)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[op](a, b)


    def _index(self, x, ty: Ty, node):
        """numpy indexing with the checker's picks; a token index needs that many tokens."""
        e, picks = node
        reach = token_reach(picks, ty.shape)
        if reach and reach > self.n:
            raise InputError(f"{_describe(e)} reads token {reach - 1}, but the data has "
                             f"{self.n} token{'s' * (self.n != 1)} (n = {self.n})")
        return select(x, picks)


def _describe(e) -> str:
    """Where an index is, for a data error: the program line and column."""
    return f"the subscript at line {e.loc.line}, column {e.loc.column}"


class _ScaledIdentity:
    """c·I whose size is not known yet (the checker's shape None)."""

    def __init__(self, scale):
        self.scale = scale

    def __mul__(self, c):
        return _ScaledIdentity(self.scale * c)

    __rmul__ = __mul__

    def __neg__(self):
        return _ScaledIdentity(-self.scale)


def _resolve_pair(a, b):
    """Give c·I a size when it meets a square matrix (either operand)."""
    return _resolve(a, b), _resolve(b, a)


def _resolve(x, other):
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


def _align_tokens(a, b, ta: Ty, tb: Ty):
    """[n] with [n, k]: scale each token's row (numpy would need u[:, None])."""
    if ta.shape == (TOKEN,) and tb.shape is not None and len(tb.shape) == 2 and tb.shape[0] == TOKEN:
        return a[:, None], b
    if tb.shape == (TOKEN,) and ta.shape is not None and len(ta.shape) == 2 and ta.shape[0] == TOKEN:
        return a, b[:, None]
    return a, b


class HaltingWalker(NumpyWalker):
    """The walk with a halting rule (runtime/halting.py `HaltingRule`, duck-typed: variable,
    tol, loop, gap and `tests(c)`): the loop it names stops after the first iteration c it
    tests where the variable moved by at most tol (max abs change) since iteration c − gap."""

    def __init__(self, program, params, n, rule):
        super().__init__(program, params, n)
        self.rule, self.steps, self.converged = rule, None, False

    def unroll(self, stmt: ast.Repeat, count: int, env, in_function: bool):
        from .run_params import loop_key
        rule = self.rule
        if loop_key(stmt, self.call_sites) != rule.loop:
            return super().unroll(stmt, count, env, in_function)
        # (`I` before the loop has no shape yet; a variable only the body assigns, none)
        start = env[rule.variable].data if rule.variable in env else None
        seen = {} if start is None or isinstance(start, _ScaledIdentity) else \
            {0: np.asarray(start, np.float64)}
        self.steps = count
        for c in range(1, count + 1):
            ret = self.exec_block(stmt.body, env, in_function)
            if ret is not None:
                return ret
            seen[c] = np.asarray(env[rule.variable].data, dtype=np.float64)
            before = seen.pop(c - rule.gap, None)
            if before is not None and rule.tests(c) and \
                    np.max(np.abs(seen[c] - before), initial=0.0) <= rule.tol:
                self.steps, self.converged = c, True
                break
        return None


def interpret_program(program: ast.Program, params: dict | None = None, halting=None,
                      **inputs) -> dict[str, np.ndarray]:
    """Run a parsed program on `inputs` in float64 numpy, problem by problem: the oracle every
    compiled model is compared with (a leading batch axis on the inputs is optional).
    `halting`: a halting rule (HaltingWalker; the count param at the rule's limit) — the
    outputs then add `steps` and `converged` per problem, as a halting run of a build does."""
    values = resolve_params(program, params)
    Walker(program, values).run()                    # check first: errors name the program
    arrays, batch, n = validate_inputs(program, values, inputs)
    size = next(iter(arrays.values())).shape[0] if arrays else 1
    results: dict[str, list] = {}
    for b in range(size):
        walker = NumpyWalker(program, values, n) if halting is None else \
            HaltingWalker(program, values, n, halting)
        env = {d.name: Val(walker.input_type(d), arrays[d.name][b]) for d in program.inputs}
        for name, val in walker.run(env).items():
            results.setdefault(name, []).append(np.asarray(val.data, dtype=np.float64))
        if halting is not None:
            results.setdefault("steps", []).append(np.int64(walker.steps))
            results.setdefault("converged", []).append(np.bool_(walker.converged))
    out = {name: np.stack(v) for name, v in results.items()}
    return out if batch is not None else {k: v[0] for k, v in out.items()}


def interpret(path, params: dict | None = None, **inputs) -> dict[str, np.ndarray]:
    """Run the program at `path` on `inputs` (numpy arrays; a leading batch axis is optional)."""
    return interpret_program(parse_file(Path(path)), params, **inputs)

