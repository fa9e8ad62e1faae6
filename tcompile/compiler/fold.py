"""Folding: find the loop bodies in a few small unrollings of the program.

A shared build compiles the program unrolled a few times per loop (u, u + 1, u + 2 iterations;
steady_state.py gives every iteration the same bounds and rows.py pins the loop state to the
same rows) and compares the layer sequences. One more iteration of a loop inserts the same p
layers at each place the loop runs; the maximal run of that period around the insertion is the
loop's steady state: its body, repeated `count − offset` times, where the offset counts the
iterations the schedule pipelines into the layers around it (the fill and drain of a software
pipeline). Loops are folded innermost first, so an outer body holds its inner loops as single
tokens; a fold is accepted only when u, u + 1 and u + 2 iterations all give the same folded
sequence — otherwise the loop has no steady state (e.g. its iterations were merged into other
layers) and the build says so.

Sequences are lists of tokens: a layer's digest (its five weight matrices, bit for bit) or a
`Loop` token.
"""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass

import numpy as np

from ..runtime.sparse import SparseMatrix, to_sparse
from ..runtime.weights import WEIGHT_NAMES, LayerWeights


@dataclass(frozen=True)
class Loop:
    """A folded loop in a sequence: `body` runs `count − offset` times there. A kernel of
    `every` > 1 iterations: with r = (count − offset) mod every, `body` runs
    (count − offsets[r]) / every times, then `tails[r]` once, and the program's outputs end
    where `outputs[r]` says (when given: the tails may leave them in other rows)."""
    key: str
    body: tuple
    offset: int
    every: int = 1
    tails: tuple = ()
    offsets: tuple = ()
    outputs: tuple = ()     # every > 1, where the outputs end in rows that depend on the
                            #   residue: per residue, ((name, rows, transposed), ...)


def digest(layer: LayerWeights) -> str:
    """Equal digests ⇔ equal weights (shapes and every bit of every nonzero), whatever the
    head labels say. Read in the canonical sparse form the artifact stores (sparse.to_sparse:
    nonzero positions and values; a signed zero is a zero, as there), from the nonzeros a
    layer holds its MLP matrices as: no dense W_1, W_2 is built (and kept on the layer) for it."""
    h = hashlib.sha256()
    for name in WEIGHT_NAMES:
        m = layer.matrix(name)
        # a SparseMatrix is canonical already: its arrays are hashed in place (an MLP's may
        # hold millions of nonzeros, and the fold digests every layer of every unrolling)
        index, values = (m.index, m.values) if isinstance(m, SparseMatrix) else to_sparse(m)
        h.update(repr(tuple(layer.shape_of(name))).encode())
        h.update(np.ascontiguousarray(index, dtype=np.int64))
        h.update(np.ascontiguousarray(values, dtype=np.float64))
    return h.hexdigest()


def fold_loop(key: str, count: int, seqs: list[list], every: int = 1) -> list:
    """Fold loop `key` in sequences compiled with `count`, `count + every`, `count + 2·every`
    iterations of it (its inner loops already folded; `every` > 1: its iterations grouped in
    kernels of that many, steady_state.py); the folded sequence, the same for all three."""
    folded = []
    for i, (seq, longer) in enumerate(zip(seqs, seqs[1:])):
        sites = _sites(seq, longer)
        folded.append(_compress(longer, sites, key, count + (i + 1) * every, every))
        if i == 0:
            folded.insert(0, _compress(seq, [(_back(a, sites, k), reps - 1, body)
                                             for k, (a, reps, body) in enumerate(sites)],
                                       key, count, every))
    if not all(f == folded[0] for f in folded[1:]):
        raise NoSteadyState("its iterations do not repeat the same layers")
    return folded[0]


def _sites(seq: list, longer: list) -> list[tuple[int, int, tuple]]:
    """Where one more iteration inserted layers into `longer`: each site as (start in longer,
    repetitions of the body there, body)."""
    ops = difflib.SequenceMatcher(None, seq, longer, autojunk=False).get_opcodes()
    inserts = [(j1, j2) for tag, _i1, _i2, j1, j2 in ops if tag != "equal"]
    if not inserts or len(seq) == len(longer):
        raise NoSteadyState("it has no layers of its own: its iterations merge into the layers "
                            "around it")
    if any(tag not in ("equal", "insert") for tag, *_ in ops):
        inserts = _leftmost_inserts(seq, longer)
        if inserts is None:
            raise NoSteadyState("one more iteration changes layers instead of adding them: e.g. "
                                "a loop variable is still read after its next value is written, "
                                "so its rows alternate between iterations")
    period = inserts[0][1] - inserts[0][0]
    if any(j2 - j1 != period for j1, j2 in inserts):
        raise NoSteadyState("one more iteration adds different numbers of layers")
    sites = []
    for j1, _ in inserts:
        a = j1
        while a > 0 and a - 1 + period < len(longer) and longer[a - 1] == longer[a - 1 + period]:
            a -= 1
        e = j1 + period
        while e < len(longer) and longer[e] == longer[e - period]:
            e += 1
        if sites and a < sites[-1][0] + sites[-1][1] * period:
            raise NoSteadyState("two of its runs overlap")
        sites.append((a, (e - a) // period, tuple(longer[a:a + period])))
    return sites


def _leftmost_inserts(seq: list, longer: list) -> list[tuple[int, int]] | None:
    """`longer` as `seq` with runs inserted, matching `seq` leftmost: the inserted runs as
    (start, end) in `longer`, or None where `seq` is no subsequence of it. difflib aligns by
    the longest common block, which can pair an inner loop's layers across iterations of the
    loop around it and report a deletion where one more iteration only inserted (three
    Newton–Schulz steps between the damped steps of newton_logistic_warm: KLMNN·OPQR·NNN…
    against KLMNNN·OPQR·NNNN…); the leftmost match inserts each new layer at the end of its
    run, and the runs are then widened and checked as before (_sites)."""
    inserts, i = [], 0
    for j, token in enumerate(longer):
        if i < len(seq) and seq[i] == token:
            i += 1
        elif inserts and inserts[-1][1] == j:
            inserts[-1] = (inserts[-1][0], j + 1)
        else:
            inserts.append((j, j + 1))
    return inserts if i == len(seq) else None


def _back(a: int, sites, k: int) -> int:
    """A site's start in the shorter sequence: one period less for each site before it."""
    return a - k * len(sites[k][2])


def _compress(seq: list, sites, key: str, count: int, every: int = 1) -> list:
    out, i = [], 0
    for a, reps, body in sites:
        if reps < 0 or tuple(seq[a:a + reps * len(body)]) != body * reps:
            raise NoSteadyState("its runs do not line up from one unrolling to the next")
        out.extend(seq[i:a])
        out.append(Loop(key, body, count - every * reps, every))
        i = a + reps * len(body)
    out.extend(seq[i:])
    return out


def join_residues(key: str, folded: list[list]) -> list:
    """One sequence from the folds of a kernel loop at each residue r of its count (folded[r]:
    counts ≡ offset + r mod every): the same before the loop and in its kernel; after each of
    its runs, the layers that differ (the partial group of iterations and what follows it,
    nodes.kernel_group) become the loop's tails, one per residue, and the rest is shared."""
    every = len(folded)
    cut = [[i for i, t in enumerate(seq) if isinstance(t, Loop) and t.key == key] for seq in folded]
    if len({len(c) for c in cut}) != 1 or not cut[0]:
        raise NoSteadyState("its runs differ from one residue of the count to the next")
    loops = [[seq[i] for i in c] for seq, c in zip(folded, cut)]
    for r, mine in enumerate(loops):
        if any((t.body, t.every, (t.offset - u.offset - r) % every) != (u.body, every, 0)
               for t, u in zip(mine, loops[0])):
            raise NoSteadyState("its kernel differs from one residue of the count to the next")
    if len({tuple(seq[:c[0]]) for seq, c in zip(folded, cut)}) != 1:
        raise NoSteadyState("the layers before it differ from one residue of the count to the next")
    out = list(folded[0][:cut[0][0]])
    for j, first in enumerate(loops[0]):
        segs = [seq[c[j] + 1:(c[j + 1] if j + 1 < len(c) else len(seq))]
                for seq, c in zip(folded, cut)]
        common = 0
        while common < min(map(len, segs)) and len({s[len(s) - 1 - common] for s in segs}) == 1:
            common += 1
        out.append(_single(Loop(key, first.body, first.offset, every,
                                tuple(tuple(s[:len(s) - common]) for s in segs),
                                tuple(mine[j].offset for mine in loops))))
        out.extend(segs[0][len(segs[0]) - common:])
    return out


def _single(loop: Loop) -> Loop:
    """A kernel that is one body k times over, whose tails are that body once per leftover
    iteration, is that body run once per iteration (the same layers at every count; the
    grouping only changed the layers around it): say so, and halting tests every iteration."""
    k, n = loop.every, len(loop.body)
    if n % k:
        return loop
    body = loop.body[:n // k]
    if loop.body != body * k or any(tail != body * (o - loop.offset)
                                    for tail, o in zip(loop.tails, loop.offsets)):
        return loop
    return Loop(loop.key, body, loop.offset)


class NoSteadyState(Exception):
    """This loop does not fold; the shared build keeps it unrolled (`why` goes in the report).
    `final`: no longer base unrolling would fold it either (it has no layers of its own).
    `needs`: it folds, but only from this many iterations, more than it runs.
    `width`: its unrollings differ in residual width, the widest having this many rows: they
    may fold laid out that wide (shared_build._Unrollings.width_floor)."""

    def __init__(self, why: str, key: str | None = None, final: bool = False,
                 needs: int | None = None, width: int | None = None):
        super().__init__(why)
        self.why, self.key, self.final, self.needs = why, key, final, needs
        self.width = width
        self.carried = False    # found from folds carried over (shared_build._carried_over)


__all__ = ["Loop", "NoSteadyState", "digest", "fold_loop", "join_residues"]
