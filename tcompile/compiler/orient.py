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


def second_orientation_cost(atoms: AtomTable, a: int) -> int:
    """What storing atom a in its second orientation costs beyond its rows: a computed value's
    copy is written by a head after the value (SECOND_ORIENTATION_COST: possibly a layer); an
    input's or a constant's is written by the encoder with the rest of the data (rows only).
    So a step `w - lam * G @ w - H @ w` may store G and H both ways and alternate w's
    orientation from one iteration to the next, instead of a transposed copy of w each step."""
    return 0 if atoms[a].kind in ("input", "const") else SECOND_ORIENTATION_COST


def missing_block_cost(atoms: AtomTable, pair: Pair) -> int:
    """What a head option pays for a block not stored yet (always a second orientation: the
    first is stored anyway): its rows, and a computed value's copy its possible layer."""
    return pair_rows(atoms, pair) + second_orientation_cost(atoms, pair[0])


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


def block_readers(atoms: AtomTable, options: HeadOptions) -> dict[Pair, int]:
    """How many monomials have a head, in either orientation of their atom, that reads each
    block: how widely a stored copy of it could serve."""
    count: dict[Pair, int] = {}
    for a, atom in atoms.items():
        if atom.kind != "attn":
            continue
        for m in atom.poly:
            for p in {p for t in (False, True) for r in options(m, atom, t) for p in r.needs()}:
                count[p] = count.get(p, 0) + 1
    return count


class OrientationCost:
    """Rows a choice of orientations needs when each monomial picks its cheapest head."""

    def __init__(self, atoms: AtomTable, options: HeadOptions):
        self.atoms = atoms
        self.options = options

    def __call__(self, orient: dict[int, bool]):
        """(cost, stored pairs, chosen head per (atom, monomial)); cost inf if some monomial
        has no head. Each monomial takes its cheapest head given the blocks stored so far;
        among equally cheap ones, the one whose new blocks more monomials could read
        (block_readers: a transposed copy of an invariant serves every iteration of a loop,
        one of an iterate only the next)."""
        pairs = {(a, orient[a]) for a in self.atoms}
        choice: dict[tuple[int, Mono], Realization] = {}
        readers = block_readers(self.atoms, self.options)
        for a, atom in self.atoms.items():          # dependency order
            if atom.kind == "mlp":
                pairs.update(mlp_input_pair(self.atoms, arg, a, orient) for arg in atom.inputs)
            if atom.kind != "attn":
                continue
            for m in atom.poly:
                opts = self.options(m, atom, orient[a])
                if not opts:
                    return float("inf"), pairs, choice
                best = min(opts, key=lambda r: (
                    sum(missing_block_cost(self.atoms, p) for p in r.needs() - pairs),
                    -sum(readers.get(p, 0) for p in r.needs() - pairs)))
                pairs |= best.needs()
                choice[(a, m)] = best
        extra = sum(second_orientation_cost(self.atoms, a) for (a, t) in pairs if t != orient[a])
        rows = sum(pair_rows(self.atoms, p) for p in pairs)
        return rows + extra, pairs, choice
