"""Schedule: the layer each stored block is written in.

Time is counted in sublayers: 0 is the encoder, 2L−1 the attention of layer L, 2L its MLP.
A block's *ready* layer is the layer that writes it (0 for the encoder's). The two rules
below are the only place the machine's timing is written down; the depth pass (depth.py)
applies them to atoms before orientations exist, the schedule here to stored blocks:

  * attention of layer L reads the residual stream as layer L−1 left it, so an attention
    atom goes one layer after the latest block it reads;
  * the MLP of layer L reads what the attention of layer L wrote, so an MLP atom rides in
    the layer that produced its inputs — but a value written by an MLP is read a layer on.

ASAP places every block as early as these allow; `delay` then moves attention atoms as late
as their readers allow (depth unchanged), so a loop variable dies where its successor is
written and its rows are reused in place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..errors import CompileError
from ..runtime import clock
from ..runtime.clock import ENCODER  # noqa: F401  (the encoder's time, re-exported for passes)
from .heads import HeadTerm, Operand, Realization
from .orient import HeadOptions, OrientationCost, Pair, mlp_input_pair, pair_rows
from .nodes import ITERATION, TWIN
from .poly import Atom, AtomTable

# The scheduler counts layers from 1 (layer 0 = "ready from the encoder"); the clock
# (runtime/clock.py) numbers them from 0. These three are the only translation between the two.


def attention_time(layer: int) -> int:
    return clock.attention_time(layer - 1)


def mlp_time(layer: int) -> int:
    return clock.mlp_time(layer - 1)


written_by_mlp = clock.is_mlp


def attention_layer(read_ready: Iterable[int]) -> int:
    """The first layer whose attention can read blocks ready at these layers."""
    return 1 + max(read_ready, default=0)


def mlp_layer(reads: Iterable[tuple[int, bool]]) -> int:
    """The first layer whose MLP can read inputs given as (ready layer, written by an MLP)."""
    return max([1] + [ready + int(by_mlp) for ready, by_mlp in reads])


def latest_write_layer(reader_layer: int, reader_time: int) -> int:
    """The last layer a block may be written in and still be read by this reader."""
    return reader_layer - (0 if written_by_mlp(reader_time) else 1)


@dataclass
class Schedule:
    """Where every stored block (atom, orientation) is written and how attention makes it."""
    orient: dict[int, bool]
    pairs: set[Pair]
    ready: dict[Pair, int]                       # the layer that writes it
    write_time: dict[Pair, int]                  # the sublayer that writes it
    terms: dict[Pair, list[HeadTerm]]            # heads for attention-written blocks
    n_layers: int


def pairs_by_atom(pairs) -> dict[int, list[Pair]]:
    """Each atom's stored blocks (one or both orientations), sorted."""
    out: dict[int, list[Pair]] = {}
    for p in sorted(pairs):
        out.setdefault(p[0], []).append(p)
    return out


def _transpose_head(atoms: AtomTable, src: Pair, dest: Pair) -> HeadTerm:
    """dest = srcᵀ by one head: I (src)ᵀ I."""
    real = Realization(Operand("eye", k=pair_rows(atoms, dest)), Operand("atom", *src),
                       Operand("eye", k=pair_rows(atoms, src)))
    return HeadTerm(real, 1.0, dest)


class AsapScheduler:
    """Places every block in the first layer the timing rules allow."""

    def __init__(self, atoms: AtomTable, options: HeadOptions, outputs: dict[str, int],
                 release: dict[int, int] | None = None):
        self.atoms = atoms
        self.options = options
        self.outputs = outputs
        self.release = release or {}        # atom → the first layer it may be placed in

    def __call__(self, orient: dict[int, bool]) -> Schedule:
        cost, pairs, choice = OrientationCost(self.atoms, self.options)(orient)
        if cost == float("inf"):
            raise CompileError("no assignment of stored orientations lets every product be computed "
                               "by one head (please report this program)")
        s = Schedule(orient, pairs, {}, {}, {}, 0)
        by_atom = pairs_by_atom(pairs)
        for a, atom in self.atoms.items():            # dependency order
            mine = by_atom.get(a, [])
            if atom.kind in ("input", "const"):
                for p in mine:
                    s.ready[p], s.write_time[p] = ENCODER, ENCODER
            elif atom.kind == "mlp":
                self._place_mlp(s, atom, mine)
            else:
                self._place_attention(s, atom, mine, choice)
        out_layers = [s.ready[(o, orient[o])] for o in self.outputs.values()]
        s.n_layers = max([1, *out_layers, *s.ready.values()])
        return s

    def _place_mlp(self, s: Schedule, atom: Atom, mine: list[Pair]) -> None:
        reads = [mlp_input_pair(self.atoms, arg, atom.id, s.orient) for arg in atom.inputs]
        layer = max(mlp_layer((s.ready[q], written_by_mlp(s.write_time[q])) for q in reads),
                    self.release.get(atom.id, 0))
        primary = (atom.id, s.orient[atom.id])
        s.ready[primary], s.write_time[primary] = layer, mlp_time(layer)
        for p in mine:        # an MLP cannot write a transpose: a head does, a layer on
            if p != primary:
                s.ready[p], s.write_time[p] = layer + 1, attention_time(layer + 1)
                s.terms[p] = [_transpose_head(self.atoms, primary, p)]

    def _place_attention(self, s: Schedule, atom: Atom, mine: list[Pair], choice) -> None:
        a = atom.id
        layer = max(attention_layer(s.ready[q] for m in atom.poly
                                    for q in choice[(a, m)].needs()),
                    self.release.get(a, 0))
        primary = (a, s.orient[a])
        s.ready[primary], s.write_time[primary] = layer, attention_time(layer)
        s.terms[primary] = [HeadTerm(choice[(a, m)], c, primary) for m, c in atom.poly.items()]
        for p in mine:
            if p != primary:
                self._place_other_orientation(s, atom, p, layer)

    def _place_other_orientation(self, s: Schedule, atom: Atom, p: Pair, layer: int) -> None:
        """The second stored orientation of an atom: from its own definition in the same layer
        when every monomial allows it, else by transposing the stored block a layer later."""
        same = []
        for m, c in atom.poly.items():
            opts = [r for r in self.options(m, atom, p[1])
                    if r.needs() <= s.pairs and all(q in s.ready and s.ready[q] < layer
                                                    for q in r.needs())]
            if not opts:
                break
            same.append(HeadTerm(opts[0], c, p))
        else:
            s.ready[p], s.write_time[p], s.terms[p] = layer, attention_time(layer), same
            return
        s.ready[p], s.write_time[p] = layer + 1, attention_time(layer + 1)
        s.terms[p] = [_transpose_head(self.atoms, (atom.id, not p[1]), p)]


@dataclass(frozen=True)
class Pace:
    """How a shared build's unrolling releases a loop's iterations (paced_release): one every
    `ii` layers (the initiation interval); `offsets`: each value of a top-level loop at its
    own offset in iteration 0, else all of an iteration where its last chain can start."""
    ii: int
    offsets: bool = False


def paced_release(atoms: AtomTable, s: Schedule, pace: dict[str, Pace]) -> dict[int, int]:
    """Release times that give a loop of a shared build's unrolling one iteration every
    II layers, II the unrolling's own layers per iteration: the modulo schedule's kernel
    (a release is a lower bound: an atom still waits for what it reads). ASAP alone runs a
    loop's chains each at its own rate: in `a = clip(abs(max(a, x)), -1, 1)` beside
    `b = clip(0.5 * (b + y), -1, 1)`, a takes 2 layers an iteration and b 1, so b's iterations
    all run in the first half of the layers and a's alone in the second; no run of layers
    repeats per iteration and the loop could not be folded (shared_build.py tries this where
    a loop does not fold). Paced, every iteration holds one step of each chain. Two ways,
    tried in this order (shared_build._paced_fold):

    - together: iteration i no earlier than start + i·II, start being where the last of
      iteration 0's chains can begin in `s` (the schedule without release times: its latest
      first step, an atom reading no other atom of iteration 0), per instance of a nested
      loop (an instance's b may be free long before its a, which waits for the instance
      before);
    - offsets (a top-level loop): each value no earlier than its twin of iteration 0 (the same
      value with that loop's index 0: nodes.TWIN) is in `s`, plus i·II — iteration 0 shifted.
      Where a short chain feeds a slower one in the same iteration (orthogonal iteration's u,
      normalised before v is orthogonalised against it), a late first step (a Newton step of
      u's normalisation, which reads nothing of the iteration's) held all of an iteration
      back until v waited for u; shifted, u keeps the lead it has in iteration 0. Nested
      instances start together, as above."""
    twins = {atom.node[TWIN]: a for a, atom in atoms.items() if atom.node.get(TWIN)}
    release: dict[int, int] = {}
    for key, paced in pace.items():
        at = {a: iteration_of(atom, key) for a, atom in atoms.items()
              if atom.kind not in ("input", "const")}
        at = {a: w for a, w in at.items() if w is not None}
        start: dict[tuple, int] = {}
        for a, (around, i) in at.items():
            if i == 0 and (a, s.orient[a]) in s.ready and \
                    not any(at.get(b) == (around, 0) for b in atoms[a].reads):
                start[around] = max(start.get(around, 0), s.ready[(a, s.orient[a])])
        for a, (around, i) in at.items():
            if paced.offsets and not around:
                first = _first_iteration_twin(atoms[a], key, twins)
                at_first = s.ready.get((first, s.orient.get(first)))
            else:
                at_first = start.get(around)
            if at_first is not None:
                release[a] = max(release.get(a, 0), at_first + i * paced.ii)
    return release


def _first_iteration_twin(atom: Atom, key: str, twins: dict) -> int | None:
    """The atom that is the same value as `atom` in iteration 0 of loop `key` (its TWIN key
    with that loop's index 0), if there is one."""
    idx, where, occ = atom.node.get(TWIN) or ((), ((),), 0)
    if key not in where[0]:
        return None
    j = where[0].index(key)
    return twins.get((idx[:j] + (0,) + idx[j + 1:], where, occ))


def iteration_of(atom: Atom, key: str) -> tuple[tuple, int] | None:
    """(its iterations of the other loops it is in, its iteration of loop `key`), from the
    node's ITERATION (nodes.py); None for an atom outside that loop."""
    it = dict(atom.node.get(ITERATION) or ())
    if key not in it:
        return None
    return tuple(sorted((k, i) for k, i in it.items() if k != key)), it[key]



def delay(atoms: AtomTable, s: Schedule, outputs: dict[str, int]) -> None:
    """ALAP: move each attention atom to the last layer its readers allow (depth unchanged).

    A loop variable computed early stays alive beside its successor; computed late, it dies
    where the next one is written, so its rows are reused in place."""
    readers: dict[Pair, list[Pair]] = {}
    for c, ts in s.terms.items():
        for term in ts:
            for q in term.real.needs():
                readers.setdefault(q, []).append(c)
    for a, atom in atoms.items():
        if atom.kind == "mlp":
            for arg in atom.inputs:
                readers.setdefault(mlp_input_pair(atoms, arg, a, s.orient), []).append((a, s.orient[a]))
    out_pairs = {(o, s.orient[o]) for o in outputs.values()}
    by_atom = pairs_by_atom(s.pairs)
    for a in reversed(list(atoms)):
        mine = by_atom.get(a, [])
        if atoms[a].kind != "attn" or len(mine) != 1:
            continue
        p = mine[0]
        latest = min((latest_write_layer(s.ready[c], s.write_time[c]) for c in readers.get(p, [])),
                     default=s.n_layers if p in out_pairs else s.ready[p])
        if latest > s.ready[p]:
            s.ready[p], s.write_time[p] = latest, attention_time(latest)
