"""The layout of a shared build's run at given counts: every block at the time that run writes
it, named for the iteration it holds, and live until that run reads it last — what the labels
(labels.py), `written_layer` (probe.py) and so the states of every sublayer run are read
against.

A shared build's layout (`prog.layout`) is its base unrolling's (`LoopProgram.base_counts`):
blocks at the times of that run, named `x@k` for its iterations. A run at other counts runs
the same stored layers in more or fewer applications of each loop body (the order is
`LoopProgram.expand`'s; `_places` walks it keeping where each layer sits). Every stored layer
writes the same rows wherever it runs (the fold pins them; executor._block_templates checks
it per layer, which is what lets the structured executor plan a body once), but which
iteration the rows hold and how long it is read depend on where the layer runs, so each layer
of the run is matched with one of the base unrolling (`_anchor`): the same layer at the same
spot of the loop program, in the application with the same future — the last applications of
a loop with the base's last ones, every earlier one with the base's first. The blocks the
matched layer writes in the base come over with

- their times moved to the run's layer;
- their program points renamed: `x@k` of the base is the assignment made by one statement at
  one iteration of each repeat around it (`_Points`: the checker's walk, as
  assignment_lines; a repeat nested in another counts its iterations within its instance);
  in the run it is the same statement δ iterations later in each of them, δ = the
  applications between the two places times the loop's `every` inside the loop, the change of
  its count after it, 0 before it; for a nested repeat whose iteration a layer outside its
  body holds, that layer holds its first iterations (δ = 0) or its last (δ = the change of
  its count), told apart by the iterations the base's body applications write;
- their last read moved to where the run reads them (`_Mapper.last_read`): in the same loop
  instance as the writer, as many applications after it as in the base; in a loop instance
  entered with the value, its first application where the base's first reads it last and is
  not also its last, or where the body writes over the value's rows, else its last one;
  after the loop, the same place after it. A value of an application that the base reads
  only after the loop (a base that runs the body once, whose one application is its last)
  is, in the run, read by the next application as the base's first application reads the
  value that holds exactly those rows when it starts: the same stored layers read the same
  rows in every application (`_next_read`).

What the base unrolling cannot say is refused with an InputError, never guessed: a kernel loop
(`every > 1`) at a count of another residue than the base's (its tail for that residue ran in
no recorded unrolling), a loop run 0 times, a nested repeat's iteration held outside its body
that the base does not place before or after it, and a value whose reads the rules above do
not place.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InputError
from ..language import ast
from ..language.run_params import loop_key
from ..runtime import clock
from ..runtime.layout import LIVE_TO_END, Block, Layout
from ..runtime.loops import LoopItem
from .naming import _AssignmentLines


@dataclass(frozen=True)
class _Level:
    """One loop instance around a place: its LoopItem and path, which application of its body,
    how many the run makes and how many the base unrolling makes."""
    item: LoopItem
    where: tuple
    app: int
    apps: int
    base_apps: int


@dataclass(frozen=True)
class _Place:
    """One layer of a run: the stored layer, its path in the loop program, the loops around it."""
    layer: int
    path: tuple
    levels: tuple[_Level, ...]

    @property
    def key(self) -> tuple:
        return self.path, tuple(lv.app for lv in self.levels)


def _places(seq, counts: dict[str, int], base: dict[str, int]) -> list[_Place]:
    """The run's layers in the order they run (loops.LoopProgram.expand), each with its place."""
    out: list[_Place] = []

    def walk(seq, prefix, levels):
        for i, item in enumerate(seq):
            if isinstance(item, LoopItem):
                apps, tail = item.runs(counts[item.loop])
                base_apps = item.runs(base[item.loop])[0]
                for a in range(apps):
                    walk(item.body, prefix + (i, "body"),
                         levels + (_Level(item, prefix + (i,), a, apps, base_apps),))
                if tail:
                    walk(tail, prefix + (i, f"tail{item.residue(counts[item.loop])}"), levels)
            else:
                out.append(_Place(item, prefix + (i,), levels))
    walk(seq, (), ())
    return out


class _Points:
    """Every top-level assignment `x@k` of a walk at some params and loop counts (by loop
    key: a loop with no param, `repeat 2`, has its count set there) as (statement,
    iterations): the statement's place in the source and ((loop key, iteration), ...) of the
    repeats around it, outermost first; and back."""

    def __init__(self, program: ast.Program, params: dict[str, float], counts: dict[str, int]):
        walker = _IterationWalk(program, params, counts)
        walker.run()
        self.lines = walker.lines
        self.of = walker.points
        self.back = {v: k for k, v in walker.points.items()}


class _IterationWalk(_AssignmentLines):
    """assignment_lines' walk at given loop counts, also keeping which iteration of each repeat
    around it (outside function bodies) made each assignment."""

    def __init__(self, program, params, counts: dict[str, int]):
        super().__init__(program, params)
        self.points: dict[str, tuple] = {}
        self.stack: list[list] = []
        self.counts = counts

    def unroll(self, stmt, count, env, in_function):
        key = loop_key(stmt, self.call_sites)
        count = self.counts.get(key, count)
        top = not self.call_stack
        if top:
            self.stack.append([key, 0, stmt])
        try:
            return super().unroll(stmt, count, env, in_function)
        finally:
            if top:
                self.stack.pop()

    def end_of_iteration(self, loop, env) -> None:
        super().end_of_iteration(loop, env)
        if self.stack and self.stack[-1][2] is loop and not self.call_stack:
            self.stack[-1][1] += 1

    def program_point(self, stmt):
        point = super().program_point(stmt)
        if point is not None:
            self.points[point] = ((stmt.loc.line, stmt.loc.column),
                                  tuple((k, it) for k, it, _ in self.stack))
        return point


def _params_at(prog, counts: dict[str, int]) -> dict[str, float]:
    """The interpreter's params for the run at these resolved counts (by loop key)."""
    return prog.interpreter_params(prog.loops.run_params(counts))


def layout_at(prog, counts: dict[str, int]) -> tuple[Layout, dict[str, int]]:
    """(the layout of the run at these resolved counts — `prog.loops.counts(...)` — with one
    layer per layer run, the source line of every program point of that run). See the
    module docstring for how it is derived and what is refused."""
    loops = prog.loops
    built = dict(loops.base_counts)          # (which also counts the loops kept unrolled)
    base = {s.key: built[s.key] for s in loops.loops}
    run, base_run = _places(loops.sequence, counts, base), _places(loops.sequence, base, base)
    at = {p.key: i for i, p in enumerate(run)}
    base_at = {p.key: i for i, p in enumerate(base_run)}
    _refuse_what_the_base_cannot_say(loops, counts, base)
    points = _Points(prog.program, _params_at(prog, counts), counts)
    same = counts == base
    base_points = points if same else _Points(prog.program, _params_at(prog, base), base)
    mapper = _Mapper(prog, counts, base, run, base_run, at, base_at, base_points, points)
    blocks = [replace(b, last_read=mapper.last_read(b, None, None))
              for b in prog.layout.written_at(clock.ENCODER)]
    for i, place in enumerate(run):
        j = base_at.get(_anchor(place))
        if j is None:
            raise InputError(f"labels at {_counts_text(loops, counts)}: layer {i} (stored "
                             f"layer {place.layer}) has no place in the base unrolling "
                             f"({_counts_text(loops, base)}) to take its blocks from")
        for t0, t in ((clock.attention_time(j), clock.attention_time(i)),
                      (clock.mlp_time(j), clock.mlp_time(i))):
            for b in prog.layout.written_at(t0):
                blocks.append(mapper.moved(b, t, place, base_run[j]))
    outputs = tuple(replace(o, block=mapper.keys.get(o.block, o.block))
                    for o in prog.layout.outputs)
    layout = replace(prog.layout, blocks=tuple(blocks), n_layers=len(run), outputs=outputs)
    return layout, points.lines


def point_mover(prog, counts: dict[str, int]):
    """move(point, key, shift): the base unrolling's program point `x@k`, made at some
    iteration i of top-level loop `key`, as the run at these resolved counts names the same
    statement's assignment at iteration i + shift of that loop (None where the run makes
    none). A point's number depends on every loop before it that assigns the variable: a loop
    after one whose count differs from the base's holds other numbers than the base did."""
    built = dict(prog.loops.base_counts)
    base = _Points(prog.program, _params_at(prog, built), built)
    run = base if counts == built else _Points(prog.program, _params_at(prog, counts), counts)

    def move(point: str, key: str, shift: int) -> str | None:
        where = base.of.get(point)
        if where is None:
            return None
        stmt, its = where
        return run.back.get((stmt, tuple((k, i + shift if k == key else i) for k, i in its)))
    return move


def _counts_text(loops, counts: dict[str, int]) -> str:
    return ", ".join(f"{s.param or 'the loop at line ' + str(s.line)} = {counts[s.key]}"
                     for s in loops.loops)


def _refuse_what_the_base_cannot_say(loops, counts, base) -> None:
    if counts == base:
        return
    for spec in loops.loops:
        item = loops.item(spec.key)
        if item is None:
            continue
        apps, _ = item.runs(counts[spec.key])
        base_apps, _ = item.runs(base[spec.key])
        what = f"{spec.param or 'the count'} = {counts[spec.key]}"
        near = loops.labelled_counts_near(spec.key, counts[spec.key])
        if near is not None:
            nearest = (f" ({spec.param or 'the count'} = {' or '.join(map(str, near))})"
                       if near else "")
            raise InputError(
                f"labels at {what}: the loop at line {spec.line} runs a kernel of "
                f"{item.every} iterations, and a count of residue "
                f"{item.residue(counts[spec.key])} (mod {item.every}) ends it in a tail no "
                f"recorded unrolling ran (the build's layout is the unrolling at "
                f"{base[spec.key]}); label a count of residue {item.residue(base[spec.key])}"
                f"{nearest}, or build it unrolled")
        if apps == 0 and base_apps != 0:
            first = next((c for c in range(counts[spec.key] + 1,
                                           counts[spec.key] + 2 * item.every + 1)
                          if item.runs(c)[0] and (item.every == 1 or item.residue(c)
                                                  == item.residue(base[spec.key]))
                          and (spec.max_count is None or c <= spec.max_count)), None)
            then = (f"; label {spec.param} = {first}{' or more' * (item.every == 1)}"
                    if first is not None and spec.param else "")
            raise InputError(f"labels at {what}: the loop at line {spec.line} runs its body 0 "
                             "times (the layers around it hold all its iterations), which the "
                             f"build's base unrolling never does{then}, or build it unrolled")


def _anchor(place: _Place) -> tuple:
    """The base unrolling's place whose blocks the run's `place` writes: the same path, and in
    each loop the application with the same future (the last ones with the base's last ones,
    every earlier one with its first)."""
    return place.path, tuple(max(0, lv.app - lv.apps + lv.base_apps) for lv in place.levels)


class _Mapper:
    """Moves the base unrolling's blocks to the run's places (layout_at)."""

    def __init__(self, prog, counts, base, run, base_run, at, base_at, base_points, points):
        self.prog, self.counts, self.base = prog, counts, base
        self.run, self.base_run, self.at, self.base_at = run, base_run, at, base_at
        self.base_points, self.points = base_points, points
        self.keys: dict[str, str] = {}          # base output block key → the run's
        self.top = {s.key: s for s in prog.loops.loops if s.depth == 0}
        self.index = {it.loop: i for i, it in enumerate(prog.loops.sequence)
                      if isinstance(it, LoopItem)}
        self.inside = self._iterations_inside()

    def moved(self, b: Block, t: int, place: _Place, anchor: _Place) -> Block:
        shift = self._shift(place, anchor)
        names = tuple(self._rename(v, shift) for v in b.vars)
        key = b.key
        core = key.rstrip("'")
        primes = key[len(core):]
        tr = ".T" if core.endswith(".T") else ""
        if b.vars and core[:len(core) - len(tr)] == b.vars[-1]:
            key = names[-1] + tr + primes
        out = replace(b, key=key, vars=names, written=t,
                      last_read=self.last_read(b, place, anchor))
        if b.last_read == LIVE_TO_END:
            self.keys[b.key] = key
        return out

    def _shift(self, place: _Place, anchor: _Place) -> dict[str, int | None]:
        """Iterations each loop's points move by from `anchor` to `place`: a loop around it,
        by the applications between the two (times its `every`); a top-level loop before it,
        by the change of its count, after it not at all; a nested loop not around it, None:
        that depends on the point (`_nested_shift`)."""
        out: dict[str, int | None] = {}
        for key in self.counts:
            i = self.index.get(key)
            ended = i is not None and place.path[0] >= i
            out[key] = None if key not in self.top else \
                self.counts[key] - self.base[key] if ended else 0
        for lv, lv0 in zip(place.levels, anchor.levels):
            out[lv.item.loop] = (lv.app - lv0.app) * lv.item.every
        return out

    def _nested_shift(self, key: str, stmt, it: int, point: str) -> int:
        """How far iteration `it` of a nested repeat moves where a layer outside its loop
        body holds it: a nested repeat's points count its iterations within its instance, and
        the layers around the body hold its first iterations (before it: the same in every
        run) or its last (after it: moved by the change of its count). Its first and last
        iteration are one or the other; between them, where the base's body applications
        write the statement's later (or earlier) iterations."""
        inside = self.inside.get((key, stmt), ())
        if self.counts[key] == self.base[key] or it == 0 or inside and it < min(inside):
            return 0
        if it == self.base[key] - 1 or inside and it > max(inside):
            return self.counts[key] - self.base[key]
        raise self._refuse(f"the base unrolling's {point} (iteration {it} of the repeat at "
                           f"line {self.prog.loops.spec(key).line}) is held outside that "
                           "loop's body, and the base does not say whether before or after it")

    def _rename(self, point: str, shift: dict[str, int | None]) -> str:
        where = self.base_points.of.get(point)
        if where is None:
            raise self._refuse(f"the base unrolling's block of {point} names no assignment of "
                               "the program")
        stmt, its = where
        moved = (stmt, tuple((k, it + (self._nested_shift(k, stmt, it, point)
                                       if shift.get(k, 0) is None else shift.get(k, 0)))
                             for k, it in its))
        name = self.points.back.get(moved)
        if name is None:
            raise self._refuse(f"the base unrolling's {point} has no counterpart in this run")
        return name

    def _iterations_inside(self) -> dict[tuple, set[int]]:
        """Per nested repeat and statement, the iterations (within their instance) that the
        base writes in the layers of the repeat's body applications."""
        out: dict[tuple, set[int]] = {}
        for b in self.prog.layout.blocks:
            if b.written == clock.ENCODER:
                continue
            keys = {lv.item.loop for lv in self.base_run[clock.layer_of(b.written)].levels}
            for v in b.vars:
                stmt, its = self.base_points.of.get(v, (None, ()))
                for k, it in its:
                    if k in keys and k not in self.top:
                        out.setdefault((k, stmt), set()).add(it)
        return out

    def last_read(self, b: Block, place: _Place | None, anchor: _Place | None) -> int:
        """The time the run reads `b` (written at `place`, taken from `anchor`; None: the
        encoder) for the last time: the base's last read moved to the run's matching place
        (`_reader`), or, for a value of an application that the base reads only after the
        loop (a base that runs the body once: its one application is also its last), where
        the next application reads those rows (`_next_read`)."""
        level = _not_last(place, anchor)
        if b.last_read == LIVE_TO_END:
            return LIVE_TO_END if level is None else self._next_read(b, place, anchor, level)
        reader = self.base_run[clock.layer_of(b.last_read)]
        if level is not None and not _same_instance(anchor, reader, level):
            return self._next_read(b, place, anchor, level)
        return self._time(self._reader(place, anchor, reader, b.rows), b.last_read, b)

    def _time(self, key: tuple, t0: int, b: Block) -> int:
        """The run's time of the sublayer at place `key` that is base time t0's sublayer."""
        i = self.at.get(key)
        if i is None:
            raise self._refuse(f"block {b.key} of the base unrolling is read where this run "
                               "has no layer")
        return clock.attention_time(i) if clock.sublayer_of(t0) == "attn" else clock.mlp_time(i)

    def _reader(self, w: _Place | None, w0: _Place | None, r0: _Place, rows) -> tuple:
        """The run's place (key) of the base's reader `r0` of a value in `rows` that `w0`
        writes in the base and `w` in the run (None: the encoder)."""
        apps = []
        for level, lv in enumerate(r0.levels):
            if _same_instance(w0, r0, level):       # as many applications after the writer
                apps.append(w.levels[level].app + lv.app - w0.levels[level].app)
            else:
                apps.append(self._entered(lv, r0, rows))
        return r0.path, tuple(apps)

    def _entered(self, lv: _Level, r0: _Place, rows) -> int:
        """Which application of a loop instance entered with a value reads it last, given the
        base's (`lv`): the first, where the base's first does and is not its last, or where
        the body writes over the value's rows; else every one does: the last."""
        if lv.app == 0 and (lv.base_apps > 1 or set(rows) & self._rows_written(r0, lv)):
            return 0
        if lv.app == lv.base_apps - 1:
            return lv.app + _run_apps(lv, self.counts) - lv.base_apps
        raise self._refuse(f"which application of the loop at line "
                           f"{self.prog.loops.spec(lv.item.loop).line} reads a value last "
                           "cannot be told from the base unrolling")

    def _span(self, r0: _Place, level: int) -> list[int]:
        """The base positions of the first application of the loop instance at `level` around
        base place r0."""
        outer = [x.app for x in r0.levels[:level]]
        where = r0.levels[level].where
        return [i for i, p in enumerate(self.base_run)
                if len(p.levels) > level and p.levels[level].where == where
                and [x.app for x in p.levels[:level]] == outer and p.levels[level].app == 0]

    def _rows_written(self, r0: _Place, lv: _Level) -> set[int]:
        level = r0.levels.index(lv)
        span = self._span(r0, level)
        return {r for i in span for t in (clock.attention_time(i), clock.mlp_time(i))
                for blk in self.prog.layout.written_at(t) for r in blk.rows}

    def _next_read(self, b: Block, w: _Place, w0: _Place, level: int) -> int:
        """Where the run's next application reads `b`'s rows last: as the base's first
        application reads the value its rows hold when it starts (the same stored layers read
        the same rows in every application), found by the rows exactly."""
        span = self._span(w0, level)
        start, end = clock.attention_time(span[0]), clock.mlp_time(span[-1])
        before = [c for c in self.prog.layout.blocks
                  if c.written < start and set(c.rows) & set(b.rows)]
        holder = max(before, key=lambda c: c.written, default=None)
        if holder is None or holder.rows != b.rows or holder.last_read == LIVE_TO_END \
                or not start <= holder.last_read <= end \
                or sum(c.written == holder.written for c in before) > 1:
            raise self._refuse(f"block {b.key} is read by the next application of the loop at "
                               f"line {self.prog.loops.spec(w.levels[level].item.loop).line}, "
                               "which the base unrolling runs after no application of it")
        r0 = self.base_run[clock.layer_of(holder.last_read)]
        apps = [x.app for x in w.levels[:level]] + [w.levels[level].app + 1]
        apps += [self._entered(lv, r0, b.rows) for lv in r0.levels[level + 1:]]
        return self._time((r0.path, tuple(apps)), holder.last_read, b)

    def _refuse(self, why: str) -> InputError:
        return InputError(f"labels at {_counts_text(self.prog.loops, self.counts)}: {why}")


def _not_last(w: _Place | None, w0: _Place | None) -> int | None:
    """The outermost loop level at which the run's place `w` is not as far from the end of
    its loop instance as its anchor `w0` is in the base (None: at none; its values are read
    as the base's are)."""
    for level, lv in enumerate(w0.levels if w0 is not None else ()):
        run = w.levels[level]
        if run.apps - run.app != lv.base_apps - lv.app:
            return level
    return None


def _run_apps(lv: _Level, counts: dict[str, int]) -> int:
    return lv.item.runs(counts[lv.item.loop])[0]


def _same_instance(w0: _Place | None, r0: _Place, level: int) -> bool:
    """Whether the base's writer and reader sit in the same instance of the loop at nesting
    `level` (the same LoopItem, in the same applications of the loops around it)."""
    if w0 is None or len(w0.levels) <= level or len(r0.levels) <= level:
        return False
    return (w0.levels[level].where == r0.levels[level].where
            and [x.app for x in w0.levels[:level]] == [x.app for x in r0.levels[:level]])


def run_layout(prog, /, **counts) -> tuple[Layout, dict[str, int]]:
    """(the layout of the run at these run-time counts, by param name — `steps=50`, the built
    counts where not given — one layer per layer it runs; `x@k` → source line for that run).
    An unrolled build's is its own layout (it takes no counts)."""
    from .naming import assignment_lines
    resolved = prog.resolve_counts(counts)
    if prog.loops is None:
        return prog.layout, assignment_lines(prog.program, prog.info.float_params())
    return layout_at(prog, resolved)


def run_layers(prog, /, **counts) -> list:
    """The LayerWeights of the layers a run at these run-time counts executes, in run order
    (one per layer of `run_layout`'s layout): an unrolled build's own, a shared build's stored
    layers as `loops.expand` runs them."""
    resolved = prog.resolve_counts(counts)
    if prog.loops is None:
        return list(prog.layers)
    return [prog.layers[i] for i in prog.loops.expand(resolved)]


__all__ = ["layout_at", "run_layout", "run_layers"]
