"""The algebra the lowering works in: atoms (values with rows) and polynomials over them.

A `Poly` maps monomials to coefficients; a `Mono` is a chain of matrix factors (atom, transposed)
times runtime scalars (1×1 atoms, which commute). Transposition, sums and products of these are
exact symbolic operations; symmetry is structural (a Poly equal to its own transpose).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..language.checker import TOKEN
from .nodes import OP

MAX_FACTORS = 3                 # X Yᵀ Z
Factor = tuple[int, bool]       # (atom id, transposed)


@dataclass(frozen=True)
class Mono:
    chain: tuple[Factor, ...]
    scalars: tuple[int, ...] = ()   # runtime 1×1 atoms, sorted

    @property
    def degree(self) -> int:
        return len(self.chain) + len(self.scalars)

    @property
    def factors(self) -> list[int]:
        """The atoms it multiplies: its chain's, then its scalars."""
        return [f for f, _ in self.chain] + list(self.scalars)


Poly = dict  # Mono -> float


@dataclass
class Atom:
    """A value with rows in the embedding. kind: input | const | attn | mlp."""
    id: int
    kind: str
    cshape: tuple                      # canonical shape (rows, cols), 'n' for the token axis
    poly: Poly | None = None           # attn: its definition over other atoms
    node: dict = field(default_factory=dict)   # the graph node's attributes (nodes.py)
    name: str | None = None            # program variable or input name, for the manifest
    symmetric: bool = False            # equal to its own transpose (see `define`)
    piece: object = None               # mlp: the MLP piece computing it (pieces.py)
    diag_of: int | None = None         # mlp: this is u ⊙ V for a token vector u (so Vᵀ(u⊙V) is symmetric)
    gate: int | None = None            # mlp over tokens: the ones atom its piece's constants ride on
    lines: tuple[int, ...] = ()        # mlp: source lines of the statements its piece computes

    @property
    def is_token(self) -> bool:
        return TOKEN in self.cshape

    @property
    def inputs(self) -> list[int]:
        """mlp: the atoms its piece reads (the piece's leaves, then the gate)."""
        return list(self.piece.inputs) + ([self.gate] if self.gate is not None else [])

    @property
    def reads(self) -> set[int]:
        """The atoms its value is computed from: an attention atom's monomials' factors, an
        MLP atom's inputs; none for an input or a constant (no poly)."""
        if self.kind == "mlp":
            return set(self.inputs)
        return {f for m in (self.poly or {}) for f in m.factors}

    def storable(self, transposed: bool) -> bool:
        """Stored blocks have the token axis (if any) as their columns."""
        rows = self.cshape[1] if transposed else self.cshape[0]
        return rows != TOKEN

    def define(self, atoms: "AtomTable", poly: Poly) -> None:
        """Give an attention atom its definition. Symmetry is structural — the value is its own
        transpose when it is a scalar or its (square) Poly equals its transpose — and heads,
        planner and depth pass all read it from here."""
        self.poly = poly
        self.symmetric = self.cshape == (1, 1) or (
            self.cshape[0] == self.cshape[1] and poly_is_symmetric(atoms, poly))


class AtomTable(dict):
    """atom id → Atom, in dependency order (an atom after everything its definition reads),
    plus the constants that heads and pieces treat specially:

    inv_n   the 1/n atom: a runtime scalar, which a head may also read as an I/n block
    ones    the row of ones: token-shaped MLP pieces take their constants (biases) from it
    """

    def __init__(self, items=(), inv_n: int | None = None, ones: int | None = None):
        super().__init__(items)
        self.inv_n = inv_n
        self.ones = ones

    def restricted(self, keep) -> "AtomTable":
        """The same table with only the atoms in `keep` (order and constants preserved)."""
        return AtomTable(((a, atom) for a, atom in self.items() if a in keep), self.inv_n, self.ones)

    def is_ones(self, a: int) -> bool:
        """Whether atom a is a column of ones (the program's `ones(n)`, a `sum`'s, a gate's):
        1/n beside it is the encoder's row of 1/n (heads.py)."""
        atom = self[a]
        return atom.kind == "const" and atom.node.get(OP) == "ones"


def dims(atoms: dict[int, Atom], f: Factor) -> tuple:
    r, c = atoms[f[0]].cshape
    return (c, r) if f[1] else (r, c)


def norm_factor(atoms, f: Factor) -> Factor:
    return (f[0], False) if atoms[f[0]].symmetric else f


def transpose_mono(atoms, m: Mono) -> Mono:
    return Mono(tuple(norm_factor(atoms, (a, not t)) for a, t in reversed(m.chain)), m.scalars)


def symmetrize_weighted_grams(atoms, p: Poly) -> Poly:
    """Vᵀ(u⊙V) is symmetric in exact arithmetic, but u⊙V is an approximated MLP product, so
    it is computed as ½(Vᵀ(u⊙V) + (u⊙V)ᵀV): exactly symmetric, as accurate, one more head.
    Symmetry is then structural (poly == its transpose), which the heads rely on."""
    out: Poly = {}
    for m, c in p.items():
        terms = [(m, c)]
        for i in range(len(m.chain) - 1):
            (v, tv), (q, tq) = m.chain[i], m.chain[i + 1]
            if tv and not tq and getattr(atoms[q], "diag_of", None) == v:
                swapped = Mono(m.chain[:i] + ((q, True), (v, False)) + m.chain[i + 2:], m.scalars)
                terms = [(m, c / 2), (swapped, c / 2)]
                break
        for mm, cc in terms:
            out[mm] = out.get(mm, 0.0) + cc
    return {m: c for m, c in out.items() if c != 0.0}


def transpose_poly(atoms, p: Poly) -> Poly:
    return {transpose_mono(atoms, m): c for m, c in p.items()}


def poly_is_symmetric(atoms, p: Poly) -> bool:
    return transpose_poly(atoms, p) == p


def add_polys(*terms: tuple[float, Poly]) -> Poly:
    out: Poly = {}
    for coef, p in terms:
        for m, c in p.items():
            out[m] = out.get(m, 0.0) + coef * c
    return {m: c for m, c in out.items() if c != 0.0}


def mul_polys(atoms, a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = Mono(ma.chain + mb.chain, tuple(sorted(ma.scalars + mb.scalars)))
            out[m] = out.get(m, 0.0) + ca * cb
    return {m: c for m, c in out.items() if c != 0.0}


def max_degree(p: Poly) -> int:
    return max((m.degree for m in p), default=0)


def head_operands(atoms: "AtomTable", m: Mono) -> int:
    """The stored operands m needs at least: its degree, less one where 1/n joins a ones
    factor (the encoder's row of 1/n: heads.py), so that 1·1ᵀX/n counts three."""
    joined = atoms.inv_n in m.scalars and any(atoms.is_ones(f) for f, _ in m.chain)
    return m.degree - joined


def max_head_operands(atoms: "AtomTable", p: Poly) -> int:
    return max((head_operands(atoms, m) for m in p), default=0)
