"""Rows: which rows of the embedding hold each stored block, and when.

A linear scan over the blocks in write order with liveness: a block's rows are free once its
last reader has run. A writer that lands on rows still holding a dead value subtracts it in
the same sublayer — a head (merged with an identical monomial when the dead value is the
variable's own previous value: that is an in-place update), or ReLU pairs in an MLP — so no
sublayer is ever spent on clearing. Attention can subtract only what fits in the identity
block (the subtraction head is I Iᵀ old); a taller dead block is cleared by the MLP sublayer
before its new writer (after its last read), else its rows are not reused.

The constant identity blocks [I 0] and [I/n 0] are allocated here like any block, as
pseudo atoms with the ids below.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..language.types import TOKEN
from .heads import HeadTerm, Operand, Realization
from .nodes import ENTERS, LOOP_PHASE, LOOP_STATE, REFINED, TWIN
from .orient import Pair, mlp_input_pair, pair_rows
from .poly import Atom, AtomTable
from .schedule import ENCODER, Schedule, written_by_mlp

# Pseudo atom ids of the constant identity blocks. Negative, so at time 0 they sort before
# every graph node in the allocator's (write time, pair) order, which fixes their rows.
IDENTITY_BLOCK = -1              # [I 0]
IDENTITY_OVER_N_BLOCK = -2       # [I/n 0]
ONES_OVER_N_BLOCK = -3           # the 1 × n row of 1/n
# a head operand's constant kind (heads.Operand) → the pseudo atom whose rows it reads
PSEUDO_BLOCK = {"eye": IDENTITY_BLOCK, "eye_inv_n": IDENTITY_OVER_N_BLOCK,
                "ones_inv_n": ONES_OVER_N_BLOCK}
AFTER_LAST_SUBLAYER = 10**9      # the "last read" of an output: it is read after the last layer


@dataclass
class Slot:
    pair: Pair
    rows: list[int]
    write: int                    # sublayer that writes it (0: the encoder)
    last_read: int                # last sublayer that reads it (AFTER_LAST_SUBLAYER: an output)


@dataclass
class Allocation:
    """The schedule's blocks with rows: also the constant blocks, and the subtraction terms
    that clear dead values under new writers."""
    atoms: AtomTable                              # the program's atoms + the identity blocks
    pairs: set[Pair]
    write_time: dict[Pair, int]
    terms: dict[Pair, list[HeadTerm]]             # the schedule's heads + subtraction heads
    identity_sizes: tuple[int, int, int]          # rows of [I 0], [I/n 0], the 1/n row (0: none)
    slots: dict[Pair, Slot] = field(default_factory=dict)
    clear_terms: dict[int, list] = field(default_factory=dict)   # MLP sublayer → (old, row idx, new)
    width: int = 0
    wide: dict[int, bool] = field(default_factory=dict, repr=False)   # _is_wide's answers
    refined: dict[int, bool] = field(default_factory=dict, repr=False)  # _is_refined_result's
    pin_slots: dict[tuple, list[Pair]] = field(default_factory=dict, repr=False)  # pin tag → slots
    twins: dict | None = field(default=None, repr=False)   # _twin_rows's index of twin keys
    hints: dict = field(default_factory=dict, repr=False)  # pair → rows a first scan suggests


def _is_wide(al: "Allocation", a: int) -> bool:
    """_wide(al, a), asked once per atom (the table does not change while rows are allocated,
    and a second scan takes the first's answers; the allocator asks for every block it places
    and every dead block it might reuse)."""
    if a not in al.wide:
        al.wide[a] = _wide(al, a)
    return al.wide[a]


def identity_sizes(atoms: AtomTable, s: Schedule) -> tuple[int, int, int]:
    """Sizes of the [I 0] and [I/n 0] blocks and the 1/n row (1 or 0) the heads read; small MLP
    pieces also take their constants from the identity rows (one per column of the value)."""
    operands = [o for ts in s.terms.values() for t in ts for o in t.real.operands()]
    gate_sizes = [pair_rows(atoms, (a, not s.orient[a])) for a, atom in atoms.items()
                  if atom.kind == "mlp" and not atom.is_token]
    eye = max([o.k for o in operands if o.kind in ("eye", "select")] + gate_sizes, default=0)
    eye_inv_n = max((o.k for o in operands if o.kind == "eye_inv_n"), default=0)
    ones_inv_n = int(any(o.kind == "ones_inv_n" for o in operands))
    return eye, eye_inv_n, ones_inv_n


def with_constant_blocks(atoms: AtomTable, s: Schedule, sizes: tuple[int, int, int]) -> Allocation:
    """The allocation's starting point: the schedule's blocks plus the constant blocks heads
    read that are no graph node (the identity blocks, the 1/n row)."""
    table = atoms.restricted(atoms)
    pairs, write_time = set(s.pairs), dict(s.write_time)
    for pseudo, size, op, cshape in (
            (IDENTITY_BLOCK, sizes[0], "eye", (sizes[0], sizes[0])),
            (IDENTITY_OVER_N_BLOCK, sizes[1], "eye_inv_n", (sizes[1], sizes[1])),
            (ONES_OVER_N_BLOCK, sizes[2], "ones_inv_n", (1, TOKEN))):
        if size:
            table[pseudo] = Atom(pseudo, "const", cshape, node={"op": op})
            pairs.add((pseudo, False))
            write_time[(pseudo, False)] = ENCODER
    terms = {p: [replace(t) for t in ts] for p, ts in s.terms.items()}
    return Allocation(table, pairs, write_time, terms, sizes)


def last_reads(al: Allocation, atoms: AtomTable, orient, outputs: dict[str, int],
               identity_size: int) -> dict[Pair, int]:
    """The last sublayer that reads each block (its write time if none does)."""
    last = {p: al.write_time[p] for p in al.pairs}
    for p, ts in al.terms.items():
        t = al.write_time[p]
        for term in ts:
            for q in term.real.needs():
                last[q] = max(last[q], t)
            for o in term.real.operands():
                if o.kind in PSEUDO_BLOCK:
                    q = (PSEUDO_BLOCK[o.kind], False)
                    last[q] = max(last[q], t)
    if identity_size:
        last[(IDENTITY_BLOCK, False)] = AFTER_LAST_SUBLAYER     # subtraction heads may need it any time
    for a, atom in atoms.items():
        if atom.kind == "mlp":
            t = al.write_time[(a, orient[a])]
            for arg in atom.inputs:
                q = mlp_input_pair(atoms, arg, a, orient)
                last[q] = max(last[q], t)
    for o in outputs.values():
        last[(o, orient[o])] = AFTER_LAST_SUBLAYER
    return last


def allocate(atoms: AtomTable, s: Schedule, outputs: dict[str, int]) -> Allocation:
    sizes = identity_sizes(atoms, s)
    al = _scan(atoms, s, outputs, sizes, {})
    if al.twins:
        # a shared build's loops: scan again, the first iteration's values (and the values a
        # loop starts from) preferring the rows the first scan gave the next iteration's
        # (the loop's state rows), so that the first iteration lays its values out as the
        # body does; kept if it is no wider
        again = _scan(atoms, s, outputs, sizes, _hints(al), known=al)
        if again.width <= al.width:
            return again
    return al


def _hints(al: Allocation) -> dict[Pair, list[int]]:
    """For a second scan: each value made inside a loop → the rows its twin of the next
    iteration had; each value a loop's state starts from (`enters`) → the state's rows."""
    hints: dict[Pair, list[int]] = {}
    state_rows: dict[tuple, list[int]] = {}
    last = _last_iterations(al)
    for p, slot in sorted(al.slots.items(), key=lambda kv: kv[1].write):
        state = al.atoms[p[0]].node.get(LOOP_STATE)
        if state is not None and not _is_last(al, p, last):
            state_rows.setdefault((state, p[1]), slot.rows)
    for p, slot in al.slots.items():
        node = al.atoms[p[0]].node
        key = node.get(TWIN)
        if key is not None:
            idx, where, occ = key
            for i in range(len(idx) - 1, -1, -1):
                a = al.twins.get((idx[:i] + (idx[i] + 1,) + idx[i + 1:], where, occ))
                q = (a, p[1])
                if a is not None and q in al.slots:
                    if len(al.slots[q].rows) == len(slot.rows):
                        hints[p] = list(al.slots[q].rows)
                    break
        for tag in node.get(ENTERS, ()):
            rows = state_rows.get((tag, p[1]))
            if rows is not None and len(rows) == len(slot.rows):
                hints.setdefault(p, list(rows))
    return hints


def _is_last(al: Allocation, p: Pair, last: dict) -> bool:
    """Whether loop value p is its loop's last iteration's: no twin in a later iteration. The
    last iteration's value is laid out by the code after the loop, which differs with the
    count; where it was the only one stored in its orientation (the output copy of a state the
    body reads transposed), a first value hinted to its rows differed with the count's parity
    (a normalised power step's v), and the loop could not fold. (Any later twin, not only the
    next: a kernel stores a state only at the end of each group of its iterations.)"""
    key = al.atoms[p[0]].node.get(TWIN)
    if key is None or not key[0]:
        return False
    idx, where, occ = key
    return idx[-1] >= last[(idx[:-1], where, occ)]


def _last_iterations(al: Allocation) -> dict:
    """(outer iterations, where, occurrence) of a twin key → the last iteration of its own
    (innermost) loop that made such a value."""
    last: dict = {}
    for idx, where, occ in al.twins:
        if idx:
            group = (idx[:-1], where, occ)
            last[group] = max(last.get(group, idx[-1]), idx[-1])
    return last


def _scan(atoms: AtomTable, s: Schedule, outputs: dict[str, int], sizes,
          hints: dict[Pair, list[int]], known: Allocation | None = None) -> Allocation:
    al = with_constant_blocks(atoms, s, sizes)
    al.hints = hints
    if known is not None:       # a scan again of the same table: its per-atom answers hold
        al.wide, al.refined = known.wide, known.refined
    last = last_reads(al, atoms, s.orient, outputs, sizes[0])
    # a constant no head or piece reads (1/n when the I/n block serves) is not encoded
    al.pairs -= {q for q in al.pairs if al.atoms[q[0]].kind == "const" and last[q] == ENCODER}
    occupant = _Occupancy()
    pinned = _pinnable(al)
    # a loop state pinned to its predecessor's rows takes them before its other orientation,
    # written in the same sublayer, can
    for p in sorted(al.pairs, key=lambda p: (al.write_time[p], p[0], p not in pinned, p)):
        t = al.write_time[p]
        rows = _choose_rows(al, p, occupant, last)
        while len(rows) < pair_rows(al.atoms, p):
            rows.append(occupant.new_row())
        if t > ENCODER:
            _subtract_previous(al, p, rows, occupant)
        occupant.put(p, rows)
        _add_slot(al, Slot(p, rows, t, last[p]))
    al.width = len(occupant)
    return al


class _Occupancy(list):
    """The embedding's rows as the scan fills them, row → the block there now (None: empty);
    kept with the other way round, block → the rows it still holds, and the empty rows, so
    that the free rows are looked for block by block, not row by row. Changed only through
    new_row and put."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[Pair, set[int]] = {}
        self.empty: set[int] = set()

    def new_row(self) -> int:
        """A new empty row after the last; its index."""
        self.append(None)
        self.empty.add(len(self) - 1)
        return len(self) - 1

    def put(self, p: Pair, rows: list[int]) -> None:
        """Block p takes `rows`, from the blocks that held them or empty."""
        for r in rows:
            q = self[r]
            if q is None:
                self.empty.discard(r)
            else:
                self.held[q].discard(r)
                if not self.held[q]:
                    del self.held[q]
            self[r] = p
        self.held.setdefault(p, set()).update(rows)


def _add_slot(al: Allocation, slot: Slot) -> None:
    """Record slot (in write order), and a loop state's under its pin tag, so that
    _pinned_rows finds its predecessor without a pass over every slot."""
    al.slots[slot.pair] = slot
    tag = _pin_tag(al, slot.pair)
    if tag is not None:
        al.pin_slots.setdefault(tag, []).append(slot.pair)


def _choose_rows(al: Allocation, p: Pair, occupant, last) -> list[int]:
    """Free rows for p, preferring the rows of the value it overwrites in place (its own
    previous value: an X of its heads of the same size, still whole in its rows)."""
    need = pair_rows(al.atoms, p)
    free, clearable = _free_rows(al, p, occupant, last)
    pinned = _pinned_rows(al, p, occupant, free)
    if pinned is not None:
        return pinned
    twin = _twin_rows(al, p, clearable)
    if twin is not None:
        return twin
    hint = al.hints.get(p)
    if hint is not None and all(r >= len(occupant) or r in clearable for r in hint):
        while len(occupant) <= max(hint):    # rows the first scan made, not made yet here
            occupant.new_row()
        return list(hint)
    own = _own_rows(al, p, occupant, free)
    if own is not None:
        return own
    # empty rows first, then the lowest
    return (sorted(clearable & occupant.empty) + sorted(clearable - occupant.empty))[:need]


def _free_rows(al: Allocation, p: Pair, occupant: _Occupancy,
               last) -> tuple[set[int], set[int]]:
    """The rows p may take: empty ones and those of a dead value that its writer or an MLP
    before it removes (free); and of these the ones where rows do not change hands between a
    sensitive value (_is_wide) and another unless an MLP clears them exactly first
    (clearable). Both depend only on the block a row holds, so each block is judged once.
    (Sets: the callers ask only which rows are in them, and sort what they take.)"""
    t, p_wide = al.write_time[p], _is_wide(al, p[0])
    free, clearable = set(occupant.empty), set(occupant.empty)
    for q, rows in occupant.held.items():
        if last[q] > t:
            continue        # still read: most blocks are (_may_take's first test, made here)
        is_free, is_clearable = _may_take(al, q, t, last, p_wide)
        if is_free:
            free |= rows
        if is_clearable:
            clearable |= rows
    return free, clearable


def _may_take(al: Allocation, q: Pair, t: int, last, p_wide: bool) -> tuple[bool, bool]:
    """Whether a block written at t (p_wide: a sensitive one) may take the rows of block q
    (free), and whether also across sensitive values (clearable): see _free_rows."""
    if not (t > ENCODER and last[q] <= t and al.write_time[q] < t):
        return False, False
    cleared_first = _clearing_mlp(al, q, t, last) is not None
    free = cleared_first or _writer_removes(al, q, t)
    return free, free and (cleared_first or not (p_wide or _is_wide(al, q[0])))


def _own_rows(al: Allocation, p: Pair, occupant, free: set[int]) -> list[int] | None:
    """The rows of the value p overwrites in place, if they are free: the first X of its heads
    of p's size and role that still holds all its rows."""
    need = pair_rows(al.atoms, p)
    for term in al.terms.get(p, []):
        x = term.real.x
        if x is None or x.kind != "atom":
            continue
        q = (x.atom, x.transposed)
        if q in al.slots and pair_rows(al.atoms, q) == need \
                and free.issuperset(al.slots[q].rows) \
                and all(occupant[r] == q for r in al.slots[q].rows) \
                and _role(al.atoms[q[0]]) == _role(al.atoms[p[0]]):
            return list(al.slots[q].rows)
    return None


def _writer_removes(al: Allocation, q: Pair, t: int) -> bool:
    """Whether the writer at sublayer t can remove dead block q from its rows beside its own
    value: an MLP always (ReLU pairs), a head only what fits the identity block (I Iᵀ old)."""
    return written_by_mlp(t) or pair_rows(al.atoms, q) <= al.identity_sizes[0]


def _pin_tag(al: Allocation, p: Pair) -> tuple | None:
    """What row pinning matches loop state blocks by: the state, its kernel phase (a kernel
    of k iterations: the rows of k back) and the orientation; None for other blocks."""
    node = al.atoms[p[0]].node
    state = node.get(LOOP_STATE)
    return None if state is None else (state, node.get(LOOP_PHASE), p[1])


def _pinnable(al: Allocation) -> set[Pair]:
    """The loop state blocks that have a predecessor to be pinned to (_pinned_rows): an
    earlier block of the same pin tag."""
    first: dict[tuple, int] = {}
    tags = {p: tag for p in al.pairs for tag in [_pin_tag(al, p)] if tag is not None}
    for p, tag in tags.items():
        first[tag] = min(first.get(tag, al.write_time[p]), al.write_time[p])
    return {p for p, tag in tags.items() if al.write_time[p] > first[tag]}


def _pinned_rows(al: Allocation, p: Pair, occupant, free: set[int]) -> list[int] | None:
    """A shared build's loop state takes the rows its previous iteration's value had, so that
    every iteration of the stored body finds it in the same place (row pinning). Unrolled
    builds mark no loop state (steady_state.py) and never come here."""
    tag = _pin_tag(al, p)
    if tag is None:
        return None
    before = [q for q in al.pin_slots.get(tag, ()) if q[0] != p[0]]
    if not before:
        return None
    q = max(before, key=lambda q: al.slots[q].write)
    rows = al.slots[q].rows
    if len(rows) == pair_rows(al.atoms, p) and free.issuperset(rows):
        return list(rows)       # the predecessor's rows (another dead value may hold them now)
    return None


def _twin_rows(al: Allocation, p: Pair, free: set[int]) -> list[int] | None:
    """A shared build's value made inside a loop takes the rows the same value of the previous
    iteration had (its twin, steady_state.py), where they are free: the first and last
    iterations, which the pipeline's fill and drain overlap with other code, then lay out
    their values as the body does, and their layers can be the body's. Unrolled builds mark
    no twins and never come here."""
    key = al.atoms[p[0]].node.get(TWIN)
    if key is None:
        return None
    if al.twins is None:
        al.twins = {}
        for a, atom in al.atoms.items():
            k = atom.node.get(TWIN)
            if k is not None:
                al.twins[(k[0], k[1], k[2])] = a
    idx, where, occ = key
    earlier = []
    for i in range(len(idx) - 1, -1, -1):     # the previous iteration of the innermost loop
        if idx[i] > 0:                        # first, then of the loops around it
            earlier.append(idx[:i] + (idx[i] - 1,) + idx[i + 1:])
    for before in earlier:
        a = al.twins.get((before, where, occ))
        q = (a, p[1])
        if a is None or q not in al.slots:
            continue
        rows = al.slots[q].rows
        if len(rows) == pair_rows(al.atoms, p) and free.issuperset(rows):
            return list(rows)
        return None
    return None


def _subtract_previous(al: Allocation, p: Pair, rows: list[int], occupant) -> None:
    """The writer removes the dead value under its rows: delta = new − old."""
    olds: dict[Pair, list[int]] = {}
    for r in rows:
        q = occupant[r]
        if q is not None:
            olds.setdefault(q, []).append(al.slots[q].rows.index(r))
    if not olds:
        return
    t = al.write_time[p]
    for q in list(olds):
        m = _clearing_first(al, p, q, t)
        if m is not None:
            al.clear_terms.setdefault(m, []).append((q, tuple(olds.pop(q)), p))
    if written_by_mlp(t):                    # an MLP writer clears with ReLU pairs
        al.clear_terms.setdefault(t, []).extend((q, tuple(idx), p) for q, idx in olds.items())
        return
    for q, idx in olds.items():
        k = pair_rows(al.atoms, q)
        if list(idx) == list(range(k)) and al.slots[q].rows == rows:
            # in place: merge with a term that copies q into the same rows, if any
            copy = next((term for term in al.terms[p] if term.x_rows is None
                         and _copies(term.real, q)), None)
            if copy is not None:
                copy.coef -= 1.0
                continue
        real = Realization(Operand("eye", k=k), Operand("eye", k=k), Operand("atom", q[0], q[1]))
        al.terms[p].append(HeadTerm(real, -1.0, q, tuple(idx)))


def _clearing_first(al: Allocation, p: Pair, q: Pair, t: int) -> int | None:
    """The MLP sublayer that clears dead block q on its own before p, written at t, takes its
    rows; None where p's writer removes it. A head subtracts only what fits the identity block
    (I Iᵀ old): a larger dead value is cleared by the MLP before its new writer (_choose_rows
    took its rows so). A sensitive value (_is_wide) is cleared exactly where an MLP can
    (x − x = 0), where subtracting it beside the new value would leave ulp(old) in the new
    value; but not where p updates it in place."""
    too_big = not _writer_removes(al, q, t)
    if not (too_big or _is_wide(al, q[0]) or _is_wide(al, p[0])):
        return None
    m = _clearing_mlp(al, q, t, {q: al.slots[q].last_read})
    if m is not None and not too_big and _updates_in_place(al, p, q):
        return None
    return m


def _updates_in_place(al: Allocation, p: Pair, q: Pair) -> bool:
    """Whether p is the next value of q (the same role, q an X of its heads)."""
    return _role(al.atoms[p[0]]) == _role(al.atoms[q[0]]) and any(
        term.real.x == Operand("atom", q[0], q[1]) for term in al.terms.get(p, []))


def _clearing_mlp(al: Allocation, q: Pair, t: int, last) -> int | None:
    """The latest MLP sublayer before t that runs after q's last read and after q is written,
    where q can be cleared on its own; None if there is none."""
    m = t - 1 if not written_by_mlp(t) else t - 2
    return m if m > ENCODER and last[q] <= m and al.write_time[q] < m else None


def _role(atom) -> str | None:
    """r, w or arg for a value of a scalar refinement (below), None for others: an iterate
    may overwrite its own predecessor in place (the same magnitude), nothing else."""
    return atom.node.get(REFINED)


def _wide(al: Allocation, a: int) -> bool:
    """A value of a scalar refinement (refine.py): its seed and iterates (1/a, 1/√a may dwarf
    the next occupant of their rows) and its argument (a tiny a must keep its relative
    precision); and a value a head scales by a refined result (rz · om in conjugate gradient:
    1/x grows as x shrinks, and so does what it scales). Rows pass between such a value and
    another only through an exact clear: an attention writer that subtracts the old value
    beside the new one leaves ulp(old) in it."""
    atom = al.atoms[a]
    return bool(atom.node.get(REFINED)) or atom.kind == "attn" and any(
        _is_refined_result(al, f) for f in atom.reads if f in al.atoms)


def _is_refined_result(al: Allocation, a: int) -> bool:
    """_refined_result(al.atoms, a), asked once per atom: many values a head assembles share
    their factors."""
    if a not in al.refined:
        al.refined[a] = _refined_result(al.atoms, a)
    return al.refined[a]


def _refined_result(atoms: AtomTable, a: int) -> bool:
    """A refinement's seed or iterate, or the value a head assembles from them (1/√ρ)."""
    atom = atoms[a]
    if atom.node.get(REFINED) in ("r", "w"):
        return True
    return atom.kind == "attn" and any(atoms[f].node.get(REFINED) in ("r", "w")
                                       for f in atom.reads if f in atoms)


def _copies(real: Realization, q: Pair) -> bool:
    """Does this head compute exactly the stored block q (X=q, Y=Z=I or X=Y=I, Z=q)?"""
    if real.split:
        return False
    x, y, z = real.x, real.y, real.z
    as_q = Operand("atom", q[0], q[1])
    return (x == as_q and y.kind == "eye" and z.kind == "eye") or \
        (x.kind == "eye" and y.kind == "eye" and z == as_q)
