"""The structured executor for a shared build: each loop body planned once, run in a loop.

`ExpandedExecutor` (executor.py) plans the stored layers in the order one count runs them: its
plan grows with the count and is made again for every new count. Here the plan follows the
`LoopProgram` instead: a stored layer outside loops is planned where it runs; a loop is planned
twice — its *first* application, which reads what the layers before the loop left, and its
*steady* application, which reads what the previous application left. Every application
writes the same slots (a slot is named by the stored layer and block that writes it, the same
at every iteration: rows.py pins the loop state), so the occupancy after the steady application
is the one after the first — checked when planning (a fixed point), and if it does not hold the
program falls back to the expanded executor. Nested loops nest the same way. The plan depends
on no count: a run executes first once and steady `count − offset − 1` times. A kernel of k
iterations (loops.py `LoopItem.every`) runs its applications as many times as the count
gives, then the tail of the count's residue, each tail planned from the loop's exit (every
tail must leave the same slots).

Between applications of a top-level loop the driver may test a halting condition (`until`):
the rows a loop variable is pinned to are read before and after each application, a problem
whose variable moved by at most the tolerance halts, and its slots are kept as they were then
(the batch runs on; the kept values are put back when the loop ends). The count reported is
the one a fixed-count run needs for the same output (halting.py's convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import clock
from .domain_guard import guarded, observe
from .exec_codegen import NotTraceable, trace
from .exec_ops import ReadOp, read_outputs
from .exec_plan import Occupancy, concrete, initial_occupancy
from .exec_sublayers import HeadSpec, SublayerPlan, plan_heads, plan_sublayer
from .layout import Layout
from .loops import LoopItem, LoopProgram
from .model import exact_float32
from .pl_tables import plan_mlp
from .weights import LayerWeights


class NotSteady(Exception):
    """A loop body's plan does not reach a fixed point: run the expanded executor instead."""


@dataclass
class LayerStep:
    """One stored layer where it runs: its sublayers' plans (empty sublayers skipped), and
    the domain checks read after its attention: (check index, Read of the block's rows),
    read after the first `watch_at` plans (0 or 1)."""
    layer: int
    plans: list[SublayerPlan]
    watches: list = None
    watch_at: int = 0
    # halting's watch points here: (sublayer, rows) → the Read of those rows after it
    reads: dict = None


@dataclass
class LoopStep:
    """A loop: `first` is its first application, `steady` every later one. A kernel of
    every > 1 iterations (loops.py `LoopItem`): `item` says how many applications a count
    runs, and `tails[r]` is planned after them for residue r (every tail leaves the same
    occupancy, or, `forked`, each holds the rest of the program: the run ends in its own)."""
    key: str
    offset: int
    first: list
    steady: list
    entry: Occupancy              # the occupancy before the first application
    exit: Occupancy               # after any application (the fixed point)
    item: LoopItem | None = None
    tails: list | None = None
    forked: bool = False          # its tails hold the rest of the program (plan_loops' finals)


class _StoredLayout:
    """What plan_sublayer asks of a layout, per stored layer: sublayer t = 2·layer + 1 (its
    attention) or 2·layer + 2 (its MLP) writes the blocks that layer's first run in the base
    unrolling writes (executor._block_templates). With `separate_first`, the first application
    of each loop plans its sublayers at t + 2·N·k (N stored layers, k counting first
    applications): rows written outside any block form anonymous slots named by t (`~t:ext`), and a
    first application's may be wider than the steady one's (it reads what the layers before the
    loop left) — such a slot, dead at the end of the body, is then a slot of its own."""

    def __init__(self, templates: dict[int, dict[int, list]], n_layers: int,
                 separate_first: bool):
        self.templates, self.period = templates, clock.n_times(n_layers)
        self.separate_first = separate_first
        self.shift = 0                 # added to t while a first application is planned
        self.firsts = 0

    def written_at(self, t: int) -> list:
        layer, sub = divmod((t - 1) % self.period, 2)
        return self.templates.get(layer, {}).get(sub + 1, [])


def plan_loops(loops: LoopProgram, layers: list[LayerWeights], layout: Layout,
               templates: dict[int, dict[int, list]], separate_first: bool = False,
               domains=(), watch: dict | None = None) -> tuple[list, Occupancy, list[Occupancy]]:
    """(steps, initial occupancy, final occupancies) — NotSteady where a body's plan does not
    repeat. The final occupancy is one, or one per residue of a top-level kernel loop whose
    tails leave values in other slots (its `LoopStep.forked`). `domains`: the manifest's
    DomainChecks (each names a stored layer and a block whose rows are pinned), read after
    that layer's attention wherever it runs. `watch`: {loop key: {body position: [(sublayer,
    rows)]}}, the rows halting reads after that sublayer (LayerStep.reads)."""
    occ = initial_occupancy(layout)
    initial = occ.copy()
    stored = _StoredLayout(templates, len(layers), separate_first)
    stored.checks = {}
    stored.watch = watch or {}
    for c, chk in guarded(domains):
        stored.checks.setdefault(chk.layer, []).append((c, layout.block(chk.block).rows))
    finals: list[Occupancy] = []
    steps = _plan_sequence(loops.sequence, layers, stored, occ, finals)
    return steps, initial, finals or [occ]


def _plan_sequence(seq, layers, stored: _StoredLayout, occ: Occupancy,
                   finals: list | None = None, reads: dict | None = None) -> list:
    """The steps of `seq` from occupancy `occ` (updated). `finals` (top level only): where a
    kernel loop's tails leave values in different slots (power iteration's outputs end in
    other rows at odd counts), each tail is planned with the rest of the sequence after it,
    the steps end at that loop, and `finals` gets the occupancy each residue ends with."""
    out = []
    for n, item in enumerate(seq):
        if isinstance(item, LoopItem):
            entry = occ.copy()
            shift = stored.shift
            if stored.separate_first:
                stored.firsts += 1
                stored.shift = stored.period * stored.firsts
            reads_here = stored.watch.get(item.loop)
            first = _plan_sequence(item.body, layers, stored, occ, reads=reads_here)
            stored.shift = shift
            after_first = occ.copy()
            steady = _plan_sequence(item.body, layers, stored, occ, reads=reads_here)
            if not _same(after_first, occ):
                raise NotSteady(f"loop {item.loop}: the body leaves its values in other slots "
                                "after the second application than after the first")
            exit_ = occ.copy()
            tails, ends = [], []
            for tail in item.tails:               # a kernel: one tail per residue
                mine = exit_.copy()
                tails.append(_plan_sequence(tail, layers, stored, mine))
                ends.append(mine)
            if ends and not all(_same(ends[0], e) for e in ends[1:]):
                if finals is None:
                    raise NotSteady(f"loop {item.loop}: its tails leave values in different slots")
                rest = tuple(seq[n + 1:])
                tails = []
                for tail in item.tails:
                    mine = exit_.copy()
                    tails.append(_plan_sequence(tuple(tail) + rest, layers, stored, mine))
                    finals.append(mine)
                out.append(LoopStep(item.loop, item.offset, first, steady, entry, exit_, item,
                                    tails, forked=True))
                return out
            if ends:
                occ.slots, occ.owner = ends[0].slots, ends[0].owner
            out.append(LoopStep(item.loop, item.offset, first, steady, entry, exit_, item,
                                tails or None))
        else:
            out.append(_plan_layer(item, layers[item], stored, occ, (reads or {}).get(n, ())))
    return out


def _plan_layer(i: int, w: LayerWeights, stored: _StoredLayout, occ: Occupancy,
                reads=()) -> LayerStep:
    plans = []
    t_attn, t_mlp = (clock.attention_time(i) + stored.shift, clock.mlp_time(i) + stored.shift)
    heads = plan_heads(w, occ)
    if heads or stored.written_at(t_attn):
        plans.append(plan_sublayer(stored, t_attn, heads, occ))
    watches = [(c, occ.read(rows)) for c, rows in stored.checks.get(i, ())]
    watch_at = len(plans)
    got = {(sub, rows): occ.read(rows) for sub, rows in reads if sub == 1}
    groups = plan_mlp(w.W_1, w.W_2, occ)
    if groups or stored.written_at(t_mlp):
        plans.append(plan_sublayer(stored, t_mlp, groups, occ))
    got.update({(sub, rows): occ.read(rows) for sub, rows in reads if sub == 2})
    return LayerStep(i, plans, watches, watch_at, got)


def _loop_items(seq):
    for item in seq:
        if isinstance(item, LoopItem):
            yield item
            yield from _loop_items(item.body)


def _same(a: Occupancy, b: Occupancy) -> bool:
    """The same rows held by the same slots (keys, positions, shapes)."""
    if a.owner != b.owner:
        return False
    return all(a.slots[k] == b.slots[k] for k, _ in set(a.owner.values()))


def _layer_steps(steps):
    for s in steps:
        if isinstance(s, LayerStep):
            yield s
        else:
            yield from _layer_steps(s.first)
            yield from _layer_steps(s.steady)
            for tail in s.tails or ():
                yield from _layer_steps(tail)


def _all_plans(steps) -> list[SublayerPlan]:
    out = []
    for s in steps:
        if isinstance(s, LayerStep):
            out += s.plans
        else:
            out += _all_plans(s.first) + _all_plans(s.steady)
            for tail in s.tails or ():
                out += _all_plans(tail)
    return out


def _linear(steps, out: list, shadow: bool) -> None:
    """The plans in a run order that repeats each steady body once more (its copy `shadow`):
    a slot read by the next application is then read after the steady plan's last use. A
    layer's domain-check reads count as read by its first plan after them. A kernel's tails
    (one per residue) come one after another: each run takes one of them, so a slot dropped
    after its last read here is read by no later plan of that run."""
    for s in steps:
        if isinstance(s, LayerStep):
            out += [(p, shadow, [r for _, r in s.watches] if k == s.watch_at else [])
                    for k, p in enumerate(s.plans)]
        else:
            _linear(s.first, out, shadow)
            _linear(s.steady, out, shadow)
            _linear(s.steady, out, True)
            for tail in s.tails or ():
                _linear(tail, out, shadow)


def _reads(c):
    if isinstance(c, HeadSpec):
        return [c.k, c.q, c.v]
    return [c.var, c.gate]


def lifetimes(steps, keep: set[str], constant: set[str]) -> dict[int, list[str]]:
    """id(plan) → slot keys to drop after it: those no later sublayer reads in any run (the
    steady copy that repeats decides; a key read again by the next application is kept)."""
    order: list = []
    _linear(steps, order, False)
    last: dict[str, int] = {}
    for i, (p, _shadow, watched) in enumerate(order):
        for r in [r for c in p.contribs for r in _reads(c)] + list(p.olds) + watched:
            for seg in r.segments:
                if seg.key is not None:
                    last[seg.key] = i
    drop: dict[int, list[str]] = {}
    for key, i in last.items():
        plan, shadow, _ = order[i]
        if key not in keep and key not in constant and not shadow:
            drop.setdefault(id(plan), []).append(key)
    return drop


class LoopRunner:
    """Runs resolved steps (one (n, dtype, device)): layers, and loops as loops."""

    def __init__(self, steps, sublayers: dict[int, object], drops: dict[int, list[str]],
                 watches: dict[int, list], slots: dict, n: int):
        self.steps, self.sublayers, self.drops = steps, sublayers, drops
        self.slots, self.n = slots, n
        self._halting_reads: dict = {}
        self._held_keys: dict = {}
        self._traces: dict = {}
        self.codegen = True
        self.watches = watches          # id(LayerStep) → [(check, ReadOp)]
        self.seen: list | None = None

    def run(self, state: dict, counts: dict[str, int], like, halting=None, watch: bool = False):
        """Runs every step on `state` (in place); `halting`: a halting.HaltingPlan. Returns
        ((steps, converged) with halting else None, the domain checks' (index, aminmax)
        pairs: [] without `watch`)."""
        self.result = None
        self.seen = [] if watch else None
        try:
            self._run(self.steps, state, counts, like, halting)
            return self.result, self.seen or []
        finally:
            self.seen = None

    def _run(self, steps, state, counts, like, halting):
        segment: list = []
        for s in steps + [None]:
            if isinstance(s, LayerStep):
                segment.append(s)
                continue
            if segment:
                self._segment(segment, state, like)
                segment = []
            if s is None:
                break
            if halting is not None and s.key == halting.key:
                self._halting_loop(s, state, counts, like, halting)
            else:
                for it in range(s.item.runs(counts[s.key])[0]):
                    self._run(s.first if it == 0 else s.steady, state, counts, like, None)
            if s.tails:
                r = s.item.residue(counts[s.key])
                self._run(s.tails[r], state, counts, like, None)

    def _segment(self, segment: list, state: dict, like) -> None:
        """Layers between loops, run by the straight-line code generated for these slot
        shapes (exec_codegen.py, as the executor runs a whole plan; traced on first use,
        bit for bit the interpreted sublayers), or interpreted where the plan cannot be."""
        if not self.codegen:
            return self._interpret(segment, state, like, self.seen)
        keys = tuple(sorted(state))
        args = [state[k] for k in keys]
        watch = self.seen is not None
        key = (id(segment[0]), id(segment[-1]), len(segment), keys, watch,
               tuple((a.shape, a.stride(), a.dtype, a.device) for a in args))
        fn = self._traces.get(key)
        if fn is None:
            def flat(*ts):
                st, seen = dict(zip(keys, ts)), [] if watch else None
                self._interpret(segment, st, like, seen)
                return st, seen or []
            try:
                fn, (out, seen) = trace(flat, args)
            except NotTraceable:
                fn, out = False, None
            self._traces[key] = fn
            if fn is not False:
                self._settle(state, out, seen)
                return
        if fn is False:
            return self._interpret(segment, state, like, self.seen)
        self._settle(state, *fn(*args))

    def _settle(self, state: dict, out: dict, seen: list) -> None:
        state.clear()
        state.update(out)
        if self.seen is not None:
            self.seen += seen

    def _interpret(self, segment: list, state: dict, like, seen) -> None:
        for s in segment:
            for k, p in enumerate(s.plans):
                if k == s.watch_at and seen is not None:
                    self._watch(s, state, like, seen)
                self.sublayers[id(p)](state, like)
                for key in self.drops.get(id(p), ()):
                    state.pop(key, None)
            if s.watch_at == len(s.plans) and seen is not None:
                self._watch(s, state, like, seen)

    def _pieces(self, s: LoopStep, plan, first: bool) -> list:
        """The body's steps cut after each watch point of `plan`: [(steps, (point, ReadOp) or
        None)], the read taken after its steps; made once per runner (the cut LayerSteps'
        ids key their traces, so they are kept)."""
        key = (id(s), plan.points, first)
        if key not in self._halting_reads:
            steps, out, done, last = list(s.first if first else s.steady), [], 0, None
            for p in plan.points:
                step = steps[p.position]
                read = step.reads[(p.sublayer, p.rows)]
                if (p.position, p.sublayer) == last:    # read where the last point was read:
                    out.append(([], (p, self._read_op(read))))   # nothing runs in between
                    continue
                last = (p.position, p.sublayer)
                cut = step.watch_at if p.sublayer == 1 else len(step.plans)
                head = steps[done:p.position]
                if cut < len(step.plans):       # the rest of the layer runs after the read
                    a = LayerStep(step.layer, step.plans[:cut], step.watches, step.watch_at,
                                  step.reads)
                    b = LayerStep(step.layer, step.plans[cut:], [], len(step.plans) + 1,
                                  step.reads)
                    self.watches[id(a)] = self.watches.get(id(step), [])
                    steps[p.position] = b
                    head.append(a)
                    done = p.position
                else:
                    head.append(step)
                    done = p.position + 1
                out.append((head, (p, self._read_op(read))))
            out.append((steps[done:], None))
            self._halting_reads[key] = out
        return self._halting_reads[key]

    def _read_op(self, read) -> ReadOp:
        e = max(concrete(self.slots[seg.key].ext, self.n)
                for seg in read.segments if seg.key is not None)
        return ReadOp(read, self.slots, e, self.n)

    def _held(self, s: LoopStep) -> list[str]:
        """The slots the loop's applications write that hold rows when one ends: all a
        halted problem needs kept (the rest of its state the loop does not change)."""
        if id(s) not in self._held_keys:
            written = {slot.key for p in _all_plans(s.steady) for slot in p.slots}
            self._held_keys[id(s)] = sorted({k for k, _ in s.exit.owner.values()} & written)
        return self._held_keys[id(s)]

    def _watch(self, s: LayerStep, state, like, seen: list) -> None:
        observe(((c, rd(state, like)) for c, rd in self.watches.get(id(s), ())), seen)

    def _halting_loop(self, s: LoopStep, state, counts, like, plan) -> None:
        """The loop with the variable read where the body writes it (halting.py's Watch decides
        who halts, and with the state of which application); the bookkeeping is numpy (B
        flags, one transfer of B numbers per value tested), so an application costs its
        sublayers and a few small tensor operations more. The first problems to halt keep
        their state by reference, later ones by torch.where over it, and the final merge is
        skipped where every problem halted (it would pick the kept values everywhere)."""
        B = max((v.shape[0] for v in state.values()), default=1)
        watch = plan.watch(B)
        held = self._held(s)
        pieces = [self._layers_only(p) for p in (self._pieces(s, plan, True),
                                          self._pieces(s, plan, False))]
        kept: dict[str, torch.Tensor] = {}
        for it in range(plan.applications):       # then the tail of the limit's residue
            for steps, layers, point in pieces[it > 0]:
                if layers:
                    self._segment(steps, state, like)
                elif steps:
                    self._run(steps, state, counts, like, None)
                if point is not None:
                    watch.read(it, point[0], point[1](state, like))
            # references (a sublayer writes new tensors): a copy of the dict, not of its values;
            # its entries besides the held slots are the loop's inputs and constants, the same
            # tensors in every application (a slot the body writes and no later one reads is
            # dropped already), so keeping them costs no memory
            for mask, old in watch.settle(it, dict(state)):
                m = torch.as_tensor(mask.reshape(-1, 1, 1), device=like.device)
                for key in held:
                    if key in old:
                        v = old[key]
                        kept[key] = torch.where(m, v, kept[key]) if key in kept else v
            if watch.done:
                break
        steps, converged = watch.result()
        every = bool(converged.all())
        halted = None if every else torch.as_tensor(converged, device=like.device).view(-1, 1, 1)
        for key, v in kept.items():
            if key in state:
                state[key] = v if every else torch.where(halted, v, state[key])
        self.result = (steps, converged)

    def _layers_only(self, pieces: list) -> list:
        """(steps, whether they are layers only — one segment, no loop to walk —, read)."""
        return [(steps, bool(steps) and all(isinstance(x, LayerStep) for x in steps), point)
                for steps, point in pieces]


class SharedExecutor:
    """A shared build's structured executor: `plan_loops`' steps resolved per (n, dtype,
    device) by executor.py's own sublayer code, run by `LoopRunner` at any counts."""

    def __init__(self, prog):
        from .executor import _block_templates
        loops, layout = prog.loops, prog.layout
        by_time: dict[int, list] = {}
        for b in layout.blocks:
            by_time.setdefault(b.written, []).append(b)
        templates = _block_templates(loops.expand(dict(loops.base_counts)), by_time)
        self.layout, self.loops = layout, loops
        self.domains = prog.typed_manifest.domains
        self.watch: dict = {}           # halting's watch points (LoopSpec.watch)
        for spec in loops.loops:
            for _var, block, pos, sub, _c in spec.watch:
                rows = tuple(layout.block(block).rows)
                self.watch.setdefault(spec.key, {}).setdefault(pos, []).append((sub, rows))
        try:
            self._plan(prog, templates, False)
        except NotSteady:               # a first application's anonymous slot differs
            self._plan(prog, templates, True)
        self.inputs = [s for s in self.initial.slots.values() if s.const is None]
        keep = {seg.key for r in range(len(self.finals))
                for blk, _ in self._outputs(r).values()
                for seg in self.finals[r].read(blk.rows).segments if seg.key is not None}
        constant = {k for k, s in self.all_slots.items() if s.const is not None}
        self.drops = lifetimes(self.steps, keep, constant)
        self._runners: dict = {}
        self.halting_plans: dict = {}   # halting.structured_until's plan of each until

    def _plan(self, prog, templates, separate_first: bool) -> None:
        self.steps, self.initial, self.finals = plan_loops(prog.loops, prog.layers, self.layout,
                                                           templates, separate_first,
                                                           prog.typed_manifest.domains,
                                                           self.watch)
        forked = [s for s in self.steps if isinstance(s, LoopStep) and s.forked]
        self.fork = forked[0].item if forked else None
        residue = self.loops.residue_loop()
        if residue is not None and residue != self.fork:
            raise NotSteady(f"the outputs' rows depend on loop {residue.loop}'s residue, but "
                            "its tails leave the same slots")
        self.plans = _all_plans(self.steps)
        self.all_slots = dict(self.initial.slots)
        for p in self.plans:
            for s in p.slots:
                if self.all_slots.setdefault(s.key, s) != s:
                    raise NotSteady(f"slot {s.key} has different shapes in different applications")
        self._watch_reads = [[] for _ in range(len(self.plans) + 1)]   # _Resolved's: see runner

    def runner(self, n: int, dtype, device) -> tuple[LoopRunner, object]:
        from .executor import _Resolved
        key = (n, dtype, str(device))
        if key not in self._runners:
            res = _Resolved(self, n, dtype, device)
            subs = {id(p): sub for p, sub in zip(self.plans, res.sublayers)}
            watches = {id(s): [(c, ReadOp(rd, self.all_slots, self._cols(c, n), n))
                               for c, rd in s.watches] for s in _layer_steps(self.steps)}
            self._runners[key] = (LoopRunner(self.steps, subs, self.drops, watches,
                                             self.all_slots, n), res)
        return self._runners[key]

    def _outputs(self, r: int) -> dict:
        """{output: (block, shape)} where a run that takes residue r of the forked loop (0 where
        none forks) leaves them."""
        where = dict(((n, (rows, t)) for n, rows, t in self.fork.outputs[r])
                     if self.fork is not None and self.fork.outputs else ())
        blocks = self.layout.output_blocks(where)
        return {o.name: (blocks[o.name], o.shape) for o in self.layout.outputs}

    def _residue(self, counts: dict[str, int]) -> int:
        return 0 if self.fork is None else self.fork.residue(counts[self.fork.loop])

    def covers(self, counts: dict[str, int]) -> bool:
        """Whether these counts run every loop body at least once (the plan's layers after a
        loop read what its applications leave; a loop run 0 times needs the expanded plan)."""
        return all(item.runs(counts[item.loop])[0] >= 1 for item in _loop_items(self.loops.sequence))

    def input_state(self, inputs, dtype=torch.float64, device="cpu") -> dict:
        from .codec import storage_at_input
        return {s.key: torch.as_tensor(np.ascontiguousarray(
                    storage_at_input(self.layout.block(s.key), inputs)), dtype=dtype, device=device)
                for s in self.inputs}

    def _cols(self, check: int, n: int) -> int:
        return self.layout.block(self.domains[check].block).storage_cols(n)

    def run_inputs(self, inputs, counts: dict[str, int], dtype=torch.float64, device="cpu",
                   halting=None, watch: bool = False):
        """Prepared inputs → (outputs as tensors, (steps, converged) with halting else None,
        {domain check: (min, max)} with `watch` else {})."""
        from .domain_guard import settle
        state = self.input_state(inputs, dtype, device)
        B = max((v.shape[0] for v in state.values()), default=1)
        runner, res = self.runner(inputs.n, dtype, device)
        state.update(res.consts)
        with torch.no_grad(), exact_float32():
            result, seen = runner.run(state, counts, res.like, halting, watch)
            r = self._residue(counts)
            return read_outputs(self._outputs(r), self.finals[r], state, B, res.n), result, \
                settle(seen)


def shared_executor_for(prog) -> SharedExecutor | None:
    """The shared build's looping executor, planned on first use and kept (None, also kept,
    where a body's plan does not repeat: the expanded executor then runs it per count)."""
    cache = prog._executors
    if "shared" not in cache:
        try:
            cache["shared"] = SharedExecutor(prog)
        except NotSteady:
            cache["shared"] = None
    return cache["shared"]


__all__ = ["plan_loops", "NotSteady", "LoopStep", "LayerStep", "LoopRunner",
           "lifetimes", "SharedExecutor", "shared_executor_for"]
