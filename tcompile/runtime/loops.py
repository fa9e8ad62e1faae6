"""A shared build's loops: which stored layers run in which order, for given step counts.

An unrolled build runs its layers once each, in order. A shared build (compiler/shared_build.py)
stores each loop body once; its `LoopProgram` says how to run them: a sequence whose items are
stored layer indices or `LoopItem`s (a body — itself such a sequence — run `count − offset`
times, where `offset` counts the iterations the schedule pipelines into the layers around the
loop). Every loop has a `LoopSpec`: its count as built, the run-time param that may change it,
and the counts the build covers (`min_count`: the fold was checked from there on;
`max_count`: where the fitted domains stop holding, None if they hold for every count).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..errors import InputError
from ..language import ast


@dataclass(frozen=True)
class LoopSpec:
    key: str                       # "line:col" of the repeat (after the calls inlining it)
    line: int
    count: int                     # the count it was built with (the default at run time)
    param: str | None              # the run-time param setting it (None: fixed)
    min_count: int
    max_count: int | None
    layers_per_iteration: int      # layers of its body, inner loops at their built counts
    depth: int = 0                 # loops around it
    # top-level loops: (variable, block key, first, stride) — the rows the variable is pinned to,
    # and which assignment they hold after application j of the body: name@(first + j·stride)
    state: tuple[tuple[str, str, int, int], ...] = ()
    every: int = 1                 # iterations one application of its body runs (a kernel)
    # top-level loops: (variable, block key, position, sublayer, count) — where an application
    # of the body writes the variable's value of an iteration: after sublayer 1 (attention) or
    # 2 (MLP) of body item `position`, `block`'s rows hold it as of iteration `count` in the
    # first application (count + j·every in application j), even if written over later in the
    # application: what halting reads (halting.py)
    watch: tuple[tuple[str, str, int, int, int], ...] = ()
    # max_count set: the loop variables whose bounds one more iteration widens (what to declare)
    growing: tuple[str, ...] = ()
    declared_fails: str = ""       # ... and where the body declares bounds, why they do not lift it

    @property
    def watchable(self) -> list[str]:
        """The variables `until` may name on this loop. A primed temporary (`U'`, which
        `U, V = ...` assigns first where the right sides read each other: multi_assign.py) is
        left out where its variable is in: U takes that very value."""
        names = {w[0] for w in self.watch}
        return sorted(v for v in names if not (v.endswith("'") and v[:-1] in names))


@dataclass(frozen=True)
class LoopItem:
    """`body` runs count − offset times. A kernel of every > 1 iterations (compiler/
    shared_build.py): with r = (count − offset) mod every, `body` runs (count − offsets[r]) /
    every times, then tails[r] once (the r iterations left over, in a partial group, and the
    layers after it that differ for them); the outputs then end where outputs[r] says, when
    it is given (LoopProgram.output_rows)."""
    loop: str                      # LoopSpec.key
    offset: int
    body: tuple                    # of int (a stored layer) | LoopItem
    every: int = 1
    tails: tuple = ()              # every > 1: one sequence (like body) per residue
    offsets: tuple = ()            # every > 1: the offset per residue (offsets[0] = offset)
    # every > 1 where its tails leave the program's outputs in rows that depend on the residue:
    # per residue, ((output name, rows, transposed), ...); () where the layout's rows hold
    outputs: tuple = ()

    def runs(self, count: int) -> tuple[int, tuple]:
        """(applications of the body, the tail run after them) at this count."""
        return applications(count, self.offset, self.every, self.offsets, self.tails)

    def residue(self, count: int) -> int:
        """Which tail (and which `outputs`) a count takes: (count − offset) mod every."""
        return (count - self.offset) % self.every

    def halted_count(self, apps: int, limit: int) -> int:
        """The count of a run that stops after `apps` applications of the body and then runs
        the tail of `limit`'s residue (halting: a problem whose variable settles there ends as
        a fixed-count run at this count does): offsets[r] + every · apps for a kernel,
        offset + apps for a one-iteration body."""
        if self.every == 1:
            return self.offset + apps
        return self.offsets[self.residue(limit)] + self.every * apps


def applications(count: int, offset: int, every: int = 1, offsets: tuple = (),
                 tails: tuple = ()) -> tuple[int, tuple]:
    """A loop's (applications of its body, the tail run after them) at `count`: count − offset
    of a one-iteration body; for a kernel of every > 1 iterations, with r = (count − offset)
    mod every, (count − offsets[r]) / every and tails[r]. One rule for the runtime's LoopItem
    and the compiler's folded Loop (shared_build), which carry the same fields."""
    if every == 1:
        return count - offset, ()
    r = (count - offset) % every
    return (count - offsets[r]) // every, tails[r]


@dataclass(frozen=True)
class LoopProgram:
    loops: tuple[LoopSpec, ...]
    sequence: tuple                # of int | LoopItem
    base_counts: tuple[tuple[str, int], ...]   # the unrolling the layout's blocks come from
    unrolled: tuple[tuple[int, int, str], ...] = ()   # loops kept unrolled: (line, count, why)

    def spec(self, key: str) -> LoopSpec:
        return next(s for s in self.loops if s.key == key)

    @property
    def params(self) -> dict[str, int]:
        """Run-time params and their built values."""
        return {s.param: s.count for s in self.loops if s.param is not None}

    def run_params(self, resolved: dict[str, int]) -> dict[str, int]:
        """The run-time params at these resolved counts (`counts`' result, or `base_counts`):
        {param: count}, what the interpreter takes for the same run."""
        return {s.param: resolved[s.key] for s in self.loops if s.param is not None}

    def counts(self, given: dict | None = None) -> dict[str, int]:
        """Every loop's count for these run-time params (the built ones where not given);
        InputError for an unknown param, a bad value, or a count the build does not cover."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            fixed = "; ".join(f"{k} is not a run-time count of this build" for k in unknown)
            raise InputError(f"{fixed} (run-time params: {', '.join(sorted(self.params)) or 'none'}; "
                             "a param that sets anything besides repeat counts is fixed at build time, and so is the "
                             "count of a loop the build kept unrolled: see .unrolled)")
        out = {}
        for s in self.loops:
            n = given.get(s.param, s.count) if s.param is not None else s.count
            if isinstance(n, bool) or not isinstance(n, numbers.Real) or not math.isfinite(n) \
                    or n != int(n):
                raise InputError(f"{s.param} must be a whole number of iterations, got {n!r}")
            n = int(n)
            if n < s.min_count:
                raise InputError(f"{s.param} = {n}: the loop at line {s.line} runs at least "
                                 f"{s.min_count} times in this build (its pipeline fill and drain "
                                 "are compiled around the body); build it unrolled for fewer")
            if s.max_count is not None and n > s.max_count:
                names = list(s.growing) or sorted({v[0] for v in s.state})
                which = f" ({', '.join(names)})" if names else ""
                x = names[0] if names else "x"
                grow = (f"the bounds of {', '.join(s.growing)}, which grow" if s.growing
                        else "bounds that grow")
                lift = (f"or make the declared bounds lift it: {s.declared_fails}"
                        if s.declared_fails else
                        f"or declare the bounds of the loop's variables{which} where its body "
                        f"assigns them last ({x} = (...) on [lo, hi]), which lifts the limit "
                        "where one iteration from them stays inside")
                raise InputError(f"{s.param} = {n}: the loop at line {s.line} was built for at "
                                 f"most {s.max_count} iterations — its fitted domains were derived "
                                 f"from {grow} with the count; rebuild with a larger "
                                 f"{s.param}, {lift}")
            out[s.key] = n
        return out

    def labelled_counts_near(self, key: str, count: int) -> list[int] | None:
        """Where kernel loop `key`'s count is of another residue than the layout's, the nearest
        counts of the layout's residue that a run may ask for (and whose body runs where the
        layout's does); None where `count` is of the layout's residue or the loop runs one
        iteration a body. The layout's unrolling ends the loop in one residue's tail, so a
        run's layout, hence its labels, is derived only at counts of that residue
        (inspection/run_layout.py); the card says so where the built count is not one."""
        item, spec = self.item(key), self.spec(key)
        if item is None or item.every == 1:
            return None
        base = dict(self.base_counts)[key]
        if item.residue(count) == item.residue(base):
            return None
        base_apps = item.runs(base)[0]
        return [c for c in range(count - item.every + 1, count + item.every)
                if item.residue(c) == item.residue(base) and c >= spec.min_count
                and (spec.max_count is None or c <= spec.max_count)
                and (item.runs(c)[0] or not base_apps)]

    def output_rows(self, counts: dict[str, int]) -> dict[str, tuple[tuple[int, ...], bool]]:
        """Where the outputs end at these (resolved) counts, for those whose rows depend on the
        residue of a kernel loop's count: {name: (rows, transposed)}; the layout's output
        blocks say where the others are (and these, at the build's own residue)."""
        item = self.residue_loop()
        if item is None:
            return {}
        return {name: (tuple(rows), bool(t))
                for name, rows, t in item.outputs[item.residue(counts[item.loop])]}

    def residue_loop(self) -> LoopItem | None:
        """The kernel loop whose count's residue decides where the outputs end (None: none
        does; the shared build allows one)."""
        return next((i for i in self.sequence if isinstance(i, LoopItem) and i.outputs), None)

    def item(self, key: str) -> LoopItem | None:
        """The (first) LoopItem of loop `key`."""
        return _find(self.sequence, key)

    def until_loops(self) -> dict[str, str]:
        """variable → the top-level loop `until` halts on it: the loop that carries it, or, of
        several that do (a warm-up loop and the main one), the last the program runs (`loops`
        is in the order the checker's walk meets them) — the one rule for halting
        (halting.resolve_until) and the card's "until may watch"."""
        return {var: spec.key for spec in self.loops for var in spec.watchable}

    def hoisted(self, key: str) -> bool:
        """Whether loop `key`, nested in another in the source, runs at the top of the
        sequence: the lowering moved it out of the loop around it (loop-invariant, such as an
        inverse of a matrix the outer loop does not change), so it runs once per run, not once
        per outer iteration."""
        places: list[bool] = []          # each occurrence: at the top of the sequence?

        def walk(seq, top):
            for i in seq:
                if isinstance(i, LoopItem):
                    if i.loop == key:
                        places.append(top)
                    walk(i.body, False)
                    for tail in i.tails:
                        walk(tail, False)
        walk(self.sequence, True)
        return self.spec(key).depth > 0 and places == [True]

    def expand(self, counts: dict[str, int]) -> list[int]:
        """The stored layer indices in the order they run."""
        out: list[int] = []
        _expand(self.sequence, counts, out)
        return out

    def n_layers(self, counts: dict[str, int]) -> int:
        return _count(self.sequence, counts)


def parts(seq, outer: bool, depth_of: dict[str, int]) -> list[tuple[str, object]]:
    """A sequence cut at its outermost loops: named chunks in order — how the looped module
    (looped.py) names its children and the card names stored layers. A chunk of layers between
    loops may hold instances of deeper loops (iterations the schedule pipelined out of a loop
    body); such a chunk is a nested sequence itself. A sequence without loops is one chunk,
    "layers" (its layers are numbered directly: body.{iter}.{layer})."""
    loops = [it for it in seq if isinstance(it, LoopItem)]
    if not loops:
        return [("layers", list(seq))]
    top = min(depth_of[it.loop] for it in loops)
    own = [i for i, it in enumerate(seq) if isinstance(it, LoopItem) and depth_of[it.loop] == top]
    out, single = [], len(own) == 1
    for n, i in enumerate(own):
        chunk = list(seq[(own[n - 1] + 1 if n else 0):i])
        if chunk:
            out.append(("prologue" if outer else "pre", chunk) if n == 0 else (f"middle{n - 1}", chunk))
        out.append((("body" if outer else "loop") + ("" if single else str(n)), seq[i]))
    tail = list(seq[own[-1] + 1:])
    if tail:
        out.append(("epilogue" if outer else "post", tail))
    return out


def layer_paths(program: LoopProgram) -> list[str]:
    """For every stored layer, its places in the looped module: "prologue.0", "body.{i}.0",
    "body.{i}.loop.{j}.0" ({i}, {j}: the iteration, filled in at run time); a layer that
    runs in several places (equal weights are stored once) lists them, ", " between."""
    depth_of = {s.key: s.depth for s in program.loops}
    out: dict[int, list[str]] = {}

    def walk(seq, outer, prefix, level):
        for name, part in parts(seq, outer, depth_of):
            here = prefix if name == "layers" else prefix + [name]
            if isinstance(part, LoopItem):
                walk(part.body, False, here + ["{" + "ijkl"[level] + "}"], level + 1)
                for r, tail in enumerate(part.tails):
                    walk(tail, False, here + [f"tail{r}"], level)
            elif any(isinstance(i, LoopItem) for i in part):
                walk(tuple(part), False, here, level)
            else:
                for j, layer in enumerate(part):
                    out.setdefault(layer, []).append(".".join(here + [str(j)]))
    walk(program.sequence, True, [], 0)
    return [", ".join(out[i]) for i in sorted(out)]


def _find(seq, key):
    for item in seq:
        if isinstance(item, LoopItem):
            if item.loop == key:
                return item
            found = _find(item.body, key)
            if found is not None:
                return found
    return None


def _expand(seq, counts, out) -> None:
    for item in seq:
        if isinstance(item, LoopItem):
            apps, tail = item.runs(counts[item.loop])
            for _ in range(apps):
                _expand(item.body, counts, out)
            _expand(tail, counts, out)
        else:
            out.append(item)


def _count(seq, counts) -> int:
    n = 0
    for i in seq:
        if isinstance(i, LoopItem):
            apps, tail = i.runs(counts[i.loop])
            n += _count(i.body, counts) * apps + _count(tail, counts)
        else:
            n += 1
    return n


def kept_unrolled(program, loops: LoopProgram) -> list[tuple[int, frozenset, str | None, str]]:
    """The loops a shared build keeps unrolled (`LoopProgram.unrolled`), each as (line, the
    variables its body assigns, the param that counts it or None, why), read off the
    program's `repeat`s at those lines: what `until` or a run-time count of the user's may
    name there, to be told why it cannot."""
    whys = {line: why for line, _count, why in loops.unrolled}
    out = []
    for node, _parent in ast.walk(program):
        if isinstance(node, ast.Repeat) and node.loc.line in whys:
            names = frozenset(n.target for n, _ in ast.walk(node.body)
                              if isinstance(n, ast.Assign))
            param = node.count.id if isinstance(node.count, ast.Name) else None
            out.append((node.loc.line, names, param, whys[node.loc.line]))
    return out


__all__ = ["LoopSpec", "LoopItem", "LoopProgram", "applications", "parts", "layer_paths",
           "kept_unrolled"]
