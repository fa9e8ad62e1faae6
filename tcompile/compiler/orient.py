"""Orientation: whether each small matrix sits in the embedding as M or as Mᵀ.

A head X Yᵀ Z reads its middle factor transposed, so the orientations decide whether extra
transposed copies are needed. Newton–Schulz on a general A needs none if A and X are stored
in opposite orientations: the head X (Aᵀ)ᵀ X reads A as stored when the encoder writes Aᵀ.
Here: the cost of a choice of orientations (rows; a second orientation of an atom, where
unavoidable, costs rows and possibly a layer, so it is priced at 1000 rows) and the head
options it picks from. The local search over orientations is orient_search.py.

Also the one home of how an MLP piece reads its inputs (`mlp_input_pair`), which the
orientation cost, the schedule, the row allocator and the emitter all follow.
"""
from __future__ import annotations

from .heads import Realization, realizations
from .poly import Atom, AtomTable, Mono, transpose_mono

Pair = tuple[int, bool]          # (atom, stored transposed)
SECOND_ORIENTATION_COST = 1000   # rows a second stored orientation of one atom is priced at


def pair_rows(atoms: AtomTable, pair: Pair) -> int:
    """Rows of the embedding the block `pair` takes."""
    r, c = atoms[pair[0]].cshape
    return c if pair[1] else r


def mlp_input_pair(atoms: AtomTable, arg: int, mlp_atom: int, orient: dict[int, bool]) -> Pair:
    """How an MLP piece reads an input: elementwise, so in the piece's own orientation
    (token values have only one; 1×1 values and broadcast rows are the same either way)."""
    atom = atoms[arg]
    if atom.is_token or atom.cshape == (1, 1) or atom.cshape != atoms[mlp_atom].cshape:
        return (arg, orient[arg] if atom.cshape != (1, 1) else False)
    return (arg, orient[mlp_atom])


class HeadOptions:
    """The heads that can compute each monomial of an atom stored in a given orientation,
    cached: the orientation search asks the same question many times."""

    def __init__(self, atoms: AtomTable):
        self.atoms = atoms
        self._cache: dict = {}

    def __call__(self, m: Mono, atom: Atom, transposed: bool) -> list[Realization]:
        """A symmetric value (a scalar, say) is the same block either way, so heads for the
        other orientation serve too — but only where the monomial itself is its own transpose:
        a head for the other orientation computes mᵀ, which equals m for a scalar or a
        symmetric m, not otherwise."""
        either = atom.cshape == (1, 1) or (atom.symmetric and transpose_mono(self.atoms, m) == m)
        key = (m, atom.cshape, transposed, either)
        if key not in self._cache:
            found = realizations(self.atoms, m, atom.cshape, transposed)
            if either:
                found = found + [r for r in realizations(self.atoms, m, atom.cshape, not transposed)
                                 if r not in found]
            self._cache[key] = found
        return self._cache[key]


class OrientationCost:
    """Rows a choice of orientations needs when each monomial picks its cheapest head."""

    def __init__(self, atoms: AtomTable, options: HeadOptions):
        self.atoms = atoms
        self.options = options

    def __call__(self, orient: dict[int, bool]):
        """(cost, stored pairs, chosen head per (atom, monomial)); cost inf if some monomial
        has no head."""
        pairs = {(a, orient[a]) for a in self.atoms}
        choice: dict[tuple[int, Mono], Realization] = {}
        for a, atom in self.atoms.items():          # dependency order
            if atom.kind == "mlp":
                pairs.update(mlp_input_pair(self.atoms, arg, a, orient) for arg in atom.inputs)
            if atom.kind != "attn":
                continue
            for m in atom.poly:
                opts = self.options(m, atom, orient[a])
                if not opts:
                    return float("inf"), pairs, choice
                best = min(opts, key=lambda r: sum(pair_rows(self.atoms, p) for p in r.needs() - pairs))
                pairs |= best.needs()
                choice[(a, m)] = best
        extra = sum(1 for (a, t) in pairs if t != orient[a])
        rows = sum(pair_rows(self.atoms, p) for p in pairs)
        return rows + SECOND_ORIENTATION_COST * extra, pairs, choice
