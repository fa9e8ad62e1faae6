"""Lowering: dataflow graph → atoms, each defined by one sublayer of the target machine.

An *atom* is a value that gets rows in the embedding. Everything else stays symbolic: a node
is expanded into a polynomial over atoms, `Poly = {Mono: coefficient}`, where a monomial is a
chain of matrix factors `(atom, transposed)` times runtime scalars (1×1 atoms, which commute).
One attention head computes X Yᵀ Z for three stored blocks, so a polynomial whose monomials
each need at most three factors is ONE attention sublayer (one head per monomial, coefficients
folded into W_V). When a node's expansion needs more, its widest operand is made an atom and
the expansion retried: the greedy keeps as much as possible symbolic, which is what keeps the
depth down. A loop's state (a variable read before it is assigned in the body) is stored every
iteration, so no symbolic sum grows with the loop. The algebra is in poly.py; how a monomial
becomes heads, in heads.py.

Elementwise functions and products are MLP atoms (their inputs must be atoms); this module
only records them (elementwise.py): how they become ReLUs is pieces.py's business.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from itertools import combinations

import networkx as nx
import numpy as np

from ..language.points import point_variable
from ..errors import ApproxError, CompileError
from ..language.checker import TOKEN
from . import refine
from .dataflow import DataflowGraph
from .approx import exact_function, rounding_floor
from .elementwise import (BOUND, EXACT_PL, Call, Const, Elementwise, Leaf, Product, Sum, affine,
                          calls, contains, evaluate, leaves, scaled_product, substitute, to_text)
from .heads import realizable
from .nodes import (ARGS, C, CARRIED, CLAMP, COPY, CSHAPE, DOMAIN, ENTERS, FARGS, FLAG, FUNC, HI, HOISTED,
                    INFERRED, KEEP, LO, LOC, LOOP_STATE, NAME, NOTE, OP, REFINED, SIGN, SYMMETRIC,
                    TOL, TOL_REL, VALUE, VARS)
from .pieces import MAX_SIGN_LEAVES, UNNAMED, PieceBuilder, Words, saturation_interval
from .poly import (MAX_FACTORS, Atom, AtomTable, Mono, Poly, add_polys, dims, max_degree,
                   max_head_operands, mul_polys, symmetrize_weighted_grams, transpose_mono,
                   transpose_poly)




# ---- building the atoms --------------------------------------------------------------------

class _Restart(Exception):
    """An atom was made after its consumers were expanded symbolically: expand again from it."""

    def __init__(self, nid: int):
        super().__init__(nid)
        self.nid = nid


class Lowering:
    """Expand every live node into a Poly, making atoms where three factors are not enough."""

    def __init__(self, df: DataflowGraph, pieces: PieceBuilder | None = None):
        self.df = df
        self.g = df.graph
        self.atoms = AtomTable()
        self.polys: dict[int, Poly | Elementwise] = {}   # every expanded node, symbolically
        self.current: int | None = None
        self.pieces = pieces or PieceBuilder(df.default_tol)
        self.piece_ranges: dict[int, tuple] = {}
        self.notes: dict[int, str] = {}                 # call → why it is fitted directly
        # (kind, domain, tol, rel) → refine.choose: kept by the PieceBuilder, so a shared build's
        # unrollings weigh each refinement once (it fits the direct alternative to count it)
        self._choices: dict[tuple, tuple] = self.pieces.choices
        self._refined: dict[int, list[int]] = {}        # call → its seed and iterate nodes
        self._variant: dict[int, bool] = {}             # node → depends on a loop's state
        self._hoisted: dict[tuple, int] = {}            # invariant (chain, scalars) → its atom
        self._clamps: dict[tuple, int] = {}             # (leaf, L, H) → its clamp atom
        self._clamp_readers: dict[int, set[int]] = {}   # clamp atom → the pieces that read it
        self._chains: dict[tuple, int] = {}             # (argument, refinement) → that call
        self.user_bounds: dict[int, tuple] = {}         # atom → the user's `(x) on [lo, hi]`

    def error(self, msg, nid, expected=None):
        return CompileError(msg, self.g.nodes[nid][LOC], source=self.df.source,
                            expected=expected)

    def statement(self, nid) -> str:
        """The source statement that made node `nid`, as written (comment stripped), quoted:
        how error messages show the user's expression rather than the compiler's expansion."""
        loc = self.g.nodes[nid][LOC]
        lines = (self.df.source or "").splitlines()
        if loc is None or not 0 < loc.line <= len(lines):
            return "this statement"
        return "'" + lines[loc.line - 1].split("#")[0].strip() + "'"

    def words(self, nid, atoms) -> Words:
        """The statement of `nid` and its leaves named as that statement names them: a leaf is
        often several variables' value (w = b makes w and b one node); the name the statement
        reads is the one the user knows it by here."""
        text = self.statement(nid)
        compiler = self.names()
        names = {}
        for a in atoms:
            node = self.g.nodes[a]
            known = [node[NAME]] if node.get(NAME) else []
            known += [point_variable(v) for v in node.get(VARS, ())]
            used = [k for k in known if re.search(rf"\b{re.escape(k)}\b", text)]
            names[a] = used[-1] if used else (self._written(a, nid) if not known
                                              else compiler.get(a, UNNAMED))
        return Words(text, names)

    def _written(self, a, nid) -> str:
        """A leaf no variable names, as the program writes it: `outer(r, a)` where its node is
        a part of the statement of `nid`, `A @ w` where it is a part of an earlier one (`m = y
        * (A @ w)`, read here through m); else UNNAMED."""
        loc, at = self.g.nodes[a].get(LOC), self.g.nodes[nid].get(LOC)
        text = loc.source_text(self.df.source) if loc is not None and at is not None else None
        if text is None or loc == at:
            return UNNAMED
        return text

    def approx_error(self, msg, nid, expected=None):
        """A fit that cannot meet its budget, located at the statement that asked for it."""
        return ApproxError(msg, self.g.nodes[nid][LOC], expected, source=self.df.source)

    def _fewer_relus_hint(self, err: ApproxError, nid: int, leaf: int | None,
                          tol) -> str | None:
        """What to change when a fit needs more ReLUs than the limit, or its values are so
        large that the absolute budget is below their rounding: the range of the value it is
        a function of (often wider than the user thinks: interval bounds of a loop variable
        grow with the iterations, and so do those of what is computed from one) or the
        budget."""
        if leaf is None:
            return None
        name = self.words(nid, {leaf}).names[leaf]
        budget = f"tol {tol:g} at the end of the statement" if tol else "a looser tol"
        bound = (f"a narrower range for {name} (bound it where it is assigned: "
                 f"{name} = (...) on [lo, hi], or clip it; where it is computed from a loop's "
                 "variables, their bounds grow with the iterations unless declared where the "
                 "loop assigns them)")
        if err.reason == ApproxError.TOO_MANY_NEURONS:
            return f"{bound} or a looser budget ({budget}): the ReLUs grow with the range and " \
                   "like 1/sqrt(tol)"
        if err.reason == ApproxError.BELOW_ROUNDING:   # the values' rounding is over the budget
            need = 2 * rounding_floor(err.largest)
            return (f"a budget above their rounding (tol {need:.1g} or more at the end of the "
                    f"statement), or, where the values are that large because the range is "
                    f"wide, {bound}")
        return None

    def make_atom(self, nid: int, kind: str, poly: Poly | None = None) -> Poly:
        node = self.g.nodes[nid]
        atom = self.atoms.get(nid)
        if atom is None:
            atom = self.atoms[nid] = Atom(nid, kind, node[CSHAPE], None, dict(node), node.get(NAME))
            # a scalar is its own transpose; an input is symmetric when declared so, a 0/1
            # pattern (selection.py) when it equals its transpose
            atom.symmetric = node[CSHAPE] == (1, 1) or (kind in ("input", "const") and
                                                          bool(node.get(SYMMETRIC)))
        if poly is not None:
            atom.define(self.atoms, symmetrize_weighted_grams(self.atoms, poly))
        me = Mono((), (nid,)) if node[CSHAPE] == (1, 1) else Mono(((nid, False),))
        self.polys[nid] = {me: 1.0}
        return self.polys[nid]

    def materialize(self, nid: int) -> Poly:
        """Turn a symbolic node into an attention atom (its Poly becomes its definition)."""
        if nid in self.atoms:
            return self.polys[nid]
        poly = self.polys[nid]
        stale = not self.stale_ok and any(s in self.polys and s != self.current
                                          for s in self.g.successors(nid))
        if self.g.nodes[nid][CSHAPE] is None:
            raise self.error("the size of this multiple of I cannot be inferred", nid)
        result = self.make_atom(nid, "attn", poly)
        if stale:       # consumers already expanded it symbolically: redo them
            raise _Restart(nid)
        return result

    def run(self) -> AtomTable:
        live = self.live = self.df.live_nodes()
        order = [nid for nid in nx.topological_sort(self.g) if nid in live]
        self.stale_ok = False
        position = {nid: i for i, nid in enumerate(order)}
        start = 0
        self.polys = {}
        while True:           # the atom set only grows, so this ends
            try:
                self._pass(order, start)
                break
            except _Restart as r:       # nodes before the new atom cannot depend on it
                start = position[r.nid]
        # outputs get rows too; their consumers keep using the definitions they inlined
        for nid in self.df.outputs.values():
            self.current = nid
            self.stale_ok = True
            if isinstance(self.polys[nid], Elementwise):
                self.materialize_mlp(nid)
            if nid not in self.atoms:          # a poly (or an elementwise tree that proved linear)
                self.materialize(nid)
        rank = {nid: float(i) for i, nid in enumerate(order)}
        for call, made in self._refined.items():     # seed and iterates: just before their call
            for i, a in enumerate(made):
                rank[a] = rank[call] - 1 + (i + 1) / (len(made) + 1)
        for a in sorted(self._hoisted.values()):     # invariant products: after their factors
            rank[a] = max(rank.get(f, -1) for f in self.g.nodes[a][ARGS]) + 0.5
        for a, readers in self._clamp_readers.items():   # clamps: just before their readers
            live = [rank[r] for r in readers if r in self.atoms]
            if live:
                rank[a] = min(live) - 0.5
            else:                 # every reader became linear when expanded again: unused
                del self.atoms[a]
        ordered = sorted(self.atoms, key=lambda a: rank.get(a, -1))
        return AtomTable(((a, self.atoms[a]) for a in ordered), self.atoms.inv_n, self.atoms.ones)

    def _pass(self, order, start: int):
        for nid in order[start:]:
            self.polys.pop(nid, None)
        kinds = {a: atom.kind for a, atom in self.atoms.items()}
        for nid in order[start:]:
            self.current = nid
            if kinds.get(nid) == "attn":
                self.make_atom(nid, "attn", self.expand(nid))
            elif kinds.get(nid) == "mlp":
                self.polys[nid] = self.expand(nid)
                del self.atoms[nid]
                if isinstance(self.polys[nid], Elementwise):
                    self.materialize_mlp(nid)
                else:               # its inputs are stored now: linear, an attention atom
                    self.materialize(nid)
            else:
                self.polys[nid] = self.expand(nid)
                node = self.g.nodes[nid]
                if (node.get(CARRIED) or node.get(KEEP)) and nid not in self.atoms:
                    self._store_loop_state(nid)

    def _store_loop_state(self, nid):
        """A loop's state gets rows unless it is trivially another value (c·atom, c·I) — but
        a shared build's scalar state c·s, c ≠ 1 (a decaying step size eta = 0.9 * eta), is
        stored: left symbolic, iteration k would read 0.9ᵏ·s, a number of its own in every
        iteration's weights, and no body could repeat."""
        p = self.polys[nid]
        node = self.g.nodes[nid]
        if isinstance(p, Elementwise):
            if p.product or len(leaves(p.expr)) > 0 and not isinstance(p.expr, Leaf):
                self.materialize_mlp(nid)
            return
        if len(p) > 1 or max_degree(p) > 1 or node.get(COPY) or self._scales_itself(nid, p):
            self.materialize(nid)

    def _scales_itself(self, nid, p: Poly) -> bool:
        """Whether a shared build's scalar loop state is c·(its own previous value, or the
        value it entered with), c ≠ 1: eta = 0.9 * eta."""
        node = self.g.nodes[nid]
        state = node.get(LOOP_STATE)
        if state is None or node[CSHAPE] != (1, 1) or len(p) != 1:
            return False
        (m, c), = p.items()
        factors = [a for a, _ in m.chain] + list(m.scalars)
        if c == 1.0 or len(factors) != 1:
            return False
        before = self.g.nodes[factors[0]]
        return before.get(LOOP_STATE) == state or state in (before.get(ENTERS) or ())

    def expand(self, nid: int):
        """A node's value over atoms: a Poly (attention) or an `Elementwise` tree."""
        node = self.g.nodes[nid]
        op, args = node[OP], node[ARGS]
        if op == "input":
            return self.make_atom(nid, "input")
        if op == "pattern":                 # a constant 0/1 block the encoder writes
            return self.make_atom(nid, "const")
        if op in ("ones", "n", "inv_n", "number"):
            if op == "inv_n":
                self.atoms.inv_n = nid
            return self.make_atom(nid, "const")
        if op == "const":
            return {Mono(()): node[VALUE]} if node[VALUE] != 0 else {}
        if op == "eye":
            return {Mono(()): 1.0}
        if op == "call":
            return self.call(nid)
        if op == "bound":
            return self.bound(nid)
        if op == "ewmul":
            # a factor c₀ + c·x of the other's atom x stays an expression: x * (1 - x) is a
            # function of x alone (one piece), not a product of two values
            a, b = self._one_value_factors(args) or \
                (self.ew_operand(x, allow_products=False) for x in args)
            if len(self.real_leaves(Product(a, b))) <= 1:      # x ** k: tol rel allowed
                return Elementwise(Product(a, b), tol=node.get(TOL),
                                   rel=bool(node.get(TOL_REL)))
            for x in args:                 # two real factors: a product piece of two atoms
                self.need_poly(x)
            tol = node.get(TOL)
            return Elementwise(Product(self.ew_operand(args[0]), self.ew_operand(args[1])),
                               product=True, tol=tol)
        if op == "scale" and node[C] == 0.0:
            return {}           # zeros(d): 0 · a constant piece is no value to compute or store
        if op == "scale" and isinstance(self.polys[args[0]], Elementwise) and \
                self.polys[args[0]].product and self.fanout(args[0]) == 1 and \
                scaled_product(self.polys[args[0]].expr) is not None:
            inner = self.polys[args[0]]       # u * v / 3: one piece of (1/3)·u ⊙ v, no head after
            return Elementwise(Product(Const(node[C]), inner.expr), product=True, tol=inner.tol)
        if op in ("scale", "add") and any(isinstance(self.polys[a], Elementwise) for a in args):
            exprs = [self.ew_operand(a, allow_products=False) for a in args]
            if op == "scale":
                inner = self.polys[args[0]]
                if isinstance(inner, Elementwise) and inner.rel:   # survives scaling: -x ** 4
                    return Elementwise(Product(Const(node[C]), exprs[0]), tol=inner.tol,
                                       rel=True)
                return Elementwise(Product(Const(node[C]), exprs[0]), **self._inner_budget(args))
            if len(self.real_leaves(Sum(*exprs))) <= 1:
                return Elementwise(Sum(*exprs), **self._inner_budget(args))
            for a in args:
                self.need_poly(a)
        ps = [self.need_poly(a) for a in args]
        if op == "scale":
            return add_polys((node[C], ps[0]))
        if op == "add":
            return add_polys((1.0, ps[0]), (1.0, ps[1]))
        if op == "T":
            return transpose_poly(self.atoms, ps[0])
        if op in ("matmul", "smul"):
            while True:
                prod = mul_polys(self.atoms, self.polys[args[0]], self.polys[args[1]])
                if self._one_sublayer(nid, prod):
                    return prod
                # store an operand whose storing lowers the degree (2+ factors), preferring
                # the one most consumers share (a loop variable, typically), else the longest
                widest = max(args, key=lambda a: (a not in self.atoms and max_degree(self.polys[a]) > 1,
                                                  bool(self.g.nodes[a].get(VARS)),
                                                  self.fanout(a), max_degree(self.polys[a])))
                if widest not in self.atoms and self.variant(widest) and \
                        self.fanout(widest) == 1 and not self.g.nodes[widest].get(VARS):
                    # storing it would cost a layer every iteration, for this product alone:
                    # first try storing the product's loop-invariant factors once instead
                    hoisted = self.hoist_invariants(nid, prod)
                    if hoisted is not None and self._one_sublayer(nid, hoisted):
                        return hoisted
                if widest in self.atoms:
                    raise self.error("this product cannot be computed by attention heads "
                                     f"(shapes {self.g.nodes[args[0]][CSHAPE]} and "
                                     f"{self.g.nodes[args[1]][CSHAPE]})", nid)
                self.materialize(widest)
        raise self.error(f"the back end cannot lower '{op}' yet", nid)  # pragma: no cover

    def _inner_budget(self, args) -> dict:
        """The budget a sum or multiple of elementwise values keeps: the tightest of its
        operands' (a product's or power's is its statement's: `f = m * m * m + m tol 1e-3` is
        fitted to 1e-3, not the default; with `tol rel 1e-8` relative to f). Calls keep their
        own budgets inside the expression (the piece reads them there, relative to the call
        where it asked so), so an operand with a call adds none here. Absolute where operands'
        budgets are of both kinds."""
        given = [p for p in (self.polys[a] for a in args)
                 if isinstance(p, Elementwise) and p.tol is not None and not calls(p.expr)]
        absolute = [p.tol for p in given if not p.rel]
        if absolute or not given:
            return {"tol": min(absolute, default=None)}
        return {"tol": min(p.tol for p in given), "rel": True}

    def call(self, nid) -> Poly | Elementwise:
        """A scalar function: refined in heads (a 1×1 division or root, when cheaper), else an
        elementwise call for an MLP piece."""
        refined = self.refined_call(nid)
        if refined is not None:
            return refined
        node = self.g.nodes[nid]
        arg = self.ew_operand(node[ARGS][0], allow_products=False)
        if not leaves(arg) and node[FUNC] not in EXACT_PL:
            return self.constant_call(nid, arg)
        rel = bool(node.get(TOL_REL))
        line = node[LOC].line if node[LOC] is not None else None
        note = self.notes.get(nid, node.get(NOTE, ""))
        return Elementwise(Call(node[FUNC], node[FARGS], arg, self._call_domain(nid), node[TOL],
                                rel, note=note, line=line),
                           tol=node[TOL], rel=rel)

    def _call_domain(self, nid) -> tuple | None:
        """A call's domain: as declared; an inferred one (the argument's exact bounds) widened
        to where the compiled argument may be, fit errors upstream included (_poly_range), as
        far as the function is defined: log of a row sum of fitted exps, at data on its
        bounds, reads a value just below the exact sum's lower bound."""
        node = self.g.nodes[nid]
        domain = node[DOMAIN]
        if domain is None or not node.get(INFERRED):
            return domain
        found = self._poly_range(self.polys.get(node[ARGS][0]))
        if found is None:
            return domain
        lo, hi = min(domain[0], found[0]), max(domain[1], found[1])
        if node[FUNC] in ("sqrt", "log", "reciprocal") and (lo <= 0.0 < domain[0] or
                                                             hi >= 0.0 > domain[1]):
            return domain                 # not across the point where it is undefined
        if node[FUNC] == "sqrt" and lo < 0.0 <= domain[0]:
            lo = domain[0]
        return lo, hi

    def constant_call(self, nid, arg) -> Poly | Elementwise:
        """A smooth function of a compile-time constant (exp(z) with z = zeros(n), or A @ x
        with x = zeros(d): the value the lowering found is 0) is that constant, computed now
        with the exact function, not a fitted piece: no budget, no domain, no relative tol
        inherited by whatever it is fused into (exp(0) - y is 1 - y, exact). A scalar or
        token column is a Poly (c·1, c·ones: heads, no MLP); other shapes stay a constant
        leaf-free tree (relu(1)-style fills, written from the gate rows)."""
        node = self.g.nodes[nid]
        with np.errstate(all="ignore"):
            value = float(exact_function(node[FUNC], *node[FARGS])(evaluate(arg, {})))
        if not math.isfinite(value):
            raise self.error(f"{node[FUNC]}() of the constant {to_text(arg, {})} has no finite "
                             "value", nid)
        if node[CSHAPE] == (1, 1):
            return {Mono(()): value} if value != 0.0 else {}
        if node[CSHAPE] == (TOKEN, 1):
            return {Mono(((self.ones_atom(), False),)): value} if value != 0.0 else {}
        return Elementwise(Const(value))

    def bound(self, nid) -> Poly | Elementwise:
        """`(x) on [lo, hi]`: x itself. Inside an elementwise tree it stays a call (the
        identity on a declared domain, which the piece's fit domain and check honour); a
        stored x (one atom, scaled) takes the bound on the atom; any other polynomial keeps
        it on this node, which a piece reading it stores with its bounds."""
        node = self.g.nodes[nid]
        arg, (lo, hi) = node[ARGS][0], node[DOMAIN]
        p = self.polys[arg]
        if isinstance(p, Elementwise):
            e = self.ew_operand(arg, allow_products=False)
            line = node[LOC].line if node[LOC] is not None else None
            return Elementwise(Call(BOUND, (), e, (lo, hi), None, line=line), tol=p.tol, rel=p.rel)
        if len(p) == 1:
            (m, c), = p.items()
            factors = [a for a, t in m.chain] + list(m.scalars)
            if m.degree == 1 and len(factors) == 1 and c != 0.0:
                a = factors[0]
                ends = sorted((lo / c, hi / c))
                old = self.user_bounds.get(a, (-math.inf, math.inf))
                self.user_bounds[a] = (max(old[0], ends[0]), min(old[1], ends[1]))
        return dict(p)

    def _with_fit_errors(self, a, exact: tuple) -> tuple:
        """The checker's bounds of atom a are the exact values'; where a sums fitted pieces
        times constants (exp(X) @ ones(k), a row sum or mean of fitted values), the compiled
        value may pass them by the pieces' errors, and a function fitted on them would see it
        (log of that sum at data on its bounds: a DomainError). So they are widened to the
        interval the pieces' own ranges give, which holds their errors."""
        atom = self.atoms.get(a)
        if atom is None or atom.kind != "attn" or self._range_stops_at(a):
            return exact
        found = self._poly_range(atom.poly)
        return exact if found is None else (min(exact[0], found[0]), max(exact[1], found[1]))

    def _poly_range(self, poly, depth: int = 0) -> tuple | None:
        """An interval holding the compiled values of `poly` where it is built from fitted
        pieces (their PL ranges, errors included), exact pieces and constants (their bounds)
        and attention atoms of those, through sums and products over small axes and means over
        the tokens (a sum over them times 1/n: `sum(r) / n`, `A.T @ r / n`, in the range of
        one term); None where something in it has no such interval, or no fitted piece is in
        it."""
        if not isinstance(poly, dict) or depth > 4:
            return None
        lo = hi = 0.0
        fitted = False
        for m, c in poly.items():
            if m.degree == 0:
                lo, hi = lo + c, hi + c                         # a constant term
                continue
            factors = list(m.chain) + [(x, False) for x in m.scalars]
            inv_n = next((x for x in m.scalars if self.g.nodes[x][OP] == "inv_n"), None)
            if inv_n is not None:
                factors.remove((inv_n, False))      # the 1/n of a mean over the tokens
            cur, alone = None, None         # (alone: the one factor cur is the range of)
            for f in factors:
                rng, was_fitted = self._atom_range(f[0], depth)
                if rng is None:
                    return None
                fitted |= was_fitted
                if cur is not None:
                    k = 1 if self.atoms[f[0]].cshape == (1, 1) else dims(self.atoms, f)[0]
                    if k == TOKEN:
                        if inv_n is None:
                            return None
                        k, inv_n = 1, None          # a mean lies in the range of one term
                    if alone == f[0]:               # t @ t: a sum of squares, >= 0
                        sq = sorted(x * x for x in rng)
                        ends = [0.0 if rng[0] <= 0.0 <= rng[1] else sq[0], sq[-1]]
                    else:
                        ends = [x * y for x in cur for y in rng]
                    rng = (k * min(ends), k * max(ends))
                    alone = None
                else:
                    alone = f[0]
                cur = rng
            if inv_n is not None:
                return None                         # a 1/n with no sum over the tokens
            lo, hi = lo + min(c * cur[0], c * cur[1]), hi + max(c * cur[0], c * cur[1])
        return (lo, hi) if fitted else None

    def _range_stops_at(self, a) -> bool:
        """Where _poly_range does not look into a value's definition: a loop's state (every
        iteration shares its bounds, so the loop's iterations stay alike) and a value the
        user bounded (its own domain check watches it)."""
        node = self.g.nodes[a]
        return bool(node.get(CARRIED)) or LOOP_STATE in node or a in self.user_bounds

    def _atom_range(self, a, depth: int) -> tuple[tuple | None, bool]:
        """(an interval of atom a's compiled values, whether a fitted piece is in it)."""
        b, rng = self.atoms.get(a), self.piece_ranges.get(a)
        if b is None:
            return None, False
        if b.kind == "mlp" and rng is not None and all(map(math.isfinite, rng)):
            return rng, True             # a fitted piece: its PL values, errors included
        node = self.g.nodes[a]
        if b.kind == "attn" and not self._range_stops_at(a):
            inner = self._poly_range(b.poly, depth + 1)
            if inner is not None:
                return inner, True
        if LO in b.node and all(map(math.isfinite, (b.node[LO], b.node[HI]))):
            return (b.node[LO], b.node[HI]), False      # exact: relu(1) = ones, constants
        if self.atoms.is_ones(a):
            return (1.0, 1.0), False                    # 1 - r, r fitted: 1·1 - r
        if node[OP] == "call" and self.g.nodes[node[ARGS][0]][OP] == "const" and not node[FARGS]:
            v = float(exact_function(node[FUNC])(self.g.nodes[node[ARGS][0]][VALUE]))
            return (v, v), False                        # the ones a sum() reads: relu(1)
        return None, False

    def leaf_bounds(self, a, bounds: tuple | None) -> tuple | None:
        """`bounds` narrowed by the user's `(x) on [lo, hi]` of that atom, if any."""
        user = self.user_bounds.get(a)
        if user is None:
            return bounds
        if bounds is None:
            return user
        return max(bounds[0], user[0]), min(bounds[1], user[1])

    # ---- scalar division and roots: seed + Newton in heads (refine.py) ------------------------
    def refined_call(self, nid) -> Poly | None:
        """1/a, √a or 1/√a of a runtime scalar a as a seed piece and Newton iterates (atoms),
        its value the last iterate kept symbolic; None where the direct fit is chosen (the
        reason goes to the call's note, hence to the report)."""
        node = self.g.nodes[nid]
        if node[CSHAPE] != (1, 1) or node[FUNC] not in ("reciprocal", "sqrt") or node[FARGS]:
            return None
        # (an inferred domain widened to hold the fit errors upstream, as a fitted piece's is)
        kind, arg, domain = node[FUNC], node[ARGS][0], self._call_domain(nid)
        inner = self.g.nodes[arg]
        if kind == "reciprocal" and inner[OP] == "call" and inner[FUNC] == "sqrt" \
                and inner[CSHAPE] == (1, 1):
            kind, arg, domain = "rsqrt", inner[ARGS][0], self._call_domain(arg)
        elif kind == "sqrt" and self._only_reciprocals(nid):
            return None                     # they refine it as an rsqrt
        if isinstance(self.polys.get(arg), Elementwise) and not self.is_gate(arg):
            self.notes[nid] = ("direct fit: its argument is itself an elementwise function, "
                               "fitted with it as one piece")
            return None
        if domain is None or self.is_gate(arg) or _constant_poly(self.polys.get(arg)):
            return None         # (of a number the lowering found, call() computes it now)
        tol = node[TOL] or self.pieces.default_tol
        key = (kind, tuple(domain), tol, bool(node.get(TOL_REL)))
        if key not in self._choices:
            direct = refine.direct_neurons(kind, *domain, tol, key[3])
            self._choices[key] = refine.choose(kind, *domain, tol, key[3], direct)
        ref, why = self._choices[key]
        if ref is None:
            self.notes[nid] = why
            return None
        self.g.nodes[nid][REFINED] = "w" if kind == "sqrt" else "r"
        a = self.scalar_atom(arg)
        self.g.nodes[a][REFINED] = self.atoms[a].node[REFINED] = "arg"
        return self._newton_atoms(nid, kind, a, ref)

    def _newton_atoms(self, nid, kind, a, ref) -> Poly:
        # one chain per (argument, refinement): expanded again after a restart, or shared by
        # sqrt(a) and 1/sqrt(a) (w and r of the same iteration)
        family = "reciprocal" if kind == "reciprocal" else "rsqrt"
        chain = self._chains.setdefault((family, a, ref.seed.neurons, ref.steps, ref.lo, ref.hi), nid)
        made = self._refined.setdefault(chain, [])

        def fresh(i, role="r"):
            if i == len(made):
                node = self.g.nodes[nid]
                new = self.new_node("call", (a,), cshape=(1, 1), loc=node[LOC],
                                    func=node[FUNC], fargs=(), domain=node[DOMAIN],
                                    tol=node[TOL], refined=role)
                made.append(new)
            return made[i]

        def scalar_poly(terms):
            return {Mono((), tuple(sorted(f))): c for f, c in terms.items()}
        r, w = fresh(0), None
        label = f"{kind}({self.names().get(a, f't{a}')})"
        if r not in self.atoms:
            self.make_atom(r, "mlp")
            self.atoms[r].piece = self.pieces.seed(a, ref, label)
            loc = self.g.nodes[r][LOC]
            self.atoms[r].lines = (loc.line,) if loc is not None else ()
            self.piece_ranges[r] = self.atoms[r].piece.range
        i = 1
        if kind != "reciprocal":            # w₀ = a r₀ exactly: the iteration keeps w / (a r)
            w = fresh(i, "w")
            self.make_atom(w, "attn", scalar_poly({(a, r): 1.0}))
            i += 1
        for _ in range(ref.steps - 1):
            rp, wp = refine.iteration(kind, a, r, w)
            r_next = fresh(i)
            self.make_atom(r_next, "attn", scalar_poly(rp))
            i += 1
            if wp is not None:
                w = fresh(i, "w")
                self.make_atom(w, "attn", scalar_poly(wp))
                i += 1
            r = r_next
        rp, wp = refine.iteration(kind, a, r, w)
        return scalar_poly(wp if kind == "sqrt" else rp)

    def scalar_atom(self, nid) -> int:
        """The atom holding scalar `nid` (itself, made one if it is a sum or product)."""
        p = self.polys[nid]
        if len(p) == 1:
            (m, c), = p.items()
            if c == 1.0 and not m.chain and len(m.scalars) == 1:
                return m.scalars[0]
        self.materialize(nid)
        return nid

    def _only_reciprocals(self, nid) -> bool:
        users = [s for s in self.g.successors(nid) if s in self.live]
        return bool(users) and nid not in self.df.outputs.values() and all(
            self.g.nodes[s][OP] == "call" and self.g.nodes[s][FUNC] == "reciprocal"
            for s in users)

    # ---- elementwise -----------------------------------------------------------------------
    def is_gate(self, atom_id) -> str | None:
        """'sign' or 'flag' for an input declared so (an exact MLP gate), else None."""
        node = self.g.nodes[atom_id]
        if node[OP] != "input":
            return None
        return "sign" if node.get(SIGN) else "flag" if node.get(FLAG) else None

    def _product_hint(self, nid, e, real: set[int]) -> str:
        """What to write instead, naming the product of two real values the statement holds
        (`p = r * g`, then `x + h * p`): a plain product u * v is the one such form a piece
        computes, and a user who splits off the wrong part meets this error again."""
        def core(x):            # a side without its constant factors
            while isinstance(x, Product) and (isinstance(x.a, Const) or isinstance(x.b, Const)):
                x = x.b if isinstance(x.a, Const) else x.a
            return x

        def find(x):
            if isinstance(x, Product) and leaves(x.a) & real and leaves(x.b) & real:
                return x
            for part in ((x.a, x.b) if isinstance(x, (Sum, Product)) else
                         (x.arg,) if isinstance(x, Call) else ()):
                found = find(part)
                if found is not None:
                    return found
            return None

        product = find(e)
        if product is None:
            return "the product in a statement of its own"
        names = self.words(nid, leaves(e)).names
        text = f"{to_text(core(product.a), names, False)} * {to_text(core(product.b), names, False)}"
        return (f"the product in a statement of its own, p = {text}, and p in this one "
                "(a piece computes a plain product u * v of two values, and functions of one)")

    def real_leaves(self, expr) -> set[int]:
        return {a for a in leaves(expr) if self.is_gate(a) is None}

    def ew_operand(self, nid, allow_products=True):
        """The node as an elementwise expression; products of two reals become atoms first."""
        p = self.polys[nid]
        if isinstance(p, Elementwise):
            if p.product or len(self.real_leaves(p.expr)) > 1:
                if not allow_products:
                    self.materialize_mlp(nid)
                    return Leaf(nid)
            return p.expr
        e = self._read_as_is(nid)
        if e is not None:
            return e
        self.materialize(nid)
        return Leaf(nid)

    def _read_as_is(self, nid):
        """The expression ew_operand gives this node without storing anything: a function of
        at most one real value as it stands, a number, or c·a of one atom; None where it would
        store the node first (a polynomial of several terms, a product of two values)."""
        p = self.polys[nid]
        if isinstance(p, Elementwise):
            return None if p.product or len(self.real_leaves(p.expr)) > 1 else p.expr
        if not p:
            return Const(0.0)
        if len(p) == 1:
            (m, c), = p.items()
            atom_ids = [a for a, t in m.chain if not t] + list(m.scalars)
            if m.degree == 0 and self.g.nodes[nid][CSHAPE] == (1, 1):
                return Const(c)
            if m.degree == 1 and len(atom_ids) == 1:
                a = atom_ids[0]
                if self.atoms.is_ones(a):
                    return Const(c)
                return Leaf(a) if c == 1.0 else Product(Const(c), Leaf(a))
        return None

    def _one_value_factors(self, args) -> tuple | None:
        """The two factors of an entrywise product as expressions of one real value, where a
        factor c₀ + c·x of the other's x makes them so: x * (1 - x) is a function of x (one
        piece), not a product of two values. None otherwise (nothing materialized)."""
        if len(set().union(*map(self._plain_leaves, args))) <= 1:
            return None                         # one value already: m * m
        affine = [self._affine_operand(x) for x in args]
        if all(e is None for e in affine):
            return None
        exprs = [e if e is not None else self._read_as_is(x) for x, e in zip(args, affine)]
        if any(e is None for e in exprs):
            return None
        return tuple(exprs) if len(self.real_leaves(Product(*exprs))) <= 1 else None

    def _plain_leaves(self, nid) -> set:
        """The real leaves ew_operand would give this node (a stored value: itself)."""
        e = self._read_as_is(nid)
        return {nid} if e is None else self.real_leaves(e)

    def _affine_operand(self, nid):
        """A node whose value is c₀ + c·a, a one atom and c₀ a number (`1 - x`), as an
        expression over a; None for any other value (one of one term is ew_operand's)."""
        p = self.polys[nid]
        if isinstance(p, Elementwise) or len(p) < 2:
            return None
        const, term = 0.0, None
        shape = self.g.nodes[nid][CSHAPE]
        token = shape == (TOKEN, 1)
        for m, c in p.items():
            if m.degree == 0 and shape == (1, 1):       # (c·I of a matrix is no entrywise c)
                const += c
            elif m.degree == 1 and m.chain and not m.chain[0][1] and \
                    self.atoms.is_ones(m.chain[0][0]) and token:
                const += c
            elif m.degree == 1 and m.chain and not m.chain[0][1] and term is None and \
                    self.atoms[m.chain[0][0]].cshape == shape:
                term = (m.chain[0][0], c)
            else:
                return None
        if term is None:
            return None
        a, c = term
        return Sum(Const(const), Leaf(a) if c == 1.0 else Product(Const(c), Leaf(a)))

    def need_poly(self, nid) -> Poly:
        if isinstance(self.polys[nid], Elementwise):
            return self.materialize_mlp(nid)
        return self.polys[nid]

    def ones_atom(self) -> int:
        """The ones row (a token piece's gate): the program's own `ones` node if it has one,
        else a node added for it."""
        if self.atoms.ones is None:
            nid = next((a for a in self.atoms if self.atoms.is_ones(a)), None)
            if nid is None:
                nid = self.new_node("ones", (), cshape=(TOKEN, 1), loc=None)
                self.make_atom(nid, "const")
            self.atoms.ones = nid
        return self.atoms.ones

    def materialize_mlp(self, nid) -> Poly:
        """Give an elementwise node rows: one MLP piece of its leaves."""
        if nid in self.atoms:
            return self.polys[nid]
        ew = self.polys[nid]
        stale = not self.stale_ok and any(s in self.polys and s != self.current
                                          for s in self.g.successors(nid))
        e = ew.expr
        node = self.g.nodes[nid]
        gates = sorted((a, k) for a in leaves(e) for k in [self.is_gate(a)] if k)
        real = sorted(self.real_leaves(e))
        if ew.product or len(real) > 1:
            plain = scaled_product(e)
            if plain is None:
                raise self.error(f"{self.statement(nid)}: an elementwise expression of two real "
                                 "values other than a plain product u * v is not supported", nid,
                                 expected=self._product_hint(nid, e, set(real)))
            piece = self._product_piece(nid, ew, *plain)
        else:
            if len(gates) > MAX_SIGN_LEAVES:
                raise self.error(f"an elementwise expression gated by more than "
                                 f"{MAX_SIGN_LEAVES} sign inputs is not supported", nid)
            cont = real[0] if real else None
            aff = affine(e, cont, {}) if cont is not None else None
            if aff is not None and aff[1] == 0.0:       # linear in one atom: no MLP needed
                self.polys[nid] = add_polys((aff[0], self.polys[cont]))
                return self.polys[nid]
            bounds = {}
            if cont is not None:
                node_c = self.g.nodes[cont]
                if "lo" in node_c:
                    bounds[cont] = self._with_fit_errors(cont, (node_c[LO], node_c[HI]))
                elif cont in self.piece_ranges:
                    bounds[cont] = self.piece_ranges[cont]
                if self.leaf_bounds(cont, bounds.get(cont)) is not None:
                    bounds[cont] = self.leaf_bounds(cont, bounds.get(cont))
            try:
                piece = self._unary_piece(nid, ew, e, cont, gates, bounds)
            except (CompileError, ApproxError):
                split = (self._clamped_leaf(nid, e, cont, gates, bounds)
                         or self._stored_bounded_operand(nid, e, cont, bounds))
                if split is None:
                    raise
                e, cont, bounds = split
                piece = self._unary_piece(nid, ew, e, cont, gates, bounds)
            piece = self._checked_past_fit_error(piece)
        self.piece_ranges[nid] = piece.range
        poly = self.make_atom(nid, "mlp")
        atom = self.atoms[nid]
        atom.piece = piece
        atom.lines = tuple(sorted({c.line for c in calls(e) if c.line is not None} |
                                  ({node[LOC].line} if node[LOC] is not None else set())))
        if piece.kind == "product":
            for a, b in ((piece.u, piece.v), (piece.v, piece.u)):
                if self.g.nodes[a][CSHAPE] == (TOKEN, 1) and self.g.nodes[b][CSHAPE] == node[CSHAPE]:
                    atom.diag_of = b
        if TOKEN in node[CSHAPE]:
            atom.gate = self.ones_atom()
        if stale:
            raise _Restart(nid)
        return poly

    def _checked_past_fit_error(self, piece):
        """The piece with its domain check widened by the error of the fit that computes its
        leaf, if one does. The fit is on the leaf's exact bounds, which the compiled leaf
        passes by that error where its values reach them: b = clip(0.5 * b + sigmoid(b), -1,
        1) in a loop is one fitted function of b, which overshoots 1 by its error (the compiled
        b reached 1 + 3.5e-8), and the next iteration's function of b, fitted on [-1, 1], was
        flagged on valid data. A value past a bound by no more than the fit error upstream
        reads the piece's end value (it clamps), which errs by that error's own effect, as a
        value inside would. (Widening the fit's domain instead would change it in every
        iteration of a loop whose state's bounds grow, and no body would repeat.)"""
        err = self._fit_error(piece.leaf)
        if not err or not (math.isfinite(piece.lo) and math.isfinite(piece.hi)):
            return piece
        lo, hi = piece.checked or (piece.lo, piece.hi)
        return replace(piece, checked=(lo - err, hi + err))

    def _fit_error(self, a) -> float:
        """How far the compiled value of atom a may be from the exact one where a fitted
        unary piece computes it (its largest error, absolute); 0 for any other atom."""
        atom = self.atoms.get(a)
        piece = atom.piece if atom is not None else None
        if piece is None or piece.kind != "unary":
            return 0.0
        return max((pl.absolute_error for pl in piece.branches.values()), default=0.0)

    def _unary_piece(self, nid, ew, e, cont, gates, bounds):
        """The piece of a function of one real leaf; a fit that fails says where, in the
        user's words."""
        words = self.words(nid, leaves(e))
        try:
            return self.pieces.unary(e, cont, gates, bounds, self.names(),
                                     lambda msg: self.error(msg, nid), tol=ew.tol, rel=ew.rel,
                                     words=words)
        except ApproxError as err:
            msg = err.args[0] if err.args else str(err)
            hint = self._fewer_relus_hint(err, nid, cont, ew.tol)
            if hint is None and err.reason == ApproxError.NOT_FINITE:
                hint = ("a domain on which the statement is finite: a declared domain read "
                        "back through abs (or another function that is not monotone) spans "
                        "both sides, the point above included; keep the value away from it "
                        "instead, e.g. max(abs(x), 1e-3)")
            raise self.approx_error(msg.replace(to_text(e, self.names()), words.expr), nid,
                                    hint) from None

    def _clamped_leaf(self, nid, e, cont, gates, bounds):
        """A piece gated by sign or flag inputs needs a known range of its real leaf (its gate
        offsets must cover it). Where nothing bounds the leaf but every pattern's function is
        constant outside some [L, H] (pieces.saturation_interval: a hinge's
        y * clip(1e4 * (1 - y * (X @ w)), 0, 1)), the piece may read clip(leaf, L, H) instead,
        which gives the same values exactly: an exact piece of its own, one MLP sublayer
        before this one — so only where the piece could not be built otherwise. None where
        that does not hold; else the piece's expression, leaf and bounds over the clamp."""
        if not gates or cont is None:
            return None
        span = saturation_interval(e, cont, gates, bounds)
        if span is None:
            return None
        clamp = self.clamp_atom(nid, cont, span)
        return (substitute(e, Leaf(cont), Leaf(clamp)), clamp,
                {**{a: b for a, b in bounds.items() if a != cont}, clamp: span})

    def _stored_bounded_operand(self, nid, e, cont, bounds):
        """`a / (abs(u)) on [1e-3, 5]`: the user bounds abs(u), but one piece of u would be
        fitted on u's own domain, read back through abs to both sides of 0, where 1/abs(u) is
        infinite. Where the piece fails so and a declared `(x) on [lo, hi]` in it bounds a
        function x of the leaf (not the leaf itself), x is stored (its own MLP piece, one
        sublayer earlier) and the piece reads it on the declared domain, which the model then
        checks as any piece's. Only where the piece could not be built otherwise: every other
        build keeps one piece. None where no such bound is in the tree; else the piece's
        expression, leaf and bounds over the stored operand."""
        if cont is None:
            return None
        for b in self._bounds_in_tree(nid):
            inner, (lo, hi) = self.g.nodes[b][ARGS][0], self.g.nodes[b][DOMAIN]
            p = self.polys.get(inner)
            if inner in self.atoms or not isinstance(p, Elementwise) or p.product or \
                    leaves(p.expr) != {cont} or not contains(e, p.expr):
                continue
            self.materialize_mlp(inner)
            have = self.piece_ranges.get(inner, (lo, hi))
            span = (max(lo, have[0]), min(hi, have[1]))
            return (substitute(e, p.expr, Leaf(inner)), inner,
                    {**{a: v for a, v in bounds.items() if a != cont}, inner: span})
        return None

    def _bounds_in_tree(self, nid) -> list[int]:
        """The nodes of nid's elementwise tree (nid included, not behind an atom) that declare
        their argument's domain: `(x) on [lo, hi]`, and a call or divisor with `on [lo, hi]`;
        outermost first."""
        found, seen, todo = [], {nid}, [nid]
        while todo:
            x = todo.pop(0)
            node = self.g.nodes[x]
            if node[OP] == "bound" or (node[OP] == "call" and node.get(DOMAIN) is not None
                                       and not node.get(INFERRED)):
                found.append(x)
            for a in node[ARGS]:
                if a not in seen and a not in self.atoms and \
                        isinstance(self.polys.get(a), Elementwise):
                    seen.add(a)
                    todo.append(a)
        return found

    def clamp_atom(self, nid: int, leaf: int, span: tuple) -> int:
        """The atom holding clip(leaf, *span) (a node of its own marked `clamp`, nodes.py),
        one for every piece that reads the same leaf clamped alike."""
        key = (leaf, *span)
        new = self._clamps.get(key)
        if new is None:
            new = self._clamps[key] = self.new_node(
                "call", (leaf,), cshape=self.g.nodes[leaf][CSHAPE], loc=self.g.nodes[nid][LOC],
                func="clip", fargs=tuple(span), domain=None, tol=None, lo=span[0], hi=span[1],
                **{CLAMP: True})
            self._variant[new] = self.variant(leaf)
            self.polys[new] = Elementwise(Call("clip", tuple(span), Leaf(leaf), None, None))
            self.materialize_mlp(new)
        self._clamp_readers.setdefault(new, set()).add(nid)
        return new

    def _product_piece(self, nid, ew, scale, u, v):
        """scale · u ⊙ v of two real atoms; a fit that cannot meet the budget says where and
        which."""
        if ew.rel:
            raise self.error("a relative tolerance (tol rel) applies to a function of one "
                             "value (reciprocal, sqrt); a product u * v of two takes an "
                             "absolute one", nid)
        bounds = {u: self.bounds_of(u, nid), v: self.bounds_of(v, nid)}
        try:
            return self.pieces.product(u, v, bounds[u], bounds[v], ew.tol, self.names(), scale)
        except ApproxError as err:
            names = self.words(nid, {u, v}).names
            # a factor no variable names is told by its range (`H * P / Q`: the product of
            # H * P and the reciprocal of Q, neither written as such)
            said = {a: f"'{names[a]}'" if names[a] != UNNAMED else
                    f"{UNNAMED} (on [{bounds[a][0]:.3g}, {bounds[a][1]:.3g}])" for a in (u, v)}
            msg = err.args[0] if err.args else str(err)
            hint = None
            if err.reason == ApproxError.TOO_MANY_NEURONS:
                hint = ("narrower ranges for the factors (bound a value where it is assigned: "
                        "x = (...) on [lo, hi], or clip it) or a looser budget (e.g. tol 1e-4 at "
                        "the end of the statement): the ReLUs grow with the ranges and like "
                        "1/sqrt(tol)")
            raise self.approx_error(f"{self.statement(nid)}: the product of {said[u]} and "
                                    f"{said[v]} (two real values, fitted to an absolute budget): "
                                    f"{msg}", nid, hint) from None

    def bounds_of(self, atom_id, nid):
        found = self.leaf_bounds(atom_id, self._known_bounds(atom_id))
        if found is None:
            name = self.words(nid, {atom_id}).names[atom_id]
            which, it = (f"'{name}'", name) if name != UNNAMED else (f"one factor ({name})",
                                                                   "that factor")
            # a factor quoted from the statement is where the caret goes
            at = atom_id if name != UNNAMED and name == self._written(atom_id, nid) and \
                self.g.nodes[atom_id][LOC].line == self.g.nodes[nid][LOC].line else nid
            raise self.error(f"{self.statement(nid)}: a product of two real values is fitted "
                             f"on known ranges of both, and {which} has no known bounds",
                             at, expected=f"bounds on {which}: an input assumption, "
                                          f"clip({it}, lo, hi), or ({it}) on [lo, hi]")
        return found

    def _known_bounds(self, atom_id):
        node = self.g.nodes[atom_id]
        rng = self.piece_ranges.get(atom_id)
        if rng is not None and math.isfinite(rng[0]) and math.isfinite(rng[1]):
            return rng
        if LO in node:                # an exact piece (relu) has no finite range: the checker's,
            return self._with_fit_errors(atom_id, (node[LO], node[HI]))   # fit errors included
        return None

    # ---- loop-invariant code motion ----------------------------------------------------------
    def variant(self, nid: int) -> bool:
        """Whether a node depends on a loop's state (a `carried` node): an iterative walk of
        its arguments, memoised (unrolled graphs are deep)."""
        memo = self._variant
        stack = [nid]
        while stack:
            n = stack[-1]
            if n in memo:
                stack.pop()
                continue
            node = self.g.nodes[n]
            args = [a for a in node[ARGS] if a not in memo]
            if args and not node.get(CARRIED):
                stack.extend(args)
                continue
            memo[n] = bool(node.get(CARRIED)) or any(memo[a] for a in node[ARGS])
            stack.pop()
        return memo[nid]

    def hoist_invariants(self, nid: int, prod: Poly) -> Poly | None:
        """Loop-invariant code motion for a product that is not one sublayer as it stands: in
        each monomial that reads a loop's state (or reads none but is too long for one head),
        the longest run of two or more factors that do not, with the loop-invariant scalars a
        head can carry with it, becomes an atom of its own — one node for every iteration, so
        it is computed once, before the loop. `Aᵀ (A w − y) / n` then reads S = AᵀA/n and w:
        one head per step, as with S written by hand. A stored invariant product in the
        monomial (a hoisted AᵀA, a stored eta·Aᵀ) counts as its factors again, so a scalar
        that comes later (`eta * Aᵀ (A w − y) / n` divides by n after the product) joins the
        run instead of costing a layer per step. Where the longest run has no head, a step
        hoists in stages (_hoist_repeatedly). None if no monomial has such a run."""
        out: Poly = {}
        changed = False
        step = any(self._reads_state(m) for m in prod)
        for m0, c0 in prod.items():
            m, scale = self._unhoisted(m0)
            if all(self._stored(a) for a, _ in m.chain) and self._one_head(nid, m0):
                out[m0] = out.get(m0, 0.0) + c0
                continue
            new = self._hoist_run(nid, m, self._stored, self._hoisted_atom(nid), windows=False)
            if (new is None or not self._one_head(nid, new)) and step:
                new = self._hoist_repeatedly(nid, m) or new
            if new is None:
                out[m0] = out.get(m0, 0.0) + c0
                continue
            out[new] = out.get(new, 0.0) + c0 * scale
            changed = True
        return out if changed else None

    def _stored(self, a: int) -> bool:
        """A factor a hoisted run may hold: an input, a constant, or a value computed before
        the loop from them alone (centred data Ac = A - sum(A) / n: Acᵀ Ac / n is hoisted as
        AᵀA / n is)."""
        kind = self.atoms[a].kind
        return kind in ("input", "const") or (kind == "attn" and a in self.g.nodes and
                                              not self.variant(a))

    def _hoisted_atom(self, nid: int):
        return lambda run, scalars: self.invariant_atom(nid, run, scalars)

    def _reads_state(self, m: Mono) -> bool:
        return any(self.variant(a) for a, _ in m.chain) or any(self.variant(x) for x in m.scalars)

    def _hoist_repeatedly(self, nid: int, m: Mono) -> Mono | None:
        """Where hoisting the longest run leaves no one-head product — `Xᵀ X w / n` with
        X = Z[:, 0:3], a selection of token data: PᵀZᵀZP has no head — hoist windows of it and
        then runs of the products just made (PᵀZᵀZ, then that times P/n), until one head
        computes the step. Only in a product that reads the loop's state (the caller's test:
        one computed once costs its layers once, and a chain of hoisted products can cost more
        than storing an operand, the ridge step's first-iteration AᵀAAᵀy/n²), and kept only
        where a monomial that reads the state then carries no runtime scalar: one would sit
        at a side of length 1 and want the state in the other orientation every step (a
        Kaczmarz projection g·aᵀa x runs deeper so than storing a x). Tried on stand-in atoms
        first, so a refused plan leaves no node behind."""
        made: list[int] = []

        def stand_in(run, scalars):
            a = -1 - len(made)
            shape = (dims(self.atoms, run[0])[0], dims(self.atoms, run[-1])[1])
            self.atoms[a] = Atom(a, "attn", shape)
            made.append(a)
            return a

        def plan(make) -> Mono | None:
            new = self._hoist_run(nid, m, self._stored, make, windows=True)
            while new is not None and not self._one_head(nid, new):
                hoisted = set(made) | set(self._hoisted.values())
                again = self._hoist_run(nid, new, lambda a: self._stored(a) or a in hoisted,
                                        make, windows=True)
                if again is None:
                    return None
                new = again
            return new

        try:
            trial = plan(stand_in)
        finally:
            for a in made:
                del self.atoms[a]
        if trial is None or trial.scalars and self._reads_state(m):
            return None
        made.clear()
        real = plan(self._hoisted_atom(nid))   # the same plan, unless a real atom's symmetry
        if real is None or real.scalars and self._reads_state(m):     # offered another head
            return None
        return real

    def _hoist_run(self, nid: int, m: Mono, stored, make, windows: bool) -> Mono | None:
        """m with its longest run of two or more factors for which `stored` holds (with the
        invariant scalars one head computes with it) replaced by the atom `make(run, scalars)`
        returns; with `windows`, where that run has no head, its longest window that has one
        (leftmost first). None if none has."""
        flags = [stored(a) for a, _ in m.chain]
        best, i = None, 0
        while i < len(flags):
            j = i
            while j < len(flags) and flags[j]:
                j += 1
            if j - i >= 2 and (best is None or j - i > best[1] - best[0]):
                best = (i, j)
            i = max(j, i + 1)
        if best is None:
            return None
        invariant = tuple(x for x in m.scalars if not self.variant(x))
        longest = best[1] - best[0]
        for size in range(longest, 1 if windows else longest - 1, -1):
            for lo in range(best[0], best[1] - size + 1):
                run = m.chain[lo:lo + size]
                scalars = self._carried_scalars(run, invariant)
                if scalars is None:
                    continue
                atom = make(run, scalars)
                rest = list(m.scalars)
                for x in scalars:
                    rest.remove(x)
                return Mono(m.chain[:lo] + ((atom, False),) + m.chain[lo + size:], tuple(rest))
        return None

    def _unhoisted(self, m: Mono) -> tuple[Mono, float]:
        """The monomial with each stored invariant product it reads (a hoisted AᵀA, a stored
        0.9·eta·Aᵀ) written as its factors again, so that runs are found across it; and the
        coefficients those products carried."""
        chain, scalars, coef = [], list(m.scalars), 1.0
        for f in m.chain:
            made = self._invariant_product(f[0])
            if made is None:
                chain.append(f)
                continue
            mono, c = made
            if f[1]:
                mono = transpose_mono(self.atoms, mono)
            chain.extend(mono.chain)
            scalars.extend(mono.scalars)
            coef *= c
        return Mono(tuple(chain), tuple(sorted(scalars))), coef

    def _invariant_product(self, a: int) -> tuple[Mono, float] | None:
        """An attention atom that is one product of inputs and loop-invariant scalars, as that
        monomial and its coefficient; None for anything else."""
        atom = self.atoms[a]
        if atom.kind != "attn" or atom.poly is None or len(atom.poly) != 1 or self.variant(a):
            return None         # a loop's first state, w1 = η Aᵀy/n, is state, no invariant
        (m, c), = atom.poly.items()
        if not all(self._stored(f) for f, _ in m.chain) or \
                any(self.variant(x) for x in m.scalars):
            return None
        return m, c

    def _carried_scalars(self, run: tuple, invariant: tuple) -> tuple | None:
        """The most invariant scalars one head computes together with this run: all of them if
        it can, else the largest subset (in order); None if the run has no head even alone.
        A scalar times AᵀA has none (no side of length 1), 1/n times it has (the I/n block)."""
        for k in range(len(invariant), -1, -1):
            for subset in combinations(invariant, k):
                if self._run_realizable(run, subset):
                    return subset
        return None

    def _one_sublayer(self, nid: int, poly: Poly) -> bool:
        """Whether one attention sublayer computes this value of node nid as it stands: three
        factors at most per monomial, and heads for each."""
        return max_head_operands(self.atoms, poly) <= MAX_FACTORS and realizable(self.atoms, poly,
                                                              self.g.nodes[nid][CSHAPE])

    def _one_head(self, nid: int, m: Mono) -> bool:
        """Whether the monomial, a term of node nid, is one sublayer as it stands."""
        return self._one_sublayer(nid, {m: 1.0})

    def _run_realizable(self, chain: tuple, scalars: tuple) -> bool:
        """Whether one sublayer computes this run of factors (with these scalars) as an atom."""
        shape = (dims(self.atoms, chain[0])[0], dims(self.atoms, chain[-1])[1])
        return realizable(self.atoms, {Mono(chain, scalars): 1.0}, shape)

    def invariant_atom(self, nid: int, chain: tuple, scalars: tuple) -> int:
        """The atom holding the product of these loop-invariant factors (made once, a node of
        its own marked `hoisted`, nodes.py)."""
        key = (chain, scalars)
        if key in self._hoisted:
            return self._hoisted[key]
        rows = dims(self.atoms, chain[0])[0]
        cols = dims(self.atoms, chain[-1])[1]
        args = tuple(a for a, _ in chain) + scalars
        new = self.new_node("matmul", args, cshape=(rows, cols), loc=self.g.nodes[nid][LOC],
                            **{HOISTED: True})
        self._variant[new] = False
        self.make_atom(new, "attn", {Mono(chain, scalars): 1.0})
        self._hoisted[key] = new
        return new

    def new_node(self, op: str, args: tuple, **attrs) -> int:
        """A node the lowering adds to the dataflow graph (a refinement step, the ones row, a
        clamp, a hoisted product): the next free id, with an edge from each argument, as the
        graph builder's nodes have; its attributes are nodes.py's."""
        new = max(self.g.nodes) + 1
        self.g.add_node(new, op=op, args=args, **attrs)
        for a in set(args):
            self.g.add_edge(a, new)
        return new

    def names(self) -> "_Names":
        """Leaf names for labels: the program's variable, else what computes it. Named on
        demand (a label reads a few leaves; naming the whole table per piece was quadratic)."""
        return _Names(self)

    def _name_of(self, a: int, known) -> str | list:
        """Atom a's label name; `known(f, a)`: f's name if f is an atom before a in the table
        (the order in which a table-wide pass would have named it), else None; or, where
        `known` answers ..., the factors whose names it needs first."""
        atom, node = self.atoms[a], self.g.nodes[a]
        vs = node.get(VARS)
        if node.get(NAME) or vs:
            return node.get(NAME) or point_variable(vs[-1])
        if atom.piece is not None:
            return f"[{atom.piece.label}]"
        if atom.poly is not None and len(atom.poly) == 1:
            (m, _), = atom.poly.items()
            factors = [f for f, _t in m.chain] + list(m.scalars)
            missing = [f for f in factors if known(f, a) is ...]
            if missing:
                return missing
            parts = [(known(f, a) or f"t{f}") + ("ᵀ" if t else "") for f, t in m.chain]
            return "(" + "@".join(parts + [known(s, a) or f"t{s}" for s in m.scalars]) + ")"
        return f"t{a}"

    def fanout(self, nid) -> int:
        return sum(1 for s in self.g.successors(nid) if s in self.live)


def _constant_poly(p) -> bool:
    """A polynomial with no atoms: a number (sum(e) of e = exp(0), a loop's first iteration
    from zeros)."""
    return isinstance(p, dict) and max_degree(p) == 0


class _Names:
    """Lowering.names() as a read-only mapping, named on demand from the table as it stands
    when asked: the same names a pass over the whole table in order gives (a factor named
    only if it comes before its reader in the table), for the few leaves a label reads."""

    def __init__(self, low: "Lowering"):
        self._low, self._memo, self._pos = low, {}, None

    def _before(self, f: int, a: int) -> bool:
        if self._pos is None:
            self._pos = {x: i for i, x in enumerate(self._low.atoms)}
        return f in self._pos and self._pos[f] < self._pos[a]

    def _known(self, f: int, a: int):
        """f's name as a's label reads it; ... while it is not named yet."""
        if not self._before(f, a):
            return None
        return self._memo.get(f, ...)

    def __getitem__(self, a: int) -> str:
        if a not in self._memo:
            if a not in self._low.atoms:
                raise KeyError(a)
            todo = [a]                  # a stack, not recursion: chains of temporaries are long
            while todo:
                got = self._low._name_of(todo[-1], self._known)
                if isinstance(got, list):
                    todo += got
                else:
                    self._memo[todo.pop()] = got
        return self._memo[a]

    def __contains__(self, a) -> bool:
        return a in self._low.atoms

    def get(self, a, default=None):
        return self[a] if a in self else default


def lower(df: DataflowGraph, pieces: PieceBuilder | None = None) -> AtomTable:
    """`pieces`: a PieceBuilder to take fits from (the shared build passes one to all the
    unrollings it compiles, so each function is fitted once)."""
    return Lowering(df, pieces).run()


__all__ = ["lower"]
