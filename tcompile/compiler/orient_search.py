"""The orientation search's cost, kept up to date flip by flip.

`orient.OrientationCost` walks every atom for one choice of orientations: the local search
asks it twice per free atom per round, so a program of N atoms cost O(N²) (94% of a
200-step newton_inverse build). `IncrementalCost` computes the same number — the same
greedy, in the same order, with the same tie-breaks — but after flipping one atom it
revisits only the steps whose choice can change:

  * a step is one monomial of an attention atom (it picks its cheapest head given the
    blocks stored so far) or one MLP atom (it stores the blocks its piece reads);
  * flipping atom a changes the options of a's own monomials, the primary/secondary status
    of a's two blocks for every step that may read a, and the blocks MLP pieces read;
  * a step whose chosen blocks change moves the first step that adds some secondary block
    (a block stored in its atom's other orientation), and with it what later steps see:
    exactly the steps after it that may read that block are revisited.

The cost is rows of all primary blocks + (rows + SECOND_ORIENTATION_COST) per secondary
block some step adds; infinite while some monomial has no head.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left, insort

from ..language.checker import TOKEN
from .orient import (HeadOptions, Pair, block_readers, mlp_input_pair, pair_rows,
                     second_orientation_cost)
from .poly import AtomTable


class _Step:
    __slots__ = ("atom", "mono", "options", "reads", "blocks")

    def __init__(self, atom, mono=None, options=None, reads=(), blocks=()):
        self.atom = atom          # the atom whose monomial (or MLP piece) this is
        self.mono = mono          # None for an MLP step
        self.options = options    # transposed → [(realization needs as a tuple)] in option order
        self.reads = reads        # atoms whose orientation its choice depends on
        self.blocks = blocks      # blocks whose presence its choice depends on


class _PairRows(dict):
    """pair_rows(atoms, p), computed once per block."""

    def __init__(self, atoms: AtomTable):
        super().__init__()
        self.atoms = atoms

    def __missing__(self, p: Pair) -> int:
        self[p] = pair_rows(self.atoms, p)
        return self[p]


class IncrementalCost:
    def __init__(self, atoms: AtomTable, options: HeadOptions, orient: dict[int, bool]):
        self.atoms, self.orient = atoms, dict(orient)
        self.steps: list[_Step] = []
        for a, atom in atoms.items():                    # dependency order
            if atom.kind == "mlp":
                self.steps.append(_Step(a, reads=tuple(atom.inputs) + (a,)))
            elif atom.kind == "attn":
                for m in atom.poly:
                    opts = {t: [tuple(sorted(r.needs())) for r in options(m, atom, t)]
                            for t in (False, True)}
                    blocks = {p for t in opts for needs in opts[t] for p in needs}
                    reads = {p[0] for p in blocks} | {a}
                    self.steps.append(_Step(a, m, opts, tuple(sorted(reads)), tuple(sorted(blocks))))
        self.readers: dict[int, list[int]] = {}         # atom → steps whose choice reads its orientation
        self.block_readers: dict[Pair, list[int]] = {}  # block → steps whose choice sees its presence
        for i, s in enumerate(self.steps):
            for x in s.reads:
                self.readers.setdefault(x, []).append(i)
            for p in s.blocks:
                self.block_readers.setdefault(p, []).append(i)
        self._rows = _PairRows(atoms)                    # pair_rows, once per block
        self._extra = {a: second_orientation_cost(atoms, a) for a in atoms}   # once per atom
        self._readers = block_readers(atoms, options)    # the tie-break OrientationCost uses
        self._log: dict | None = None                   # what a flip changed, for undo()
        self.adders: dict[Pair, list[int]] = {}          # block → steps that store it (sorted)
        self.chosen: list[tuple | None] = [() for _ in self.steps]
        self.chosen_at: list[tuple[int, int]] = [(0, 0)] * len(self.steps)   # (option index, its cost)
        self.sensitive: set[int] = set()   # steps not on their first, free option: a block appearing may move them
        self.primary_rows = sum(pair_rows(atoms, (a, t)) for a, t in self.orient.items())
        self.secondary_cost = 0
        self.missing = 0                                 # steps with no head at all
        for i in range(len(self.steps)):
            self._set_choice(i, *self._choose(i))

    @property
    def cost(self) -> float:
        return float("inf") if self.missing else self.primary_rows + self.secondary_cost

    # ---- one step ------------------------------------------------------------------------
    def _present_before(self, p: Pair, i: int) -> bool:
        if p[1] == self.orient[p[0]]:
            return True
        adders = self.adders.get(p)
        return bool(adders) and adders[0] < i

    def _choose(self, i: int) -> tuple[tuple | None, tuple[int, int]]:
        """(the blocks step i stores, (which option, its cost)); None: no head at all.
        The rows of each option's blocks not present before step i (_present_before, inlined:
        this is the search's inner loop)."""
        s = self.steps[i]
        orient = self.orient
        if s.mono is None:
            return tuple(sorted({mlp_input_pair(self.atoms, arg, s.atom, orient)
                                 for arg in self.atoms[s.atom].inputs})), (0, 0)
        adders, rows, extra, readers = self.adders, self._rows, self._extra, self._readers
        best, at, shared = None, (0, 0), 0
        for k, needs in enumerate(s.options[orient[s.atom]]):
            c, r = 0, 0
            for p in needs:
                if p[1] != orient[p[0]]:
                    lst = adders.get(p)
                    if not lst or lst[0] >= i:
                        c += rows[p] + extra[p[0]]
                        r += readers.get(p, 0)
            # the first minimum of (cost, -readers of the new blocks), as OrientationCost's min()
            if best is None or c < at[1] or (c == at[1] and r > shared):
                best, at, shared = needs, (k, c), r
                if c == 0:                                  # nothing later is below 0
                    break
        return best, at

    def _remember(self, i: int) -> None:
        """Step i's state before this flip first changed it (undo())."""
        steps = self._log["steps"]
        if i not in steps:
            steps[i] = (self.chosen[i], self.chosen_at[i], i in self.sensitive)

    def _set_at(self, i: int, at: tuple[int, int]) -> None:
        if self._log is not None:
            self._remember(i)
        self.chosen_at[i] = at
        if self.steps[i].mono is not None and self.chosen[i] is not None and at != (0, 0):
            self.sensitive.add(i)
        else:
            self.sensitive.discard(i)

    def _affected(self, p: Pair, first: int, last: int | None, now_present: bool) -> list[int]:
        """Steps in (first, last] whose choice may change when block p appears before them
        (or vanishes). Appearing only makes options holding p cheaper: a step on its first
        option at no cost cannot move, so only `sensitive` steps are candidates. Vanishing
        only makes options holding p dearer: only steps that chose p (its adders) can move."""
        stop = float("inf") if last is None else last
        if not now_present:
            lst = self.adders.get(p, [])
            return [j for j in lst[bisect_left(lst, first + 1):] if j <= stop]
        out = []
        readers = self.block_readers.get(p, [])       # the steps with p in their blocks, sorted
        for j in readers[bisect_left(readers, first + 1):]:
            if j > stop:
                break
            if j in self.sensitive:
                k, cost = self.chosen_at[j]
                opts = self.steps[j].options[self.orient[self.steps[j].atom]]
                if cost > 0 or any(p in needs for needs in opts[:k]):
                    out.append(j)
        return out

    def _contribution(self, p: Pair) -> int:
        if p[1] == self.orient[p[0]] or not self.adders.get(p):
            return 0
        return self._rows[p] + self._extra[p[0]]

    def _set_choice(self, i: int, new: tuple | None, at) -> list[tuple[Pair, int | None, bool]]:
        """Record step i's new choice; the secondary blocks whose first adder moved, each with
        the last step whose view of it changed (None: every later step) and whether those
        steps now see it."""
        old = self.chosen[i]
        if self._log is not None:
            self._remember(i)
        self.missing += (new is None) - (old is None)
        old_set, new_set = set(old or ()), set(new or ())
        moved = []
        for p in old_set ^ new_set:
            before = self.adders.get(p, [])
            first = before[0] if before else None
            self.secondary_cost -= self._contribution(p)
            if self._log is not None and p not in self._log["adders"]:
                self._log["adders"][p] = list(before)
            lst = self.adders.setdefault(p, [])
            if p in new_set:
                insort(lst, i)
            else:
                del lst[bisect_left(lst, i)]
            self.secondary_cost += self._contribution(p)
            now = lst[0] if lst else None
            if now != first and p[1] != self.orient[p[0]]:
                last = None if first is None or now is None else max(first, now)
                moved.append((p, last, now is not None and (first is None or now < first)))
        self.chosen[i] = new
        self._set_at(i, at)
        return moved

    # ---- flips ---------------------------------------------------------------------------
    def flip(self, a: int) -> float:
        """Flip atom a's orientation; the new cost. undo() takes the last flip back."""
        self._log = {"atom": a, "steps": {}, "adders": {},
                     "totals": (self.primary_rows, self.secondary_cost, self.missing)}
        return self._flip(a)

    def undo(self) -> None:
        """Restore the state before the last flip: what flipping the atom back would compute
        (each step's choice is a function of the orientations alone), from the record of what
        the flip changed instead of a second search through the steps."""
        log, self._log = self._log, None
        a = log["atom"]
        self.orient[a] = not self.orient[a]
        self.primary_rows, self.secondary_cost, self.missing = log["totals"]
        for i, (chosen, at, sensitive) in log["steps"].items():
            self.chosen[i], self.chosen_at[i] = chosen, at
            if sensitive:
                self.sensitive.add(i)
            else:
                self.sensitive.discard(i)
        for p, lst in log["adders"].items():
            self.adders[p] = lst

    def _flip(self, a: int) -> float:
        pairs = [(a, False), (a, True)]
        for p in pairs:
            self.secondary_cost -= self._contribution(p)
        self.primary_rows -= pair_rows(self.atoms, (a, self.orient[a]))
        self.orient[a] = not self.orient[a]
        self.primary_rows += pair_rows(self.atoms, (a, self.orient[a]))
        for p in pairs:
            self.secondary_cost += self._contribution(p)
        dirty = list(self.readers.get(a, []))
        heapq.heapify(dirty)
        seen = set(dirty)
        while dirty:
            i = heapq.heappop(dirty)
            seen.discard(i)
            new, at = self._choose(i)
            if new == self.chosen[i]:
                self._set_at(i, at)
                continue
            for p, last, now_present in self._set_choice(i, new, at):
                for j in self._affected(p, i, last, now_present):
                    if j not in seen:
                        seen.add(j)
                        heapq.heappush(dirty, j)
        return self.cost


def choose_orientations(atoms: AtomTable, options: HeadOptions) -> dict[int, bool]:
    """Token values have the token axis as columns; every other free atom starts where its own
    definition has heads at all, then takes its cheapest orientation given the others (ties:
    as stored), then single flips improve the total while they can (at most 4 rounds). The
    cost is kept up to date flip by flip (IncrementalCost), so this is linear in the
    program, not quadratic."""
    orient = {a: atom.cshape[0] == TOKEN for a, atom in atoms.items()}
    free = [a for a, atom in atoms.items()
            if not atom.is_token and not atom.symmetric and atom.cshape != (1, 1)
            and atom.kind != "mlp"]
    for a in free:
        atom = atoms[a]
        if atom.kind == "attn" and not all(options(m, atom, orient[a]) for m in atom.poly) \
                and all(options(m, atom, not orient[a]) for m in atom.poly):
            orient[a] = not orient[a]
    search = IncrementalCost(atoms, options, orient)
    for a in free:
        before = search.orient[a]
        costs = {before: search.cost}
        costs[not before] = search.flip(a)
        if min((False, True), key=costs.__getitem__) == before:
            search.undo()
    improved, rounds = True, 0
    while improved and rounds < 4:
        improved, rounds = False, rounds + 1
        current = search.cost
        for a in free:
            c = search.flip(a)
            if c < current:
                current, improved = c, True
            else:
                search.undo()
    return search.orient
