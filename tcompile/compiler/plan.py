"""Planning: how each atom is stored, when it is computed, and which rows hold it.

1. Orientation. A small matrix may sit in the embedding as M or as Mᵀ; a head needs its
   middle factor transposed, so the choice decides whether extra transposes are needed.
   Newton–Schulz on a general A needs none if A and X are stored in opposite orientations:
   the head X (Aᵀ)ᵀ X reads A as stored when the encoder writes Aᵀ (equally, Xᵀ kept beside
   A works). A local search over the atoms' orientations minimises rows (a second
   orientation, where unavoidable, costs rows and possibly a layer).
2. Schedule (ASAP). An attention atom goes in the first layer after everything it reads; an
   MLP atom rides in the MLP of the layer that produced its inputs. Depth is then the longest
   chain of atoms, which the lowering kept short.
3. Rows (linear scan with liveness). A block is free once its last reader has run; a writer
   that lands on rows still holding a dead value subtracts it in the same sublayer (a head,
   merged with an identical monomial when it is the variable's own previous value — that is
   an in-place update), so no sublayer is ever spent on clearing.

Time is counted in sublayers: 0 is the input, 2L−1 the attention of layer L, 2L its MLP.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..language.checker import TOKEN
from ..errors import CompileError
from .heads import Operand, Realization, realizations
from .poly import Atom, Mono, transpose_mono

Pair = tuple[int, bool]          # (atom, stored transposed)
END = 10**9
EYE, EYE_INV_N = -1, -2          # pseudo atoms: the constant blocks [I 0] and [I/n 0]


@dataclass
class HeadTerm:
    """coef · X Yᵀ Z written into `dest`; `x_rows` picks rows of X (None: all)."""
    real: Realization
    coef: float
    dest: Pair
    x_rows: tuple[int, ...] | None = None


@dataclass
class Slot:
    pair: Pair
    rows: list[int]
    write: int                    # sublayer that writes it (0: the encoder)
    last_read: int                # last sublayer that reads it (END: an output)


@dataclass
class Plan:
    atoms: dict[int, Atom]
    orient: dict[int, bool]
    pairs: set[Pair]
    ready: dict[Pair, int]                       # layer after which attention may read it
    write_time: dict[Pair, int]
    terms: dict[Pair, list[HeadTerm]]            # how each attention-written pair is made
    slots: dict[Pair, Slot] = field(default_factory=dict)
    width: int = 0
    n_layers: int = 0
    identity_size: int = 0
    inv_n_identity_size: int = 0
    clear_terms: dict[int, list] = field(default_factory=dict)   # MLP sublayer → pairs to clear


def _rows(atoms, pair: Pair) -> int:
    r, c = atoms[pair[0]].cshape
    return c if pair[1] else r


def mlp_input_pair(atoms, arg: int, mlp_atom: int, orient) -> Pair:
    """How an MLP piece reads an input: elementwise, so in the piece's own orientation
    (token values have only one; 1×1 values and broadcast rows are the same either way)."""
    atom = atoms[arg]
    if atom.is_token or atom.cshape == (1, 1) or atom.cshape != atoms[mlp_atom].cshape:
        return (arg, orient[arg] if atom.cshape != (1, 1) else False)
    return (arg, orient[mlp_atom])


def _default_orientation(atom: Atom) -> bool:
    return atom.cshape[0] == TOKEN


class Planner:
    def __init__(self, atoms: dict[int, Atom], inv_n: int | None, outputs: dict[str, int]):
        self.atoms = atoms
        self.inv_n = inv_n
        self.outputs = outputs
        self._cache: dict = {}
        self.order = list(atoms)          # atoms are created in dependency order

    def options(self, m: Mono, atom: Atom, transposed: bool) -> list[Realization]:
        """Heads for monomial m of `atom` stored as given; a symmetric value (a scalar, say)
        is the same block either way, so heads for the other orientation serve too."""
        # only where the monomial itself is its own transpose: a head for the other
        # orientation computes mᵀ, which equals m for a scalar or a symmetric m, not otherwise
        either = atom.cshape == (1, 1) or (atom.symmetric and transpose_mono(self.atoms, m) == m)
        key = (m, atom.cshape, transposed, either)
        if key not in self._cache:
            found = realizations(self.atoms, m, atom.cshape, transposed, self.inv_n)
            if either:
                found = found + [r for r in realizations(self.atoms, m, atom.cshape, not transposed,
                                                         self.inv_n) if r not in found]
            self._cache[key] = found
        return self._cache[key]

    # 1. orientation ----------------------------------------------------------------------
    def evaluate(self, orient: dict[int, bool]):
        """Rows needed when each monomial picks its cheapest head; inf if some has none."""
        pairs = {(a, orient[a]) for a in self.atoms}
        choice: dict[tuple[int, Mono], Realization] = {}
        for a in self.order:
            atom = self.atoms[a]
            if atom.kind == "mlp":
                for arg in atom.inputs:
                    pairs.add(self.input_pair(arg, a, orient))
                continue
            if atom.kind != "attn":
                continue
            for m in atom.poly:
                opts = self.options(m, atom, orient[a])
                if not opts:
                    return float("inf"), pairs, choice
                best = min(opts, key=lambda r: sum(_rows(self.atoms, p) for p in r.needs() - pairs))
                pairs |= best.needs()
                choice[(a, m)] = best
        extra = sum(1 for (a, t) in pairs if t != orient[a])
        return sum(_rows(self.atoms, p) for p in pairs) + 1000 * extra, pairs, choice

    def input_pair(self, arg: int, mlp_atom: int, orient) -> Pair:
        return mlp_input_pair(self.atoms, arg, mlp_atom, orient)

    def choose_orientations(self) -> dict[int, bool]:
        orient = {a: _default_orientation(atom) for a, atom in self.atoms.items()}
        free = [a for a, atom in self.atoms.items()
                if not atom.is_token and not atom.symmetric and atom.cshape != (1, 1)
                and atom.kind != "mlp"]
        # start where each atom's own definition has heads at all, then take each atom's
        # cheapest orientation, then improve by single flips
        for a in free:
            atom = self.atoms[a]
            if atom.kind == "attn" and not all(self.options(m, atom, orient[a]) for m in atom.poly) \
                    and all(self.options(m, atom, not orient[a]) for m in atom.poly):
                orient[a] = not orient[a]
        for a in free:
            best = min((False, True), key=lambda t: self.evaluate({**orient, a: t})[0])
            orient[a] = best
        improved = True
        rounds = 0
        while improved and rounds < 4:
            improved, rounds = False, rounds + 1
            cost = self.evaluate(orient)[0]
            for a in free:
                trial = {**orient, a: not orient[a]}
                c = self.evaluate(trial)[0]
                if c < cost:
                    orient, cost, improved = trial, c, True
        return orient

    # 2. schedule -------------------------------------------------------------------------
    def schedule(self, orient) -> Plan:
        cost, pairs, choice = self.evaluate(orient)
        if cost == float("inf"):
            raise CompileError("no assignment of stored orientations lets every product be computed "
                               "by one head (please report this program)")
        ready: dict[Pair, int] = {}
        write: dict[Pair, int] = {}
        terms: dict[Pair, list[HeadTerm]] = {}
        for a in self.order:
            atom = self.atoms[a]
            mine = sorted(p for p in pairs if p[0] == a)
            primary = (a, orient[a])
            if atom.kind in ("input", "const"):
                for p in mine:
                    ready[p], write[p] = 0, 0
                continue
            if atom.kind == "mlp":
                # the MLP of layer L reads what attention L wrote; an MLP input waits a layer
                layer = 1
                for arg in atom.inputs:
                    q = self.input_pair(arg, a, orient)
                    layer = max(layer, ready[q] + (1 if write[q] % 2 == 0 and write[q] > 0 else 0))
                ready[primary], write[primary] = layer, 2 * layer
                for p in mine:        # an MLP cannot write a transpose: a head does, a layer on
                    if p != primary:
                        k = _rows(self.atoms, primary)
                        tr = Realization(Operand("eye", k=_rows(self.atoms, p)),
                                         Operand("atom", *primary), Operand("eye", k=k))
                        ready[p], write[p], terms[p] = layer + 1, 2 * layer + 1, [HeadTerm(tr, 1.0, p)]
                continue
            layer = 1 + max((ready[q] for m in atom.poly for q in choice[(a, m)].needs()), default=0)
            ready[primary], write[primary] = layer, 2 * layer - 1
            terms[primary] = [HeadTerm(choice[(a, m)], c, primary) for m, c in atom.poly.items()]
            for p in mine:
                if p != primary:
                    ready[p], write[p], terms[p] = self._other_orientation(atom, p, layer, pairs, ready)
        plan = Plan(self.atoms, orient, pairs, ready, write, terms)
        out_layers = [ready[(o, orient[o])] for o in self.outputs.values()]
        plan.n_layers = max([1, *out_layers, *ready.values()])
        return plan

    def delay(self, plan: Plan) -> None:
        """ALAP: move each attention atom to the last layer its readers allow (depth unchanged).

        A loop variable computed early stays alive beside its successor; computed late, it
        dies where the next one is written, so its rows are reused in place.
        """
        readers: dict[Pair, list[Pair]] = {}
        for c, ts in plan.terms.items():
            for term in ts:
                for q in term.real.needs():
                    readers.setdefault(q, []).append(c)
        for a, atom in self.atoms.items():
            if atom.kind == "mlp":
                for arg in atom.inputs:
                    readers.setdefault(self.input_pair(arg, a, plan.orient), []).append((a, plan.orient[a]))
        outputs = {(o, plan.orient[o]) for o in self.outputs.values()}
        for a in reversed(self.order):
            mine = [p for p in plan.pairs if p[0] == a]
            if self.atoms[a].kind != "attn" or len(mine) != 1:
                continue
            p = mine[0]
            latest = min((plan.ready[c] - (plan.write_time[c] % 2) for c in readers.get(p, [])),
                         default=plan.n_layers if p in outputs else plan.ready[p])
            if latest > plan.ready[p]:
                plan.ready[p], plan.write_time[p] = latest, 2 * latest - 1

    def _other_orientation(self, atom: Atom, p: Pair, layer: int, pairs, ready):
        """The second stored orientation of an atom: from its own definition in the same layer
        when every monomial allows it, else by transposing the stored block a layer later."""
        same = []
        for m, c in atom.poly.items():
            opts = [r for r in self.options(m, atom, p[1])
                    if r.needs() <= pairs and all(ready.get(q, END) < layer for q in r.needs())]
            if not opts:
                break
            same.append(HeadTerm(opts[0], c, p))
        else:
            return layer, 2 * layer - 1, same
        primary = (atom.id, not p[1])
        tr = Realization(Operand("eye", k=_rows(self.atoms, p)), Operand("atom", *primary),
                         Operand("eye", k=_rows(self.atoms, primary)))
        return layer + 1, 2 * layer + 1, [HeadTerm(tr, 1.0, p)]

    # 3. rows -----------------------------------------------------------------------------
    def allocate(self, plan: Plan) -> None:
        plan.atoms = dict(self.atoms)       # the pseudo atoms below belong to this plan only
        for pseudo, size, op in ((EYE, plan.identity_size, "eye"),
                                 (EYE_INV_N, plan.inv_n_identity_size, "eye_inv_n")):
            if size:
                plan.atoms[pseudo] = Atom(pseudo, "const", (size, size), node={"op": op})
                plan.pairs.add((pseudo, False))
                plan.write_time[(pseudo, False)] = 0
                plan.ready[(pseudo, False)] = 0
        last_read: dict[Pair, int] = {p: plan.write_time[p] for p in plan.pairs}
        for p, ts in plan.terms.items():
            t = plan.write_time[p]
            for term in ts:
                for q in term.real.needs():
                    last_read[q] = max(last_read[q], t)
                if any(o.kind == "eye_inv_n" for o in term.real.operands()):
                    last_read[(EYE_INV_N, False)] = max(last_read[(EYE_INV_N, False)], t)
        if plan.identity_size:
            last_read[(EYE, False)] = END     # subtraction heads may need it at any time
        for a, atom in self.atoms.items():
            if atom.kind == "mlp":
                t = plan.write_time[(a, plan.orient[a])]
                for arg in atom.inputs:
                    q = self.input_pair(arg, a, plan.orient)
                    last_read[q] = max(last_read[q], t)
        for o in self.outputs.values():
            last_read[(o, plan.orient[o])] = END
        # a constant no head or piece reads (1/n when the I/n block serves) is not encoded
        unread = {q for q in plan.pairs if plan.atoms[q[0]].kind == "const" and last_read[q] == 0}
        plan.pairs -= unread
        order = sorted(plan.pairs, key=lambda p: (plan.write_time[p], p))
        occupant: list[Pair | None] = []       # row → pair currently there (or None)
        for p in order:
            t = plan.write_time[p]
            need = _rows(plan.atoms, p)
            attention_writer = t % 2 == 1
            free = [r for r, q in enumerate(occupant) if q is None or (
                t > 0 and last_read[q] <= t and plan.write_time[q] < t
                and (not attention_writer or _rows(plan.atoms, q) <= plan.identity_size))]
            # prefer the rows of a value this one overwrites in place (own previous value)
            own = [q for term in plan.terms.get(p, []) if term.real.x is not None and term.real.x.kind == "atom"
                   for q in [(term.real.x.atom, term.real.x.transposed)]
                   if q in plan.slots and _rows(plan.atoms, q) == need
                   and set(plan.slots[q].rows) <= set(free)
                   and all(occupant[r] == q for r in plan.slots[q].rows)]
            if own:
                rows = list(plan.slots[own[0]].rows)
            else:
                free.sort(key=lambda r: (occupant[r] is not None, r))
                rows = free[:need]
            while len(rows) < need:
                occupant.append(None)
                rows.append(len(occupant) - 1)
            if t > 0:
                self._subtract_previous(plan, p, rows, occupant)
            for r in rows:
                occupant[r] = p
            plan.slots[p] = Slot(p, rows, t, last_read[p])
        plan.width = len(occupant)

    def _subtract_previous(self, plan: Plan, p: Pair, rows: list[int], occupant) -> None:
        """The writer removes the dead value under its rows: delta = new − old."""
        olds: dict[Pair, list[int]] = {}
        for r in rows:
            q = occupant[r]
            if q is not None:
                olds.setdefault(q, []).append(plan.slots[q].rows.index(r))
        if not olds:
            return
        if plan.write_time[p] % 2 == 0:          # an MLP writer clears with ReLU pairs
            plan.clear_terms.setdefault(plan.write_time[p], []).extend(
                (q, tuple(idx), p) for q, idx in olds.items())
            return
        for q, idx in olds.items():
            k = _rows(plan.atoms, q)
            if list(idx) == list(range(k)) and plan.slots[q].rows == rows:
                # in place: merge with a term that copies q into the same rows, if any
                copy = next((term for term in plan.terms[p] if term.x_rows is None
                             and _copies(term.real, q)), None)
                if copy is not None:
                    copy.coef -= 1.0
                    continue
            real = Realization(Operand("eye", k=k), Operand("eye", k=k), Operand("atom", q[0], q[1]))
            plan.terms[p].append(HeadTerm(real, -1.0, q, tuple(idx)))


def _copies(real: Realization, q: Pair) -> bool:
    """Does this head compute exactly the stored block q (X=q, Y=Z=I or X=Y=I, Z=q)?"""
    if real.split:
        return False
    x, y, z = real.x, real.y, real.z
    as_q = Operand("atom", q[0], q[1])
    return (x == as_q and y.kind == "eye" and z.kind == "eye") or \
        (x.kind == "eye" and y.kind == "eye" and z == as_q)


def plan_program(atoms, inv_n, outputs) -> Plan:
    """Orient, schedule (ASAP and ALAP, same depth) and allocate; keep the narrower plan."""
    planner = Planner(atoms, inv_n, outputs)
    orient = planner.choose_orientations()
    best = None
    for late in (False, True):
        plan = planner.schedule(orient)
        if late:
            planner.delay(plan)
        operands = [o for ts in plan.terms.values() for t in ts for o in t.real.operands()]
        gate_sizes = [_rows(atoms, (a, not plan.orient[a])) for a, atom in atoms.items()
                      if atom.kind == "mlp" and not atom.is_token]      # small pieces gate on I rows
        plan.identity_size = max([o.k for o in operands if o.kind == "eye"] + gate_sizes, default=0)
        plan.inv_n_identity_size = max((o.k for o in operands if o.kind == "eye_inv_n"), default=0)
        planner.allocate(plan)
        if best is None or plan.width < best.width:
            best = plan
    return best
