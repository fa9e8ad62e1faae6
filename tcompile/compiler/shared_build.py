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

Where the unrolled schedule fits two iterations of a loop in one layer, a one-iteration body
cannot (it costs a whole layer each): such a loop may instead run a kernel of 2 iterations,
the iterations grouped two by two in its unrollings, with a tail for a count 2 does not divide
(`_choose_kernels`, `fold.join_residues`; docs/architecture.md §6½).

The artifact stores each tree position's layer once: its size does not depend on the counts.
"""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from ..errors import TcompileError
from ..language.checker import check_program
from ..language.points import point_count, point_variable
from ..runtime.layout import LayerSpec
from ..runtime.loops import LoopItem, LoopProgram, LoopSpec, applications
from ..runtime.manifest import Manifest
from ..runtime.program import CompiledProgram
from ..runtime.weights import LayerWeights
from .backend import build_manifest, compile_dataflow
from .dataflow import build_dataflow, walk_to_graph
from .fold import Loop, NoSteadyState, digest, fold_loop, join_residues
from ..runtime import clock
from .nodes import FIRST_ONLY, LOOP_STATE, LOOP_WATCH, VARS
from .pieces import PieceBuilder
from .schedule import Pace, iteration_of
from .steady_state import CHANGING_NUMBER, LoopSite, SharedGraphBuilder, loop_sites

UNROLLINGS = (2, 4)             # the shortest and longest base unrolling of a loop


def shared_dataflow(program, values: dict, tol, unroll: dict[str, int] | None,
                    plain: frozenset = frozenset(), kernel: dict[str, int] | None = None,
                    ahead: frozenset = frozenset(), demote: bool = False):
    """The dataflow graph of the program with each loop unrolled `unroll[key]` times, its state
    widened to the hull every iteration (steady_state.py); loops in `plain` are walked as the
    unrolled build walks them; a loop in `kernel` has its iterations grouped by that many; a
    loop in `ahead` reads ahead (nodes.LOOP_AHEAD)."""
    return walk_to_graph(SharedGraphBuilder(program, values, unroll, plain, kernel, ahead,
                                            demote),
                         program, values, tol)


class _Unrollings:
    """Compiles of the program at given per-loop unroll counts, kept (the fold asks for the
    same counts more than once), and every layer by digest."""

    def __init__(self, program, values, tol, max_memory, report, demote: bool = False):
        self.program, self.values, self.tol, self.demote = program, values, tol, demote
        self.max_memory, self.report = max_memory, report
        self.built: dict[tuple, tuple] = {}
        self.layers: dict[str, LayerWeights] = {}
        self.digests: dict[tuple, list[str]] = {}     # each compile's layers' digests, in order
        self.pieces = PieceBuilder(tol)          # every unrolling fits each function once
        # kernel loops walked without their grouping: folded every k iterations of the walk
        # the one-iteration body has (_choose_kernels)
        self.unmarked: frozenset = frozenset()
        # loops whose iterations the schedule releases one every II layers (_pace_loops)
        self.pace: dict[str, Pace] = {}
        # the residual width every compile takes at least (_fold_all sets it per fold)
        self.width_floor = 0

    def _marked(self, kernel: dict[str, int] | None) -> dict[str, int]:
        """The kernels the walk groups iterations by."""
        return {k: e for k, e in (kernel or {}).items() if e > 1 and k not in self.unmarked}

    def _key(self, counts: dict[str, int], plain: frozenset, kernel: dict[str, int] | None,
             ahead: frozenset) -> tuple:
        return (tuple(sorted(counts.items())), plain, tuple(sorted(self._marked(kernel).items())),
                tuple(sorted(ahead)), tuple(sorted(self.pace.items())), self.width_floor)

    def compile(self, counts: dict[str, int], plain: frozenset = frozenset(),
                kernel: dict[str, int] | None = None, ahead: frozenset = frozenset()) -> tuple:
        key = self._key(counts, plain, kernel, ahead)
        if key not in self.built:
            kernel = self._marked(kernel)
            df = shared_dataflow(self.program, self.values, self.tol, counts, plain, kernel, ahead,
                                 self.demote)
            plan, layers, blocks, keys = compile_dataflow(df, None, self.values, self.max_memory,
                                                          None, self.pieces, self.pace,
                                                          self.width_floor)
            self.built[key] = (df, plan, layers, blocks, keys)
            self.digests[key] = [digest(layer) for layer in layers]
            for d, layer in zip(self.digests[key], layers):
                self.layers.setdefault(d, layer)
        return self.built[key]

    def outputs(self, counts: dict[str, int], plain: frozenset = frozenset(),
                kernel: dict[str, int] | None = None, ahead: frozenset = frozenset()) -> tuple:
        """Where the outputs end: ((name, rows, transposed), ...)."""
        df, plan, _layers, blocks, keys = self.compile(counts, plain, kernel, ahead)
        where = {b.key: (tuple(b.rows), b.transposed) for b in blocks}
        return tuple((name, *where[keys[(nid, plan.orient[nid])]])
                     for name, nid in sorted(df.outputs.items()))

    def sequence(self, counts: dict[str, int], plain: frozenset = frozenset(),
                 kernel: dict[str, int] | None = None, ahead: frozenset = frozenset()) -> list:
        """The digests of that compile's layers, in order (computed once per compile)."""
        self.compile(counts, plain, kernel, ahead)
        return list(self.digests[self._key(counts, plain, kernel, ahead)])

    def width_of(self, seq) -> int | None:
        """The residual width a (folded) sequence's layers have (all of one compile: one)."""
        for t in seq:
            found = self.width_of(t.body) if isinstance(t, Loop) else _width_of([self.layers[t]])
            if found is not None:
                return found
        return None


def compile_shared(program, values: dict, tol, max_memory, report) -> CompiledProgram:
    """The shared build. Where a loop kept unrolled for a compile-time number it changes
    every iteration could run as a loop with that number carried as a runtime value
    (steady_state._SteadyState._demote: a decaying step size eta = 0.9 * eta), that build is
    tried first, and kept if every such loop then folds and runs no more than a layer deeper
    than the unrolled build, at its built count and two more (`_no_deeper`); otherwise (or
    if it fails) the build is the one with every number a number, as before."""
    stage = report.stage if report else (lambda _name: None)
    stage("loops")
    plain_sites = loop_sites(program, values)
    numbers = {k for k, s in plain_sites.items()
               if s.unshareable and CHANGING_NUMBER in s.unshareable}
    if numbers:
        sites = loop_sites(program, values, demote=True)
        if not numbers & {k for k, s in sites.items() if s.unshareable}:
            try:
                built, kept = _compile_shared(program, values, tol, max_memory, report, sites,
                                              True)
                if not numbers & set(kept) and _no_deeper(built, program, values, tol,
                                                          max_memory, plain_sites, numbers):
                    return built
            except TcompileError:
                pass
    return _compile_shared(program, values, tol, max_memory, report, plain_sites, False)[0]


def _no_deeper(built: CompiledProgram, program, values, tol, max_memory,
               sites: dict[str, LoopSite], keys: set[str]) -> bool:
    """Whether the shared build runs at most one layer more than the program unrolled (walked
    as the unrolled build walks it) at the built counts, and at two more iterations of each
    loop in `keys` that has a run-time count: a runtime number costs no depth per iteration
    where heads multiply by it in the layers that run anyway (a step size), and is not kept
    where it would (a counter whose loop the unrolled build runs two iterations per layer)."""
    pieces = PieceBuilder(tol)

    def unrolled_layers(given: dict) -> int:
        counted = check_program(program, {**values, **given})
        df = build_dataflow(program, counted, default_tol=tol)
        return len(compile_dataflow(df, None, counted, max_memory, None, pieces)[1])
    trials = [{}] + [{s.param: s.count + 2} for k, s in sites.items() if k in keys and s.param]
    return all(built.loops.n_layers(built.loops.counts(given)) <= unrolled_layers(given) + 1
               for given in trials)


def _compile_shared(program, values: dict, tol, max_memory, report, sites: dict[str, LoopSite],
                    demote: bool) -> tuple[CompiledProgram, dict]:
    """The shared build from these loop sites (loop_sites with the same `demote`); with the
    loops it keeps unrolled."""
    stage = report.stage if report else (lambda _name: None)
    runs = _Unrollings(program, values, tol, max_memory, report, demote)
    stage("fold")
    folded, base, kept = _fold_all(runs, sites)
    kernel = _choose_kernels(runs, sites, folded, base, kept)
    if kernel:
        folded, base, kept = _fold_all(runs, sites, kernel)
    ahead, kernel = _choose_read_ahead(runs, sites, folded, base, kept, kernel)
    if ahead:
        folded, base, kept = _fold_all(runs, sites, kernel, ahead)
    paced, reasons = _pace_loops(runs, sites, kept, kernel, ahead)
    if paced is not None:
        kernel = paced
    # folded again as chosen (compiled already): this also sets the width floor the layout
    # and every stored layer share, which a rejected trial's fold may have moved
    folded, base, kept = _fold_all(runs, sites, kernel, ahead)
    kept = {k: reasons.get(k, why) for k, why in kept.items()}
    counts = _layout_counts(runs, sites, base, kept, kernel, ahead)
    df, plan, layers, blocks, keys = runs.compile(counts, frozenset(kept), kernel, ahead)
    stored: list[LayerWeights] = []
    sequence = _store(folded, runs.layers, stored, in_loop=False, where={})
    # a param that also counts a loop kept unrolled is fixed at its built value: `inv(S, k)`
    # called twice, one call's loop folded and the other's kept, would otherwise run k
    # iterations in one and the built count in the other
    fixed = {sites[k].param for k in kept} - {None}
    shared = {k: replace(s, param=None) if s.param in fixed else s
              for k, s in sites.items() if k not in kept}
    specs = _specs(shared, sequence, base, counts, plan, keys)
    manifest = build_manifest(program, values, tol, df, plan, layers, blocks, keys)
    unrolled = tuple((sites[k].line, sites[k].count, why.why) for k, why in kept.items())
    loops = LoopProgram(specs, sequence, tuple(sorted(counts.items())), unrolled)
    return CompiledProgram(_shared_manifest(manifest, stored, loops), stored), kept


def _pace_loops(runs: _Unrollings, sites: dict[str, LoopSite], kept: dict, kernel: dict,
                ahead: frozenset) -> tuple[dict | None, dict]:
    """Pace the loops that did not fold because their iterations do not repeat: release each
    iteration one initiation interval after the last (schedule.paced_release), the interval
    being the layers one more iteration adds to each instance of the loop in the unrolling.
    Kept (runs.pace) where the loop then folds — by itself, or, where paced rows alternate
    between iterations, as a kernel of KERNEL iterations of the plain walk (_choose_kernels'
    fallback) — and no loop that folded before stops folding. Tried again while a pass paces
    one: a loop nested in a paced one may fold only once the loop around it does. Returns the
    kernels to fold with where any loop is paced, else None; and, for a loop that paced
    folds only from more iterations than it runs, that reason (the card's: it names the
    count that would fold it)."""
    kernel, paced, progress, reasons = dict(kernel), False, True, {}
    while progress:
        progress = False
        for key in [k for k, why in kept.items() if not why.final and k not in runs.pace
                    and kernel.get(k, 1) == 1 and k not in ahead]:
            now = _paced_fold(runs, sites, kept, kernel, ahead, key, reasons)
            if now is None:
                continue
            kernel, kept = now
            paced = progress = True
            break
    return (kernel if paced else None), reasons


def _paced_fold(runs: _Unrollings, sites: dict[str, LoopSite], kept: dict, kernel: dict,
                ahead: frozenset, key: str, reasons: dict) -> tuple[dict, dict] | None:
    """Loop `key` paced (runs.pace, and runs.unmarked for a kernel of its plain walk):
    (kernels, loops kept unrolled) where it folds and no other loop stops folding, else None
    with runs as before (and in `reasons`, why not, where it would fold from a larger count)."""
    # the loops around it walked as loops where they can be (not plain): their iterations
    # tag its instances
    plain = frozenset(k for k in kept if k != key and
                      (kept[k].final or sites[k].depth >= sites[key].depth))
    base = {k: sites[k].count if k in plain else UNROLLINGS[0] for k in sites}
    short = runs.sequence({**base, key: UNROLLINGS[0]}, plain, kernel, ahead)
    long = runs.sequence({**base, key: UNROLLINGS[0] + 1}, plain, kernel, ahead)
    # one more iteration of each instance (a nested loop runs once per iteration of the
    # loops around it)
    atoms = runs.compile({**base, key: UNROLLINGS[0]}, plain, kernel, ahead)[1].atoms
    instances = len({w[0] for w in (iteration_of(atom, key) for atom in atoms.values())
                     if w is not None})
    ii, rest = divmod(len(long) - len(short), max(instances, 1))
    if ii < 1 or rest or (sites[key].depth and instances < 2):
        return None        # (a loop around it kept plain: its instances are not told apart)
    # all of an iteration together, then (a top-level loop) each value at its offset in
    # iteration 0 (schedule.paced_release)
    for pace in (Pace(ii), Pace(ii, offsets=True))[:1 if sites[key].depth else 2]:
        runs.pace = {**runs.pace, key: pace}
        if len(runs.sequence({**base, key: UNROLLINGS[0] + 1}, plain, kernel, ahead)) > \
                len(long) + 1:
            continue       # paced, the unrolling runs deeper: not a schedule to fold
        why = None         # where it would fold from a larger count
        for trial in (kernel, {**kernel, key: KERNEL}):
            if trial is not kernel:
                runs.unmarked = runs.unmarked | {key}
            try:
                _folded, now, ok = _kernel_folds(runs, sites, trial, key, kept, ahead)
            except TcompileError:
                continue
            if ok:
                return trial, now
            if key in now and now[key].needs is not None:
                why = now[key]
        if why is not None:
            reasons.setdefault(key, why)
        runs.unmarked = runs.unmarked - {key}
    runs.pace = {k: v for k, v in runs.pace.items() if k != key}
    return None


def _layout_counts(runs: _Unrollings, sites: dict[str, LoopSite], base: dict[str, int], kept,
                   kernel: dict[str, int], ahead: frozenset) -> dict[str, int]:
    """The unrolling the build's layout, rows and domain checks come from: one more iteration
    than the base of every folded loop (compiled by the fold already), so that each body runs
    at least once in it (a kernel of k iterations: k + 1 more, so that its tail for one
    leftover iteration runs too), of the built count's residue (_built_residue)."""
    counts = {k: base[k] + (k not in kept) * (1 + (kernel.get(k, 1) > 1) * kernel.get(k, 1))
              for k in base}
    return _built_residue(runs, sites, counts, kept, kernel, ahead)


def _built_residue(runs: _Unrollings, sites: dict[str, LoopSite], counts: dict[str, int], kept,
                   kernel: dict[str, int], ahead: frozenset) -> dict[str, int]:
    """The layout's unrolling ends a kernel loop in one residue's tail, and the labels and
    states of a run can be given only at counts of that residue (inspection/run_layout.py).
    Where the built count has the other residue (power_iteration: 40 steps, the layout's 7),
    take the unrolling one longer, of the built count's residue (compiled by the fold
    already) — so that the counts a build runs by default are the ones its labels cover —
    provided it holds every stored layer with an MLP the other holds (the domain checks come
    from the layout's layers: none may be lost)."""
    plain = frozenset(kept)
    for key, k in kernel.items():
        if k < 2 or key in kept or (counts[key] - sites[key].count) % k == 0:
            continue
        alt = {**counts, key: counts[key] + (sites[key].count - counts[key]) % k}
        held = set(runs.sequence(alt, plain, kernel, ahead))
        if all(d in held for d in runs.sequence(counts, plain, kernel, ahead)
               if runs.layers[d].mlp_hidden):
            counts = alt
    return counts


def _fold_all(runs: _Unrollings, sites: dict[str, LoopSite], kernel: dict[str, int] | None = None,
              ahead: frozenset = frozenset()):
    """Fold every loop, innermost first, from a base unrolling of UNROLLINGS[0] iterations per
    loop; a loop whose pipeline needs more (its fill and drain hold more iterations) gets a
    longer base unrolling, up to UNROLLINGS[-1]. A loop that still does not fold (its
    iterations merge into other layers, its rows alternate, it runs fewer times than its
    pipeline holds) is kept unrolled at its own count, and the others fold around it.
    A loop in `kernel` is folded by groups of k iterations (a kernel), once per residue of its
    count mod k, and the residues joined (fold.join_residues).
    Loops fold across, not over a grid: the unrollings of one loop, with the others at
    their base, carry the other loops' folds over from the base unrolling where those loops'
    layers are unchanged (_carried_over; an outer loop run longer gets its added inner loops
    put back folded): about 3k compiles per loop (kernel k) instead of (3k)ᴸ for L loops (two
    power iterations in sequence, each in a kernel of 2: 11 and 2 corners where the grid
    compiled 36; newton_logistic's damped step around an inversion: 6 where the grid
    compiled 9). The folded sequence is then checked against an unrolling of every loop
    longer at once (`_corners`); where it differs, or the fold across fails, the grid
    decides, as before.
    Returns (folded sequence, the base unrolling's counts, {kept loop: NoSteadyState})."""
    kernel = kernel or {}
    order = sorted(sites.values(), key=lambda s: -s.depth)
    kept: dict[str, NoSteadyState] = {s.key: NoSteadyState(s.unshareable, s.key, final=True)
                                      for s in order if s.unshareable}
    # nested loops pipeline deeper (newton_logistic's damped step holds 3 iterations around
    # its body): start them one longer, which saves the unrollings a failed base costs
    start = UNROLLINGS[0] + any(s.depth for s in sites.values())
    # a kernel's pipeline holds more iterations (its first groups may merge with the code
    # before the loop): start it KERNEL longer, and allow KERNEL groups more. A loop that
    # runs fewer times than the start begins from its own count: a body found from more
    # iterations could not run it (min_count would exceed its count)
    base = {k: sites[k].count if k in kept
            else start + KERNEL if kernel.get(k, 1) > 1
            else max(1, min(start, sites[k].count))
            for k in sites}
    longest = {k: UNROLLINGS[-1] + (kernel.get(k, 1) > 1) * 2 * KERNEL for k in sites}

    def folded(counts: dict[str, int], upto: int, across: bool) -> list:
        if upto == 0:
            return runs.sequence(counts, frozenset(kept), kernel, ahead)
        site = order[upto - 1]
        if site.key in kept:
            return folded(counts, upto - 1, across)
        k, c = kernel.get(site.key, 1), counts[site.key]
        below = folded(counts, upto - 1, across)    # the loops folded before, this one at c
        carried = []

        def variant(n: int) -> list:
            longer = {**counts, site.key: n}
            if n == c:
                return below
            if across:
                moved = _carried_over(below, counts, runs.sequence(longer, frozenset(kept),
                                                                   kernel, ahead))
                if moved is not None:
                    carried.append(n)
                    return moved
            return folded(longer, upto - 1, across)
        variants = [[variant(c + r + k * i) for i in range(3)]
                    for r in range(k)]          # (inner loops' failures name their loops)
        try:
            widths = {runs.width_of(v) for vs in variants for v in vs} - {None}
            if len(widths) > 1:
                # one unrolling's ends need a row more than another's (a read-ahead kernel's
                # last group leaves other rows free at one residue of the count, and code
                # after the loop takes a new row there): every layer's shape differs, so
                # none repeats. Laid out at the widest, the body may.
                raise NoSteadyState("its unrollings differ in width", width=max(widths))
            residues = [fold_loop(site.key, c + r, v, k) for r, v in enumerate(variants)]
            seq = residues[0] if k == 1 else join_residues(site.key, residues)
            if k > 1:
                seq = _residue_outputs(seq, site.key, [runs.outputs(
                    {**counts, site.key: c + r}, frozenset(kept), kernel, ahead) for r in range(k)])
            low = max([base[site.key]] + [o for t in _loops_of(seq, site.key)
                                          for o in (t.offsets or (t.offset,))])
            if site.count < low:
                more = (f"; built with {site.param} = {low} or more it may run as a loop"
                        if site.param else "")
                times = "once" if site.count == 1 else f"{site.count} times"
                raise NoSteadyState(f"it runs {times}, and the layers around its "
                                    f"body hold {low} pipelined iterations{more}", final=True,
                                    needs=low)
        except NoSteadyState as e:
            e.key, e.carried = site.key, bool(carried)
            raise
        return seq

    def checked() -> list:
        """The fold across where it holds, else the grid's."""
        if len(order) - len(kept) > 1:
            try:
                seq = folded(base, len(order), True)
                if all(_expanded(seq, c) == runs.sequence(c, frozenset(kept), kernel, ahead)
                       for c in _corners(base, kept, kernel)):
                    return seq
            except NoSteadyState as e:
                if not e.carried:        # found without carrying a fold over: the grid's too
                    raise
        return folded(base, len(order), False)

    first = dict(base)
    runs.width_floor = 0
    floors: dict[str, int] = {}        # a loop the floor was raised for: the floor before
    while True:
        try:
            return checked(), base, kept
        except NoSteadyState as e:
            if not e.final and base[e.key] < longest[e.key]:
                base[e.key] += 1
            elif e.width is not None and e.width > runs.width_floor:
                # the last resort before unrolled: every compile of the fold that wide, from
                # the first base again (a longer base usually evens a width out: jacobi)
                floors.setdefault(e.key, runs.width_floor)
                runs.width_floor = e.width
                base[e.key] = first[e.key]
            else:
                if e.key in floors:     # kept unrolled all the same: not laid out wider for it
                    runs.width_floor = floors.pop(e.key)
                kept[e.key] = e
                base[e.key] = sites[e.key].count


KERNEL = 2     # the kernel a loop may get instead of one iteration per application


def _carried_over(folded: list, counts: dict[str, int], longer: list) -> list | None:
    """The fold of `folded` (tokens whose expansion at `counts` is an unrolling) carried over
    to `longer`, the unrolling with one loop run longer: the tokens whose layers `longer`
    keeps unchanged at its start and at its end stay, the layers between are `longer`'s own.
    None where a loop token lies between (the longer loop changed that loop's layers: its
    fold must be found again)."""
    pieces = [_expanded([t], counts) for t in folded]
    was = [d for piece in pieces for d in piece]
    same_start = 0
    while same_start < min(len(was), len(longer)) and was[same_start] == longer[same_start]:
        same_start += 1
    same_end = 0
    while (same_end < min(len(was), len(longer)) - same_start
           and was[len(was) - 1 - same_end] == longer[len(longer) - 1 - same_end]):
        same_end += 1
    i = start = 0
    while i < len(folded) and start + len(pieces[i]) <= same_start:
        start += len(pieces[i])
        i += 1
    j, end = len(folded), 0
    while j > i and end + len(pieces[j - 1]) <= same_end:
        end += len(pieces[j - 1])
        j -= 1
    mid = longer[start:len(longer) - end]
    loops = [t for t in folded if isinstance(t, Loop)]
    if loops:
        # an outer loop run longer: the layers between hold the inner loops as unrolled at
        # these counts; each inner loop found there again stays folded (and one that was
        # folded there before must be found again)
        mid = _refolded(mid, loops, counts)
        if (sum(isinstance(t, Loop) for t in mid)
                < sum(isinstance(t, Loop) for t in folded[i:j])):
            return None
    return folded[:i] + mid + folded[j:]


def _refolded(layers: list, loops: list, counts: dict[str, int]) -> list:
    """`layers` with every run that is the unrolling of one of `loops` at `counts` put back
    as that loop (the longest first, left to right). A run that only looks like one is
    caught by the check of the whole fold against the corner unrollings (_corners)."""
    runs = sorted({id(t): (t, _expanded([t], counts)) for t in loops}.values(),
                  key=lambda tr: -len(tr[1]))
    out, at = [], 0
    while at < len(layers):
        for t, run in runs:
            if run and layers[at:at + len(run)] == run:
                out.append(t)
                at += len(run)
                break
        else:
            out.append(layers[at])
            at += 1
    return out


def _corners(base: dict[str, int], kept, kernel: dict[str, int]) -> list[dict[str, int]]:
    """The unrollings a fold across loops is checked against: every folded loop at once one
    iteration longer than its base (the build's layout unrolling, which is compiled anyway:
    _layout_counts), and a kernel loop at the longest unrolling its own fold compiled and at
    the other residue too."""
    longest = {k: c + (k not in kept) * (3 * kernel.get(k, 1) - 1 if kernel.get(k, 1) > 1 else 1)
               for k, c in base.items()}
    if not any(kernel.get(k, 1) > 1 for k in base if k not in kept):
        return [longest]
    return [longest, {k: c - (k not in kept) * (kernel.get(k, 1) - 1) for k, c in longest.items()}]


def _expanded(seq, counts: dict[str, int]) -> list:
    """The layers (digests) a folded token sequence runs at these counts."""
    out = []
    for t in seq:
        if isinstance(t, Loop):
            apps, tail = applications(counts[t.key], t.offset, t.every, t.offsets, t.tails)
            out += _expanded(t.body, counts) * apps + _expanded(tail, counts)
        else:
            out.append(t)
    return out


def _looks(base: dict[str, int], key: str) -> tuple:
    """The unrollings a cheap look compiles: the base and those one and two iterations of loop
    `key` longer."""
    return (base, {**base, key: base[key] + 1}, {**base, key: base[key] + 2})


def _gains(runs: _Unrollings, looks, plain: frozenset, trial: tuple, now: tuple) -> bool:
    """The cheap look of the kernel and read-ahead choosers: whether (kernels, loops that
    read ahead) `trial` compiles any of these unrollings to fewer layers than `now` does."""
    return any(len(runs.sequence(c, plain, *trial)) < len(runs.sequence(c, plain, *now))
               for c in looks)


def _residue_outputs(seq: list, key: str, outputs: list[tuple]) -> list:
    """A kernel loop's folded sequence with where the program's outputs end per residue of
    its count (`outputs[r]`: at counts ≡ offset + r mod k; the fold's counts c + r are such,
    as c ≡ offset). The tails of the residues may leave them in other rows (power iteration's
    `u` and `lam` do at odd counts): the runtime reads them from the rows of the residue a run
    takes (loops.py `LoopProgram.output_rows`). Recorded only where they differ (other builds'
    artifacts stay as they were), for one run of one loop: the rows then depend on that loop's
    residue alone."""
    if len(set(outputs)) == 1:
        return seq
    where = [i for i, t in enumerate(seq) if isinstance(t, Loop) and t.key == key]
    if len(where) != 1 or seq[where[0]].every == 1 or any(
            isinstance(t, Loop) and t.outputs for t in seq):
        raise NoSteadyState("its outputs end in other rows for some counts than for others")
    return [replace(t, outputs=tuple(outputs)) if i == where[0] else t for i, t in enumerate(seq)]


def _choose_kernels(runs: _Unrollings, sites: dict[str, LoopSite], folded, base, kept) -> dict:
    """Which loops run by a kernel of KERNEL iterations: those where the kernel runs fewer
    layers than the one-iteration body (where the unrolled schedule fits two iterations in a
    layer, Richardson's x + ω(b − M x), a one-iteration body costs a whole layer each), or
    that fold only so (their rows alternate between iterations and return every KERNEL).
    Tried where no loop runs inside another (_runs_flat), in source order; a kernel is
    kept only if it is no deeper per iteration and runs fewer layers at the built count and at
    one more (so the choice is the same for every machine and run: deterministic). A loop
    whose grouped walk does not fold is tried once more from its plain walk, folded every
    KERNEL iterations (_Unrollings.unmarked)."""
    if not _runs_flat(folded, sites):
        return {}
    chosen: dict[str, int] = {}
    best = folded
    for key in sorted(sites, key=lambda k: (sites[k].line, k)):
        site = sites[key]
        if site.unshareable or (key in kept and kept[key].final):
            continue
        if key not in kept:
            # a cheap look first (at an odd count a group of 2 may gain nothing: a warm-up
            # loop of 3 steps; and a pipeline may need 4 iterations to gain: a heat stencil's
            # 2 per layer)
            if not _gains(runs, _looks(base, key), frozenset(kept),
                          ({**chosen, key: KERNEL}, frozenset()), (chosen, frozenset())):
                continue
        trial = {**chosen, key: KERNEL}
        seq, kept2, ok = _kernel_folds(runs, sites, trial, key, kept)
        if not ok and key in kept:
            # rows that alternate may return every KERNEL iterations of the plain walk while
            # the kernel's grouping (nodes.LOOP_PHASE) pipelines them apart (BFGS's H, g, x)
            runs.unmarked = runs.unmarked | {key}
            seq, kept2, ok = _kernel_folds(runs, sites, trial, key, kept)
            if not ok:
                runs.unmarked = runs.unmarked - {key}
        if not ok:
            continue
        if key not in kept and not _shorter(seq, best, key, sites):
            continue
        chosen, best = trial, seq
        kept = kept2
    return chosen


def _kernel_folds(runs: _Unrollings, sites: dict[str, LoopSite], trial: dict[str, int],
                  key: str, kept, ahead: frozenset = frozenset()) -> tuple[list, dict, bool]:
    """The fold with kernels `trial` (and loops `ahead` reading ahead): (sequence, loops kept
    unrolled, whether loop `key` folds and no loop folded before falls back to unrolled)."""
    seq, _base, kept2 = _fold_all(runs, sites, trial, ahead)
    return seq, kept2, key not in kept2 and all(k in kept for k in kept2)


def _choose_read_ahead(runs: _Unrollings, sites: dict[str, LoopSite], folded, base, kept,
                       kernel: dict[str, int]) -> tuple[frozenset, dict[str, int]]:
    """Which loops read ahead (nodes.LOOP_AHEAD): the next iteration multiplies out the
    state's definition, as the unrolled build does, instead of waiting a layer for the state
    to be stored — power iteration's next v = S u = S v r is one head on v and r, and its
    stored u (kept for `until` and the outputs) is written beside it. Tried on every loop
    where no loop runs inside another (_runs_flat), else on the top-level loops only (a
    Newton step around a nested inversion reads the next z = A w from w's definition), in
    source order, each kept only if the loop still folds (its layers repeat bit for bit, the
    oracle of every shared build), no loop falls back to unrolled, it is no deeper per
    iteration, no wider as built (or wider by no larger a factor than it is shallower), no
    head weight exceeds READ_AHEAD_MAX_HEAD_WEIGHT, and it runs fewer layers at the built
    count and at one more (deterministic: the same choice everywhere).

    A loop with a kernel is tried reading ahead without it first (value iteration: 1.5 layers
    per step in a kernel of 2, 1 reading ahead, with or without the kernel). In a program
    where no loop runs inside another, a loop without a kernel whose reading ahead is not
    kept is tried once more reading ahead in a kernel of KERNEL iterations (power iteration:
    read ahead, its rows alternate every iteration and return every 2). Last, a loop (nested
    ones too) may read ahead its first iteration's state only (`key + FIRST_ONLY`,
    nodes.LOOP_FIRST): a first step made of values from before the loop, X1 = 2I − S from
    X0 = I, multiplied out into the second, as unrolled; it saves a layer once, so it is kept
    at most 1/16 wider. Returns the loops that read ahead and the kernels, those changed here
    included."""
    flat = _runs_flat(folded, sites)
    chosen: frozenset = frozenset()
    best, best_base = folded, base
    for key in sorted(sites, key=lambda k: (sites[k].line, k)):
        if key in kept:
            continue
        # without its kernel first (a kernel a loop needed only because it waited for its
        # state runs from more iterations and stores more layers), then as chosen, then
        # with a kernel; the first iteration's state alone last (any loop, nested ones too)
        tries = [] if not flat and sites[key].depth else [
            (grouped, chosen | {key}) for grouped in
            ([{k: e for k, e in kernel.items() if k != key}] if key in kernel else []) +
            [kernel] + ([{**kernel, key: KERNEL}] if flat and key not in kernel else [])]
        tries.append((kernel, chosen | {key + FIRST_ONLY}))
        for trial in tries:
            # a loop of a flat program may gain only past its first iterations (from
            # zeros(d)); the first iteration's state read ahead gains at the start, if at all
            found = _read_ahead_trial(runs, sites, kept, base,
                                      (kernel, chosen, best, best_base), trial, key,
                                      longer=flat and key + FIRST_ONLY not in trial[1])
            if found is not None:
                kernel, chosen = trial
                best, best_base = found
                break
    return chosen, kernel


def _read_ahead_trial(runs: _Unrollings, sites: dict[str, LoopSite], kept, base, now, trial,
                      key: str, longer: bool = False) -> tuple | None:
    """The folded sequence and base unrolling of reading ahead `trial` (kernels, loops that
    read ahead), where _choose_read_ahead keeps it over `now` (kernels, loops that read ahead,
    folded sequence, its base unrolling); else None. `base`: the plain fold's, for the cheap
    look; `longer`: look at unrollings of loop `key` one and two iterations longer too."""
    kernel, chosen, best, best_base = now
    grouped, ahead = trial
    # a cheap look first (a loop whose first iterations cost no layer, from x = zeros(d),
    # gains only past them: a leapfrog step read ahead in a kernel, from 4 iterations on)
    looks = _looks(base, key) if longer else (base,)
    if not _gains(runs, looks, frozenset(kept), trial, (kernel, chosen)):
        return None
    seq, trial_base, kept2 = _fold_all(runs, sites, grouped, ahead)
    if kept2.keys() != kept.keys() or not _shorter(seq, best, key, sites):
        return None
    # widths as built (the layout's unrolling): a short unrolling's may differ from the
    # build's either way (exponentiated gradient's reading ahead: 50 rows against 48 at the
    # base unrolling, 50 against 50 as built)
    layers = runs.compile(_layout_counts(runs, sites, trial_base, kept, grouped, ahead),
                          frozenset(kept), grouped, ahead)[2]
    if _largest_head_weight(layers) > READ_AHEAD_MAX_HEAD_WEIGHT:
        return None
    # no wider, or wider by no more than it is shallower: the residual stream an iteration
    # reads and writes (layers per iteration × width) does not grow (value iteration's
    # max(Q1, R2 + γ P2 V): 1 layer of 28 rows per step against 1.5 of 27; a Hopfield
    # retrieval step: 4 of 21 against 5 of 17)
    width = _width_of(layers)
    was = _width(runs, _layout_counts(runs, sites, best_base, kept, kernel, chosen), kept,
                 kernel, chosen)
    if key + FIRST_ONLY in ahead:
        # the first iteration's step read ahead saves layers once, not per iteration: kept
        # at most 1/16 wider (its first step's value may stay live beside the second: a
        # Newton step around a dependent inversion, 38 layers of 29 rows against 39 of 28,
        # as the unrolled build's 38 of 29)
        if width > was + was // 16:
            return None
    elif width > was and _per_iteration(seq, key) * width > _per_iteration(best, key) * was:
        return None
    return seq, trial_base


# Reading ahead moves values into other rows. In the dense module a value written where a
# larger one was cleared keeps about |cleared| · 2⁻⁵³ of it: harmless for the values a program
# computes, not for the gate offsets of exact products (−c I written by a head, c the bound of
# the gated factor), which a factor whose bounds grow every iteration makes huge (exponentiated
# gradient without declared bounds: c = 7.2e10; read ahead, its module differed from the
# structured executor by 4e-6). A loop reads ahead only where no head weight is larger than
# this (a cleared value then leaves at most ~1e-10 behind); otherwise it waits a layer for its
# state, as before. (The shipped programs' head weights are at most 20, adam's gate 1.01e6;
# MLP weights are not values written and may be huge: power iteration's 1/√ on [1e-100, 1].)
READ_AHEAD_MAX_HEAD_WEIGHT = 1e6


def _runs_flat(seq, sites: dict[str, LoopSite]) -> bool:
    """Whether no loop runs inside another: none folded inside another's body or tails, and
    every loop nested in the source folded once at the top (the lowering hoisted it: an
    inverse of a matrix the outer loop does not change runs once, before it; not one kept
    unrolled inside an unrolled loop). The kernels and reading ahead are tried only on such
    programs."""
    top = [t.key for t in seq if isinstance(t, Loop)]
    inner = any(isinstance(u, Loop) for t in seq if isinstance(t, Loop)
                for part in (t.body, *t.tails) for u in part)
    return not inner and all(top.count(k) == 1 for k, s in sites.items() if s.depth)


def _shorter(seq, best, key: str, sites: dict[str, LoopSite]) -> bool:
    """Whether folded sequence `seq` is no deeper per iteration of loop `key` than `best`
    and runs fewer layers at the built counts and at one more of that loop: what a kernel and
    reading ahead must both earn (a deterministic choice, the same on every machine)."""
    counts = {k: s.count for k, s in sites.items()}
    more = {**counts, key: counts[key] + 1}
    return (_per_iteration(seq, key) <= _per_iteration(best, key)
            and _run_length(seq, counts) + _run_length(seq, more)
            < _run_length(best, counts) + _run_length(best, more))


def _width(runs: _Unrollings, counts, kept, kernel, ahead) -> int:
    """The residual width of an unrolling."""
    return _width_of(runs.compile(counts, frozenset(kept), kernel, ahead)[2])


def _width_of(layers: list[LayerWeights]) -> int:
    """The residual width of compiled layers (read off a layer's shape: its W_1 stays held as
    nonzeros)."""
    return int(layers[0].shape_of("W_1")[1]) if layers else 0


def _largest_head_weight(layers: list[LayerWeights]) -> float:
    """The largest |entry| of any head's W_K, W_Q or W_V."""
    return max((float(np.abs(getattr(layer, name)).max(initial=0.0))
                for layer in layers for name in ("W_K", "W_Q", "W_V")), default=0.0)


def _per_iteration(seq, key: str) -> float:
    loop = next(_loops_of(seq, key))
    return len(loop.body) / loop.every


def _run_length(seq, counts: dict[str, int]) -> int:
    """Layers a folded token sequence runs at these counts (loops without inner loops)."""
    n = 0
    for t in seq:
        if isinstance(t, Loop):
            apps, tail = applications(counts[t.key], t.offset, t.every, t.offsets, t.tails)
            n += apps * _run_length(t.body, counts) + _run_length(tail, counts)
        else:
            n += 1
    return n


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
            out.append(LoopItem(t.key, t.offset, _store(t.body, by_digest, stored, True, where),
                                t.every, tuple(_store(tail, by_digest, stored, in_loop, where)
                                               for tail in t.tails), t.offsets, t.outputs))
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
    every: dict[str, int] = {}
    _collect(sequence, offsets, bodies, every)
    built = {k: s.count for k, s in sites.items()}
    specs = []
    for key, site in sites.items():
        low = max([base[key]] + offsets.get(key, []))
        probe = LoopProgram((), bodies[key], ())
        top = site.depth == 0
        specs.append(LoopSpec(key, site.line, site.count, site.param, low, site.max_count,
                              probe.n_layers(built), site.depth,
                              _state_blocks(site, sequence, counts, plan, keys) if top else (),
                              every[key],
                              _watch_points(site, sequence, counts, plan, keys) if top else (),
                              site.growing, site.declared_fails))
    return tuple(specs)


def _collect(seq, offsets, bodies, every) -> None:
    for item in seq:
        if isinstance(item, LoopItem):
            offsets.setdefault(item.loop, []).extend(item.offsets or (item.offset,))
            bodies.setdefault(item.loop, item.body)
            every.setdefault(item.loop, item.every)
            _collect(item.body, offsets, bodies, every)


def _state_blocks(site: LoopSite, sequence, base, plan, keys) -> tuple[tuple, ...]:
    """For each variable a top-level loop carries: (variable, block, first, stride) — the
    block holding it between applications of the body (its rows are the same at every
    iteration: rows.py pins them), and which assignment it then holds: `name@(first +
    j·stride)` after application j (from 0), as the trace and halting read it (a kernel of
    k iterations: stride k).

    The block is the one the first application of the body leaves the variable in (in the
    base unrolling): of its values written inside that application's layers and still in
    their rows after them, the one written last. Values of the variable in other rows or the
    other orientation (its fill before the loop, an output written transposed after it), and
    values written over before the application ends (a kernel's pipeline may overwrite an
    iterate inside the application, or never hold one between applications: power_iteration's
    u, whose next S u starts from v), are not what the body carries, and do not count: a
    variable with none is not one `until` may watch."""
    start = _loop_start(sequence, base, site.key)
    if start is None:
        return ()
    item = next(i for i in _items(sequence) if i.loop == site.key)
    length = LoopProgram((), item.body, ()).n_layers(base)
    end = start + length
    out = []
    for name in site.state:
        tag = f"{site.key}/{name}"
        tagged = [p for p in plan.slots if p[0] in plan.atoms
                  and plan.atoms[p[0]].node.get(LOOP_STATE) == tag
                  and _assignment(plan.atoms[p[0]], name) is not None]
        held = _live_last(tagged, plan, start, end)
        if held is None:      # the body leaves no value of it (`x = x`, or none outlives it)
            continue
        rows = plan.slots[held].rows
        first = _assignment(plan.atoms[held[0]], name)
        same = [p for p in tagged if p[1] == held[1] and plan.slots[p].rows == rows]
        if item.every == 1:
            ks = sorted({_assignment(plan.atoms[p[0]], name) for p in same})
            steps = {b - a for a, b in zip(ks, ks[1:])}
            if len(steps) != 1:   # its rows do not hold one assignment per iteration
                continue
            stride = steps.pop()
        else:                 # the next application leaves the assignment k further there
            stride = item.every
            if item.runs(base[site.key])[0] >= 2:
                nxt = _live_last(same, plan, end, end + length)
                if nxt is None or _assignment(plan.atoms[nxt[0]], name) != first + stride:
                    continue
        out.append((name, keys[held], first, stride))
    return tuple(out)


def _watch_points(site: LoopSite, sequence, base, plan, keys) -> tuple[tuple, ...]:
    """For each variable a top-level loop carries or its body assigns, where an application of
    the body writes its value of an iteration: (variable, block, position, sublayer, count) —
    after sublayer 1 (attention) or 2 (MLP) of the body's item `position`, the rows of `block`
    hold the variable as iteration `count` of the first application leaves it (application j:
    count + j·every), whatever is written over them later in the application (halting reads
    them there: runtime/halting.py). Found in the base unrolling: the values of iterations (the
    node a variable holds at an iteration's end, LOOP_STATE or LOOP_WATCH, made in iteration i:
    count i + 1)
    written by a layer of the first application — not one inside an inner loop, which runs
    more than once per application — and, where the base unrolling runs a second application,
    written there again one application later in the same rows. One per residue of the count
    mod every (a kernel may write the values of both of its iterations), all in one
    orientation (the values are compared with each other)."""
    start = _loop_start(sequence, base, site.key)
    if start is None:
        return ()
    item = next(i for i in _items(sequence) if i.loop == site.key)
    spans, layer = [], start           # the layers each item of the body runs, in order
    for pos, part in enumerate(item.body):
        size = LoopProgram((), (part,), ()).n_layers(base)
        spans.append((pos, layer, size, isinstance(part, LoopItem)))
        layer += size
    length = layer - start
    second = item.runs(base[site.key])[0] >= 2
    out = []
    for name in site.state + site.assigned:
        tag = f"{site.key}/{name}"
        written: dict[tuple, tuple] = {}   # (count, layer, sub) → (block, rows), first key wins
        for pair in sorted(plan.slots, key=lambda p: (plan.slots[p].write, keys.get(p, ""))):
            atom = plan.atoms.get(pair[0])
            if atom is None or tag not in (atom.node.get(LOOP_STATE), atom.node.get(LOOP_WATCH)):
                continue
            at = iteration_of(atom, site.key)
            if at is None:
                continue
            it = at[1]
            t = plan.slots[pair].write
            where = (it + 1, clock.layer_of(t), 1 + clock.is_mlp(t), pair[1])
            written.setdefault(where, (keys[pair], plan.slots[pair].rows))
        # per orientation (values compared must have one shape), the first value of each
        # residue of the count mod every that an application writes where the next writes
        # the next one
        series: dict = {}
        for (count, at, sub, orient), (block, rows) in sorted(written.items()):
            if not start <= at < start + length:
                continue
            pos, _begin, _size, inner = next(s for s in spans if s[1] <= at < s[1] + s[2])
            if inner:
                continue
            if second:        # the next application: the next value, in the same rows
                nxt = written.get((count + item.every, at + length, sub, orient))
                if nxt is None or nxt[1] != rows:
                    continue
            series.setdefault(orient, {}).setdefault(count % item.every, (name, block, pos, sub,
                                                                          count))
        if series:            # the orientation with the most residues (the first of a tie)
            best = max(series.values(), key=len)
            out += sorted(best.values(), key=lambda w: (w[2], w[3]))
    return tuple(out)


def _live_last(slots, plan, start: int, end: int):
    """Of these slots, the one written last inside layers start..end − 1 (sublayers 2·start + 1
    .. 2·end) whose rows still hold it after them (no other value is written over it: a value
    stays in its rows until a writer subtracts it, rows.py); None where none does."""
    held = [p for p in slots if 2 * start < plan.slots[p].write <= 2 * end
            and not _overwritten(p, plan, 2 * end)]
    return max(held, key=lambda p: (plan.slots[p].write, p)) if held else None


def _overwritten(pair, plan, t: int) -> bool:
    """Whether another block is written over some of `pair`'s rows after it, by sublayer t."""
    mine = plan.slots[pair]
    rows = set(mine.rows)
    return any(q != pair and mine.write < s.write <= t and rows.intersection(s.rows)
               for q, s in plan.slots.items())


def _items(seq):
    for item in seq:
        if isinstance(item, LoopItem):
            yield item
            yield from _items(item.body)


def _assignment(atom, name: str) -> int | None:
    """k of the `name@k` an atom holds (None if it holds none)."""
    ks = [point_count(v) for v in atom.node.get(VARS, ()) if point_variable(v) == name]
    return max(ks) if ks else None


def _loop_start(sequence, base, key) -> int | None:
    """In the base unrolling, how many layers run before loop `key` (top level) starts."""
    pos = 0
    for item in sequence:
        if isinstance(item, LoopItem):
            if item.loop == key:
                return pos
            pos += LoopProgram((), (item,), ()).n_layers(base)
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
