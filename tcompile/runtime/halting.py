"""Halting: each problem of a batch leaves a loop when its variable stops moving.

A universal transformer halts per position when a learned signal says so; here the signal is
the loop variable itself. The rule is the program's, not the build's (`HaltingRule`; the
reference interpreter applies it too: language/interpreter.py `interpret_program(...,
halting=rule)`): after iteration c, for the counts c the rule tests, a problem whose variable
moved by at most `tol` (max abs change) since iteration c − gap halts, and its outputs are those
of a fixed-count run of c iterations; a problem no test stops runs `limit` iterations and is
not `converged` (a NotConvergedWarning names it; the CLI prints how many).

Where the build can test is what the rule's counts say. The shared build records where an
application of the body writes each carried variable's value of an iteration (loops.py
`LoopSpec.watch`: a sublayer of the body and its rows, even if other values are written over
them later in the application: power_iteration's u, huber_irls' r, sinkhorn's v), and the
executors read it there, after that sublayer. A value may be written a few applications before
or after the one that ends the count it belongs to (the pipeline carries some iterations into
the layers around the body; huber_irls' x of iteration c is written in the application that
ends count c + 1): a problem whose test passes is stopped at the application that ends count c
— later (it runs on until then), or earlier (its state as that application left it, kept by
reference: sublayers write new tensors, never into old ones). So the counts tested are those
whose value, and the one gap before it, some application writes, from the first count the build
runs (`min_count`) on. A kernel of k iterations (every > 1) ends one residue of the count mod k
per run (the step limit's: its tail ends the batch), so its counts step by k; gap is 1 where its
applications write the values of consecutive iterations, else k (Richardson writes only every
other x). Where the limit's residue has no count whose value is written (power_iteration's u,
written at even counts only), the limit is one lower.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError, NotConvergedWarning
from .loops import kept_unrolled


@dataclass(frozen=True)
class HaltingRule:
    """When a halting run stops, in the program's terms: the loop (its key, line:col), the
    variable and the tolerance; the counts tested — first, first + every, ..., last —; a test at
    count c compares the variable after c iterations with it after c − gap; `limit`: the count
    a problem no test stops runs to."""
    variable: str
    tol: float
    loop: str
    first: int
    last: int
    every: int
    gap: int
    limit: int
    asked: int | None = None        # the limit asked for, where the build ran one lower

    @property
    def tested(self) -> range:
        """The counts tested: first, first + every, ..., last (empty where first > last)."""
        return range(self.first, self.last + 1, self.every)

    def tests(self, c: int) -> bool:
        return c in self.tested


@dataclass(frozen=True, order=True)
class WatchPoint:
    """Where an application reads the variable: after sublayer `sublayer` (1 attention, 2 MLP)
    of body item `position`, `rows` hold its value after `count` + every·j iterations in
    application j."""
    position: int
    sublayer: int
    rows: tuple[int, ...]
    count: int


@dataclass(frozen=True)
class HaltingPlan:
    """`until` resolved for one run: the rule, the loop, its watch points (in the order an
    application reaches them), and how many applications the limit runs."""
    rule: HaltingRule
    key: str
    item: object                   # loops.LoopItem
    points: tuple[WatchPoint, ...]
    applications: int

    def ending(self, c: int) -> int:
        """The application (from 0) after which a run of count c leaves the loop."""
        item = self.item
        start = item.offsets[item.residue(self.rule.limit)] if item.every > 1 else item.offset
        return (c - start) // item.every - 1

    def watch(self, batch: int) -> Watch:
        return Watch(self, batch)


def resolve_until(prog, until) -> tuple[str, str, float]:
    """("x", tol) → (loop key, variable, tol), with clear errors."""
    if not (isinstance(until, (tuple, list)) and len(until) == 2 and isinstance(until[0], str)):
        raise InputError(f"until must be (variable name, tolerance), got {until!r}")
    name, tol = until
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise InputError(f"until's tolerance must be a number >= 0, got {tol!r}")
    options = prog.loops.until_loops()
    if name in options:
        return options[name], name, float(tol)
    kept = [(line, why) for line, names, _param, why in kept_unrolled(prog.program, prog.loops)
            if name in names]
    if kept:
        line, why = kept[0]
        raise InputError(f"until names {name!r}, which the loop at line {line} assigns, and this "
                         f"build keeps that loop unrolled ({why}): it runs the count it was "
                         "built with, and nothing between its iterations can stop it; its "
                         f"loop variables: {', '.join(sorted(options)) or 'none'}")
    raise InputError(f"until names {name!r}, which no top-level loop of this build assigns "
                     f"where it can be watched; its loop variables: "
                     f"{', '.join(sorted(options)) or 'none'} (a value only a loop nested in "
                     "the body assigns is not one: watch a value the body computes from it; "
                     "where a loop's body assigns it, the build may have folded it into the "
                     f"values that read it: build with keep=[{name!r}], `tcompile build ... "
                     f"--keep {name}`, to store it)")


def step_limit(prog, counts: dict, until, max_steps):
    """(loop key, variable, tol, spec, the most iterations) for a halting run: both halting
    paths run to it, and check_run_cost estimates a run at it."""
    key, name, tol = resolve_until(prog, until)
    spec = prog.loops.spec(key)
    if spec.param is None:
        raise InputError(f"the loop at line {spec.line} has a fixed count; halting needs one "
                         "set at run time")
    limit = _asked_limit(spec, counts, max_steps)
    item = prog.loops.item(key)
    if item.every > 1:        # a limit whose residue no written value has: one lower
        have = {c % item.every for var, *_, c in spec.watch if var == name}
        if item.offsets[item.residue(limit)] % item.every not in have and limit > spec.min_count:
            limit -= 1
    return key, name, tol, spec, limit


def _asked_limit(spec, counts: dict, max_steps) -> int:
    """The most iterations a halting run was asked for: max_steps, else the loop's count."""
    return counts.get(spec.param, spec.count) if max_steps is None else max_steps


def halting_plan(prog, counts: dict, until, max_steps) -> HaltingPlan:
    """The rule and the watch points of `until` at these counts (InputError where the build
    cannot run it)."""
    key, name, tol, spec, limit = step_limit(prog, counts, until, max_steps)
    asked = _asked_limit(spec, counts, max_steps)
    asked = asked if asked != limit else None
    prog.loops.counts({**counts, spec.param: limit})            # a limit the build covers
    item = prog.loops.item(key)
    k = item.every
    # in the order an application reads them, and in count order where one sublayer writes
    # two (a kernel of 2 whose attention writes x of both iterations: the Watch compares each
    # value with the one before it, and keeps only the last few)
    points = tuple(sorted((p for p, var, _ in watch_points(prog, spec) if var == name),
                          key=lambda p: (p.position, p.sublayer, p.count)))
    apps = item.runs(limit)[0]
    start = item.offsets[item.residue(limit)] if k > 1 else item.offset
    residues = {p.count % k for p in points}
    gap = 1 if len(residues) > 1 or k == 1 else k
    mine = [p.count for p in points if p.count % k == start % k]
    prev = [p.count for p in points if p.count % k == (start - gap) % k]
    if not mine:
        rule = HaltingRule(name, tol, key, limit + 1, limit, k, gap, limit, asked)  # tests nothing
        return HaltingPlan(rule, key, item, points, apps)
    c0 = min(mine)        # read in application j: c0 + k·j; the one before it: prev + k·j
    lo = max(spec.min_count, start + k, c0, min(prev) + gap)
    lo += (start - lo) % k
    hi = min(limit, c0 + k * (apps - 1))
    hi -= (hi - start) % k
    return HaltingPlan(HaltingRule(name, tol, key, lo, hi, k, gap, limit, asked), key, item,
                       points, apps)


class Watch:
    """The rule applied to the values a run reads, for a batch: both executors call `read`
    with each value as an application writes it, and `settle` after each application with a
    reference to the state it left (a dict of slots, or the residual stream); `settle` returns
    (problems, state) pairs: these problems halt with that state (an earlier application's,
    or this one's)."""

    def __init__(self, plan: HaltingPlan, batch: int):
        self.plan, self.rule = plan, plan.rule
        self.active = np.ones(batch, dtype=bool)
        self.left = batch                            # problems still active
        self.steps = np.full(batch, -1, dtype=np.int64)
        self.values: dict[int, object] = {}
        self.pending: dict[int, np.ndarray] = {}    # application → problems that halt there
        self.saved: dict[int, object] = {}
        # the most applications a value is read after the one that ends its count (its
        # state is kept that long)
        self.lag = max([0] + [-plan.ending(p.count) for p in plan.points])
        # read's constants, looked up once: it runs after every application
        rule = plan.rule
        self._step, self._gap, self._tol = plan.item.every, rule.gap, rule.tol
        self._drop = rule.gap + 2 * rule.every     # values older than this are read no more
        self._tested = rule.tested

    def read(self, j: int, point: WatchPoint, value: torch.Tensor) -> None:
        """On the CPU the values are kept as numpy views and the test is numpy's — every entry
        of a problem within tol, which is its largest change within tol (a difference and its
        absolute value are exact in either; NaN passes neither) —, which costs less than
        torch's calls on B small rows; and where fewer entries than one problem has are within
        tol, no problem passes and nothing more is computed."""
        c = point.count + self._step * j
        if value.is_cpu:
            value = value.numpy()
        values = self.values
        values[c] = value
        values.pop(c - self._drop, None)
        before = values.get(c - self._gap)
        if before is None or c not in self._tested:
            return
        if isinstance(value, np.ndarray):
            still = abs(value - before) <= self._tol
            if len(still) and np.count_nonzero(still) < still[0].size:
                return       # fewer entries within tol than one problem has: none passes
            passed = still.reshape(len(value), -1).all(axis=1)
        else:
            moved = torch.amax(torch.sub(value, before).abs_(), dim=(1, 2)).cpu().numpy()
            passed = moved <= self._tol
        now = self.active & passed
        halts = int(np.count_nonzero(now))
        if halts:
            self.steps[now] = c
            self.active ^= now                  # now ⊆ active: these leave it
            self.left -= halts
            at = self.plan.ending(c)
            self.pending[at] = self.pending[at] | now if at in self.pending else now

    def settle(self, j: int, state) -> list[tuple[np.ndarray, object]]:
        saved = self.saved
        saved[j] = state
        saved.pop(j - self.lag - 1, None)
        if not self.pending:
            return []
        return [(self.pending.pop(at), saved[at]) for at in sorted(self.pending) if at <= j]

    @property
    def done(self) -> bool:
        return not self.left and not self.pending

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, converged) per problem."""
        converged = self.steps >= 0
        steps = self.steps.copy()
        steps[~converged] = self.rule.limit
        return steps, converged


def structured_until(prog, executor, inputs, counts: dict, until, max_steps, dtype, device,
                     watch: bool = False):
    """Halting through the shared build's structured executor (exec_loops.py), which plans
    each body once and reads the variable where the body writes it; None where its plan does
    not cover the run (a loop run 0 times), and the looped module must do it. The plan of
    each (until, max_steps, counts) is kept on the executor (a run's fixed cost, ~10 µs:
    B = 64 least_squares runs in ~1 ms); the key holds the types too, so that an until that
    only equals a checked one (("w", True) beside ("w", 1)) is checked itself."""
    cache = executor.halting_plans
    try:
        key = (_typed(until), _typed(max_steps), tuple(sorted(counts.items())),
               tuple(map(_typed, counts.values())))
        hash(key)
    except TypeError:
        key = None
    got = None if key is None else cache.get(key)
    if got is None:
        plan = halting_plan(prog, counts, until, max_steps)
        spec = prog.loops.spec(plan.key)
        resolved = prog.loops.counts({**counts, spec.param: plan.rule.limit})
        got = (plan, resolved, executor.covers(resolved))
        if key is not None and len(cache) < 64:
            cache[key] = got
    plan, resolved, covered = got
    if not covered:
        return None
    out, (steps, converged), ranges = executor.run_inputs(inputs, resolved, dtype, device, plan,
                                                          watch)
    warn_not_converged(converged, until, plan.rule)
    return out, steps, converged, ranges


def _typed(x):
    """x with the type of it and of its items: a cache key that tells 1 from True and 1.0."""
    if isinstance(x, (tuple, list)):
        return (type(x),) + tuple(_typed(y) for y in x)
    return (type(x), x)


def run_until(prog, module, x: torch.Tensor, counts: dict, until, max_steps):
    """Run the looped module with halting; (final residual, steps per problem, converged per
    problem, the run-time counts the module ran: the step limit's, whose residue every halting
    count shares, so decode reads the outputs from that residue's rows). The variable is read
    where the structured executor reads it (a hook after that sublayer of that body item),
    so both stop at the same counts."""
    plan = halting_plan(prog, counts, until, max_steps)
    spec = prog.loops.spec(plan.key)
    watcher = plan.watch(x.shape[0])
    state = {"frozen": None, "halted": None}

    def read(j, p, out):
        watcher.read(j, p, out.index_select(2, torch.tensor(p.rows, device=out.device)))

    def halt(ctx, loop, before, after, it):
        if loop.key != plan.key:
            return after
        for mask, old in watcher.settle(it, after):
            m = torch.as_tensor(mask, device=after.device).view(-1, 1, 1)
            frozen = state["frozen"]
            state["frozen"] = torch.where(m, old, after if frozen is None else frozen)
            state["halted"] = m if state["halted"] is None else state["halted"] | m
        ctx.stop = watcher.done
        if state["halted"] is not None:
            after = torch.where(state["halted"], state["frozen"], after)
        return after

    handles = watch_hooks(prog, module, plan.key, plan.points, read)
    ran = {**counts, spec.param: plan.rule.limit}
    try:
        y = module(x, ran, halt=halt)
    finally:
        for h in handles:
            h.remove()
    steps, converged = watcher.result()
    warn_not_converged(converged, until, plan.rule)
    return y, steps, converged, ran


def watch_points(prog, spec) -> list[tuple[WatchPoint, str, str]]:
    """A top-level loop's `LoopSpec.watch` as (WatchPoint, variable, block key) triples: where
    an application writes each carried variable's value of an iteration, in the rows of that
    block — what halting reads, and the trace for a variable no rows hold between
    applications."""
    return [(WatchPoint(pos, sub, tuple(prog.layout.block(block).rows), c), var, block)
            for var, block, pos, sub, c in spec.watch]


def watch_hooks(prog, module, key: str, points, read) -> list:
    """Forward hooks on the looped module that call read(application, point, stream) right
    after the sublayer of the body item where an application of top-level loop `key` writes
    each WatchPoint's value (`stream`: the whole residual stream there, batch first), as the
    structured executor reads it; the handles, for the caller to remove. Halting's module path
    and the trace of a variable the loop does not hold between applications use it."""
    from .loops import parts
    item = prog.loops.item(key)
    depth_of = {s.key: s.depth for s in prog.loops.loops}
    path = next((name,) for name, part in parts(prog.loops.sequence, True, depth_of)
                if getattr(part, "loop", None) == key)
    where: dict[tuple, list[WatchPoint]] = {}       # the hook path after the iteration
    at_item: dict[int, tuple] = {}
    pos = 0
    for name, part in parts(item.body, False, depth_of):
        for j, _ in enumerate(part if name != "loop" and not hasattr(part, "loop") else [part]):
            at_item[pos] = (j,) if name == "layers" else (name, j)
            pos += 1
    for p in points:
        where.setdefault(at_item[p.position] + (p.sublayer,), []).append(p)

    def hook_for(sub):
        def hook(_m, _i, out):
            w = module._ctx.where
            if len(w) < 2 or w[:1] != path or not isinstance(w[1], int):
                return None
            for p in where.get(tuple(w[2:]) + (sub,), ()):
                read(w[1], p, out)
            return None
        return hook

    handles, hooked = [], set()
    for p in points:      # one hook per stored layer and sublayer: it finds every point there
        block = module.stored[item.body[p.position]]
        if (id(block), p.sublayer) in hooked:
            continue
        hooked.add((id(block), p.sublayer))
        point = block.hook_resid_mid if p.sublayer == 1 else block.hook_resid_post
        handles.append(point.register_forward_hook(hook_for(p.sublayer)))
    return handles


def warn_not_converged(converged: np.ndarray, until, rule: HaltingRule) -> None:
    """A NotConvergedWarning naming the problems that hit the step limit still moving."""
    stuck = ~converged
    if stuck.any():
        batch, limit = len(converged), rule.limit
        which = ", ".join(map(str, np.flatnonzero(stuck)[:10])) + (", ..." if stuck.sum() > 10 else "")
        last = f" (the last count it is tested at: {rule.last})" if rule.last != limit else ""
        # a kernel loop writes some variables at counts of one residue only: the limit asked
        # may not be one of them (halting.py's docstring)
        lower = (f" (not the {rule.asked} asked: the loop runs a kernel of {rule.every} "
                 f"iterations, and this build writes {until[0]} only at counts {rule.every} "
                 f"apart, of which {rule.asked} is none)") if rule.asked is not None else ""
        warnings.warn(NotConvergedWarning(
            f"{int(stuck.sum())} of {batch} problem{'s' * (batch != 1)} did not converge: "
            f"{until[0]} still moved more than {rule.tol:g} in iteration {limit}{last} (problem"
            f"{'s' * (int(stuck.sum()) != 1)} {which}); steps = {limit} there is the limit"
            f"{lower}, not a convergence: raise it with max_steps (--max-steps)"), stacklevel=4)


__all__ = ["HaltingRule", "HaltingPlan", "WatchPoint", "Watch", "halting_plan", "run_until",
           "resolve_until", "step_limit", "structured_until", "warn_not_converged",
           "watch_points", "watch_hooks"]
