"""One monomial as attention heads: X Yᵀ Z of three stored blocks.

A head reads three stored blocks X, Y, Z (W_V, W_K, W_Q select their rows) and adds X Yᵀ Z;
the contraction X·Yᵀ runs over stored columns (tokens, or a small matrix's columns), so a
monomial's factors must be stored in the right orientations, identities pad short chains at
small dimensions, runtime scalars sit where a dimension is 1 (or 1/n becomes the I/n block, or
joins the row of ones as the row of 1/n), and a scalar times a block with no side of length 1
is split into one head per row.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..language.checker import TOKEN
from .nodes import ENTRIES, OP
from .poly import AtomTable, Factor, MAX_FACTORS, Mono, Poly, dims, transpose_mono

@dataclass(frozen=True)
class Operand:
    """One of X, Y, Z: an atom's stored block in some orientation, or a constant identity.

    kind 'atom': rows of atom `atom` stored transposed or not. kind 'eye': I_k (the first k
    rows of the identity block). kind 'eye_inv_n': I_k / n (a constant block the encoder fills).
    kind 'select': a constant 0/1 pattern with at most one 1 per row (selection.py) read as
    rows of the identity block: `rows[i]` is the identity row that is its row i (None: a zero
    row), so the pattern itself is never stored — the weights select. kind 'ones_inv_n': the
    1 × n row of 1/n (a constant row the encoder fills), where 1/n meets the ones row: a token
    mean broadcast back to the tokens, X − 1·1ᵀX/n, is then one head.
    """
    kind: str
    atom: int | None = None
    transposed: bool = False
    k: int | None = None
    row: int | None = None          # one row of the stored block (row-split heads)
    rows: tuple | None = None       # select: identity row per operand row (None: zero)


@dataclass(frozen=True)
class Realization:
    """Heads for one monomial: X Yᵀ Z, or (`split`) one head per output row, each writing
    (Realization, row index) — how a runtime scalar scales a block with no 1-wide side."""
    x: Operand | None
    y: Operand | None
    z: Operand | None
    split: tuple = ()

    def operands(self) -> list[Operand]:
        if self.split:
            return [o for part, _ in self.split for o in part.operands()]
        return [self.x, self.y, self.z]

    def needs(self) -> set[tuple[int, bool]]:
        if self.split:
            return set().union(*(part.needs() for part, _ in self.split))
        return {(o.atom, o.transposed) for o in (self.x, self.y, self.z) if o.kind == "atom"}


@dataclass
class HeadTerm:
    """coef · X Yᵀ Z written into the block `dest`; `x_rows` picks rows of X (None: all).
    Terms of one layer that share Y and Z become one head (emit.py)."""
    real: Realization
    coef: float
    dest: tuple[int, bool]
    x_rows: tuple[int, ...] | None = None


def _is_small(d) -> bool:
    return d != TOKEN


def realizable(atoms: AtomTable, poly: Poly, cshape) -> bool:
    """Can one attention sublayer compute `poly`: is there a storage orientation of the
    result (the token axis never as rows) in which every monomial has heads? The lowering
    asks before it keeps a product symbolic, the depth pass before it keeps a rewrite."""
    if cshape is None:          # an unsized c·I: sized (and checked) where it meets a matrix
        return True
    for t in (False, True):
        if TOKEN == (cshape[1] if t else cshape[0]):
            continue
        if all(realizations(atoms, m, cshape, t) for m in poly):
            return True
    return False


# realizations by the structure they depend on (_structure): an unrolled loop asks the same
# question for every iteration's atoms, and a shared build for every unrolling it compiles
_TEMPLATES: dict[tuple, list[Realization]] = {}
_MAX_TEMPLATES = 100_000


def realizations(atoms: AtomTable, m: Mono, out_shape: tuple, transposed_out: bool) -> list[Realization]:
    """`_realizations`, computed once per structure: what it reads of each atom is its shape,
    symmetry, constant 0/1 pattern and whether it is 1/n, so a monomial with the same of
    those (and the same atoms repeated in the same places) has the same heads on its own
    atoms. Kept as templates over the monomial's distinct atoms, in order of appearance."""
    ids = list(dict.fromkeys([a for a, _ in m.chain] + list(m.scalars)))
    local = {a: i for i, a in enumerate(ids)}
    key = (tuple(_structure(atoms, a) for a in ids),
           tuple((local[a], t) for a, t in m.chain), tuple(local[x] for x in m.scalars),
           out_shape, transposed_out)
    found = _TEMPLATES.get(key)
    if found is None:
        found = [_renamed(r, local) for r in _realizations(atoms, m, out_shape, transposed_out)]
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.clear()
        _TEMPLATES[key] = found
    return [_renamed(r, ids) for r in found]


def _structure(atoms: AtomTable, a: int) -> tuple:
    """What _realizations reads of atom a."""
    atom = atoms[a]
    pattern = atom.node.get(ENTRIES) if atom.kind == "const" and atom.node.get(OP) == "pattern" \
        else None
    return (atom.cshape, atom.symmetric, pattern, a == atoms.inv_n, atoms.is_ones(a))


def _renamed(r: Realization, name) -> Realization:
    """r with every atom id a replaced by name[a] (a dict, or a list indexed by local id)."""
    if r.split:
        return Realization(None, None, None,
                           split=tuple((_renamed(part, name), row) for part, row in r.split))
    return Realization(*(o if o is None or o.kind != "atom" else
                         Operand(o.kind, name[o.atom], o.transposed, o.k, o.row, o.rows)
                         for o in (r.x, r.y, r.z)))


def _realizations(atoms: AtomTable, m: Mono, out_shape: tuple, transposed_out: bool) -> list[Realization]:
    """Every way to compute monomial `m` (its storage: transposed when `transposed_out`).

    A factor sequence G1 G2 G3 is computed by the head X=G1, Y=G2ᵀ, Z=G3. Scalars go where a
    neighbouring dimension is 1; 1/n may also become I_k/n at any small boundary; identities
    pad short chains at small boundaries. Contractions X·Yᵀ run over stored columns, so Y and
    Z must not have the token axis as rows.
    """
    chain = list(transpose_mono(atoms, m).chain if transposed_out else m.chain)
    p, q = (out_shape[1], out_shape[0]) if transposed_out else out_shape
    items = [("f", f) for f in chain]
    seqs = _place_scalars(atoms, items, list(m.scalars), p, q)
    found = []
    for seq in seqs:
        for padded in _pad(atoms, seq, p, q):
            r = _as_heads(atoms, padded, p, q)
            if r is not None and r not in found:
                found.append(r)
    if not found and len(chain) <= 1 and 1 <= len(m.scalars) <= 2 and _is_small(p) \
            and (chain or p == q):
        found = _row_split(atoms, chain[0] if chain else None, m.scalars, p)
    return found


def _row_split(atoms, factor: Factor | None, scalars, p) -> list[Realization]:
    """s·G (s runtime, G with no side of length 1; G = I when `factor` is None): row r of the
    result is s · (row r of G), one head each: X = s₁, Y = s₂ or I₁, Z = row r of G."""
    if factor is None:
        z = Operand("eye", k=p)
    else:
        z = _operand(atoms, ("f", factor), False)
        if z is None:
            return []
    x = Operand("atom", scalars[0], False)
    y = Operand("atom", scalars[1], False) if len(scalars) == 2 else Operand("eye", k=1)
    parts = tuple((Realization(x, y, Operand(z.kind, z.atom, z.transposed, z.k, row=r,
                                             rows=z.rows)), r)
                  for r in range(p))
    return [Realization(None, None, None, split=parts)]


def _item_dims(atoms, item):
    kind, v = item
    if kind == "f":
        return dims(atoms, v)
    if kind == "s":
        return (1, 1)
    if kind == "ones_inv_n":       # v: transposed (the 1 × n row) or not (the n × 1 column)
        return (1, TOKEN) if v else (TOKEN, 1)
    return (v, v)   # 'eye' / 'eye_inv_n' of size v


def _boundaries(atoms, items, p, q):
    """Dimension at each gap 0..len(items) of the sequence."""
    out = [p]
    for it in items:
        out.append(_item_dims(atoms, it)[1])
    return out


def _place_scalars(atoms, items, scalars, p, q):
    if not scalars:
        return [items]
    s, rest = scalars[0], scalars[1:]
    results = []
    bounds = _boundaries(atoms, items, p, q) if items else [p]
    for pos, dim in enumerate(bounds):
        if dim == 1:
            results += _place_scalars(atoms, items[:pos] + [("s", s)] + items[pos:], rest, p, q)
        elif s == atoms.inv_n and _is_small(dim):
            results += _place_scalars(atoms, items[:pos] + [("eye_inv_n", dim)] + items[pos:], rest,
                                      p, q)
    if s == atoms.inv_n:
        # 1/n joins a ones factor: 1·(1/n) is the row of 1/n the encoder writes
        for i, (kind, v) in enumerate(items):
            if kind == "f" and atoms.is_ones(v[0]):
                joined = items[:i] + [("ones_inv_n", v[1])] + items[i + 1:]
                results += _place_scalars(atoms, joined, rest, p, q)
    return results


def _pad(atoms, items, p, q):
    if len(items) > MAX_FACTORS:
        return []
    if len(items) == MAX_FACTORS:
        return [items]
    out = []
    bounds = _boundaries(atoms, items, p, q) if items else [p]
    for pos, dim in enumerate(bounds):
        if _is_small(dim):
            out += _pad(atoms, items[:pos] + [("eye", dim)] + items[pos:], p, q)
    return out


def _operand(atoms, item, flip: bool) -> Operand | None:
    kind, v = item
    if kind == "f":
        a, t = v
        t = (not t) if flip else t
        if atoms[a].symmetric:
            t = False
        selected = _selection(atoms[a], t)
        if selected is not None:
            return selected
        if not atoms[a].storable(t):
            return None
        return Operand("atom", a, t)
    if kind == "s":
        return Operand("atom", v, False)
    if kind == "ones_inv_n":       # stored as the 1 × n row only
        return Operand(kind, k=1) if (v != flip) else None
    return Operand(kind, k=v)


def _selection(atom, transposed: bool) -> Operand | None:
    """A constant 0/1 pattern (transposed or not) with at most one 1 per row, as identity rows;
    None for any other atom (or a pattern whose rows would be the token axis)."""
    if atom.kind != "const" or atom.node.get(OP) != "pattern":
        return None
    rows, cols = atom.cshape
    entries = atom.node[ENTRIES]
    if transposed:
        rows, cols, entries = cols, rows, tuple((j, i) for i, j in entries)
    if rows == TOKEN:
        return None
    picked: list = [None] * rows
    for i, j in entries:
        if picked[i] is not None:
            return None
        picked[i] = j
    width = cols if cols != TOKEN else 1 + max((j for j in picked if j is not None), default=0)
    return Operand("select", k=width, rows=tuple(picked))


def _as_heads(atoms, seq, p, q) -> Realization | None:
    (r1, c1), (r2, c2), (r3, c3) = (_item_dims(atoms, it) for it in seq)
    if r1 != p or c3 != q or c1 != r2 or c2 != r3 or not _is_small(p) or not _is_small(c2):
        return None
    ops = (_operand(atoms, seq[0], False), _operand(atoms, seq[1], True), _operand(atoms, seq[2], False))
    if any(o is None for o in ops):
        return None
    return Realization(*ops)
