"""The shared build: each repeat body compiled once and run as a loop.

    check → loop sites (steady_state.py) → compile small unrollings (the unrolled pipeline,
    with hull bounds and pinned loop state) → fold (fold.py) → stored layers + LoopProgram

Why by unrolling: the unrolled pipeline already schedules across iterations (least squares'
w and X in one layer per step, the damped Newton step's k + 3 layers with the inversion
pipelined into it); a body compiled on its own would lose that overlap at every iteration
boundary. So the shared build compiles the program with each loop unrolled u, u + 1 and
u + 2 times and folds the layers that repeat: the stored body is the schedule's steady state,
with the same depth per iteration as the unrolled build, and the iterations the schedule
overlaps with the code around the loop (its fill and drain) become the layers before and after
it. Every loop state value sits in the same rows at every iteration (rows.py pins it), so the
stored body reads its state where the previous application left it.

The artifact stores each tree position's layer once: its size does not depend on the counts.
"""
from __future__ import annotations

import re
from dataclasses import replace

from ..runtime.layout import LayerSpec
from ..runtime.loops import LoopItem, LoopProgram, LoopSpec
from ..runtime.manifest import Manifest
from ..runtime.program import CompiledProgram
from ..runtime.weights import LayerWeights
from .backend import build_manifest, compile_dataflow
from .dataflow import walk_to_graph
from .fold import Loop, NoSteadyState, digest, fold_loop
from .nodes import LOOP_STATE, VARS
from .pieces import PieceBuilder
from .steady_state import LoopSite, SharedGraphBuilder, loop_sites

UNROLLINGS = (2, 4)             # the shortest and longest base unrolling of a loop


def shared_dataflow(program, values: dict, tol, unroll: dict[str, int] | None,
                    plain: frozenset = frozenset()):
    """The dataflow graph of the program with each loop unrolled `unroll[key]` times, its state
    widened to the hull every iteration (steady_state.py); loops in `plain` are walked as the
    unrolled build walks them."""
    return walk_to_graph(SharedGraphBuilder(program, values, unroll, plain), program, values, tol)


class _Unrollings:
    """Compiles of the program at given per-loop unroll counts, kept (the fold asks for the
    same counts more than once), and every layer by digest."""

    def __init__(self, program, values, tol, max_memory, report):
        self.program, self.values, self.tol = program, values, tol
        self.max_memory, self.report = max_memory, report
        self.built: dict[tuple, tuple] = {}
        self.layers: dict[str, LayerWeights] = {}
        self.pieces = PieceBuilder(tol)          # every unrolling fits each function once

    def compile(self, counts: dict[str, int], plain: frozenset = frozenset()) -> tuple:
        key = (tuple(sorted(counts.items())), plain)
        if key not in self.built:
            df = shared_dataflow(self.program, self.values, self.tol, counts, plain)
            plan, layers, blocks, keys = compile_dataflow(df, None, self.values, self.max_memory,
                                                          None, self.pieces)
            self.built[key] = (df, plan, layers, blocks, keys)
            for layer in layers:
                self.layers.setdefault(digest(layer), layer)
        return self.built[key]

    def sequence(self, counts: dict[str, int], plain: frozenset = frozenset()) -> list:
        return [digest(layer) for layer in self.compile(counts, plain)[2]]


def compile_shared(program, values: dict, tol, max_memory, report) -> CompiledProgram:
    stage = report.stage if report else (lambda _name: None)
    stage("loops")
    sites = loop_sites(program, values)
    runs = _Unrollings(program, values, tol, max_memory, report)
    stage("fold")
    folded, base, kept = _fold_all(runs, sites)
    # the layout and domain checks come from one more iteration than the base of every folded
    # loop (compiled by the fold already), so that each body runs at least once in it
    counts = {k: base[k] + (k not in kept) for k in base}
    df, plan, layers, blocks, keys = runs.compile(counts, frozenset(kept))
    stored: list[LayerWeights] = []
    sequence = _store(folded, runs.layers, stored, in_loop=False, where={})
    shared = {k: s for k, s in sites.items() if k not in kept}
    specs = _specs(shared, sequence, base, counts, plan, keys)
    manifest = build_manifest(program, values, tol, df, plan, layers, blocks, keys)
    unrolled = tuple((sites[k].line, sites[k].count, why.why) for k, why in kept.items())
    loops = LoopProgram(specs, sequence, tuple(sorted(counts.items())), unrolled)
    return CompiledProgram(_shared_manifest(manifest, stored, loops), stored)


def _fold_all(runs: _Unrollings, sites: dict[str, LoopSite]):
    """Fold every loop, innermost first, from a base unrolling of UNROLLINGS[0] iterations per
    loop; a loop whose pipeline needs more (its fill and drain hold more iterations) gets a
    longer base unrolling, up to UNROLLINGS[-1]. A loop that still does not fold (its
    iterations merge into other layers, its rows alternate, it runs fewer times than its
    pipeline holds) is kept unrolled at its own count, and the others fold around it.
    Returns (folded sequence, the base unrolling's counts, {kept loop: NoSteadyState})."""
    order = sorted(sites.values(), key=lambda s: -s.depth)
    kept: dict[str, NoSteadyState] = {s.key: NoSteadyState(s.unshareable, s.key, final=True)
                                      for s in order if s.unshareable}
    # nested loops pipeline deeper (newton_logistic's damped step holds 3 iterations around
    # its body): start them one longer, which saves the unrollings a failed base costs
    start = UNROLLINGS[0] + any(s.depth for s in sites.values())
    base = {k: start if k not in kept else sites[k].count for k in sites}

    def folded(counts: dict[str, int], upto: int) -> list:
        if upto == 0:
            return runs.sequence(counts, frozenset(kept))
        site = order[upto - 1]
        if site.key in kept:
            return folded(counts, upto - 1)
        variants = [folded({**counts, site.key: counts[site.key] + i}, upto - 1) for i in range(3)]
        try:
            seq = fold_loop(site.key, counts[site.key], variants)
        except NoSteadyState as e:
            e.key = site.key
            raise
        low = max([base[site.key]] + [t.offset for t in _loops_of(seq, site.key)])
        if site.count < low:
            raise NoSteadyState(f"it runs {site.count} times, and the layers around its body "
                                f"hold {low} pipelined iterations", site.key, final=True)
        return seq

    while True:
        try:
            return folded(base, len(order)), base, kept
        except NoSteadyState as e:
            if not e.final and base[e.key] < UNROLLINGS[-1]:
                base[e.key] += 1
            else:
                kept[e.key] = e
                base[e.key] = sites[e.key].count


def _loops_of(seq, key: str):
    for t in seq:
        if isinstance(t, Loop):
            if t.key == key:
                yield t
            yield from _loops_of(t.body, key)


def _store(tokens, by_digest, stored: list, in_loop: bool, where: dict) -> tuple:
    """The folded token sequence with each distinct layer stored once: positions whose
    weights are equal bit for bit (a body layer and the same layer of a pipelined iteration in
    the epilogue, an inner loop's body in each of its instances) run the same stored layer.
    `where`: digest → its stored index."""
    out = []
    for t in tokens:
        if isinstance(t, Loop):
            out.append(LoopItem(t.key, t.offset, _store(t.body, by_digest, stored, True, where)))
        elif t in where:
            out.append(where[t])
        else:
            layer = by_digest[t]
            if in_loop:      # labels name one iteration's values (X@3): name the variable
                layer = replace(layer, head_labels=[re.sub(r"@\d+", "", h) for h in layer.head_labels])
            stored.append(layer)
            where[t] = len(stored) - 1
            out.append(len(stored) - 1)
    return tuple(out)


def _specs(sites, sequence, base, counts, plan, keys) -> tuple[LoopSpec, ...]:
    """`base`: the fold's base unrolling (the counts from which it was checked); `counts`: the
    unrolling `plan` comes from."""
    offsets: dict[str, list[int]] = {}
    bodies: dict[str, tuple] = {}
    _collect(sequence, offsets, bodies)
    built = {k: s.count for k, s in sites.items()}
    specs = []
    for key, site in sites.items():
        low = max([base[key]] + offsets.get(key, []))
        probe = LoopProgram((), bodies[key], ())
        specs.append(LoopSpec(key, site.line, site.count, site.param, low, site.max_count,
                              probe.n_layers(built), site.depth,
                              _state_blocks(site, sequence, counts, plan, keys)
                              if site.depth == 0 else ()))
    return tuple(specs)


def _collect(seq, offsets, bodies) -> None:
    for item in seq:
        if isinstance(item, LoopItem):
            offsets.setdefault(item.loop, []).append(item.offset)
            bodies.setdefault(item.loop, item.body)
            _collect(item.body, offsets, bodies)


def _state_blocks(site: LoopSite, sequence, base, plan, keys) -> tuple[tuple, ...]:
    """For each variable a top-level loop carries: (variable, block, first, stride) — the
    block holding it between applications of the body (its rows are the same at every
    iteration: rows.py pins them), and which assignment it then holds: `name@(first +
    j·stride)` after application j (from 0), as the trace and halting read it.

    The block is the one the first application of the body leaves the variable in (in the
    base unrolling): the value written last inside that application's layers. Values of the
    variable in other rows or the other orientation (its fill before the loop, an output
    written transposed after it) are not what the body carries, and do not count."""
    start = _loop_start(sequence, base, site.key)
    if start is None:
        return ()
    body = next(i.body for i in _items(sequence) if i.loop == site.key)
    end = start + LoopProgram((), body, ()).n_layers(base)
    out = []
    for name in site.state:
        tag = f"{site.key}/{name}"
        tagged = [p for p in plan.slots if p[0] in plan.atoms
                  and plan.atoms[p[0]].node.get(LOOP_STATE) == tag
                  and _assignment(plan.atoms[p[0]], name) is not None]
        inside = [p for p in tagged if 2 * start < plan.slots[p].write <= 2 * end]
        if not inside:        # the body writes no value of it (e.g. `x = x`): nothing to watch
            continue
        held = max(inside, key=lambda p: (plan.slots[p].write, p))
        rows = plan.slots[held].rows
        ks = sorted({_assignment(plan.atoms[p[0]], name) for p in tagged
                     if p[1] == held[1] and plan.slots[p].rows == rows})
        steps = {b - a for a, b in zip(ks, ks[1:])}
        if len(steps) != 1:   # its rows do not hold one assignment per iteration
            continue
        out.append((name, keys[held], _assignment(plan.atoms[held[0]], name), steps.pop()))
    return tuple(out)


def _items(seq):
    for item in seq:
        if isinstance(item, LoopItem):
            yield item
            yield from _items(item.body)


def _assignment(atom, name: str) -> int | None:
    """k of the `name@k` an atom holds (None if it holds none)."""
    ks = [int(v.split("@")[1]) for v in atom.node.get(VARS, ()) if v.split("@")[0] == name]
    return max(ks) if ks else None


def _loop_start(sequence, base, key) -> int | None:
    """In the base unrolling, how many layers run before loop `key` (top level) starts."""
    pos = 0
    for item in sequence:
        if isinstance(item, LoopItem):
            if item.loop == key:
                return pos
            pos += LoopProgram((), item.body, ()).n_layers(base) * (base[item.loop] - item.offset)
        else:
            pos += 1
    return None


def _shared_manifest(m: Manifest, stored: list[LayerWeights], loops: LoopProgram) -> Manifest:
    """The base unrolling's manifest with the stored layers: its blocks keep the times of the
    base unrolling (`LoopProgram.base_counts`; rows are the same at every iteration, and the
    structured executor re-times them for a run's counts); each domain check once, at the
    stored layer it runs in: checks of several iterations that land on one stored layer, read
    the same rows and have the same label but for the temporaries it names (`t62`, `t114`:
    one per iteration) are one check."""
    where = loops.expand(dict(loops.base_counts))      # base layer → stored layer
    domains, seen = [], set()
    for chk in m.domains:
        moved = replace(chk, layer=where[chk.layer])
        rows = m.layout.block(chk.block).rows
        key = (re.sub(r"\bt\d+\b", "t", chk.label), rows, chk.lo, chk.hi, moved.layer)
        if key not in seen:
            seen.add(key)
            domains.append(moved)
    layout = replace(m.layout, n_layers=len(stored), layers=tuple(LayerSpec.of(w) for w in stored))
    return replace(m, layout=layout, domains=tuple(domains), loops=loops)


__all__ = ["compile_shared", "shared_dataflow"]
