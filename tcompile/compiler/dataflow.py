"""Checked program → dataflow graph (networkx DiGraph), loops unrolled, functions inlined.

The graph speaks of *canonical matrices* (every value 2-D, numpy's 1-D matmul rules made
explicit transposes), so later passes see only matrix algebra. Every operation and node
attribute is documented in nodes.py.

Nodes are hash-consed, so a loop-invariant subexpression (A.T, say) is one node however often
the unrolled loop mentions it. Each node records where in the program it came from.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from ..language.points import point_variable
from ..language.checker import TOKEN, Ty, Val, Walker, resolve_params
from ..language.types import is_square, is_unit
from ..errors import CompileError
from . import selection
from .nodes import (ARGS, C, CARRIED, CSHAPE, HI, INFERRED, KEEP, LO, LOC, NAME, OP, SYMMETRIC,
                    VALUE, VARS)


def canonical_shape(shape) -> tuple:
    if shape is None:
        return None
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (shape[0], 1)
    return tuple(shape)


class GraphBuilder(Walker):
    """The checker's walk, emitting graph nodes instead of arrays."""
    types_only = False          # makes every iteration's nodes: walks them all

    def __init__(self, program, params):
        super().__init__(program, params)
        self.graph = nx.DiGraph()
        self._memo: dict = {}
        self.stmt_tol: float | None = None
        self.stmt_tol_rel = False
        self._head_products: dict[int, tuple] = {}     # diag(u) @ v → (diag(u), v, v's type)

    # node construction ------------------------------------------------------------------
    def node(self, op: str, args: tuple = (), cshape=None, loc=None, **attrs) -> int:
        key = (op, args, cshape, tuple(sorted(attrs.items())))
        if key in self._memo:
            return self._memo[key]
        nid = self.graph.number_of_nodes()
        self.graph.add_node(nid, op=op, args=args, cshape=cshape, loc=loc, **attrs)
        for a in args:
            self.graph.add_edge(a, nid)
        self._memo[key] = nid
        return nid

    def cshape(self, nid):
        return self.graph.nodes[nid][CSHAPE]

    def transpose(self, nid, loc=None):
        g = self.graph.nodes[nid]
        if g[OP] == "T":
            return g[ARGS][0]
        if g[OP] == "eye" or g.get(SYMMETRIC):
            return nid
        r, c = self.cshape(nid)
        return self.node("T", (nid,), (c, r), loc)

    def matmul(self, a, b, loc=None):
        if self.graph.nodes[a][OP] == "eye":
            return b
        if self.graph.nodes[b][OP] == "eye":
            return a
        (r, k1), (k2, c) = self.cshape(a), self.cshape(b)
        assert k1 == k2, (self.cshape(a), self.cshape(b))
        return self.node("matmul", (a, b), (r, c), loc)

    def sized_eye(self, nid, k):
        """A still-unsized c·I becomes c·I_k (c folded as scale nodes above the eye)."""
        g = self.graph.nodes[nid]
        if g[CSHAPE] is not None:
            return nid
        if g[OP] == "eye":
            return self.node("eye", (), (k, k), k=k)
        if g[OP] == "scale":
            return self.node("scale", (self.sized_eye(g[ARGS][0], k),), (k, k), c=g[C])
        if g[OP] == "smul":
            return self.node("smul", (self.sized_eye(g[ARGS][0], k), g[ARGS][1]), (k, k))
        raise AssertionError(g)  # pragma: no cover

    def budget(self, tol=None, rel=False) -> dict:
        """A call's error budget as node attributes: its own `tol`, else its statement's;
        TOL_REL only when that budget is relative (absent: absolute)."""
        if tol is None:
            tol, rel = self.stmt_tol, self.stmt_tol_rel
        return {"tol": tol, **({"tol_rel": True} if rel and tol is not None else {})}

    def reciprocal(self, b, cshape, domain, loc, tol=None, rel=False):
        """1/b elementwise, fitted on `domain` (the divisor's interval, which excludes 0)."""
        return self.node("call", (b,), cshape, loc, func="reciprocal", domain=domain, fargs=(),
                         **self.budget(tol, rel))

    def fill(self, cshape, value: float = 1.0, loc=None):
        """A constant matrix of `cshape` (every entry `value`). The n×1 ones column is the
        encoder's `ones` row; any other shape is an exact MLP piece with no input — relu of
        the constant 1, a 1×1 argument broadcast over the shape — written from the gate rows
        (identity rows for small values, the ones row for token data), times `value`."""
        if cshape == (1, 1):
            return self.node("const", (), (1, 1), value=float(value))
        if cshape == (TOKEN, 1):
            base = self.node("ones", (), (TOKEN, 1))
        else:
            one = self.node("const", (), (1, 1), value=1.0)
            base = self.node("call", (one,), cshape, loc, func="relu", domain=None, tol=None,
                             fargs=())
        return self.node("scale", (base,), cshape, loc, c=0.0) if value == 0.0 else \
            self.scale(base, value, loc)

    def scale(self, a, c, loc=None):
        if c == 1.0:
            return a
        return self.node("scale", (a,), self.cshape(a), loc, c=float(c))

    def _assign(self, stmt, env):
        """Name the node after the variable (and how many times it was assigned) for the manifest."""
        self.stmt_tol = self.tolerance(stmt.tol, stmt.tol_rel, env)
        self.stmt_tol_rel = stmt.tol_rel
        try:
            super()._assign(stmt, env)
        finally:
            self.stmt_tol, self.stmt_tol_rel = None, False
        point = self.program_point(stmt)
        nid = env[stmt.target].data
        if point is not None and isinstance(nid, int):
            self.graph.nodes[nid].setdefault(VARS, []).append(point)
            if stmt.target in self.program.keep and not self.call_stack:
                self.graph.nodes[nid][KEEP] = True

    def end_of_iteration(self, loop, env):
        """The values a loop hands to its next iteration are its state: mark them, so the
        lowering stores them (else x_t = x_0 − Σ η_s v_s would keep every v_s alive)."""
        for name in _carried(loop.body):
            val = env.get(name)
            if val is not None and isinstance(val.data, int):
                self.graph.nodes[val.data][CARRIED] = True

    # the walker's hooks -------------------------------------------------------------------
    def input_value(self, decl, ty: Ty) -> Val:
        nid = self.node("input", (), canonical_shape(ty.shape), decl.loc, name=decl.name,
                        symmetric=ty.symmetric, sign=ty.sign, flag=ty.flag)
        if ty.bounded:
            self.graph.nodes[nid][LO], self.graph.nodes[nid][HI] = ty.lo, ty.hi
        return Val(ty, nid)

    def apply(self, op, ty: Ty, args, node) -> Val:
        val = self._apply(op, ty, args, node)
        attrs = self.graph.nodes[val.data]
        if ty.bounded and "lo" not in attrs:          # the checker's bounds, for MLP domains
            attrs[LO], attrs[HI] = ty.lo, ty.hi
        return val

    def _apply(self, op, ty: Ty, args, node) -> Val:
        loc = getattr(node, "loc", None) if not isinstance(node, tuple) else node[0].loc
        xs = [a.data for a in args]
        tys = [a.ty for a in args]
        cs = canonical_shape(ty.shape)
        if ty.const is not None and op != "call":       # "const" included
            return Val(ty, self.node("const", (), (1, 1), value=float(ty.const)))
        if op == "n":
            return Val(ty, self.node("n", (), (1, 1)))
        if op == "I":
            return Val(ty, self.node("eye", (), None, k=None))
        if op == "neg":
            return Val(ty, self.node("scale", (xs[0],), cs, loc, c=-1.0))
        if op == "bound":          # (x) on [lo, hi]: the identity, carrying the user's domain
            return Val(ty, self.node("bound", (xs[0],), cs, loc, domain=node[1]))
        if op == "T":
            return Val(ty, self.transpose(xs[0], loc) if len(tys[0].shape or (0, 0)) == 2 else xs[0])
        if op == "sum":       # 1ᵀX: over tokens the ones row, over a small axis a ones block
            ones = self.fill((tys[0].shape[0], 1), 1.0, loc)
            return Val(ty, self.transpose_if_vector(self.matmul(self.transpose(xs[0], loc), ones, loc),
                                                    ty, loc))
        if op == "fill":
            return Val(ty, self.fill(cs, node[1], loc))
        if op in ("max", "min"):
            return Val(ty, self._max_min(op, xs, tys, ty, loc))
        if op == "diag":
            return Val(ty, self._diag(xs[0], tys[0], loc))
        if op == "index":
            return Val(ty, selection.index(self, xs[0], tys[0], node[1], ty, node[0].loc))
        if op == "stack":
            return Val(ty, selection.stack(self, xs, tys, loc))
        if op in ("tril", "triu"):
            return Val(ty, selection.triangle(self, xs[0], tys[0].shape, op == "tril", node[1], loc))
        if op == "outer":
            return Val(ty, selection.outer(self, xs[0], xs[1], loc))
        if op == "call":
            e, domain, tol, rel = node
            if ty.const is not None:
                return Val(ty, self.node("const", (), (1, 1), value=float(ty.const)))
            extra = tuple(float(t.const) for t in tys[1:])
            inferred = {INFERRED: True} if domain is not None and e.domain is None else {}
            return Val(ty, self.node("call", (xs[0],), cs, loc, func=e.func, domain=domain,
                                     fargs=extra, **self.budget(tol, rel), **inferred))
        a, b = xs
        ta, tb = tys
        if op == "@":
            return Val(ty, self._matmul_numpy(a, ta, b, tb, ty, loc))
        if op == "**":
            p = float(tb.const)
            if p == 1.0:
                return Val(ty, a)
            if p == int(p) and p >= 2:      # x·x·…·x: one elementwise tree of x, fitted as one
                self._check_square(ta, loc, f"'**' is elementwise: x ** {p:g}", a)
                power = a
                for _ in range(int(p) - 1):
                    power = self._elementwise("*", power, ta, a, ta, ty, loc, power=True)
                return Val(ty, power)
            func = {0.5: "sqrt", -1.0: "reciprocal"}.get(p)
            if func is None:
                raise CompileError(f"the back end cannot raise a runtime value to the power {p:g}",
                                   loc, source=self.src)
            return Val(ty, self.node("call", (a,), cs, loc, func=func, domain=_dom(ta), fargs=(),
                                     **self.budget()))
        if op == "/":
            return Val(ty, self._divide(a, ta, b, tb, ty, loc, node))
        return Val(ty, self._elementwise(op, a, ta, b, tb, ty, loc))

    def _divide(self, a, ta, b, tb, ty, loc, node):
        """a / b. A constant divisor scales, `n` is the encoder's 1/n; a runtime divisor becomes
        reciprocal(b) on the domain the checker resolved (`node` = (e, domain, tol, relative)),
        times a."""
        if not isinstance(node, tuple):
            return self._elementwise("/", a, ta, b, tb, ty, loc)
        cs = canonical_shape(ty.shape)
        _e, domain, tol, rel = node
        ta, tb = _as_scalar_if_unit(ta, cs), _as_scalar_if_unit(tb, cs)
        r = self.reciprocal(b, canonical_shape(tb.shape), domain, loc, tol, rel)
        if tb.shape == ():                 # a · (1/b), c·I · (1/b) unsized
            return self.node("smul", (a, r), None if ta.shape is None else cs, loc)
        if ta.shape == ():                 # c / u, s / u: the reciprocal, scaled
            return self.smul_or_scale(r, a, loc)
        lo, hi = domain
        rty = Ty(tb.shape, lo=1.0 / hi, hi=1.0 / lo)       # 1/b on b's domain (without 0)
        return self.ewmul(a, ta, r, rty, cs, loc)

    def _diag(self, x, tx: Ty, loc, note: str = ""):
        """diag(v) = (v 1ᵀ) ⊙ I, diag(M) = (M ⊙ I) 1. The mask X ⊙ I is exact with ReLUs gated by
        the identity: with c >= max |X|, X ⊙ I = X − relu(X − cI) + relu(−X − cI) — off the
        diagonal the relus give X exactly, on it they give 0 (no cancellation either way)."""
        if not tx.bounded:
            raise CompileError("diag() is computed with ReLUs gated by the identity, which need "
                               "bounds on its argument, and this one has none", loc,
                               source=self.src, expected="bounds on the argument: an input "
                               "assumption, clip(x, lo, hi), (x) on [lo, hi], or a bounded "
                               "function of it (matrix products carry no bounds: A.T @ A / n "
                               "needs an 'on')")
        k = tx.shape[0]
        c = max(abs(tx.lo), abs(tx.hi), 1e-300)
        ones = self.fill((k, 1), 1.0, loc)
        full = self.matmul(x, self.transpose(ones, loc), loc) if len(tx.shape) == 1 else x
        eye = self.node("eye", (), (k, k), k=k)
        parts = []
        for sign in (1.0, -1.0):
            arg = self.node("add", tuple(sorted((self.scale(full, sign, loc), self.scale(eye, -c, loc)))),
                            (k, k), loc)
            r = self.node("call", (arg,), (k, k), loc, func="relu", domain=None, tol=None,
                          fargs=(), **({"note": note} if note else {}))
            parts.append(self.scale(r, -sign, loc))
        masked = self.node("add", tuple(sorted((full, self.node("add", tuple(sorted(parts)), (k, k),
                                                                       loc)))), (k, k), loc)
        if len(tx.shape) == 1:
            return masked
        return self.transpose_if_vector(self.matmul(self.transpose(masked, loc), ones, loc),
                                        Ty((k,)), loc)

    def _max_min(self, op, xs, tys, ty, loc):
        """max(u, v) = v + relu(u − v), min(u, v) = u − relu(u − v): exact, no domain."""
        cs = canonical_shape(ty.shape)
        u, v = (self._broadcast_scalar(x, t, cs, loc) for x, t in zip(xs, tys))
        diff = self.node("add", tuple(sorted((u, self.scale(v, -1.0, loc)))), cs, loc)
        r = self.node("call", (diff,), cs, loc, func="relu", domain=None, tol=None, fargs=())
        if op == "max":
            return self.node("add", tuple(sorted((v, r))), cs, loc)
        return self.node("add", tuple(sorted((u, self.scale(r, -1.0, loc)))), cs, loc)

    def _check_square(self, ta: Ty, loc, written: str = "'**' is elementwise: x ** 2",
                      base: int | None = None):
        """x ** 2 (or x * x) squares every entry: an MLP piece fitted on x's range, so x needs
        bounds (a square matrix was perhaps meant as M @ M). The base is named where it is a
        variable (`D * D` with D = X - q, q a weighted mean: it names D, not "this value")."""
        if ta.bounded:
            return
        matrix = is_square(ta.shape)
        verb = "squares" if written.endswith(("2", "x * x")) else "raises to that power"
        lines = (self.src or "").splitlines()
        stmt = (f"'{lines[loc.line - 1].split('#')[0].strip()}': "
                if loc is not None and 0 < loc.line <= len(lines) else "")
        name = self._variable_name(base)
        if name:
            written = written.replace("x * x", f"{name} * {name}").replace(": x **", f": {name} **")
            how = (f"bounds on {name} (an input assumption, clip({name}, lo, hi), or ({name}) on "
                   "[lo, hi] where it is assigned; matrix products carry no bounds)")
        else:       # an expression: `(A @ w - y) * (A @ w - y)`
            written = written.replace("x * x", "a value times itself")
            how = ("bounds on the value squared: name it and bound it, r = (...) on [lo, hi] "
                   "or clip(..., lo, hi), then r * r (matrix products carry no bounds)")
        raise CompileError(f"{stmt}{written} {verb} every entry, which the compiled "
                           f"model approximates on a known range, and "
                           f"{name or 'the value squared'} has no known bounds", loc,
                           source=self.src,
                           expected=("M @ M for the matrix square; for the entrywise square, "
                                     if matrix else "") + how)

    def _variable_name(self, nid: int | None) -> str | None:
        """The program variable or input a node holds, if one (for messages)."""
        if nid is None:
            return None
        node = self.graph.nodes[nid]
        held = node.get(VARS) or ([node[NAME]] if node.get(NAME) else [])
        return point_variable(held[0]) if held else None

    def transpose_if_vector(self, nid, ty, loc):
        """1ᵀA is a row; the program's [k] result is a column."""
        r, c = self.cshape(nid)
        return self.transpose(nid, loc) if r == 1 and c != 1 else nid

    def _unsized(self, nid):
        """An unsized c·s·I as (c, s): compile-time c, runtime scalar node s or None."""
        g = self.graph.nodes[nid]
        if g[OP] == "eye":
            return 1.0, None
        if g[OP] == "scale":
            c, s = self._unsized(g[ARGS][0])
            return g[C] * c, s
        if g[OP] == "smul":
            c, s = self._unsized(g[ARGS][0])
            if s is not None:
                raise CompileError("a product of two runtime scalars times I is not supported",
                                   g[LOC], source=self.src)
            return c, g[ARGS][1]
        raise AssertionError(g)  # pragma: no cover

    def _combine_unsized(self, op, a, b, loc):
        """I op I (both unsized): fold into one c·s·I."""
        (ca, sa), (cb, sb) = self._unsized(a), self._unsized(b)
        if op in "+-":
            if sa != sb:
                raise CompileError("adding multiples of I with different runtime scales needs a "
                                   "size: add them to a square matrix first", loc, source=self.src)
            c, s = (ca + cb if op == "+" else ca - cb), sa
        else:   # * (elementwise) and @ agree on multiples of I
            if sa is not None and sb is not None:
                raise CompileError("a product of two runtime scalars times I is not supported",
                                   loc, source=self.src)
            c, s = ca * cb, sa if sa is not None else sb
        node = self.scale(self.node("eye", (), None, k=None), c, loc)
        return node if s is None else self.node("smul", (node, s), None, loc)

    def _matmul_numpy(self, a, ta, b, tb, ty, loc):
        if ta.shape is None and tb.shape is None:
            return self._combine_unsized("@", a, b, loc)
        if ta.shape is None or tb.shape is None:          # c·I @ M or M @ c·I
            ident, other, ot = (a, b, tb) if ta.shape is None else (b, a, ta)
            k = canonical_shape(ot.shape)[0 if ta.shape is None else 1]
            return self.matmul(self.sized_eye(ident, k), other, loc) if ta.shape is None else \
                self.matmul(other, self.sized_eye(ident, k), loc)
        if len(ta.shape) == 1 and len(tb.shape) == 1:
            return self.matmul(self.transpose(a, loc), b, loc)
        if len(ta.shape) == 1:                             # aᵀ B, returned as a column
            return self.transpose(self.matmul(self.transpose(a, loc), b, loc), loc)
        return self.matmul(a, b, loc)

    def _elementwise(self, op, a, ta, b, tb, ty, loc, power=False):
        cs = canonical_shape(ty.shape)
        if ta.shape is None and tb.shape is None:
            return self._combine_unsized(op, a, b, loc)
        if op == "*" and _matrix_times_unsized_eye(ta, tb):          # M * (c·I): M's diagonal
            ident, m = (a, b) if ta.shape is None else (b, a)
            c, s = self._unsized(ident)
            out = self.scale(selection.diagonal_part(self, m, cs[0], loc), c, loc)
            return out if s is None else self.node("smul", (out, s), cs, loc)
        ta, tb = _as_scalar_if_unit(ta, cs), _as_scalar_if_unit(tb, cs)
        if op == "-":
            b, op = self.scale(b, -1.0, loc), "+"
        if ta.shape is None and tb.shape is not None and op == "+":
            a = self.sized_eye(a, cs[0])
        if tb.shape is None and ta.shape is not None and op == "+":
            b = self.sized_eye(b, cs[0])
        if op == "+":
            a, b = self._broadcast_scalar(a, ta, cs, loc), self._broadcast_scalar(b, tb, cs, loc)
            return self.node("add", tuple(sorted((a, b))), cs, loc)
        # * and / with a scalar on one side
        for x, tx, s, ts in ((a, ta, b, tb), (b, tb, a, ta)):
            if op == "/" and x is b:
                break
            if ts.shape == () and ts.const is not None:
                c = ts.const if op == "*" else 1.0 / ts.const
                return self.scale(x, c, loc)
            if ts.shape == ():
                if op == "/":              # the checker allows only n here (runtime: _divide)
                    assert self.graph.nodes[s][OP] == "n", self.graph.nodes[s]
                    s = self.node("inv_n", (), (1, 1))
                if self.graph.nodes[x][CSHAPE] is None:
                    return self.node("smul", (x, s), None, loc)
                return self.node("smul", (x, s), cs, loc)
        if a == b and op == "*":
            self._check_square(ta, loc, "x * x", a)
        return self.ewmul(a, ta, b, tb, cs, loc, power)

    def ewmul(self, a, ta: Ty, b, tb: Ty, cs, loc, power=False):
        """An elementwise product: a head where it is diag(u) @ v (`_as_head_product`), else a
        fitted product that carries its statement's absolute budget. A relative one
        (`tol rel`) is for functions of one value: a product of two real values (neither a
        sign nor a flag, which gate exactly) under it is refused rather than fitted to an
        absolute budget the statement did not ask for. A `power` (x ** k: x times itself, one
        function of x) takes the relative budget (TOL_REL)."""
        gated = ta.sign or ta.flag or tb.sign or tb.flag
        # a sign or flag gates an MLP piece of a value of its own shape; a [k] one across the
        # rows of [n, k] or [r, k] (`A * f`) is a head, A @ diag(f), like any bounded [k]
        exact = None if gated and ta.shape == tb.shape else \
            self._as_head_product(a, ta, b, tb, loc)
        if exact is not None:
            return exact
        relative = self.stmt_tol_rel and self.stmt_tol is not None
        if power and relative:
            return self.node("ewmul", tuple(sorted((a, b))), cs, loc, tol=self.stmt_tol,
                             tol_rel=True)
        if relative and not gated:
            raise CompileError("a relative tolerance (tol rel) applies to functions of one value "
                               "(reciprocal, sqrt, exp, ...); this statement multiplies two "
                               "values elementwise", loc, source=self.src,
                               expected="an absolute tol for the statement, or the function "
                                        "in a statement of its own with tol rel")
        return self.node("ewmul", tuple(sorted((a, b))), cs, loc, tol=self.stmt_tol)

    def _as_head_product(self, a, ta: Ty, b, tb: Ty, loc):
        """u ⊙ v as diag(u) @ v when u is a small vector [k] and v a [k] vector (or token data
        [n, k], whose rows it scales: v @ diag(u)), u bounded: diag(u) is exact (ReLUs gated
        by the identity) and the product an attention head — no fitted squares. u is the
        factor whose diag is cheapest to keep: an input (stored once), else the one computed
        first (loop-invariant more often). None where no factor fits (a token vector [n]
        times [n] or [n, k], small matrices, or no bounds): a fitted product."""
        def small_vector(t):
            return t.shape is not None and len(t.shape) == 1 and t.shape[0] != TOKEN \
                and t.const is None and t.bounded
        options = []
        for u, tu, v, tv in ((a, ta, b, tb), (b, tb, a, ta)):
            if not small_vector(tu) or tv.shape is None:
                continue
            k = tu.shape[0]
            if tv.shape == (k,) or len(tv.shape) == 2 and tv.shape[1] == k:
                is_input = self.graph.nodes[u][OP] == "input"
                options.append((not is_input, u, (u, tu, v, tv)))
        for x, tx, y, ty in ((a, ta, b, tb), (b, tb, a, ta)):
            made = self._head_products.get(x)
            if made is not None and tx.shape == ty.shape:
                # (u ⊙ w) ⊙ y = diag(u) @ (w ⊙ y): r * r * a keeps the one diag(r)
                d, w, tw = made
                inner = self.ewmul(w, tw, y, ty, canonical_shape(ty.shape), loc)
                return self._remember(self.matmul(d, inner, loc), d, inner, ty)
        if not options:
            return None
        u, tu, v, tv = min(options)[2]
        note = ("exact: the elementwise product is diag(u) @ v, an attention head; diag(u) is "
                "these ReLUs gated by the identity, exact where |u| <= its bound")
        d = self._diag(u, tu, loc, note)
        if len(tv.shape) == 2:
            return self.matmul(v, d, loc)        # every row of v scaled entrywise: v diag(u)
        return self._remember(self.matmul(d, v, loc), d, v, tv)

    def _remember(self, product, d, v, tv):
        """A [k] head product diag(u) @ v, kept so a further factor can join v instead of
        taking a diag of its own."""
        self._head_products[product] = (d, v, tv)
        return product

    def _broadcast_scalar(self, x, tx, cs, loc):
        """A scalar added to a larger value is s·ones (the ones row for [n], a constant ones
        block otherwise); a vector [k] added to every token row of [n, k] is 1ₙ bᵀ, a token
        vector [n] added per token to [n, k] is u 1ₖᵀ."""
        if tx.shape != () or cs == (1, 1):
            if tx.shape is not None and len(tx.shape) == 1 and cs[1] != 1:
                if tx.shape[0] == TOKEN:
                    return self.matmul(x, self.transpose(self.fill((cs[1], 1), 1.0, loc), loc), loc)
                ones = (self.node("ones", (), (TOKEN, 1)) if cs[0] == TOKEN
                        else self.fill((cs[0], 1), 1.0, loc))      # a small matrix's rows
                return self.matmul(ones, self.transpose(x, loc), loc)
            return x
        return self.smul_or_scale(self.fill(cs, 1.0, loc), x, loc)

    def smul_or_scale(self, base, s, loc):
        g = self.graph.nodes[s]
        if g[OP] == "const":
            return self.scale(base, g[VALUE], loc)
        return self.node("smul", (base, s), self.cshape(base), loc)


def _names_read(e) -> set[str]:
    from ..language import ast
    if isinstance(e, ast.Name):
        return {e.id}
    if isinstance(e, ast.BinOp):
        return _names_read(e.left) | _names_read(e.right)
    if isinstance(e, (ast.Neg, ast.Transpose, ast.Bound)):
        return _names_read(e.operand)
    if isinstance(e, ast.Call):
        return set().union(*(_names_read(a) for a in e.args))
    if isinstance(e, ast.Index):
        parts = [p for s in e.subscripts
                 for p in ((s.start, s.stop, s.step) if isinstance(s, ast.Slice) else (s,))]
        return _names_read(e.value).union(*(_names_read(p) for p in parts if p is not None))
    return set()


def _carried(stmts) -> set[str]:
    """Variables a loop body reads before assigning, and assigns: its state across iterations."""
    assigned: set[str] = set()
    read_first: set[str] = set()

    def walk(body):
        for s in body:
            if hasattr(s, "target"):
                read_first.update(_names_read(s.value) - assigned)
                assigned.add(s.target)
            elif hasattr(s, "body"):
                read_first.update(_names_read(s.count) - assigned)
                walk(s.body)
    walk(stmts)
    return read_first & assigned


def _matrix_times_unsized_eye(ta: Ty, tb: Ty) -> bool:
    return any(x.shape is None and y.shape is not None and len(y.shape) == 2
               for x, y in ((ta, tb), (tb, ta)))


def _as_scalar_if_unit(t: Ty, cs) -> Ty:
    """A [1] or [1, 1] meeting a larger value broadcasts like the scalar it holds (its
    canonical shape is a scalar's, 1×1)."""
    if is_unit(t.shape) and cs != (1, 1):
        return replace(t, shape=())
    return t


def _dom(ty: Ty):
    return (ty.lo, ty.hi) if ty.bounded else None


@dataclass
class DataflowGraph:
    """The unrolled program: the graph, its input and output nodes, the resolved params, and
    what the later passes need to know about the compile (error messages quote `source`;
    approximations without a budget of their own get `default_tol`)."""
    graph: nx.DiGraph
    inputs: dict[str, int]                 # input name → node
    outputs: dict[str, int]                # output name → node
    output_types: dict[str, Ty]
    input_types: dict[str, Ty]
    params: dict[str, float]
    source: str | None = None
    default_tol: float | None = None

    def live_nodes(self) -> set[int]:
        """Nodes some output depends on (dead code is never lowered)."""
        live = set(self.outputs.values())
        for o in list(live):
            live |= nx.ancestors(self.graph, o)
        return live


def build_dataflow(program, params: dict | None = None,
                   default_tol: float | None = None) -> DataflowGraph:
    values = resolve_params(program, params)
    return walk_to_graph(GraphBuilder(program, values), program, values, default_tol)


def walk_to_graph(builder: GraphBuilder, program, values: dict,
                  default_tol: float | None) -> DataflowGraph:
    """Run a graph builder over the program (this module's, or the shared build's that
    widens loop state: steady_state.py) and collect what it built."""
    outputs = builder.run()
    inputs = {d[NAME]: n for n, d in builder.graph.nodes(data=True) if d[OP] == "input"}
    input_types = {d.name: builder.input_type(d) for d in program.inputs}
    return DataflowGraph(builder.graph, inputs,
                         {name: val.data for name, val in outputs.items()},
                         {name: val.ty for name, val in outputs.items()}, input_types, values,
                         program.source, default_tol)
