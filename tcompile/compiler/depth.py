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

from .heads import realizable
from .nodes import ITERATION, LOOP_AHEAD, LOOP_FIRST, LOOP_KERNEL, LOOP_STATE, kernel_group
from .poly import (MAX_FACTORS, Atom, AtomTable, Mono, Poly, add_polys, max_head_operands,
                   mul_polys, transpose_poly)
from .schedule import ENCODER, attention_layer, mlp_layer


def ready_layers(atoms: AtomTable) -> dict[int, int]:
    """The layer that writes each atom, by the schedule's timing rules with orientations
    ignored (an atom written by an MLP is taken to be read from its MLP's output)."""
    lv: dict[int, int] = {}
    for a, atom in atoms.items():
        if atom.kind in ("input", "const"):
            lv[a] = ENCODER
        elif atom.kind == "attn":
            lv[a] = attention_layer(lv[f] for m in atom.poly for f in m.factors)
        else:
            lv[a] = mlp_layer((lv[i], atoms[i].kind == "mlp") for i in atom.inputs)
    return lv


def _mono_layer(m: Mono, lv) -> int:
    return max((lv[f] for f in m.factors), default=0)


def _substitute(atoms: AtomTable, m: Mono, i: int) -> Poly:
    """m with its i-th chain factor replaced by that atom's definition."""
    b, t = m.chain[i]
    definition = transpose_poly(atoms, atoms[b].poly) if t else atoms[b].poly
    left, right = {Mono(m.chain[:i], m.scalars): 1.0}, {Mono(m.chain[i + 1:]): 1.0}
    return mul_polys(atoms, mul_polys(atoms, left, definition), right)


def reduce_depth(atoms: AtomTable, outputs: dict[str, int]) -> AtomTable:
    """Rewrite attention atoms (in dependency order) while each rewrite lowers their layer."""
    lv = ready_layers(atoms)
    for a, atom in atoms.items():
        if atom.kind != "attn":
            continue
        while atom.poly:                      # an empty Poly (a zero value) has nothing to move
            layer = attention_layer(_mono_layer(m, lv) for m in atom.poly)
            trial = _lower_layer(atoms, atom, lv, layer)
            if trial is None or trial == atom.poly:
                break
            atom.define(atoms, trial)
        lv[a] = attention_layer(_mono_layer(m, lv) for m in atom.poly)
    return _drop_unread(atoms, outputs)


def _lower_layer(atoms: AtomTable, atom: Atom, lv, layer: int) -> Poly | None:
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
                    if lv[f] == layer - 1 and atoms[f].kind == "attn"
                    and not _crosses_iterations(atoms[f], atom)]
            if not late or any(lv[f] == layer - 1 for mm in current for f in mm.scalars):
                break
            mm, i = late[0]
            sub = _substitute(atoms, mm, i)
            if max_head_operands(atoms, sub) > MAX_FACTORS:
                return None
            current = add_polys((1.0, {k: v for k, v in current.items() if k != mm}), (current[mm], sub))
        if any(_mono_layer(mm, lv) >= layer - 1 for mm in current):
            return None
        new_terms.append((c, current))
    poly = add_polys(*new_terms)
    if not realizable(atoms, poly, atom.cshape):
        return None
    return poly


def _crosses_iterations(f: Atom, reader: Atom) -> bool:
    """In a shared build, a loop's state is read stored by every later iteration of its loop:
    inlining its definition there would let one layer run several iterations, which no stored
    body can repeat. A reader outside that loop (the code after it, another loop, the rest of
    an outer body after an inner loop) may inline the last iteration's definition, as the
    unrolled build does: it runs once, in the layers around the body. (Unrolled builds mark no
    loop state, and merge freely.) A loop run by a kernel of k iterations (shared_build.py)
    is the exception inside a kernel: an iteration may inline the state of an earlier one of
    its own group of k, as the unrolled build does — the kernel stores the group's layers.
    A loop that reads ahead (LOOP_AHEAD) is another: the next iteration may inline the state
    of the one before it, a layer of its own still running one iteration's work (its factors
    are the previous iteration's stored values, which the fold then finds in the same rows at
    every iteration, or the loop is not read ahead). LOOP_FIRST allows that from the first
    iteration's state only (its factors come from before the loop); either only within the
    same iterations of the loops around."""
    state = f.node.get(LOOP_STATE)
    if not state:
        return False
    key = state.rsplit("/", 1)[0]
    if reader.node.get(ITERATION) is None:     # made by the lowering: where, unknown
        return True
    mine = dict(f.node.get(ITERATION) or ())
    theirs = dict(reader.node[ITERATION])
    k, times = f.node.get(LOOP_KERNEL, (1, 0))
    if k > 1 and key in mine and key in theirs and \
            kernel_group(theirs[key], k, times)[0] == kernel_group(mine[key], k, times)[0]:
        return False
    ahead = f.node.get(LOOP_AHEAD) or f.node.get(LOOP_FIRST)   # LOOP_FIRST: iteration 0's only
    if ahead and key in mine and theirs.get(key) == mine[key] + 1 and \
            _same_outside(mine, theirs, key):
        return False
    return key in theirs and theirs.get(key) != mine.get(key)


def _same_outside(mine: dict, theirs: dict, key: str) -> bool:
    """Whether two values' iterations agree on every loop but `key` (a nested loop reads
    ahead within one iteration of the loops around it, not across them)."""
    return {k: i for k, i in mine.items() if k != key} == \
        {k: i for k, i in theirs.items() if k != key}


def _drop_unread(atoms: AtomTable, outputs: dict[str, int]) -> AtomTable:
    """Remove stored values nothing reads any more (their readers now read their definitions).
    The state of a loop that reads ahead stays: `until`, the trace and the outputs read it at
    every iteration's end, though the next iteration reads its definition."""
    keep = atoms.restricted(atoms)
    ahead = {a for a, atom in atoms.items() if atom.node.get(LOOP_AHEAD)}
    while True:
        read = set(outputs.values()) | (ahead & set(keep))
        for atom in keep.values():
            read |= atom.reads
        dead = [a for a, atom in keep.items() if a not in read and atom.kind in ("attn", "mlp")]
        if not dead:
            return keep
        for a in dead:
            del keep[a]
