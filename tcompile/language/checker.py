"""Checking: what every expression is (shape, token axis, constness, value bounds) and whether
the target machine can hold it.

`Walker` evaluates a program abstractly. Every value carries a `Ty`; the `apply` hook is the
only thing subclasses change: the checker keeps types only, the reference interpreter
(`interpret.py`) attaches numpy arrays, the dataflow builder (`dataflow.py`) attaches graph
nodes. One walk means one meaning: the three cannot disagree about shapes, scoping, function
inlining or loop unrolling.

Shapes are tuples whose entries are ints or the token axis ``"n"``. The machine holds scalars,
small vectors and matrices, token vectors ``[n]``, token data ``[n, k]`` and its transpose
``[k, n]``; never ``[n, n]``. ``shape is None`` marks a multiple of the identity `I` whose size
is fixed by the first square matrix it meets. `Ty` and the operators' shape and interval rules
live in types.py; the builtins that build or reshape values (ones, zeros, sum, max, min, diag)
in structural.py. A division by a runtime value is checked here like a function call: its
divisor needs an interval without 0 (declared with `on`, or inferred), because the compiled
model fits 1/b there.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .points import program_point
from . import ast
from . import portable_math as pm
from .types import (TOKEN, Ty, Val, _divisible, _interval, check_holdable,  # noqa: F401 (re-exported)
                    declared_product_interval, diagonal_rule, elementwise_shape, fmt_shape,
                    is_square, matmul_shape, norm_product_bound, power_interval,
                    same_expression, small_matrix_diag_hint)
from ..errors import ParamError, ProgramError, SourceLocation

SCALAR_FUNCTIONS = {"sigmoid", "sqrt", "reciprocal", "exp", "log", "softplus", "tanh", "sin",
                    "cos", "abs", "relu"}
EXACT_PL_FUNCTIONS = {"abs", "relu", "clip"}
STRUCTURAL_FUNCTIONS = {"ones", "zeros", "sum", "max", "min", "diag",    # structural.py
                        "stack", "tril", "triu", "outer"}
BUILTINS = SCALAR_FUNCTIONS | {"clip"} | STRUCTURAL_FUNCTIONS
# functions users reach for that the language writes otherwise: what to write instead
WRITTEN_OTHERWISE = {
    "sign": "clip(k * x, -1, 1) with a large k: sign(x) wherever |x| >= 1/k (a step has no "
            "continuous form to compile; a sign input is declared `input y : [n] sign`)",
    "mean": "sum(x) / n for the mean over the tokens, x @ ones(k) / k over a small axis",
    "norm": "sqrt(x @ x) on [lo, hi]",
    "softmax": "e = exp(x), then e / sum(e) over a small axis, or the quotient of means "
               "(e / n) / (sum(e) / n) over the tokens",
    "logsumexp": "log(sum(exp(x)))",
    "dot": "a @ b",
    "matmul": "A @ B",
    "transpose": "A.T",
    "inv": "a Newton–Schulz loop, X = 2 * X - X @ A @ X (programs/newton_inverse.tp)",
    "square": "x * x, or x ** 2",
    "pow": "x ** k",
    "maximum": "max(u, v)",
    "minimum": "min(u, v)",
    "argmax": "a choice blended both ways: max(u, v), or weights e = exp(beta * x) / sum(...)",
    "tan": "sin(x) / cos(x) on [lo, hi]",
    "eye": "I, the identity: its size comes from the matrix beside it (A + 0.1 * I)",
    "identity": "I, the identity: its size comes from the matrix beside it (A + 0.1 * I)",
}
RESERVED = {TOKEN, "I"} | BUILTINS
MAX_UNROLLED_STATEMENTS = 200_000
MAX_CALL_DEPTH = 50
MAX_WHOLE_POWER = 16          # x ** k of a runtime value: one fitted function of x, k <= this

# Image of a monotone function on an interval; None where undefined. Bounds reach the
# weights (fit domains, gate margins), so they use the bit-reproducible functions.
_FUNC_RANGE = {
    "sigmoid": lambda lo, hi: (pm.sigmoid(lo), pm.sigmoid(hi)),
    "exp": lambda lo, hi: (pm.exp(lo), pm.exp(hi)),
    "softplus": lambda lo, hi: (pm.softplus(lo), pm.softplus(hi)),
    "tanh": lambda lo, hi: (pm.tanh(lo), pm.tanh(hi)),
    "sin": lambda lo, hi: _periodic_image(pm.sin, lo, hi, 0.5),
    "cos": lambda lo, hi: _periodic_image(pm.cos, lo, hi, 0.0),
    "sqrt": lambda lo, hi: (math.sqrt(lo), math.sqrt(hi)) if lo >= 0 else None,
    "log": lambda lo, hi: (pm.log(lo), pm.log(hi)) if lo > 0 else None,
    "reciprocal": lambda lo, hi: (1 / hi, 1 / lo) if lo > 0 or hi < 0 else None,
    "relu": lambda lo, hi: (max(lo, 0.0), max(hi, 0.0)),
    "abs": lambda lo, hi: (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi))),
}


def _finite_pair(lo: float, hi: float) -> tuple[float, float] | None:
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo < hi else None


# The argument's interval where a monotone function's value is declared to lie in [lo, hi]
# (`(sqrt(g @ g)) on [1e-6, 10]`, `c / (sqrt(g @ g)) on [1e-6, 10]`): None where that leaves
# the argument unbounded (exp's value down to 0) or the function cannot reach it.
_FUNC_PREIMAGE = {
    "sqrt": lambda lo, hi: _finite_pair(max(lo, 0.0) ** 2, hi * hi) if hi > 0 else None,
    "exp": lambda lo, hi: _finite_pair(pm.log(lo), pm.log(hi)) if lo > 0 else None,
    "log": lambda lo, hi: _finite_pair(pm.exp(lo), pm.exp(hi)),
    "reciprocal": lambda lo, hi: _finite_pair(1 / hi, 1 / lo) if lo > 0 or hi < 0 else None,
    "sigmoid": lambda lo, hi: (_finite_pair(pm.log(lo / (1 - lo)), pm.log(hi / (1 - hi)))
                               if 0 < lo and hi < 1 else None),
    "tanh": lambda lo, hi: (_finite_pair(0.5 * pm.log((1 + lo) / (1 - lo)),
                                         0.5 * pm.log((1 + hi) / (1 - hi)))
                            if -1 < lo and hi < 1 else None),
    "softplus": lambda lo, hi: (_finite_pair(pm.log(pm.exp(lo) - 1), pm.log(pm.exp(hi) - 1))
                                if lo > 0 else None),
}


def _periodic_image(f, lo: float, hi: float, peak: float) -> tuple[float, float] | None:
    """The image of sin (peak 1/2) or cos (peak 0) on [lo, hi]: 1 where the interval holds a
    maximum (x = (peak + 2j) π), -1 where it holds a minimum ((peak + 1 + 2j) π), else the
    values at the ends (the function is monotone between its extremes). None where an end is
    beyond portable_math's range for them (|x| > 2³⁰)."""
    ends = (f(lo), f(hi))
    if any(math.isnan(v) for v in ends):
        return None

    def holds(offset: float) -> bool:      # some whole j with lo <= (offset + 2j) π <= hi
        return math.floor((hi / math.pi - offset) / 2) >= math.ceil((lo / math.pi - offset) / 2)
    return (-1.0 if holds(peak + 1) else min(ends)), (1.0 if holds(peak) else max(ends))


# ---- params --------------------------------------------------------------------------------

def resolve_params(program: ast.Program, overrides: dict | None = None) -> dict[str, float]:
    """Evaluate `param` and `dim` declarations in order, applying user overrides."""
    overrides = dict(overrides or {})
    declared = [*program.params, *program.dims]
    known = {d.name for d in declared}
    for name, value in overrides.items():
        if name not in known:
            raise ParamError(f"unknown parameter '{name}'; this program has: "
                             f"{', '.join(sorted(known)) or 'none'}")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ParamError(f"parameter '{name}' must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamError(f"parameter '{name}' must be a finite number, got {value!r}")
        overrides[name] = float(value)
    values: dict[str, float] = {}
    seen: dict[str, SourceLocation] = {}
    for decl in sorted(declared, key=lambda d: (d.loc.line, d.loc.column)):
        if decl.name in seen:
            raise ProgramError(f"'{decl.name}' is declared twice (first at line {seen[decl.name].line})",
                               decl.loc, expected="a new name", source=program.source)
        if decl.name in RESERVED:
            raise ProgramError(f"'{decl.name}' is reserved and cannot be declared", decl.loc,
                               expected="another name", source=program.source)
        seen[decl.name] = decl.loc
        value = overrides.get(decl.name)
        if value is None:
            value = _const_expr(decl.value, values, program)
        if not math.isfinite(value):
            raise ParamError(f"'{decl.name}' must be a finite number, got {value:g}", decl.loc,
                             source=program.source)
        if isinstance(decl, ast.Dim) and (value != int(value) or value < 1):
            raise ParamError(f"dim '{decl.name}' must be a positive integer, got {value:g}",
                             decl.loc, source=program.source)
        values[decl.name] = value
    return values


def _const_expr(e, values, program) -> float:
    walker = Walker(program, values)
    ty = walker.eval(e, {}).ty
    if ty.const is None:
        raise ProgramError("a param or dim must be a compile-time number", e.loc,
                           expected="numbers, other params and arithmetic", source=program.source)
    return ty.const


# ---- the walk ------------------------------------------------------------------------------

class Walker:
    """Evaluates the program statement by statement; `apply` attaches data to each value."""

    def __init__(self, program: ast.Program, params: dict[str, float]):
        self.program = program
        self.src = program.source
        self.params = params
        self.dims = {d.name for d in program.dims}
        self.assigned_at: dict = {}     # variable → its latest assignment's location
        self.declared_bounds = True     # may products get bounds from declared norms, ranges
        self._value_domains: dict[int, object] = {}   # id(call) → the `on` that bounds its value
        self._loop_start_cache: dict = {}
        self.statements = 0
        self.call_stack: list[str] = []
        self.call_sites: list[ast.Call] = []      # the calls being inlined, outermost first
        self.return_parts: list[int] = []         # which of its values each call returns
        self._assignments: dict[str, int] = {}
        # id(ast operand of a `*` or `-`) -> its type, this walk (_product_interval, _between)
        self._operand_ty: dict[int, Ty] = {}
        # id(ast `sum(x)` or `A.T @ r` over the token axis) -> one term's bounds, which the mean
        # `... / n` lies in (note_token_sum)
        self.token_sum_bounds: dict[int, tuple[float, float]] = {}
        # ... and of one term on the diagonal, where that is tighter (a Gram matrix's x_i²)
        self.token_sum_diag: dict[int, tuple[float, float]] = {}

    def program_point(self, stmt: ast.Assign) -> str | None:
        """`name@k` for the k-th top-level assignment to name: how stored blocks, the trace
        and the model card all name a program point, so this is the one place it is counted.
        An assignment inside a def's body is not a program point (None) and does not count.
        Call once per executed assignment."""
        if self.call_stack:
            return None
        k = self._assignments.get(stmt.target, 0)
        self._assignments[stmt.target] = k + 1
        return program_point(stmt.target, k)

    # hooks -------------------------------------------------------------------------------
    def apply(self, op: str, ty: Ty, args: tuple[Val, ...], node) -> Val:
        """Attach data for `op` applied to `args` (result type `ty`). The checker attaches none."""
        return Val(ty)

    def input_value(self, decl: ast.Input, ty: Ty) -> Val:
        return Val(ty)

    def end_of_iteration(self, loop: ast.Repeat, env: dict) -> None:
        """Called after each unrolled iteration of `loop` (the graph builder marks loop state)."""

    def has_token_axis(self) -> bool:
        return any(any(d.value == TOKEN for d in i.shape) for i in self.program.inputs)

    # errors ------------------------------------------------------------------------------
    def err(self, msg, loc, expected=None):
        return ProgramError(msg, loc, expected=expected, source=self.src)

    # program -----------------------------------------------------------------------------
    def input_type(self, decl: ast.Input) -> Ty:
        shape = []
        for d in decl.shape:
            if d.value == TOKEN:
                shape.append(TOKEN)
            elif isinstance(d.value, int):
                if d.value < 1:
                    raise self.err("axis lengths must be positive", d.loc)
                shape.append(d.value)
            elif d.value in self.dims:
                shape.append(int(self.params[d.value]))
            else:
                raise self.err(f"unknown dimension '{d.value}'", d.loc,
                               expected="n (the token axis), a declared dim, or an integer")
        shape = tuple(shape)
        check_holdable(shape, decl.loc, self.src)
        ty = Ty(shape)
        for q in decl.qualifiers:
            ty = self._qualify(ty, q)
        return replace(ty, declared=ty.bounded)

    def _qualify(self, ty: Ty, q: ast.Qualifier) -> Ty:
        if q.kind == "sign":
            return replace(ty, sign=True, lo=-1.0, hi=1.0)
        if q.kind == "flag":
            return replace(ty, flag=True, lo=0.0, hi=1.0)
        if q.kind in ("symmetric", "spectrum") and not is_square(ty.shape):
            raise self.err(f"'{q.kind}' needs a square matrix, not {fmt_shape(ty.shape)}", q.loc)
        if q.kind == "symmetric":
            return replace(ty, symmetric=True)
        if q.kind == "row_norm" and not (ty.shape and ty.shape[0] == TOKEN and len(ty.shape) == 2):
            raise self.err(f"'row_norm' bounds the rows of token data [n, k], not {fmt_shape(ty.shape)}",
                           q.loc, expected="'in [lo, hi]' or 'norm <= b'")
        if q.kind in ("row_norm", "norm"):
            b = self.const_of(q.bound, f"the bound of '{q.kind}'")
            if b <= 0:
                raise self.err(f"'{q.kind}' bound must be positive, got {b:g}", q.bound.loc)
            norms = {"norm": b} if q.kind == "norm" else {"token_norm": b}
            return replace(ty, lo=-b, hi=b, **norms)
        lo, hi = self.interval_of(q)
        if not lo <= hi:
            raise self.err(f"empty interval [{lo:g}, {hi:g}]", q.interval.loc, expected="lo <= hi")
        if q.kind == "spectrum":
            m = max(abs(lo), abs(hi))
            return replace(ty, symmetric=True, lo=-m, hi=m, norm=m)
        return replace(ty, lo=lo, hi=hi)

    def interval_of(self, q: ast.Qualifier) -> tuple[float, float]:
        """The bounds of a `range` or `spectrum` qualifier's interval, as numbers."""
        return (self.const_of(q.interval.lo, "an interval bound"),
                self.const_of(q.interval.hi, "an interval bound"))

    def const_of(self, e, what: str, env=None, hint: str = "") -> float:
        ty = self.eval(e, env or {}).ty
        if ty.const is None:
            raise self.err(f"{what} must be a compile-time number", e.loc,
                           expected="numbers, params and arithmetic on them" + hint)
        return ty.const

    def run(self, inputs: dict[str, Val] | None = None) -> dict[str, Val]:
        """Walk the whole program; return the values of its outputs."""
        try:
            return self._run(inputs)
        except RecursionError:
            from .nesting import too_deep
            raise too_deep(self.program.file, self.src) from None

    def _run(self, inputs: dict[str, Val] | None = None) -> dict[str, Val]:
        for fn in self.program.functions.values():
            if fn.name in RESERVED or fn.name in self.params:
                raise self.err(f"function name '{fn.name}' is reserved (a builtin, n, I, or a param)",
                               fn.loc, expected="another name")
        env: dict[str, Val] = {}
        seen: dict[str, SourceLocation] = {}
        for decl in self.program.inputs:
            if decl.name in RESERVED or decl.name in self.params:
                raise self.err(f"input '{decl.name}' clashes with a reserved name or a param",
                               decl.loc, expected="another name")
            if decl.name in seen:
                raise self.err(f"input '{decl.name}' is declared twice (first at line "
                               f"{seen[decl.name].line})", decl.loc, expected="a new name")
            seen[decl.name] = decl.loc
            ty = self.input_type(decl)
            env[decl.name] = inputs[decl.name] if inputs is not None else self.input_value(decl, ty)
        self.inputs = set(env)
        self.exec_block(self.program.body, env, in_function=False)
        outputs: dict[str, Val] = {}
        for out in self.program.outputs:
            if out.name in outputs:
                raise self.err(f"output '{out.name}' is listed twice", out.loc)
            if out.name not in env:
                raise self.err(f"output '{out.name}' is never assigned", out.loc,
                               expected="an assignment to it in the program body")
            val = env[out.name]
            if val.ty.shape is None:
                raise self.err(f"the size of output '{out.name}' cannot be inferred (it is a multiple "
                               "of I)", out.loc, expected="a value of known shape")
            outputs[out.name] = val
        if not self.program.outputs:
            raise self.err("the program declares no output", self.program.loc,
                           expected="a line 'output NAME'")
        return outputs

    def exec_block(self, stmts, env, in_function: bool):
        loop_starts = self._loop_starts(stmts)
        for i, stmt in enumerate(stmts):
            self._count_statements(1, stmt)
            if isinstance(stmt, ast.Assign):
                outer = self.declared_bounds
                self.declared_bounds = outer and i not in loop_starts
                try:
                    self._assign(stmt, env)
                finally:
                    self.declared_bounds = outer
                if i in loop_starts:
                    env[stmt.target] = _undeclared(env[stmt.target])
            elif isinstance(stmt, ast.Repeat):
                ret = self._repeat(stmt, env, in_function)
                if ret is not None:
                    return ret
            elif isinstance(stmt, ast.Return):
                if not in_function:
                    raise self.err("'return' outside a function", stmt.loc)
                if i != len(stmts) - 1:
                    raise self.err("statements after 'return' are never run", stmts[i + 1].loc,
                                   expected="'return' as the last statement")
                return self.eval(stmt.values[self.return_parts[-1]], env)
        return None

    def _count_statements(self, k, stmt) -> None:
        """Charge `k` more unrolled statements; refuse a program past MAX_UNROLLED_STATEMENTS."""
        self.statements += k
        if self.statements > MAX_UNROLLED_STATEMENTS:
            raise self.err("the program unrolls to too many statements "
                           f"(> {MAX_UNROLLED_STATEMENTS})", stmt.loc,
                           expected="fewer repeats (a shared build, --loops shared, takes a "
                                    "larger count at run time: build with a smaller one)")

    def _repeat(self, stmt: ast.Repeat, env, in_function: bool):
        """Unroll a repeat loop; the value of a `return` inside it, else None."""
        return self.unroll(stmt, self.repeat_count(stmt, env), env, in_function)

    def repeat_count(self, stmt: ast.Repeat, env) -> int:
        name = stmt.count.id if isinstance(stmt.count, ast.Name) and \
            stmt.count.id not in RESERVED else "steps"
        count = self.const_of(stmt.count, "a repeat count", env,
                              hint=f"; a count chosen when the model runs is a param "
                                   f"(`param {name} = 10`), given at run time to a shared build "
                                   f"(--loops shared, then -p {name}=N), and a loop that stops "
                                   "by itself runs with until=(variable, tol)")
        if not math.isfinite(count) or count != int(count) or count < 0:
            raise self.err(f"a repeat count must be a non-negative integer, got {count:g}",
                           stmt.count.loc)
        self._count_statements(int(count) if count <= MAX_UNROLLED_STATEMENTS else count, stmt)
        return int(count)

    # a walk of types only: once an iteration leaves every variable's type as it found it,
    # the rest are the same walk (the graph builder, which makes nodes, sets this False)
    types_only = True

    def unroll(self, stmt: ast.Repeat, count: int, env, in_function: bool):
        """Run `count` iterations of the loop body (the shared build's walker widens the loop
        state between them: compiler/steady_state.py). A types-only walk stops at a fixed
        point: an iteration that changes no variable's type (its checks then repeat as they
        are), so checking 10,000 iterations costs as much as checking a few."""
        entry = {k: v.ty.shape for k, v in env.items()}
        for i in range(int(count)):
            before = _types(env) if self.types_only else None
            starts = {k: v.ty.shape for k, v in env.items()}
            try:
                ret = self.exec_block(stmt.body, env, in_function)
            except ProgramError as e:
                raise _with_shape_changes(e, entry, starts, self.assigned_at) if i else e
            if ret is not None:
                return ret
            self.end_of_iteration(stmt, env)
            if before is not None and _types(env) == before:
                break
        if int(count) == 0:   # still check the body's names and shapes once
            self.exec_block(stmt.body, dict(env), in_function)
        return None

    def _loop_starts(self, stmts) -> frozenset[int]:
        """The positions in a block of assignments that give a later loop of the block its
        starting value (`z = A @ x0` or `q = q0` before `repeat { ... }`). Their products
        get no bounds from declared norms or ranges (_domain_operand aside), and the variable
        keeps none: the loop's later iterations cannot have them (their values are computed),
        so the first iteration would be fitted apart from the rest. A variable that every
        assignment in the later loops bounds, `W = (...) on [lo, hi]`, is no such start:
        every value of it is declared."""
        key = id(stmts)
        if key not in self._loop_start_cache:
            unbounded: set[str] = set()     # assigned in a later loop other than by `(...) on`
            starts = set()
            for i in range(len(stmts) - 1, -1, -1):
                stmt = stmts[i]
                if isinstance(stmt, ast.Repeat):
                    unbounded |= {n.target for n, _ in ast.walk(stmt.body)
                                  if isinstance(n, ast.Assign) and not isinstance(n.value, ast.Bound)}
                elif isinstance(stmt, ast.Assign) and stmt.target in unbounded:
                    starts.add(i)
            self._loop_start_cache[key] = (stmts, frozenset(starts))    # (keeps id(stmts) alive)
        return self._loop_start_cache[key][1]

    def note_token_sum(self, e, bounds: tuple | None, diag: tuple | None = None) -> None:
        """Record the bounds of one term of a sum over the tokens (`sum(x)`, `A.T @ r`), which
        its mean `... / n` lies in, and of one diagonal term where tighter (`A.T @ A`); None
        clears them. Set or cleared on every walk of the node: a loop's later iterations may
        have none where its first had some."""
        for table, value in ((self.token_sum_bounds, bounds), (self.token_sum_diag, diag)):
            if value is None:
                table.pop(id(e), None)
            else:
                table[id(e)] = value

    def _assign(self, stmt: ast.Assign, env):
        name = stmt.target
        if name in RESERVED or name in self.program.functions:
            raise self.err(f"cannot assign to '{name}': it is reserved", stmt.loc, expected="another name")
        if name in self.params:
            raise self.err(f"cannot assign to '{name}': it is a param", stmt.loc, expected="another name")
        if name in self.inputs and env.get(name) is not None and not self.call_stack:
            raise self.err(f"cannot assign to input '{name}'", stmt.loc,
                           expected="a new variable, e.g. x = x0")
        self.tolerance(stmt.tol, stmt.tol_rel, env)
        val = self.eval(stmt.value, env)
        env[name] = val
        self.assigned_at[name] = stmt.loc

    def tolerance(self, e, relative: bool, env) -> float | None:
        """The budget of `tol eps` (absolute) or `tol rel eps` (relative: 0 < eps < 1)."""
        if e is None:
            return None
        tol = self.const_of(e, "a tolerance", env)
        if not tol > 0:
            raise self.err(f"a tolerance must be positive, got {tol:g}", e.loc)
        if relative and not tol < 1:
            raise self.err(f"a relative tolerance must be below 1, got {tol:g}", e.loc,
                           expected="e.g. tol rel 1e-6 (|error| <= 1e-6 |value|)")
        return tol

    # expressions -------------------------------------------------------------------------
    def eval(self, e, env) -> Val:
        if isinstance(e, ast.Number):
            return self.apply("const", Ty((), const=e.value, lo=e.value, hi=e.value), (), e)
        if isinstance(e, ast.Name):
            return self._name(e, env)
        if isinstance(e, ast.Neg):
            a = self.eval(e.operand, env)
            t = a.ty
            ty = replace(t, const=None if t.const is None else -t.const, flag=False,
                         lo=None if t.hi is None else -t.hi, hi=None if t.lo is None else -t.lo,
                         diag=None if t.diag is None else (-t.diag[1], -t.diag[0]))
            return self.apply("neg", ty, (a,), e)
        if isinstance(e, ast.Transpose):
            a = self.eval(e.operand, env)
            shape = a.ty.shape
            if shape is not None and len(shape) == 2:
                shape = (shape[1], shape[0])
            return self.apply("T", replace(a.ty, shape=shape), (a,), e)
        if isinstance(e, ast.BinOp):
            left = self.eval(e.left, env)           # (left first: nodes are made in order)
            if e.op == "/" and e.domain is not None and isinstance(e.right, ast.Call):
                self._value_domains[id(e.right)] = e
            right = (self._domain_operand(e.right, env) if e.op == "/"
                     else self.eval(e.right, env))
            return self._binop(e, left, right, env)
        if isinstance(e, ast.Call):
            return self._call(e, env)
        if isinstance(e, ast.Index):
            from .indexing import index_value
            return index_value(self, e, env)
        if isinstance(e, ast.Bound):
            return self._bound(e, env)
        raise TypeError(f"unknown expression node {e!r}")  # pragma: no cover - parser makes none

    def _domain_operand(self, e, env) -> Val:
        """A fitted function's argument or a divisor, whose bounds are its domain: products of
        declared values in it get bounds even in a loop's starting statement (`v = v0 /
        sqrt(v0 @ v0)`), where a product at the top (`z = A @ x0`) gets none: without them
        the statement would be refused, not fitted apart."""
        outer, self.declared_bounds = self.declared_bounds, True
        try:
            return self.eval(e, env)
        finally:
            self.declared_bounds = outer

    def _name(self, e: ast.Name, env) -> Val:
        if e.id in env:
            return env[e.id]
        if e.id in self.params:
            v = self.params[e.id]
            return self.apply("const", Ty((), const=v, lo=v, hi=v), (), e)
        if e.id == TOKEN:
            if not self.has_token_axis():
                raise self.err("'n' (the token count) is used but no input has the token axis",
                               e.loc, expected="an input of shape [n, ...]")
            return self.apply("n", Ty((), lo=1.0, hi=math.inf), (), e)
        if e.id == "I":
            return self.apply("I", Ty(None, lo=0.0, hi=1.0, symmetric=True, diag=(1.0, 1.0)),
                              (), e)
        if e.id in self.program.functions or e.id in BUILTINS:
            raise self.err(f"'{e.id}' is a function; call it with arguments", e.loc,
                           expected=f"{e.id}(...)")
        if self.call_stack:
            fn = self.call_stack[-1]
            inputs = {i.name for i in self.program.inputs}
            assigned = {n.target for n, _ in ast.walk(self.program.body)
                        if isinstance(n, ast.Assign)}
            if e.id in inputs or e.id in assigned:
                kind = "an input" if e.id in inputs else "a variable"
                raise self.err(f"'{e.id}' is {kind} of the program, which the body of '{fn}' "
                               "does not see: a function sees its parameters, params, dims, "
                               "n and I", e.loc,
                               expected=f"pass it as an argument: def {fn}(..., {e.id}) "
                                        f"and {fn}(..., {e.id})")
        raise self.err(f"undefined name '{e.id}'", e.loc,
                       expected="an input, param, dim, or a variable assigned earlier")

    def _binop(self, e: ast.BinOp, a: Val, b: Val, env=None) -> Val:
        op, ta, tb = e.op, a.ty, b.ty
        if op == "@":
            shape = matmul_shape(ta, tb, e.loc, self.src)
            check_holdable(shape, e.loc, self.src)
            lo, hi = _constant_product_interval(ta, tb)
            # a vector dotted with itself is a sum of squares (>= 0); a matrix times itself
            # is not (M @ M has negative entries for M in [-1, 1])
            square = (a is b or same_expression(e.left, e.right)) and \
                len(ta.shape or ()) == 1 and len(tb.shape or ()) == 1
            if self.declared_bounds:
                lo, hi = _narrower((lo, hi), declared_product_interval(ta, tb, square))
                bound = norm_product_bound(ta, tb)
                if bound is not None:
                    lo, hi = _narrower((lo, hi), (-bound, bound))
            # a sum over the tokens of products a_i b_i: `A.T @ r / n` is their mean
            term = None
            if _contracts_tokens(ta, tb) and ta.bounded and tb.bounded:
                term = power_interval(ta, 2) if square else _interval("*", ta, tb)
            # a Gram matrix X.T @ X sums squares on its diagonal: its mean's lie in x_i²'s bounds
            gram = _contracts_tokens(ta, tb) and tb.bounded and is_square(shape) and \
                isinstance(e.left, ast.Transpose) and same_expression(e.left.operand, e.right)
            self.note_token_sum(e, term, power_interval(tb, 2) if gram else None)
            return self.apply("@", Ty(shape, lo=lo, hi=hi), (a, b), e)
        if op == "**":
            if tb.const is None:
                raise self.err("an exponent must be a compile-time number", e.right.loc,
                               expected="a number or param")
            const = None
            if ta.const is not None:
                # pm.power, not Python's **: the value may reach the weights (libm's pow
                # differs by CPU in the last bit)
                if ta.const == 0 and tb.const < 0:
                    raise self.err("this power overflows or divides by zero", e.loc)
                value = pm.power(ta.const, tb.const)
                if not math.isfinite(value):
                    raise self.err("this power has no finite real value", e.loc)
                const = float(value)
            whole = tb.const == int(tb.const) and 1 <= tb.const <= MAX_WHOLE_POWER
            if ta.const is None and not whole and tb.const not in (0.5, -1.0):
                raise self.err(f"unsupported exponent {tb.const:g} on a runtime value", e.right.loc,
                               expected=f"a whole number from 1 to {MAX_WHOLE_POWER}, 0.5 or -1 "
                                        "(or sqrt/reciprocal)")
            if ta.const is None and tb.const in (0.5, -1.0):
                self._power_domain(e, ta, tb.const)
            lo, hi = (const, const) if const is not None else power_interval(ta, tb.const)
            return self.apply("**", Ty(ta.shape, const=const, lo=lo, hi=hi,
                                       symmetric=False), (a, b), e)
        if op == "/":
            node = self._division(e, ta, tb, env or {})
            if node is not None:        # a runtime divisor: its domain rides with the node
                tb = replace(tb, lo=node[1][0], hi=node[1][1])
        else:
            node = e
        shape = elementwise_shape(op, ta, tb, e.loc, self.src)
        if op in "*-":
            self._operand_ty[id(e.left)], self._operand_ty[id(e.right)] = ta, tb
        const = None
        if ta.const is not None and tb.const is not None:
            try:
                const = {"+": lambda: ta.const + tb.const, "-": lambda: ta.const - tb.const,
                         "*": lambda: ta.const * tb.const, "/": lambda: ta.const / tb.const}[op]()
            except ZeroDivisionError:
                raise self.err("division by zero", e.loc) from None
        squared = op == "*" and (a is b or same_expression(e.left, e.right))
        diag = diagonal_rule(op, ta, tb, squared) if shape is None or (
            is_square(shape) and TOKEN not in shape) else None
        if const is not None:
            lo, hi = const, const
        elif squared:
            lo, hi = power_interval(ta, 2)      # a value times itself is a square: >= 0
        elif op == "*":
            lo, hi = self._product_interval(e, ta, tb)
        elif op == "/" and isinstance(e.right, ast.Name) and e.right.id == TOKEN and \
                id(e.left) in self.token_sum_bounds:
            lo, hi = self.token_sum_bounds[id(e.left)]      # a mean over the tokens
            diag = self.token_sum_diag.get(id(e.left))
        elif op == "+" and (between := self._between(e)) is not None:
            lo, hi = between
        else:
            lo, hi = _interval(op, ta, tb)
        sym = (op in "+-" and _sym_or_scalar(ta) and _sym_or_scalar(tb)) or \
              (op in "*/" and (ta.shape == () and tb.symmetric or tb.shape == () and ta.symmetric))
        sign = op in "*/" and ta.sign and tb.sign
        return self.apply(op, Ty(shape, const=const, lo=lo, hi=hi, symmetric=bool(sym),
                                 sign=sign, flag=op == "*" and ta.flag and tb.flag, diag=diag),
                          (a, b),
                          e if node is None else node)

    def _between(self, e: ast.BinOp) -> tuple[float, float] | None:
        """Bounds on a sum that lies between two values: `g * a + (1 - g) * b` or
        `a + g * (b - a)` with every entry of g in [0, 1] (a gate, a step size) lies, entry by
        entry, between a and b, so in the hull of their bounds. Interval arithmetic alone
        gives the sum of both ranges: a bisection's `hi = up * m + (1 - up) * hi` grew
        without end and limited the count a shared build covers. None for other sums."""
        typed = self._operand_ty

        def gate(g) -> bool:
            t = typed.get(id(g))
            return t is not None and t.bounded and 0.0 <= t.lo and t.hi <= 1.0

        def hull(*ids) -> tuple[float, float] | None:
            ts = [typed.get(i) for i in ids]
            if not all(t is not None and t.bounded for t in ts):
                return None
            return min(t.lo for t in ts), max(t.hi for t in ts)

        def operands(x, op):
            return ((x.left, x.right), (x.right, x.left)) if isinstance(x, ast.BinOp) and \
                x.op == op and x.domain is None else ()

        def one_minus(h, g) -> bool:
            return isinstance(h, ast.BinOp) and h.op == "-" and h.domain is None and \
                isinstance(h.left, ast.Number) and h.left.value == 1 and \
                same_expression(h.right, g)

        for p, q in ((e.left, e.right), (e.right, e.left)):    # g * a + (1 - g) * b
            for g, a in operands(p, "*"):
                for h, b in operands(q, "*"):
                    if gate(g) and one_minus(h, g):
                        return hull(id(a), id(b))
        for x, rest in ((e.left, e.right), (e.right, e.left)):  # a + g * (b - a)
            for g, d in operands(rest, "*"):
                if gate(g) and isinstance(d, ast.BinOp) and d.op == "-" and d.domain is None \
                        and same_expression(d.right, x):
                    return hull(id(d.left), id(d.right))        # (d.right: a's twin)
        return None

    def _product_interval(self, e: ast.BinOp, ta: Ty, tb: Ty):
        """Bounds on a chain of products such as `(1 - beta2) * g * g`: its factors (the
        operands of the `*` nodes it is made of, as this walk typed them), the same expression
        gathered into a power (`g * g` is a square, >= 0), the groups multiplied as independent
        values. Without a repeated factor this is `_interval` of the two operands."""
        factor_ty = self._operand_ty      # every `*` node records its operands' types (in
        factors: list = []               # _binop), so a chain's factors are typed afresh

        def flatten(x):
            if isinstance(x, ast.BinOp) and x.op == "*" and x.domain is None and id(x.left) in factor_ty:
                flatten(x.left)
                flatten(x.right)
            else:
                factors.append(x)
        flatten(e)
        groups: list[list] = []
        for f in factors:
            for grp in groups:
                if same_expression(grp[0], f):
                    grp.append(f)
                    break
            else:
                groups.append([f])
        if len(groups) == len(factors):
            return _interval("*", ta, tb)
        lo = hi = 1.0
        for grp in groups:
            t = factor_ty.get(id(grp[0]))
            if t is None:
                return _interval("*", ta, tb)
            glo, ghi = power_interval(t, len(grp)) if len(grp) > 1 else (t.lo, t.hi)
            if glo is None or ghi is None:
                return _interval("*", ta, tb)
            lo, hi = _interval("*", Ty((), lo=lo, hi=hi), Ty((), lo=glo, hi=ghi))
            if lo is None:
                return _interval("*", ta, tb)
        return lo, hi

    def _bound(self, e: ast.Bound, env) -> Val:
        """`(expr) on [lo, hi]`: the value, with the user's bounds (trusted like a declared
        domain, intersected with what the checker knows; the compiled model checks them)."""
        if e.tol is not None:
            raise self.err("a 'tol' after '(expr) on [lo, hi]' belongs to a division "
                           "(a / (b) on [lo, hi] tol eps) or to the end of a statement",
                           e.tol.loc, expected="the tol at the end of the statement")
        if isinstance(e.operand, ast.Call):
            self._value_domains[id(e.operand)] = e
        a = self.eval(e.operand, env)
        t = a.ty
        if t.shape is None:
            raise self.err("'on [lo, hi]' of I: the size of I is unknown here", e.loc,
                           expected="a value of known shape")
        lo, hi = self._declared_domain(e, env)
        if t.const is not None:
            if not _reads_variable(e.operand, env):
                raise self.err(f"'on [lo, hi]' bounds a runtime value; this one is the number "
                               f"{t.const:g}", e.domain.loc, expected="no 'on' here")
            # a variable holding a number here (`x = 1` before a loop, in its first
            # iteration): the bound is for the iterations where it is a runtime value
            if not lo <= t.const <= hi:
                raise self.err(f"the declared [{lo:g}, {hi:g}] misses this expression's value "
                               f"here, the number {t.const:g}", e.domain.loc,
                               expected="an interval that holds it")
            return a
        if t.bounded:
            if t.hi < lo or t.lo > hi:
                raise self.err(f"the declared [{lo:g}, {hi:g}] misses every value this "
                               f"expression can take ([{t.lo:g}, {t.hi:g}])", e.domain.loc,
                               expected="an interval that meets the value's known bounds")
            lo, hi = max(lo, t.lo), min(hi, t.hi)
        ty = replace(t, lo=lo, hi=hi, sign=t.sign and lo <= -1 and hi >= 1,
                     flag=t.flag and lo <= 0 and hi >= 1, declared=True)
        return self.apply("bound", ty, (a,), (e, (lo, hi)))

    def _division(self, e: ast.BinOp, ta: Ty, tb: Ty, env):
        """Check `a / b [on [lo, hi] [tol [rel] eps]]`. A runtime divisor (other than `n`) needs
        an interval without 0: declared with `on`, else the checker's bounds. Returns
        (e, domain, tol, relative) for a runtime divisor, None for a constant or `n`."""
        if tb.const == 0.0:
            raise self.err("division by zero", e.right.loc)
        if not _divisible(ta.shape, tb.shape):
            raise self.err(f"cannot divide {fmt_shape(ta.shape)} by {fmt_shape(tb.shape)}", e.loc,
                           expected="a scalar divisor, equal shapes, a scalar divided by anything, "
                                    "[n, k] / [n] (per token), [r, k] / [k] (per column) or "
                                    "[k] / [r, k]"
                                    + small_matrix_diag_hint("/", ta.shape, tb.shape))
        by_n = isinstance(e.right, ast.Name) and e.right.id == TOKEN
        if tb.const is not None or by_n:
            if e.domain is not None and (by_n or not _reads_variable(e.right, env)):
                raise self.err("'on [lo, hi]' is for a runtime divisor; this one is "
                               + ("n" if by_n else "a compile-time number"), e.domain.loc,
                               expected="no 'on' here; to bound the quotient, parenthesise it: "
                                        "(a / b) on [lo, hi]")
            if e.domain is not None:
                # a variable holding a number here (`x = 1` before a loop, in its first
                # iteration): the domain is for the iterations where it is a runtime value
                lo, hi = self._declared_domain(e, env)
                if not lo <= tb.const <= hi:
                    raise self.err(f"the divisor is the number {tb.const:g} here, outside its "
                                   f"declared domain [{lo:g}, {hi:g}]", e.domain.loc,
                                   expected="a domain that holds it")
            return None
        tol = self.tolerance(e.tol, e.tol_rel, env)
        domain = self._declared_domain(e, env)
        if domain is not None:
            lo, hi = domain
            if not (lo > 0 or hi < 0):
                raise self.err(f"the divisor's domain [{lo:g}, {hi:g}] contains 0", e.domain.loc,
                               expected="an interval on one side of 0, e.g. on [1e-3, 10]")
            self._quotient_rounding(e, (lo, hi), tol)
            return e, (lo, hi), tol, e.tol_rel
        if not tb.bounded and id(e.right) in self.token_sum_bounds:
            # sum(e) over the tokens lies in n [lo, hi] with n known only at run time; its
            # mean sum(e) / n is bounded (note_token_sum), and the quotient is the same
            text = e.right.loc.source_text(self.src) or "the sum"
            top = e.left.loc.source_text(self.src) or "the numerator"
            raise self.err("cannot tell which values the divisor takes: it sums over the n "
                           "tokens, so it grows with n, which is known only at run time",
                           e.right.loc,
                           expected=f"the quotient of two means, which is the same value: "
                                    f"({top} / n) / ({text} / n)")
        if not tb.bounded:
            raise self.err("cannot tell which values the divisor takes: it has no known bounds",
                           e.right.loc, expected="a domain for the divisor: a / (expr) on [lo, hi], "
                                                 "an interval without 0")
        if not (tb.lo > 0 or tb.hi < 0):
            raise self.err(f"the divisor may be 0: its values lie in [{tb.lo:g}, {tb.hi:g}]",
                           e.right.loc, expected="a divisor bounded away from 0, or "
                                                 "a / (expr) on [lo, hi] with 0 outside [lo, hi]")
        self._quotient_rounding(e, (tb.lo, tb.hi), tol)
        return e, (tb.lo, tb.hi), tol, e.tol_rel

    def _quotient_rounding(self, e: ast.BinOp, domain, tol) -> None:
        """An absolute `tol` below float64 rounding of 1/b on the domain cannot be met (nor
        checked): say so about the division, with the relative budget as the way out."""
        if tol is None or e.tol_rel:
            return
        largest = 1 / min(abs(domain[0]), abs(domain[1]))
        if tol <= 16 * np.finfo(float).eps * largest:      # approx.py's rounding floor
            raise self.err(f"an absolute tol {tol:g} is below the float64 rounding of 1 / divisor, "
                           f"which reaches {largest:.3g} on [{domain[0]:g}, {domain[1]:g}]",
                           e.tol.loc, expected=f"a relative budget (tol rel {tol:g}) or a "
                                               "larger tol")

    def _power_domain(self, e: ast.BinOp, ta: Ty, p: float) -> None:
        """x ** -1 and x ** 0.5 of a runtime value are approximated: they need bounds on x."""
        what = "x ** -1" if p == -1.0 else "x ** 0.5"
        ok = ta.bounded and ((ta.lo > 0 or ta.hi < 0) if p == -1.0 else ta.lo >= 0)
        if ta.bounded and not ok:
            raise self.err(f"{what} is undefined on part of [{ta.lo:g}, {ta.hi:g}], where the "
                           "base lies", e.loc, expected="a base bounded away from 0" if p == -1.0
                           else "a base bounded below by 0")
        if not ok:
            hint = "1 / (expr) on [lo, hi]" if p == -1.0 else "sqrt(expr) on [lo, hi]"
            raise self.err(f"cannot tell which values reach {what}: the base has no known bounds",
                           e.loc, expected=f"bounds on the base, or write {hint}")

    def _call(self, e: ast.Call, env) -> Val:
        if e.func in self.program.functions:
            return self._call_user(e, env)
        if e.func in WRITTEN_OTHERWISE:
            raise self.err(f"there is no function '{e.func}'; the language writes it otherwise",
                           e.loc, expected=WRITTEN_OTHERWISE[e.func])
        if e.func not in BUILTINS:
            raise self.err(f"unknown function '{e.func}'", e.loc,
                           expected="a builtin (" + ", ".join(sorted(BUILTINS)) + ") or a def")
        if e.func in STRUCTURAL_FUNCTIONS:
            from .structural import call_structural
            return call_structural(self, e, env)
        arity = {"clip": 3}.get(e.func, 1)
        if len(e.args) != arity:
            raise self.err(f"{e.func}() takes {arity} argument{'s' * (arity > 1)}, got {len(e.args)}",
                           e.loc, expected=f"{e.func}(" + ", ".join(["x", "lo", "hi"][:arity]) + ")")
        if e.func in EXACT_PL_FUNCTIONS:
            args = tuple(self.eval(a, env) for a in e.args)
        else:
            args = (self._domain_operand(e.args[0], env),)
        self.require_size(e.func, e.args[0], args[0])
        t = args[0].ty
        domain = self._declared_domain(e, env)
        tol = self.tolerance(e.tol, e.tol_rel, env)
        if e.func == "clip":
            lo, hi = (self.const_of(a, "a clip bound", env) for a in e.args[1:])
            if not lo <= hi:
                raise self.err(f"clip bounds [{lo:g}, {hi:g}] are empty", e.loc, expected="lo <= hi")
            ty = Ty(t.shape, const=None if t.const is None else min(max(t.const, lo), hi),
                    lo=lo if t.lo is None else min(max(t.lo, lo), hi),
                    hi=hi if t.hi is None else min(max(t.hi, lo), hi))
            return self.apply("call", ty, args, (e, domain, tol, e.tol_rel))
        if t.const is not None:
            value = self._exact_value(e, t.const)
            return self.apply("call", Ty((), const=value, lo=value, hi=value), args,
                              (e, None, None, False))
        if domain is None:
            if t.bounded:
                domain = (t.lo, t.hi)
            elif e.func not in EXACT_PL_FUNCTIONS:
                domain = self._value_preimage(e, env)
                if domain is None:
                    raise self.err(f"cannot tell which values reach {e.func}(): its argument "
                                   "has no known bounds", e.loc,
                                   expected=f"a domain, e.g. {e.func}(...) on [lo, hi]")
        lo, hi = self._image(e, domain)
        return self.apply("call", Ty(t.shape, lo=lo, hi=hi), args, (e, domain, tol, e.tol_rel))

    def _value_preimage(self, e: ast.Call, env) -> tuple[float, float] | None:
        """A call whose argument has no known bounds, but whose value the program bounds
        right where it is made — `(sqrt(g @ g)) on [1e-6, 10]`, or as a divisor,
        `c / (sqrt(g @ g)) on [1e-6, 10]` — gets the domain those values imply, where the
        function is monotone: sqrt's argument on [1e-12, 100] here. It is the user's bound
        read through the function, checked by the compiled model as any domain is."""
        where = self._value_domains.get(id(e))
        if where is None or e.func not in _FUNC_PREIMAGE:
            return None
        lo, hi = self._declared_domain(where, env)
        return _FUNC_PREIMAGE[e.func](lo, hi)

    def require_size(self, func: str, arg: ast.Expr, val: Val) -> None:
        """A builtin's argument must have a shape: an unsized multiple of I has none yet."""
        if val.ty.shape is None:
            raise self.err(f"{func}() of I: the size of I is unknown here", arg.loc,
                           expected="a value of known shape")

    def _declared_domain(self, e: ast.Call | ast.BinOp | ast.Bound, env) -> tuple[float, float] | None:
        """The `on [lo, hi]` of a builtin call or a division as numbers (None without one);
        never empty."""
        if e.domain is None:
            return None
        lo = self.const_of(e.domain.lo, "a domain bound", env)
        hi = self.const_of(e.domain.hi, "a domain bound", env)
        if not lo < hi:
            raise self.err(f"empty domain [{lo:g}, {hi:g}]", e.domain.loc, expected="lo < hi")
        return lo, hi

    def _exact_value(self, e: ast.Call, x: float) -> float:
        """A builtin of a compile-time number, computed now; refused where it is not finite."""
        try:
            with np.errstate(all="ignore"):
                value = float(pm.PORTABLE[e.func](x))
        except (ValueError, OverflowError, ZeroDivisionError):
            value = math.nan
        if not math.isfinite(value):
            raise self.err(f"{e.func}({x:g}) has no finite value", e.loc)
        return value

    def _image(self, e: ast.Call, domain) -> tuple[float | None, float | None]:
        """The bounds of a builtin's values over `domain` ((None, None) without a domain)."""
        if domain is None:
            return None, None
        image = _FUNC_RANGE[e.func](*domain)
        if image is None and e.func in ("sin", "cos"):
            raise self.err(f"{e.func}() on [{domain[0]:g}, {domain[1]:g}]: the compiler "
                           f"evaluates {e.func} for |x| <= 2^30 only",
                           e.domain.loc if e.domain else e.loc,
                           expected="a domain within [-1.07e9, 1.07e9]")
        if image is None:
            where = {"log": "lo > 0", "sqrt": "lo >= 0", "reciprocal": "no 0 inside"}.get(e.func)
            raise self.err(f"{e.func}() is undefined on part of [{domain[0]:g}, {domain[1]:g}]",
                           e.domain.loc if e.domain else e.loc,
                           expected="a domain where the function is finite" + (
                               f": {e.func}(...) on [lo, hi] with {where}, or bounds on its "
                               "argument within that (clip, an input's `in`)"
                               if where else ""))
        return image

    def _call_user(self, e: ast.Call, env) -> Val:
        fn = self.program.functions[e.func]
        if e.domain is not None or e.tol is not None:
            raise self.err(f"'on'/'tol' apply to builtin functions, not to '{e.func}' (an "
                           "'on'/'tol' right after a call binds to that call)", e.loc,
                           expected=f"parentheses to bound its value or a larger expression: "
                                    f"({e.func}(...)) on [lo, hi]")
        if len(e.args) != len(fn.params):
            raise self.err(f"{e.func}() takes {len(fn.params)} arguments, got {len(e.args)}", e.loc,
                           expected=f"{e.func}({', '.join(fn.params)})")
        if e.func in self.call_stack or len(self.call_stack) >= MAX_CALL_DEPTH:
            raise self.err(f"'{e.func}' calls itself; functions are inlined and cannot recurse",
                           e.loc, expected="a repeat loop instead")
        local = {}
        where = fn.param_locs or (fn.loc,) * len(fn.params)
        for pname, arg, loc in zip(fn.params, e.args, where):
            if pname in RESERVED or pname in self.params:
                raise self.err(f"parameter '{pname}' of '{fn.name}' shadows a reserved name or a param",
                               loc, expected="another parameter name")
            local[pname] = self.eval(arg, env)
        for i, pname in enumerate(fn.params):
            if pname in fn.params[:i]:
                raise self.err(f"'{fn.name}' has two parameters named '{pname}'", where[i])
        self.call_stack.append(e.func)
        self.call_sites.append(e)
        self.return_parts.append(e.part or 0)
        try:
            ret = self.exec_block(fn.body, local, in_function=True)
        finally:
            self.call_stack.pop()
            self.call_sites.pop()
            self.return_parts.pop()
        if ret is None:
            raise self.err(f"function '{fn.name}' does not end with 'return'", fn.loc,
                           expected="'return EXPR' as its last statement")
        return ret


def _contracts_tokens(ta: Ty, tb: Ty) -> bool:
    """a @ b sums over the token axis: a is [k, n] or [n], b is [n] or [n, m]."""
    return bool(ta.shape) and bool(tb.shape) and ta.shape[-1] == TOKEN and tb.shape[0] == TOKEN


def _constant_product_interval(ta: Ty, tb: Ty) -> tuple[float | None, float | None]:
    """Bounds on a matrix product where one factor has every entry the same known number c
    (ones(k), 2 * ones(k, k)) and the other is bounded: each entry is c times a sum of k
    bounded values, over a small axis of known length k — row sums `(D * D) @ ones(d)`. Any
    other product carries no bounds (they would grow with every iteration of a loop)."""
    sa, sb = ta.shape, tb.shape
    if not sa or not sb or not (ta.bounded and tb.bounded):
        return None, None
    k = sa[-1]
    if k == TOKEN or not (ta.lo == ta.hi or tb.lo == tb.hi):
        return None, None
    c, other = (ta.lo, tb) if ta.lo == ta.hi else (tb.lo, ta)
    ends = sorted((k * c * other.lo, k * c * other.hi))
    return ends[0], ends[1]


def _sym_or_scalar(t: Ty) -> bool:
    return t.symmetric or t.shape is None or t.shape == ()


def _types(env: dict) -> dict:
    return {k: v.ty for k, v in env.items()}


def _with_shape_changes(e: ProgramError, entry: dict, starts: dict, assigned_at: dict):
    """An error in a loop's second iteration or later, with the loop variables whose shape
    the body changed (`Q = stack(q1, q2)`: [2, 5] where Q entered as [5, 2]) named: the
    error's own shapes (an `@` whose inner dimensions differ) do not say why they changed."""
    changed = [k for k in entry if k in starts and starts[k] != entry[k]]
    if not changed or "(in a later iteration: " in e.message:     # (an inner loop's said so)
        return e
    notes = "; ".join(
        f"'{k}' entered the loop as {fmt_shape(entry[k])} and the body makes it "
        f"{fmt_shape(starts[k])}" + (f" (line {assigned_at[k].line})" if k in assigned_at else "")
        for k in changed)
    return type(e)(f"{e.message} (in a later iteration: {notes})", e.loc,
                   e.expected or "the same shape for a loop variable in every iteration",
                   source=e.source)


def _undeclared(val: Val) -> Val:
    """The value as a computed one: no declared norms or range for products to use."""
    if val.ty.norm is None and val.ty.token_norm is None and not val.ty.declared:
        return val
    return replace(val, ty=replace(val.ty, norm=None, token_norm=None, declared=False))


def _narrower(known, other):
    """The narrower of two intervals (None, None: unknown), each a valid bound."""
    if other[0] is None:
        return known
    if known[0] is None or known[1] - known[0] > other[1] - other[0]:
        return other
    return known


def check_program(program: ast.Program, params: dict | None = None) -> dict[str, float]:
    """Check a parsed program; return its resolved params. Raises ProgramError/ParamError."""
    values = resolve_params(program, params)
    Walker(program, values).run()
    return values


def _reads_variable(e, env) -> bool:
    """Whether the expression reads a variable or input (not only numbers, params and dims):
    then its being a compile-time number is a fact of this point of the walk (a loop's first
    iteration), not of how it is written."""
    return any(isinstance(node, ast.Name) and node.id in env for node, _ in ast.walk(e))
