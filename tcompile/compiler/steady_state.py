"""The shared build's walk: every iteration of a loop sees the same loop state *type*.

Unrolled, iteration k's values carry iteration k's bounds, so a piece fitted on x's interval
may differ from one iteration to the next. A shared build stores one body for all iterations,
so the walk gives every iteration the same bounds: the hull of the loop state's bounds over the
iterations the build covers (found by a types-only probe walk of those iterations), widened
onto the state at the start of every iteration and after the loop. Every value inside the
body is then bounded by what the body computes from the hull — the same for every iteration,
and sound for each, since interval arithmetic is monotone.

The hull also decides how far the run time may go: if one more body from the hull stays in the
hull, every count is covered (`LoopSite.max_count` None); otherwise only counts up to the built
one are, and the runtime refuses more. A state whose last assignment declares its bounds
(`w = (...) on [0, 1]`) is widened to them where its own bounds drift inside them without end
(interval arithmetic's widening, to the user's thresholds).

The walk unrolls each loop `unroll[key]` times (the fold, fold.py, compiles a few small
unrollings and finds the body's steady state); the real count is recorded in `LoopSite`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..language.points import point_variable
from ..errors import TcompileError
from ..language import ast
from ..language.checker import Ty, Val, Walker
from ..language.run_params import loop_key, loop_param, run_time_counts
from ..language.types import TOKEN
from .dataflow import GraphBuilder, _carried, _names_read
from .nodes import (CSHAPE, ENTERS, FIRST_ONLY, HI, ITERATION, LO, LOC, LOOP_AHEAD, LOOP_FIRST,
                    LOOP_KERNEL, LOOP_PHASE, LOOP_STATE, LOOP_WATCH, TWIN, VARS, kernel_group)


@dataclass(frozen=True)
class LoopSite:
    """One loop of the program as the shared build sees it (a def's loop once per call)."""
    key: str                 # "line:col" of the repeat, after the call sites inlining it
    line: int
    count: int               # the count the program (with this build's params) gives it
    param: str | None        # the run-time param that sets the count (run_params.py)
    max_count: int | None    # the largest count the fitted domains cover (None: any)
    state: tuple[str, ...]   # the variables it carries from one iteration to the next
    depth: int               # loops around it
    unshareable: str | None = None   # why no iteration can be like the next (then unrolled)
    # the variables its body assigns (not in an inner loop) without carrying them: `until`
    # may watch them too (their value of each iteration, LOOP_WATCH)
    assigned: tuple[str, ...] = ()
    # set with max_count only (else empty): the state whose bounds one body widens, and where
    # some state's bounds are declared, why they do not lift the limit
    growing: tuple[str, ...] = ()
    declared_fails: str = ""


class _SteadyState:
    """The widening walk, mixed into a Walker (types only: the probe) or a GraphBuilder."""

    unroll_counts: dict[str, int]
    sites: dict[str, LoopSite]

    def setup_steady(self, unroll: dict[str, int] | None, plain: frozenset = frozenset(),
                     kernel: dict[str, int] | None = None, ahead: frozenset = frozenset(),
                     demote: bool = False):
        self.unroll_counts = dict(unroll or {})
        self.kernel = dict(kernel or {})  # loops run by a kernel of k > 1 iterations (grouped)
        self.ahead = ahead                # loops whose next iteration may read ahead (LOOP_AHEAD)
        self.times: dict[str, int] = {}   # iterations each loop is walked
        self.plain = plain               # loops kept unrolled: walked as an unrolled build does
        self.sites = {}
        self.counts = run_time_counts(self.program)
        self.loops_around: list[str] = []
        self.iteration: tuple = ()       # (loop key, index) of the iterations being walked
        # numbers a loop may carry as runtime values (_demote)
        self.demotable = _linear_scalars(self.program) if demote else frozenset()

    def unroll(self, stmt: ast.Repeat, count: int, env, in_function: bool):
        key = loop_key(stmt, self.call_sites)
        if key in self.plain:
            return self._unroll_plainly(key, stmt, count, env, in_function)
        state = tuple(sorted(n for n in _carried(stmt.body) if n in env))
        try:
            hull, growing, fails, why = *self._hull(stmt, count, env, in_function, state), None
        except _Unshareable as e:
            hull, growing, fails, why = {}, (), "", str(e)
        assigned = tuple(sorted({s.target for s in stmt.body if isinstance(s, ast.Assign)}
                                - set(state)))
        site = LoopSite(key, stmt.loc.line, count,
                        loop_param(self.program, stmt, self.call_sites, self.counts),
                        None if growing is None else count, state, len(self.loops_around), why,
                        assigned, growing or (), fails)
        if key in self.sites and self.sites[key] != site:
            why = "it runs with different counts or state bounds on different passes"
            site = replace(site, unshareable=why)
        self.sites[key] = site
        if why is not None:
            return self._unroll_plainly(key, stmt, count, env, in_function)
        times = self.unroll_counts.get(key, count)
        self._demote(env, hull)
        self.mark_entering(key, env, state)
        self.times[key] = times
        self.loops_around.append(key)
        try:
            for i in range(times):
                self.iteration = self.iteration + ((key, i),)
                self._widen(env, hull)
                before = {k: v.ty for k, v in env.items()} if self.types_only else None
                ret = self.exec_block(stmt.body, env, in_function)
                if ret is not None:     # a return in the first iteration: nothing to repeat
                    self.iteration = self.iteration[:-1]
                    return ret
                self.end_of_iteration(stmt, env)
                self.iteration = self.iteration[:-1]
                if before is not None and {k: v.ty for k, v in env.items()} == before:
                    break               # the probe: the later iterations walk the same types
            if times == 0:
                self.exec_block(stmt.body, dict(env), in_function)
        finally:
            self.loops_around.pop()
        self._widen(env, hull)
        return None

    def _unroll_plainly(self, key, stmt, count, env, in_function):
        """A loop kept unrolled: walked as the unrolled build walks it (no hull, no pinning)."""
        self.loops_around.append(key)
        try:
            return Walker.unroll(self, stmt, count, env, in_function)
        finally:
            self.loops_around.pop()

    def _hull(self, stmt, count, env, in_function, state) -> tuple[dict[str, Ty], tuple | None, str]:
        """The loop state's bounds over the built iterations; the variables one more body
        from them takes outside (None where none does: then any count is covered; else the
        count is limited, and the error and the card name them); and where the body declares
        some state's bounds and they do not lift the limit, why not."""
        probe = _Probe(self.program, self.params)        # (types only: self's rules apply)
        probe.call_stack, probe.call_sites = list(self.call_stack), list(self.call_sites)
        probe.return_parts = list(self.return_parts)
        probe.inputs = self.inputs
        probe.loops_around = list(self.loops_around)
        types = {k: Val(v.ty) for k, v in env.items()}
        hull = {n: types[n].ty for n in state}
        # (top-level loops only: an inner loop's numbers restart with every outer iteration)
        demote = set() if in_function or self.loops_around else self.demotable
        walked: list[dict[str, Ty]] = []          # each iteration's state bounds
        for _ in range(count):
            before = {k: v.ty for k, v in types.items()}
            probe.exec_block(stmt.body, types, in_function)
            hull = {n: _join(hull[n], types[n].ty, n, stmt, n in demote) for n in state}
            walked.append({n: types[n].ty for n in state})
            if {k: v.ty for k, v in types.items()} == before:
                break             # a fixed point: the later iterations add nothing to the hull
        if self._closed(probe, stmt, env, in_function, state, hull):
            return hull, None, ""
        # widening: a state whose last assignment declares its bounds (`w = (...) on [0, 1]`)
        # may drift inside them without end (a lower bound shrinking toward 0); its declared
        # interval is a hull if one body from it stays inside
        declared = _declared_bounds(probe, stmt.body, state, types)
        fails = ""
        if declared:
            wide = dict(hull)
            for n, (lo, hi) in declared.items():
                if hull[n].bounded:
                    wide[n] = _join(hull[n], replace(hull[n], lo=lo, hi=hi), n, stmt)
            said = ", ".join(f"{n} on [{lo:g}, {hi:g}]" for n, (lo, hi) in sorted(declared.items()))
            try:
                if self._closed(probe, stmt, env, in_function, state, wide):
                    return wide, None, ""
                fails = f"one iteration from the declared {said} leaves them"
            except TcompileError as e:  # the wider bounds leave some domain (a divisor may be 0)
                at = f" (line {e.line})" if e.line is not None else ""
                fails = f"one iteration from the declared {said} fails: {e.message}{at}"
        # a state whose bounds reach no function, product or divisor (an accumulator
        # `t = t + sum(w)`, consensus `X = X - h * (X - sum(X) / n)`): its growing bounds
        # need not bound the count
        scalars = frozenset(k for k, v in env.items() if v.ty.shape == ())
        ranks = {k: len(v.ty.shape) for k, v in env.items() if v.ty.shape is not None}
        needed = None if in_function else _bounds_needed(self.program, scalars, ranks)
        loose = {n: replace(t, lo=None, hi=None)
                 if t.bounded and needed is not None and n not in needed else t
                 for n, t in hull.items()}
        if loose != hull:
            try:
                if self._closed(probe, stmt, env, in_function, state, loose):
                    return loose, None, ""
            except TcompileError:
                pass
        # widening by extrapolation: bounds that still move by shrinking steps (a damped
        # update m = 0.5 m + 0.5 tanh(...), an average v = 0.9 v + 0.1 g * g) approach a
        # limit they never reach, so no hull of the built iterations is closed; the limit
        # their steps point to, with a margin, is a hull if one body from it stays inside
        # (which makes it sound for every count, as any closed hull)
        # (an end that stays put may be passed by one that was extrapolated: a bisection's
        # hi <= 2, and m = (lo + hi) / 2 with lo's upper end extrapolated a hair past 2 puts
        # the next hi past it; states of one shape sharing their bounds are tried as well)
        for margin in EXTRAPOLATION_MARGINS:
            limit = _extrapolated(loose, walked, margin)
            if limit is None:
                break
            for hull_ in (limit, _envelope(limit)):
                try:
                    if hull_ is not None and \
                            self._closed(probe, stmt, env, in_function, state, hull_):
                        return hull_, None, ""
                except TcompileError:
                    pass
        try:        # (loose == hull was walked above without an error)
            growing = self._leaving(probe, stmt, env, in_function, state, loose)
        except TcompileError:
            growing = ()
        return hull, growing or tuple(state), fails

    @classmethod
    def _closed(cls, probe, stmt, env, in_function, state, hull) -> bool:
        """Whether one body run from the hull leaves every state inside it."""
        return not cls._leaving(probe, stmt, env, in_function, state, hull)

    @staticmethod
    def _leaving(probe, stmt, env, in_function, state, hull) -> tuple[str, ...]:
        """The states one body run from the hull takes outside it (those whose bounds
        matter: `loose` has none for the others)."""
        types = {k: Val(v.ty) for k, v in env.items()}
        types.update({n: Val(hull[n]) for n in state})
        probe.exec_block(stmt.body, types, in_function)
        return tuple(n for n in state if not _inside(types[n].ty, hull[n]))

    def _demote(self, env, hull: dict[str, Ty]) -> None:
        """A compile-time number the loop changes every iteration, and which it only adds,
        subtracts, multiplies and divides (eta = 0.9 * eta; `_linear_scalars`), enters the
        loop as a runtime value: the encoder writes its first value (nodes.py `number`), and
        every iteration computes the next with heads, exactly as the interpreter does. (Kept
        a number, each iteration would fold its own value into its weights, and no body could
        repeat: the loop stayed unrolled.)"""
        for name, ty in hull.items():
            now = env[name].ty
            if name in self.demotable and ty.shape == () and ty.const is None and \
                    now.const is not None and not self.loops_around:
                env[name] = Val(ty, self.number_data(now.const))
                self.widen_data(env[name].data, ty)

    def number_data(self, value: float):
        """The data of a number stored as a runtime value (the graph builder: its node)."""
        return None

    def _widen(self, env, hull: dict[str, Ty]) -> None:
        for name, ty in hull.items():
            now = env[name].ty
            if now.shape != ty.shape or (now.const is not None and ty.const is None):
                continue                            # the state before its first iteration
            env[name] = Val(ty, env[name].data)
            self.widen_data(env[name].data, ty)

    def widen_data(self, data, ty: Ty) -> None:
        """Give the value's data the hull's bounds (the graph builder: its node's lo/hi)."""

    def mark_entering(self, key: str, env, state) -> None:
        """Tag the values the loop's state starts from (the graph builder: ENTERS)."""


class _Probe(_SteadyState, Walker):
    def __init__(self, program, params, demote: bool = False):
        Walker.__init__(self, program, params)
        self.setup_steady(None, demote=demote)


class SharedGraphBuilder(_SteadyState, GraphBuilder):
    """The dataflow builder of a shared build: loops unrolled `unroll[key]` times, their
    state widened to its hull at every iteration (see the module docstring)."""

    def __init__(self, program, params, unroll: dict[str, int] | None = None,
                 plain: frozenset = frozenset(), kernel: dict[str, int] | None = None,
                 ahead: frozenset = frozenset(), demote: bool = False):
        GraphBuilder.__init__(self, program, params)
        self.setup_steady(unroll, plain, kernel, ahead, demote)
        self._occurrences: dict = {}

    def node(self, op: str, args: tuple = (), cshape=None, loc=None, **attrs) -> int:
        new = self.graph.number_of_nodes()
        nid = super().node(op, args, cshape, loc, **attrs)
        self.graph.nodes[nid].setdefault(ITERATION, self.iteration)
        if self.iteration:
            # counted on every call, a value the memo hands back included, so that each
            # iteration numbers its values alike
            where = (tuple(k for k, _ in self.iteration), str(loc), op, cshape)
            occ = self._occurrences[(where, self.iteration)] = \
                self._occurrences.get((where, self.iteration), 0) + 1
            if nid == new:
                self.graph.nodes[nid][TWIN] = (tuple(i for _, i in self.iteration), where, occ)
        return nid

    def number_data(self, value: float):
        nid = self.node("number", (), (1, 1), None, value=float(value))
        self.graph.nodes[nid][LO] = self.graph.nodes[nid][HI] = float(value)
        return nid

    def widen_data(self, data, ty: Ty) -> None:
        if not isinstance(data, int):
            return
        attrs = self.graph.nodes[data]
        if ty.bounded:
            attrs[LO], attrs[HI] = ty.lo, ty.hi
        else:
            attrs.pop(LO, None)
            attrs.pop(HI, None)

    def mark_entering(self, key: str, env, state) -> None:
        for name in state:
            val = env.get(name)
            if val is not None and isinstance(val.data, int):
                tags = self.graph.nodes[val.data].setdefault(ENTERS, [])
                if f"{key}/{name}" not in tags:
                    tags.append(f"{key}/{name}")

    def end_of_iteration(self, loop, env):
        key = self.loops_around[-1]
        if key not in self.plain:
            self._copy_aliased_state(key, loop, env)
        super().end_of_iteration(loop, env)
        if key in self.plain:
            return
        k = self.kernel.get(key, 1)
        # a kernel of k iterations (nodes.kernel_group): a group's end keeps one row set
        phase = kernel_group(self.iteration[-1][1], k, self.times[key])[1]
        for name in self.sites[key].assigned:
            val = env.get(name)
            if val is not None and isinstance(val.data, int) and \
                    LOOP_STATE not in self.graph.nodes[val.data]:
                self.graph.nodes[val.data][LOOP_WATCH] = f"{key}/{name}"
        for name in _carried(loop.body):
            val = env.get(name)
            if val is not None and isinstance(val.data, int):
                self.graph.nodes[val.data][LOOP_STATE] = f"{key}/{name}"
                if key in self.ahead:
                    self.graph.nodes[val.data][LOOP_AHEAD] = True
                if key + FIRST_ONLY in self.ahead and self.iteration[-1][1] == 0:
                    self.graph.nodes[val.data][LOOP_FIRST] = True
                if k > 1:
                    self.graph.nodes[val.data][LOOP_PHASE] = phase
                    self.graph.nodes[val.data][LOOP_KERNEL] = (k, self.times[key])

    def _copy_aliased_state(self, key: str, loop, env) -> None:
        """A variable that takes another's value from the previous iteration (`x_prev = x`)
        holds that value for a second iteration, under another name: one value would be both
        variables' state, and its rows could not be both variables' rows in every iteration
        (they alternated: fista_elastic_net stayed unrolled). It gets a copy of its own (a
        head, `copy` on the node, which the lowering stores), so each variable keeps its rows
        and a move runs once per iteration, scheduled like any other head."""
        for name in sorted(_carried(loop.body)):
            val = env.get(name)
            if val is None or not isinstance(val.data, int):
                continue
            owner = self.graph.nodes[val.data].get(LOOP_STATE)
            if owner is None or not owner.startswith(key + "/") or owner == f"{key}/{name}":
                continue
            attrs = self.graph.nodes[val.data]
            bounds = {k: attrs[k] for k in (LO, HI) if k in attrs}
            nid = self.node("scale", (val.data,), attrs[CSHAPE], attrs[LOC], c=1.0, copy=True)
            self.graph.nodes[nid].update(bounds)
            mine = [v for v in attrs.get(VARS, ()) if point_variable(v) == name]
            if mine:        # the assignment `x_prev@k` is the copy, not the value it copies
                attrs[VARS] = [v for v in attrs[VARS] if v not in mine]
                self.graph.nodes[nid][VARS] = mine
            env[name] = Val(val.ty, nid)


def loop_sites(program, values: dict, demote: bool = False) -> dict[str, LoopSite]:
    """Every loop of the program, with its count, run-time param and covered counts (a
    types-only walk, outermost loops first); `demote`: numbers a loop changes may become
    runtime loop state (_SteadyState._demote)."""
    probe = _Probe(program, values, demote)
    probe.run()
    return probe.sites


CHANGING_NUMBER = "is a compile-time number that changes every iteration"   # (a site's why)


class _Unshareable(Exception):
    """No two iterations of this loop can be the same body (said in the card)."""


def _join(a: Ty, b: Ty, name: str, stmt, demote: bool = False) -> Ty:
    """The hull of two types of the same loop variable; `demote`: a scalar that is a
    different number in each iteration becomes a runtime value bounded by those numbers
    (_SteadyState._demote) instead of keeping the loop unrolled."""
    if demote and a.shape == b.shape == () and a.const != b.const:
        ends = [e for t in (a, b) for e in ((t.const, t.const) if t.const is not None
                                            else (t.lo, t.hi))]
        if any(e is None for e in ends):
            return Ty(())
        return Ty((), lo=min(ends), hi=max(ends))
    if a.shape != b.shape or (a.const is not None and b.const is None):
        # X = c I, r = 1 before the loop; a [d, d] or runtime value after one body
        return replace(b, diag=None)
    if a.const != b.const:
        raise _Unshareable(f"'{name}' {CHANGING_NUMBER}")
    # (diag=None: the hull bounds entries only; _inside does not check a diagonal)
    both = dict(sign=a.sign and b.sign, flag=a.flag and b.flag, diag=None,
                symmetric=a.symmetric and b.symmetric,
                norm=_larger(a.norm, b.norm), token_norm=_larger(a.token_norm, b.token_norm),
                declared=a.declared and b.declared)
    if not (a.bounded and b.bounded):
        return replace(a, lo=None, hi=None, **both)
    return replace(a, lo=min(a.lo, b.lo), hi=max(a.hi, b.hi), **both)


def _envelope(hull: dict[str, Ty]) -> dict[str, Ty] | None:
    """The hull with the bounded states of each shape given the union of their bounds (a
    bracket's lo and hi both in [0, 2]); None where that changes nothing."""
    out = dict(hull)
    for shape in {t.shape for t in hull.values() if t.bounded}:
        group = [n for n, t in hull.items() if t.bounded and t.shape == shape]
        lo = min(hull[n].lo for n in group)
        hi = max(hull[n].hi for n in group)
        for n in group:
            out[n] = replace(hull[n], lo=lo, hi=hi)
    return None if out == hull else out


def _larger(x: float | None, y: float | None) -> float | None:
    """The hull of two declared norms: the larger, or none where either has none."""
    return None if x is None or y is None else max(x, y)


# how far past the limit its steps point to a widened end goes (a fraction of the distance
# left, and of the hull's width): just past it first, then a quarter more
EXTRAPOLATION_MARGINS = (1e-6, 0.25)


def _extrapolated(hull: dict[str, Ty], walked: list[dict[str, Ty]],
                  margin: float) -> dict[str, Ty] | None:
    """The hull widened to where each state's bounds go, from their last three iterations:
    an end that moved by d₁ then d₂, 0 < d₂/d₁ < 1, goes on by about d₂·q/(1 − q) if its
    steps keep shrinking by q = d₂/d₁; that distance, by the margin more, is added, but not
    across 0 for an end that has kept one sign (v = 0.9 v + 0.1 g * g shrinks toward 0 from
    above: a sqrt reads it). None where nothing moves, or an end moves by steps that do not
    shrink (a drift w = w - eta * g: the caller has already dropped the bounds of such states
    where they reach no fit)."""
    if len(walked) < 3:
        return None
    out, moved = dict(hull), False
    for n, ty in hull.items():
        ends = [w[n] for w in walked[-3:]]
        if not ty.bounded or not all(e.bounded for e in ends):
            continue
        lo, hi = ty.lo, ty.hi
        for side, sign in (("lo", -1.0), ("hi", 1.0)):
            a, b, c = (getattr(e, side) for e in ends)
            d1, d2 = sign * (b - a), sign * (c - b)
            if d1 <= 0.0 and d2 <= 0.0:
                continue                                # this end does not move outwards
            if not (d1 > 0.0 and 0.0 <= d2 < d1):
                return None                             # steps that do not shrink
            moved = True
            q = d2 / d1
            end = c + sign * (d2 * q / (1.0 - q) * (1.0 + margin) + margin * (ty.hi - ty.lo))
            if min(a, b, c) >= 0.0 > end or max(a, b, c) <= 0.0 < end:
                end = 0.0
            lo, hi = (min(lo, end), hi) if side == "lo" else (lo, max(hi, end))
        out[n] = replace(ty, lo=lo, hi=hi)
    return out if moved else None


_LINEAR_SCALARS: dict[int, tuple] = {}      # id(program) → (program, its _linear_scalars)


def _linear_scalars(program) -> frozenset[str]:
    """_find_linear_scalars, once per program (a shared build walks it for every unrolling)."""
    held = _LINEAR_SCALARS.get(id(program))
    if held is None or held[0] is not program:
        if len(_LINEAR_SCALARS) > 64:
            _LINEAR_SCALARS.clear()
        held = _LINEAR_SCALARS[id(program)] = (program, _find_linear_scalars(program))
    return held[1]


def _find_linear_scalars(program) -> frozenset[str]:
    """The variables a shared build may carry as runtime values where they are compile-time
    numbers that change every iteration: those that reach every assignment reading them
    through sums, differences, products (entrywise or matrix) and numerators only, and are
    assigned only to such variables or to values that read the data anyway — by the program
    text. A number read anywhere else (a
    call, a divisor, a power, a domain or tolerance, an index, a count) must stay a number (a
    runtime one would need a fitted function, or is not allowed there)."""
    assigned: dict[str, set[str]] = {}
    parents: dict[int, object] = {}
    names = []
    for node, parent in ast.walk(program.body):       # (defs are not in the body)
        parents[id(node)] = parent
        if isinstance(node, ast.Assign):
            assigned.setdefault(node.target, set()).update(_names_read(node.value))
        elif isinstance(node, ast.Name):
            names.append(node)

    def linear(node) -> bool:       # each step up to its assignment: + − × @, −x, xᵀ, a numerator
        while True:
            parent = parents[id(node)]
            if isinstance(parent, ast.Assign):
                return node is parent.value
            if not (isinstance(parent, (ast.Neg, ast.Transpose)) or isinstance(parent, ast.BinOp)
                    and (parent.op in ("+", "-", "*", "@") or
                         parent.op == "/" and node is parent.left)):
                return False
            node = parent
    bad = {node.id for node in names if not linear(node)}
    # values that are runtime whatever the numbers are (they read the data): the rule above
    # does not concern them
    runtime = {d.name for d in program.inputs} | {"n"}
    grew = True
    while grew:
        grew = False
        for t, reads in assigned.items():
            if t not in runtime and reads & runtime:
                runtime.add(t)
                grew = True
    todo = [t for t in assigned if t in bad and t not in runtime]
    while todo:         # a number assigned from one that turns runtime turns runtime too
        t = todo.pop()
        for s in assigned.get(t, ()):
            if s not in bad:
                bad.add(s)
                todo.append(s)
    return frozenset(t for t in assigned if t not in bad and t not in runtime)


def _declared_bounds(probe, body, state, env) -> dict[str, tuple[float, float]]:
    """{state: (lo, hi)} for the states whose last assignment in the loop's own body (not an
    inner loop's) is `name = (expr) on [lo, hi]`."""
    last = {}
    for st in body:
        if isinstance(st, ast.Assign) and st.target in state:
            last[st.target] = st.value
    return {n: probe._declared_domain(v, env) for n, v in last.items()
            if isinstance(v, ast.Bound)}


# calls whose value needs no bounds on their arguments: exact selections and fills, and the
# exactly piecewise-linear functions (their ReLU form holds on all of R; one gated by a sign
# input reads a product with it, which the product rule of _bounds_needed catches)
_BOUNDS_FREE_CALLS = {"ones", "zeros", "sum", "stack", "tril", "triu", "outer",
                      "relu", "abs", "clip", "max", "min"}


def _bounds_needed(program, scalars: frozenset = frozenset(),
                   ranks: dict[str, int] | None = None) -> set[str]:
    """The variables whose bounds may reach a fitted domain, found from the program text:
    those read inside a builtin call (other than exact selections and fills), a power, a
    division by anything but a number or n, a product of two values neither of which is a
    number or a scalar variable (`scalars`: a runtime scalar times a value is heads, exact),
    or a user function's argument (a product with, or a quotient by, one entry of a
    variable of known rank `ranks`, S[0, 1], is a scalar's); and, backwards, every variable an
    assignment to such a variable reads, unless that assignment's value is clipped to numbers
    or declared (`on`): it is bounded then whatever it reads. Conservative otherwise: a variable
    not in it flows only into sums, differences, multiples, matrix products, selections and
    exactly piecewise-linear calls."""
    consts = {p.name for p in program.params} | {d.name for d in program.dims}

    def scalar(e) -> bool:       # a runtime scalar times a value is heads, exact: no bounds
        if isinstance(e, ast.Index) and isinstance(e.value, ast.Name):
            # one entry, S[0, 1] or w[2]: an integer for every axis
            return (len(e.subscripts) == (ranks or {}).get(e.value.id, -1) and
                    not any(isinstance(i, ast.Slice) for i in e.subscripts))
        return isinstance(e, ast.Name) and e.id in scalars

    def constant(e) -> bool:
        if isinstance(e, ast.Number):
            return True
        if isinstance(e, ast.Name):
            return e.id in consts
        if isinstance(e, ast.Neg):
            return constant(e.operand)
        if isinstance(e, ast.BinOp) and e.op != "@":
            return constant(e.left) and constant(e.right)
        return False

    # variables that always hold a fill (`o = ones(k)`, `o2 = 2 * o`): a matrix product with
    # one carries bounds. (`w = zeros(d)` before `w = w - ...` holds one only in the first
    # iteration, whatever w's bounds: its products have none after it.) The largest such set:
    # every assigned variable, less those with an assignment that is not a fill, until none is
    assigns = [node for node, _ in ast.walk(program.body) if isinstance(node, ast.Assign)]
    fills = {a.target for a in assigns}
    while True:
        fewer = fills - {a.target for a in assigns if not _is_fill(a.value, fills, consts)}
        if fewer == fills:
            break
        fills = fewer

    def bounds_read(e) -> set[str]:
        return _bounds_read(e, fills | consts)

    direct: set[str] = set()
    reads: dict[str, set[str]] = {}
    for node, _ in ast.walk(program.body):          # (defs are not in the body)
        if isinstance(node, ast.Assign):
            # a value clipped to numbers (or declared, `on`) is bounded whatever it reads:
            # g = clip(A.T @ (A @ w - y) / n, -2, 2) needs no bounds on w
            bounded = isinstance(node.value, ast.Bound) or (
                isinstance(node.value, ast.Call) and node.value.func == "clip" and
                len(node.value.args) == 3 and all(map(constant, node.value.args[1:])))
            reads.setdefault(node.target, set()).update(
                () if bounded else bounds_read(node.value))
        elif isinstance(node, ast.Repeat):
            direct.update(_names_read(node.count))
        elif isinstance(node, ast.Call) and node.func not in _BOUNDS_FREE_CALLS:
            direct.update(*(bounds_read(a) for a in node.args))
        elif isinstance(node, ast.BinOp) and node.op == "/" and scalar(node.right):
            # the reciprocal of one runtime scalar is fitted on the divisor's domain, and the
            # quotient is heads (a scalar times a value): the numerator needs no bounds
            direct.update(bounds_read(node.right))
        elif isinstance(node, ast.BinOp) and (
                node.op == "**" or
                (node.op == "/" and not constant(node.right) and
                 not (isinstance(node.right, ast.Name) and node.right.id == "n")) or
                (node.op == "*" and not constant(node.left) and not constant(node.right)
                 and not scalar(node.left) and not scalar(node.right))):
            direct.update(bounds_read(node))
    needed, todo = set(direct), list(direct)
    while todo:
        for name in reads.get(todo.pop(), ()):
            if name not in needed:
                needed.add(name)
                todo.append(name)
    return needed


def _bounds_read(e, fills: set[str]) -> set[str]:
    """The variables whose bounds reach the bounds of `e`: those it reads, but not through a
    matrix product, which has bounds (checker.py, `@`) only with a fill factor
    (`D @ ones(k)`: sums of k entries) or as a mean over the tokens (`A.T @ r / n`); declared
    norms bound products of declared values only, never of a loop's state."""
    if isinstance(e, ast.Name):
        return {e.id}
    if isinstance(e, ast.BinOp):
        if e.op == "@" and not (_is_fill(e.left, fills) or _is_fill(e.right, fills)):
            return set()
        if e.op == "/" and isinstance(e.right, ast.Name) and e.right.id == TOKEN and \
                isinstance(e.left, ast.BinOp) and e.left.op == "@":
            e = e.left                  # a mean over the tokens: bounded by its operands'
        return _bounds_read(e.left, fills) | _bounds_read(e.right, fills)
    if isinstance(e, (ast.Neg, ast.Transpose, ast.Bound)):
        return _bounds_read(e.operand, fills)
    if isinstance(e, ast.Call):
        return set().union(*(_bounds_read(a, fills) for a in e.args))
    if isinstance(e, ast.Index):
        return _bounds_read(e.value, fills)     # (subscripts are compile-time integers)
    return set()


def _is_fill(e, fills: set[str], consts: frozenset | set = frozenset()) -> bool:
    """An expression whose entries are all one number: ones(k), 2 * ones(k, k) / k, a
    number, a param, a fill variable, and + − × ÷ of those."""
    if isinstance(e, ast.Call):
        return e.func in ("ones", "zeros")
    if isinstance(e, ast.Number):
        return True
    if isinstance(e, ast.Name):
        return e.id in fills or e.id in consts
    if isinstance(e, (ast.Neg, ast.Transpose, ast.Bound)):
        return _is_fill(e.operand, fills, consts)
    if isinstance(e, ast.BinOp) and e.op in ("+", "-", "*", "/"):
        return _is_fill(e.left, fills, consts) and _is_fill(e.right, fills, consts)
    return False


def _inside(a: Ty, hull: Ty) -> bool:
    if not hull.bounded:
        return True
    return a.bounded and hull.lo <= a.lo and a.hi <= hull.hi


__all__ = ["CHANGING_NUMBER", "LoopSite", "SharedGraphBuilder", "loop_key", "loop_sites"]
