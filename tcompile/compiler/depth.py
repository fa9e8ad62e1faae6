"""Depth pass: read a stored value's definition instead of the value, where that is sooner.

The lowering stores a value (makes it an atom) when some consumer needs it stored; the other
consumers then read the stored copy, a layer after it is written. Where a consumer could
instead multiply out the definition — still at most three factors per monomial — it can run
in the same layer as the stored copy is written. Example (damped Newton, z carried):
λ² = gᵀv with v = X g stored is one layer after v; λ² = gᵀ X g runs beside it, so the step
size, x and z all move up a layer.

Only monomials on an atom's critical path are rewritten, and a rewrite is kept only if the
atom's layer drops. Atoms no one reads any more are removed.
"""
from __future__ import annotations

from .heads import realizations
from .poly import (MAX_FACTORS, Atom, Mono, Poly, add_polys, max_degree, poly_is_symmetric,
                   transpose_poly)


def ready_layers(atoms: dict[int, Atom]) -> dict[int, int]:
    """The layer after which each atom can be read by attention (ASAP, orientation ignored)."""
    lv: dict[int, int] = {}
    for a, atom in atoms.items():
        if atom.kind in ("input", "const"):
            lv[a] = 0
        elif atom.kind == "attn":
            lv[a] = 1 + max((lv[f] for m in atom.poly for f in _factors(m)), default=0)
        else:   # the MLP of the layer that wrote its inputs; an MLP input waits a layer
            lv[a] = max([1] + [lv[i] + (atoms[i].kind == "mlp") for i in atom.inputs])
    return lv


def _factors(m: Mono) -> list[int]:
    return [f for f, _ in m.chain] + list(m.scalars)


def _mono_layer(m: Mono, lv) -> int:
    return max((lv[f] for f in _factors(m)), default=0)


def _substitute(atoms, m: Mono, i: int) -> Poly:
    """m with its i-th chain factor replaced by that atom's definition."""
    b, t = m.chain[i]
    definition = transpose_poly(atoms, atoms[b].poly) if t else atoms[b].poly
    out: Poly = {}
    for mb, cb in definition.items():
        new = Mono(m.chain[:i] + mb.chain + m.chain[i + 1:], tuple(sorted(m.scalars + mb.scalars)))
        out[new] = out.get(new, 0.0) + cb
    return {k: v for k, v in out.items() if v != 0.0}


def _realizable(atoms, poly: Poly, cshape, inv_n) -> bool:
    for t in (False, True):
        rows = cshape[1] if t else cshape[0]
        if rows == "n":
            continue
        if all(realizations(atoms, m, cshape, t, inv_n) for m in poly):
            return True
    return False


def fuse(atoms: dict[int, Atom], inv_n: int | None, outputs: dict[str, int]) -> dict[int, Atom]:
    lv = ready_layers(atoms)
    for a, atom in atoms.items():
        if atom.kind != "attn":
            continue
        while atom.poly:                      # an empty Poly (a zero value) has nothing to move
            layer = 1 + max((_mono_layer(m, lv) for m in atom.poly), default=0)
            trial = _lower_layer(atoms, atom, lv, layer, inv_n)
            if trial is None or trial == atom.poly:
                break
            atom.poly = trial
            atom.symmetric = atom.cshape == (1, 1) or (
                atom.cshape[0] == atom.cshape[1] and poly_is_symmetric(atoms, trial))
        lv[a] = 1 + max((_mono_layer(m, lv) for m in atom.poly), default=0)
    return _drop_unread(atoms, outputs)


def _lower_layer(atoms, atom: Atom, lv, layer: int, inv_n) -> Poly | None:
    """Rewrite every monomial that sets `layer` so the atom can run a layer earlier; None if
    some critical monomial cannot be rewritten."""
    new_terms: list[tuple[float, Poly]] = []
    for m, c in atom.poly.items():
        if _mono_layer(m, lv) < layer - 1:
            new_terms.append((c, {m: 1.0}))
            continue
        current = {m: 1.0}
        for _ in range(MAX_FACTORS):          # a monomial may hold several late factors
            late = [(mm, i) for mm in current for i, (f, _t) in enumerate(mm.chain)
                    if lv[f] == layer - 1 and atoms[f].kind == "attn"]
            if not late or any(lv[f] == layer - 1 for mm in current for f in mm.scalars):
                break
            mm, i = late[0]
            sub = _substitute(atoms, mm, i)
            if max_degree(sub) > MAX_FACTORS:
                return None
            current = add_polys((1.0, {k: v for k, v in current.items() if k != mm}), (current[mm], sub))
        if any(_mono_layer(mm, lv) >= layer - 1 for mm in current):
            return None
        new_terms.append((c, current))
    poly = add_polys(*new_terms)
    if not _realizable(atoms, poly, atom.cshape, inv_n):
        return None
    return poly


def _drop_unread(atoms: dict[int, Atom], outputs: dict[str, int]) -> dict[int, Atom]:
    """Remove stored values nothing reads any more (their readers now read their definitions)."""
    keep = dict(atoms)
    while True:
        read = set(outputs.values())
        for atom in keep.values():
            if atom.kind == "attn":
                read |= {f for m in atom.poly for f in _factors(m)}
            elif atom.kind == "mlp":
                read |= set(atom.inputs)
        dead = [a for a, atom in keep.items() if a not in read and atom.kind in ("attn", "mlp")]
        if not dead:
            return keep
        for a in dead:
            del keep[a]
