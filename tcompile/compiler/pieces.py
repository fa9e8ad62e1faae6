"""Elementwise work → MLP pieces: what one ReLU sublayer can compute, and its weights.

The lowering collects every elementwise subexpression (functions, products, sums with
constants) into an expression tree over *leaf* atoms (elementwise.py). A tree is one MLP
piece when:

  * unary — it depends on at most one real-valued leaf u and on sign (±1) or flag (0/1)
    leaves: for each sign pattern s it is a function F_s(u), approximated by a continuous PL
    function on u's domain; patterns are selected exactly by a large-offset gate
    (ReLU(a u + b − M(1 − σ y)) is zero whenever σy = −1). sigmoid(−y·z), y·sigmoid(−y·z)
    and p(1 − p) are each ONE piece of z. Patterns whose functions coincide share units.
  * product — u ⊙ v of two real leaves: ((u+v)² − (u−v)²)/4 with PL squares, each within
    2·tol, so the product is within tol.

Domains come from the `on [lo, hi]` of the calls inside the tree, pulled back to the leaf
through affine steps (negation, constants, multiplication by a sign of the pattern), and from
the checker's interval bounds on the leaf. Outside its domain a piece is clamped (constant
extension of each PL function) — for sign-gated pieces only up to one domain length beyond
either end, where the gate offsets stop covering it; past that the output is undefined.
`tcompile.check_domains(prog, ...)` reports, per piece, whether any input left the domain.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from ..language import portable_math as pm
from ..errors import ApproxError
from .approx import PLApprox, approximate_callable, power_relative, relative_callable
from .elementwise import (BOUND, Call, Const, Expr, Leaf, Product, Sum, active_interval, affine,
                          calls, evaluate, leaves, pl_of, pulled_back_domains, shape_key,
                          to_text)

DEFAULT_TOL = 1e-6
UNNAMED = "a value computed in it"        # an error's name for a leaf no variable names
FITTED_PRODUCT = ("fitted: no head computes this product (neither factor is a bounded small "
                  "vector u for diag(u) @ v), so it is ((u+v)^2 - (u-v)^2)/4 with fitted squares")
MAX_SIGN_LEAVES = 2

# ---- exact piecewise-linear expressions ----------------------------------------------------

PL_CALLS = {"relu", "abs", "clip", BOUND}      # a bound is the identity: exact where it holds


def exact_pl(e: Expr, cont, env, label: str, tol: float) -> PLApprox | None:
    """If e is piecewise linear in the leaf (affine steps, relu/abs/clip of affine arguments),
    its exact ReLU form on all of R; else None."""
    found = calls(e)
    if any(c.func not in PL_CALLS for c in found):
        return None
    kinks = []
    for c in found:
        aff = affine(c.arg, cont, env) if cont is not None else (0.0, 0.0)
        if aff is None:                      # nested PL calls: the kinks of the composition
            pl = pl_of(e, cont, env)
            if pl is None:
                return None
            kinks = list(pl.knots)
            break
        if aff[0] != 0.0:
            levels = list(c.fargs) if c.func == "clip" else [] if c.func == BOUND else [0.0]
            kinks += [(lv - aff[1]) / aff[0] for lv in levels]
    kinks = sorted(set(kinks))
    f = _leaf_function(e, cont, env)
    span = max([1.0] + [abs(k) for k in kinks])
    probe = np.array(sorted(set([kinks[0] - span if kinks else -span] + kinks +
                               [kinks[-1] + span if kinks else span])))
    # slopes between consecutive probes, checked linear on each piece (products of the leaf
    # with itself are not PL)
    slopes = []
    for a, b in zip(probe[:-1], probe[1:]):
        mid = (a + b) / 2
        pts = np.array([a, (a + mid) / 2, mid, (mid + b) / 2, b])
        vals = f(pts)
        sl = (vals[-1] - vals[0]) / (b - a)
        if np.max(np.abs(vals - (vals[0] + sl * (pts - a)))) > 1e-12 * max(1.0, np.max(np.abs(vals))):
            return None                     # not linear between kinks (e.g. u * u)
        slopes.append(sl)
    left = slopes[0]
    x0 = probe[0]
    c0 = float(f(np.array([x0]))[0]) - left * x0     # f(u) = c0 + left·u left of every kink
    a_, b_, c_ = [0.0], [1.0], [c0]                   # constant through the gate
    if left != 0.0:                                   # left·u = left·(relu(u) − relu(−u))
        a_ += [1.0, -1.0]
        b_ += [0.0, 0.0]
        c_ += [left, -left]
    for k, (s_prev, s_next) in zip(probe[1:-1], zip(slopes[:-1], slopes[1:])):
        if s_next != s_prev:
            a_.append(1.0)
            b_.append(-k)
            c_.append(s_next - s_prev)
    form = tuple(np.array(v) for v in (a_, b_, c_))
    keep = form[2] != 0
    form = tuple(v[keep] for v in form)
    t = np.array(kinks) if kinks else np.array([0.0])
    return PLApprox(label, -math.inf, math.inf, t, f(t), 0.0, tol, True, f, form)


# ---- pieces --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Words:
    """A piece in the user's terms, for its error messages: the statement as written, and the
    leaves named as that statement names them (the card's labels use the compiler's)."""
    expr: str
    names: dict


@dataclass
class Approximation:
    """One PL function inside a piece, for the report."""
    label: str
    lo: float
    hi: float
    pl: PLApprox
    rows: int = 1
    choice: str = ""                   # how it is computed and why (refine.choose), if chosen
    error: float | None = None         # a refinement's predicted error (else the fit's measured)
    target: float | None = None        # and the budget it was refined to (else the fit's tol)

    def as_dict(self) -> dict:
        """JSON-able; an exact piece valid on all of R has lo = hi = None."""
        finite = math.isfinite(self.lo) and math.isfinite(self.hi)
        err = self.pl.max_error if self.error is None else self.error
        tol = self.pl.tol if self.target is None else self.target
        return {"name": self.label, "lo": self.lo if finite else None, "hi": self.hi if finite else None, "neurons": self.pl.neurons * self.rows,
                "neurons_per_entry": self.pl.neurons, "max_error": float(err),
                "tol": float(tol), "exact": bool(self.pl.exact), "choice": self.choice,
                "steepest": steep_ramp(self.pl)}


STEEP_RAMP = 1e3      # an exact piece this steep is recorded: it amplifies its input's rounding


def steep_ramp(pl: PLApprox) -> float:
    """The largest |slope| of an exact piece where it is at least STEEP_RAMP, else 0: a
    ramp clip(1e6 * m, 0, 1) is exact in real arithmetic, but its ReLUs cancel terms of the
    size 1e6 |m|, so the last bits of m come out 1e6 times larger (card.predicted_rtol). A
    fitted piece's own error is its budget, far above that."""
    if not pl.exact or len(pl.knots) < 2:
        return 0.0
    with np.errstate(all="ignore"):
        slopes = np.abs(pl.slopes)
    slopes = slopes[np.isfinite(slopes)]
    top = float(slopes.max()) if slopes.size else 0.0
    return top if top >= STEEP_RAMP else 0.0


@dataclass
class UnaryPiece:
    leaf: int | None                       # the real-valued leaf (None: a function of signs only)
    gates: list[tuple[int, str]]           # (atom, 'sign' | 'flag')
    branches: dict[tuple, PLApprox]        # sign pattern → PL function of u (one entry: ungated)
    lo: float
    hi: float
    label: str
    kind: str = "unary"
    approximations: list[Approximation] = field(default_factory=list)
    offsets: dict[tuple, float] = field(default_factory=dict)   # pattern → constant added
    # where the leaf must stay for the piece to be right, when not [lo, hi]: a domain found
    # by saturation (clip(u, -2, 2) ** 2 is fitted on [-2, 2] and exact beyond) is wider
    checked: tuple | None = None

    @property
    def inputs(self) -> list[int]:
        return ([self.leaf] if self.leaf is not None else []) + [g for g, _ in self.gates]

    @property
    def range(self) -> tuple[float, float]:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return (-math.inf, math.inf)
        # a PL function (clamped outside) takes its extremes at its knots
        vals = np.concatenate([pl(np.concatenate([pl.knots, [self.lo, self.hi]]))
                               for pl in self.branches.values()])
        shifts = [0.0, *self.offsets.values()] if self.offsets else [0.0]
        return float(vals.min() + min(shifts)), float(vals.max() + max(shifts))


@dataclass
class ProductPiece:
    u: int
    v: int
    plus: PLApprox                         # x ↦ x² on the range of u + v
    minus: PLApprox                        # x ↦ x² on the range of u − v
    u_range: tuple
    v_range: tuple
    label: str
    kind: str = "product"
    approximations: list[Approximation] = field(default_factory=list)
    scale: float = 1.0                     # the piece computes scale · u ⊙ v (3.2 * u * v)

    @property
    def inputs(self) -> list[int]:
        return [self.u, self.v]

    @property
    def range(self) -> tuple[float, float]:
        c = [self.scale * a * b for a in self.u_range for b in self.v_range]
        return min(c), max(c)


def _saturated_sides(e, cont, lo: float, hi: float, checked):
    """The domain check of a piece fitted on [lo, hi], widened on a side where e is constant
    beyond the fit (clip or relu saturate there, exactly) and no declared domain is left:
    a value past it, by a fit's error upstream, reads that same constant. sqrt(relu(s)) with
    s = (X * X) @ ones(d), whose bounds start at 0, saw -3e-6 from the fitted squares and was
    flagged though sqrt(relu(-3e-6)) is the 0 the piece gives. The checked interval (finite:
    a saturated side is widened by the fit's width, far past any fit error), or None where
    it is [lo, hi]."""
    free = active_interval(e, cont, {})
    declared = active_interval(e, cont, {}, declared_only=True)
    if free is None or declared is None:
        return checked
    c_lo, c_hi = checked or (lo, hi)
    width = hi - lo          # any value past a saturated side is right; a check is two-sided
    if free[0] >= lo and declared[0] < free[0]:               # and finite: a width beyond
        c_lo = min(c_lo, max(declared[0], lo - width))
    if free[1] <= hi and declared[1] > free[1]:
        c_hi = max(c_hi, min(declared[1], hi + width))
    return None if (c_lo, c_hi) == (lo, hi) else (c_lo, c_hi)


class PieceBuilder:
    """Turns elementwise trees into pieces; caches PL fits by function shape, so the unrolled loop's
    iterations (same function, new leaf) cost one fit."""

    def __init__(self, default_tol: float | None = None):
        self.default_tol = default_tol or DEFAULT_TOL
        self._cache: dict = {}
        self.choices: dict = {}        # lower.py's refine.choose results, by their arguments

    def fit(self, label, f, lo, hi, tol, key) -> PLApprox:
        k = (key, lo, hi, tol)
        if k not in self._cache:
            self._cache[k] = approximate_callable(label, f, lo, hi, tol)
        return self._cache[k]

    def unary(self, e, cont: int | None, gates: list[tuple[int, str]], bounds: dict, names: dict,
              loc_error, tol: float | None = None, rel: bool = False,
              words: "Words | None" = None) -> UnaryPiece:
        """`tol`: the budget of the value computed (its statement's or call's); without one the
        tightest budget inside the expression, else the default. `rel`: that budget is
        relative (|err| <= tol |f|), which a power c·u^p meets with geometric knots. `words`:
        the piece in the user's terms (the statement, the leaves as it names them), for error
        messages; `names` label the card."""
        ref = None
        if tol is None:
            tight = [c for c in calls(e) if c.tol is not None]
            tol = min((c.tol for c in tight), default=self.default_tol)
            rel = any(c.rel and c.tol == tol for c in tight)
            if rel:             # the budget is relative to the calls that asked for it
                part = _relative_part(e, {c for c in tight if c.rel and c.tol == tol})
                ref = None if part == e else part
        label = to_text(e, names)
        words = words or Words(label, names)
        what = words.expr
        if rel:
            lo, hi, _, _ = self._domain(e, cont, gates, [()] if not gates else
                                     list(itertools.product((1.0, -1.0), repeat=len(gates))),
                                     bounds, what, words.names, loc_error, saturate=False)
            return self._relative(e, cont, gates, lo, hi, tol, label, loc_error, what, ref,
                                  to_text(e, _user_names(e, names, words.names)),
                                  "" if ref is None else to_text(ref, names))
        patterns = _patterns(gates)
        exact = self._exact_piece(e, cont, gates, patterns, bounds, label, tol)
        if exact is not None:
            return exact
        lo, hi, checked, point = self._domain(e, cont, gates, patterns, bounds, what,
                                              words.names, loc_error)
        key = shape_key(e, cont, gates)
        if point is not None:
            key = ("at one point", point) + key
        fits: dict[tuple, PLApprox] = {}
        grid = np.linspace(lo, hi, 257)
        for pat in patterns:
            f = _leaf_function(e, cont, _pattern_env(gates, pat), clamped=checked is not None)
            if point is not None:
                f = _constant_function(float(f(np.array([point]))[0]))
            fits[pat] = (f, f(grid))
        # patterns whose functions differ by constants share one fit plus gated constants:
        # p(1 − p) does not depend on y at all, y·σ(−y z) = σ(−z) + (y − 1)/2
        first_pat = next(iter(fits))
        first = fits[first_pat][1]
        with np.errstate(invalid="ignore"):     # inf - inf: the fit below says where
            diffs = {pat: vals - first for pat, (_, vals) in fits.items()}
        scale = max(1.0, float(np.abs(first).max()))
        offsets = {}
        if all(np.ptp(dv) <= 1e-13 * scale for dv in diffs.values()):
            f = fits[first_pat][0]
            branches = {(): self.fit(label, f, lo, hi, tol, (key, first_pat))}
            offsets = {pat: float(np.mean(dv)) for pat, dv in diffs.items() if abs(np.mean(dv)) > 0}
            gates_used = gates if offsets else []
        else:
            branches = {pat: self.fit(label, f, lo, hi, tol, (key, pat))
                        for pat, (f, _) in fits.items()}
            gates_used = gates
        for pl in branches.values():
            bad = np.asarray(pl.values)
            if not np.all(np.isfinite(bad)):
                raise loc_error(f"{what} is not finite where "
                                f"{words.names.get(cont, 'its argument')} "
                                f"lies, [{lo:g}, {hi:g}]")
        piece = UnaryPiece(cont, gates_used, branches, lo, hi, label, offsets=offsets,
                           checked=checked)
        choice = "; ".join(c.note for c in calls(e) if c.note)
        for pat, pl in branches.items():
            suffix = "" if not pat else " [" + ", ".join(
                f"{names.get(g, g)}={v:+g}" for (g, _), v in zip(gates_used, pat)) + "]"
            piece.approximations.append(Approximation(label + suffix, lo, hi, pl, choice=choice))
        return piece

    def _relative(self, e, cont, gates, lo, hi, rtol, label, loc_error, what,
                  ref=None, user=None, ref_label="") -> UnaryPiece:
        """A relative budget: e must be c·u^p (reciprocal, sqrt, 1/sqrt, scaled), fitted with
        geometric knots (approx.power_relative), so [1e-9, 1] costs neurons ∝ log(hi/lo).
        `ref`: the part of e the budget was asked of, where e adds more to it (exp(z) tol rel
        fused with the `- 1` after it): the error is relative to that part's value."""
        if gates or cont is None:
            raise loc_error(f"{what}: a relative tolerance applies to a function of one real "
                            "value, without sign or flag inputs")
        power = None if ref is not None else _power_of(e, cont, lo, hi)
        if power is None:           # any other smooth function: relative bands (approx.py)
            return self._relative_general(e, cont, lo, hi, rtol, label, loc_error, what, ref,
                                          user, ref_label)
        c, p = power
        if lo <= 0 <= hi or (p != -1.0 and lo < 0):
            raise loc_error(f"{what} on [{lo:g}, {hi:g}]: a relative tolerance needs a domain "
                            "on one side of 0 (and x > 0 for a root)")
        key = ("relative", p, abs(lo) if lo > 0 else -hi, hi if lo > 0 else -lo, rtol)
        if key not in self._cache:
            self._cache[key] = power_relative(label, p, key[2], key[3], rtol)
        base = self._cache[key]
        t, v = (base.knots, base.values) if lo > 0 else (-base.knots[::-1], -base.values[::-1])
        pl = PLApprox(label, lo, hi, t, c * v, base.max_error, rtol, False, relative=True)
        piece = UnaryPiece(cont, [], {(): pl}, lo, hi, label)
        piece.approximations.append(Approximation(f"{label} (relative)", lo, hi, pl))
        return piece

    def _relative_general(self, e, cont, lo, hi, rtol, label, loc_error, what,
                          ref=None, user=None, ref_label="") -> UnaryPiece:
        """A relative budget on exp, log, sigmoid, softplus, x ** k, ... of one leaf: fitted
        band by band where the value changes by a factor 2 (approx.relative_callable);
        relative to `ref`'s value where given (see _relative). `user`: e with its leaf named
        as the statement names it, for the error message."""
        key = ("relative", shape_key(e, cont, []), lo, hi, rtol) + \
            (() if ref is None else (shape_key(ref, cont, []),))
        if key not in self._cache:
            try:
                self._cache[key] = relative_callable(
                    label, _leaf_function(e, cont, {}), lo, hi, rtol,
                    ref=None if ref is None else _leaf_function(ref, cont, {}))
            except ApproxError as err:
                msg = err.args[0] if err.args else str(err)
                raise loc_error(f"{what}: {msg.replace(label, user or label)}") from None
        pl = self._cache[key]
        piece = UnaryPiece(cont, [], {(): pl}, lo, hi, label)
        of = "" if ref is None else f" to {ref_label}"
        piece.approximations.append(Approximation(f"{label} (relative{of})", lo, hi, pl))
        return piece

    def seed(self, leaf: int, ref, label: str) -> UnaryPiece:
        """The PL seed of a scalar refinement (refine.py): one relative fit of the leaf, whose
        record carries the refined value's predicted relative error and the choice."""
        from .refine import seed_approx
        pl = seed_approx(ref)
        piece = UnaryPiece(leaf, [], {(): pl}, pl.lo, pl.hi, f"seed of {label}")
        piece.approximations.append(Approximation(
            f"{label} (relative error; seed + {ref.steps} Newton steps)", pl.lo, pl.hi, pl,
            choice=ref.choice, error=ref.rel_error, target=max(ref.target, ref.rel_error)))
        return piece

    @staticmethod
    def _domain(e, cont, gates, patterns, bounds, label, names, loc_error,
                saturate=True) -> tuple[float, float, tuple | None, float | None]:
        """Where the piece is fitted: the declared domains pulled back to the leaf, for every
        sign pattern, intersected with the leaf's own bounds; [0, 1] for a function of
        signs only (its leaf-free value is read at any point). An ungated piece is narrowed
        further to where it varies (`active_interval`: clip, relu and declared domains,
        through PL steps): it is then fitted with its calls clamped to their domains, and the
        third value is the interval its domain check watches (declared domains only); None
        where nothing was narrowed. The fourth is the leaf's value where its bounds are one
        number (sum(e) of e = exp(0) in a loop's first iteration, X @ w of w = zeros(d)), else
        None: the piece is then fitted on a sliver around it for the compiled value's
        rounding, and is the function's value there on all of it (a steep function, a
        perceptron's clip(1 - 1e6 * m, 0, 1) at m = 0, would otherwise vary across the sliver
        by its budget and move what the program keeps fixed)."""
        lo, hi = _leaf_interval(e, cont, gates, patterns, bounds)
        checked = None
        if cont is None:
            lo, hi = 0.0, 1.0
        elif saturate and not gates:
            leaf_bounds = bounds.get(cont, (-math.inf, math.inf))
            active = active_interval(e, cont, {}, leaf_bounds)
            if active is not None and (active[0] > lo or active[1] < hi):
                declared = active_interval(e, cont, {}, leaf_bounds, declared_only=True)
                declared = declared or (-math.inf, math.inf)
                checked = (max(lo, declared[0]), min(hi, declared[1]))
                lo, hi = max(lo, active[0]), min(hi, active[1])
            checked = _saturated_sides(e, cont, lo, hi, checked)
        leaf = names.get(cont, "the value")
        bound_it = (f"bound {leaf}: an input assumption, clip({leaf}, lo, hi), or "
                    f"({leaf}) on [lo, hi]")
        if not (math.isfinite(lo) and math.isfinite(hi)):
            if not calls(e) and gates:
                raise loc_error(f"{label}: a sign or flag input times {leaf} is exact only on a "
                                f"known range of {leaf}, and {leaf} has no known bounds; "
                                + bound_it)
            if not calls(e):
                raise loc_error(f"{label}: multiplies {leaf} by itself entry by entry (a square "
                                f"or power, fitted on a known range), and {leaf} has no known "
                                "bounds; " + bound_it)
            raise loc_error(f"{label}: cannot tell which values {leaf} takes here, so the "
                            "functions of it cannot be fitted; give the function a domain "
                            f"(f(...) on [lo, hi]) or {bound_it}")
        point = None
        if lo == hi:
            # known to be one number: any function of it is that constant; fitted on a sliver
            # around it, the rounding of the compiled value included
            point, pad = lo, 1e-9 * max(1.0, abs(lo))
            lo, hi = lo - pad, hi + pad
        if not lo < hi:
            raise loc_error(f"the domains declared in {label} leave no room for {leaf} "
                            f"([{lo:g}, {hi:g}])")
        return lo, hi, checked, point

    def _exact_piece(self, e, cont, gates, patterns, bounds, label, tol) -> UnaryPiece | None:
        """relu/abs/clip/sign-products need no approximation: exact ReLU forms, no domain
        (gating by signs still needs bounds on the real leaf for its offsets)."""
        forms = {}
        for pat in patterns:
            pl = exact_pl(e, cont, _pattern_env(gates, pat), label, tol)
            if pl is None:
                return None
            forms[pat] = pl
        first_pat, first = next(iter(forms.items()))
        # the patterns' functions differ by constants (relu(u) + g): one form, gated offsets
        probe = np.concatenate([[0.0], first.knots, first.knots + 1.0, first.knots - 1.0])
        diffs = {pat: pl(probe) - first(probe) for pat, pl in forms.items()}
        if all(np.ptp(dv) <= 1e-13 * max(1.0, float(np.abs(first(probe)).max())) for dv in diffs.values()):
            offsets = {pat: float(dv[0]) for pat, dv in diffs.items() if dv[0] != 0.0}
            piece = UnaryPiece(cont, gates if offsets else [], {(): first}, -math.inf, math.inf,
                               label, offsets=offsets)
        else:
            # gates need bounds: the leaf's, or declared domains
            lo, hi = _leaf_interval(e, cont, gates, patterns, bounds)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                return None
            piece = UnaryPiece(cont, gates, forms, lo, hi, label)
        choice = "; ".join(c.note for c in calls(e) if c.note)
        for pat, pl in piece.branches.items():
            piece.approximations.append(Approximation(label, piece.lo, piece.hi, pl, choice=choice))
        return piece

    def product(self, u, v, u_range, v_range, tol, names, scale: float = 1.0) -> ProductPiece:
        """scale · u ⊙ v within tol: the squares are fitted within tol / |scale| each side."""
        tol = (tol or self.default_tol) / abs(scale)
        plus_lo, plus_hi = u_range[0] + v_range[0], u_range[1] + v_range[1]
        minus_lo, minus_hi = u_range[0] - v_range[1], u_range[1] - v_range[0]
        square = np.square

        def fit(lo, hi):
            if hi - lo < 1e-12:
                hi = lo + 1e-12
            return self.fit("square", square, lo, hi, 2 * tol, ("square",))
        factor = {1.0: "", -1.0: "-"}.get(scale, f"{scale:g}*")
        label = f"{factor}{names.get(u, u)}*{names.get(v, v)}"
        piece = ProductPiece(u, v, fit(plus_lo, plus_hi), fit(minus_lo, minus_hi),
                             tuple(u_range), tuple(v_range), label, scale=scale)
        piece.approximations = [Approximation(f"(u+v)^2 of u*v = {label}", plus_lo, plus_hi,
                                              piece.plus, choice=FITTED_PRODUCT),
                                Approximation(f"(u-v)^2 of u*v = {label}", minus_lo, minus_hi,
                                              piece.minus, choice=FITTED_PRODUCT)]
        return piece


def _pattern_env(gates, pat) -> dict:
    """The gate atoms' values under one sign/flag pattern."""
    return {g: v for (g, _), v in zip(gates, pat)}


def _leaf_function(e, cont, env, clamped=False):
    """e as a function of the leaf's values u (float arrays of u's shape), gates fixed by env
    (`clamped`: calls read their arguments clamped to their domains, elementwise.evaluate)."""
    def f(u):
        return np.broadcast_to(evaluate(e, {**env, cont: u} if cont is not None else env,
                                        clamped), np.shape(u)).astype(float)
    return f


def _patterns(gates) -> list[tuple]:
    """Every value the gates can take together: ±1 for a sign input, 1 or 0 for a flag."""
    return list(itertools.product(*[(1.0, -1.0) if kind == "sign" else (1.0, 0.0)
                                    for _, kind in gates]))


def saturation_interval(e, cont: int, gates, bounds: dict) -> tuple[float, float] | None:
    """Where a gated piece's leaf matters, when nothing else bounds it: [L, H] such that, under
    every sign pattern, e is constant in the leaf outside it (a clip or relu of it saturates
    there: a hinge's y * clip(1e4 * (1 - y * z), 0, 1)). e then has the same value at the
    leaf clamped to [L, H], exactly, and a gated piece, whose gate offsets must cover a known
    range of its leaf, may read that clamp instead. None where the leaf is bounded already
    (declared domains, its own bounds) or some pattern does not saturate on both sides."""
    patterns = _patterns(gates)
    lo, hi = _leaf_interval(e, cont, gates, patterns, bounds)
    if math.isfinite(lo) and math.isfinite(hi):
        return None
    spans = [active_interval(e, cont, _pattern_env(gates, pat), exact_only=True)
             for pat in patterns]
    spans = [s for s in spans if s is not None]
    if not spans:
        return None
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo < hi else None


def _constant_function(value: float):
    return lambda u: np.full(np.shape(u), value)


def _leaf_interval(e, cont, gates, patterns, bounds) -> tuple[float, float]:
    """The leaf's bounds intersected with the domains declared inside e, pulled back to the
    leaf under every pattern; (−inf, inf) where nothing bounds it (or there is no leaf)."""
    lo, hi = -math.inf, math.inf
    if cont is None:
        return lo, hi
    for pat in patterns:
        for a, b in pulled_back_domains(e, cont, _pattern_env(gates, pat)):
            lo, hi = max(lo, a), min(hi, b)
    if cont in bounds:
        blo, bhi = bounds[cont]
        lo, hi = max(lo, blo), min(hi, bhi)
    return lo, hi


def _user_names(e, names, user) -> dict:
    """e's leaves named as the statement names them, else as the card does."""
    return {a: user[a] if user.get(a) not in (None, UNNAMED) else names.get(a, f"t{a}")
            for a in leaves(e)}


def _relative_part(e, rel: set):
    """The part of e made of the calls in `rel` (those whose relative budget e inherits), where
    e is affine in them (sums, and products by leaf-free factors): e = part + the rest. None
    where a call in `rel` is reached through anything else (its budget is then e's)."""
    if isinstance(e, Call) and e in rel:
        return e
    if isinstance(e, (Leaf, Const)):
        return None
    if isinstance(e, Call):
        return _relative_part(e.arg, rel) if e.func == BOUND else None
    if isinstance(e, Sum):
        a, b = _relative_part(e.a, rel), _relative_part(e.b, rel)
        if a is None and b is None:
            return None
        if (a is None and set(calls(e.a)) & rel) or (b is None and set(calls(e.b)) & rel):
            return None
        return a if b is None else b if a is None else Sum(a, b)
    for c, x in ((e.a, e.b), (e.b, e.a)):
        if not leaves(c) and not set(calls(c)) & rel:
            part = _relative_part(x, rel)
            return None if part is None else Product(c, part)
    return None


def _power_of(e, cont, lo, hi) -> tuple[float, float] | None:
    """(c, p) with e(u) = c·u^p on [lo, hi] for p in {-1, -1/2, 1/2}, else None (checked on
    a geometric sample of the domain, to rounding)."""
    a, b = (lo, hi) if lo > 0 else (-hi, -lo)
    if not 0 < a < b:
        return None
    x = np.geomspace(a, b, 33) * (1 if lo > 0 else -1)
    with np.errstate(all="ignore"):
        y = np.asarray(evaluate(e, {cont: x}), dtype=float)
    for p in (-1.0, -0.5, 0.5):
        base = np.sign(x) * pm.power(np.abs(x), p) if p == -1.0 else pm.power(np.abs(x), p)
        c = y[0] / base[0]
        if np.all(np.isfinite(y)) and np.allclose(y, c * base, rtol=1e-12, atol=0):
            return float(c), p
    return None


# ---- weights -------------------------------------------------------------------------------

def gate_margin(a: np.ndarray, b: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Offsets M that switch a unit off for a non-matching pattern: above |a u + b| on the
    domain widened by its own length on each side (beyond that the input is flagged anyway)."""
    span = hi - lo
    ends = np.stack([a * (lo - span) + b, a * (hi + span) + b])
    return np.abs(ends).max(axis=0) + 1.0


def piece_unit_count(piece, n_out: int) -> int:
    """How many hidden units piece_units (and piece_unit_entries) give for `n_out` output rows."""
    if piece.kind == "unary":
        per = len(piece.offsets) + sum(pl.neurons for pl in piece.branches.values())
    else:
        per = piece.plus.neurons + piece.minus.neurons
    return n_out * per


def piece_unit_entries(piece, rows_of, out_rows: list[int], gate_rows: list[int], base: int = 0):
    """piece_units as arrays, for emission: (W_1 entries, W_2 entries), each (units, rows,
    values) with units numbered from `base` in piece_units' order. Entries of one (unit, row)
    come in the order piece_units adds them into its dict, so adding them in order to zeros
    (emit.py) repeats its floating-point operations one for one: the same bytes, without a
    Python call per unit."""
    n_out = len(out_rows)

    def rows(atom):                               # row(atom, r) of piece_units, for every r
        got = rows_of(atom)
        return np.asarray(got[:n_out] if len(got) > 1 else [got[0]] * n_out, dtype=np.intp)

    gate_rows = [int(gr) for gr in gate_rows]
    blocks = _unary_blocks(piece, rows, gate_rows) if piece.kind == "unary" else \
        _product_blocks(piece, rows, gate_rows)
    per = sum(len(c) for c, _ in blocks)
    w1_units, w1_rows, w1_vals, w2_units, w2_rows, w2_vals = [], [], [], [], [], []
    out = np.asarray(out_rows, dtype=np.intp)[:, None]
    start = 0
    for c, steps in blocks:
        k = len(c)
        units = base + np.arange(n_out)[:, None] * per + (start + np.arange(k))[None, :]
        for row, vals, mask in steps:   # row: one int for every unit, or (n_out,) per out row
            rr = np.broadcast_to(np.asarray(row)[:, None] if np.ndim(row) else row, units.shape)
            vv = np.broadcast_to(vals, units.shape)
            if mask is not None:
                m = np.broadcast_to(mask, units.shape)
                w1_units.append(units[m]), w1_rows.append(rr[m]), w1_vals.append(vv[m])
            else:
                w1_units.append(units.ravel()), w1_rows.append(rr.ravel()), w1_vals.append(vv.ravel())
        w2_units.append(units.ravel())
        w2_rows.append(np.broadcast_to(out, units.shape).ravel())
        w2_vals.append(np.broadcast_to(c, units.shape).ravel())
        start += k
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(0, dt))
    return ((cat(w1_units, np.intp), cat(w1_rows, np.intp), cat(w1_vals, float)),
            (cat(w2_units, np.intp), cat(w2_rows, np.intp), cat(w2_vals, float)))


def _unary_blocks(piece, rows, gate_rows):
    """The units of a unary piece for one output row, as piece_units orders them: blocks (W_2
    values, W_1 steps (row, values, mask or None) in the order its dicts add them)."""
    blocks = []
    for pat, k in piece.offsets.items():              # _offset_units
        steps = [(gr, 1.0, None) for gr in gate_rows]
        for (g, kind), val in zip(piece.gates, pat):
            const, coef = _mismatch_penalty(kind, val, 1.0)
            steps += [(gr, const, None) for gr in (gate_rows if const else ())]
            steps.append((rows(g), coef, None))
        blocks.append((np.array([k], dtype=float), steps))
    for pat, pl in piece.branches.items():            # _branch_units
        pat = pat if len(pat) == len(piece.gates) and not piece.offsets else ()
        a, b, c = pl.relu_form()
        steps = []
        if piece.leaf is not None:
            steps.append((rows(piece.leaf), a, a != 0))
        gate_w = b
        if pat:
            margins = gate_margin(a, b, piece.lo, piece.hi)
            for (g, kind), val in zip(piece.gates, pat):
                const, coef = _mismatch_penalty_array(kind, val, margins)
                gate_w = gate_w + const
                steps.append((rows(g), coef, None))
        steps += [(gr, gate_w, None) for gr in gate_rows]
        blocks.append((c, steps))
    return blocks


def _mismatch_penalty_array(kind: str, val: float, m: np.ndarray):
    """_mismatch_penalty for an array of margins (the same operations entry by entry)."""
    if kind == "sign":
        return -m, m * val
    if val == 1.0:
        return -m, m
    return 0.0, -m


def _product_blocks(piece, rows, gate_rows):
    """_product_units as blocks (see _unary_blocks)."""
    blocks = []
    for pl, sign in ((piece.plus, 1.0), (piece.minus, -1.0)):
        a, b, c = pl.relu_form()
        nz = a != 0
        steps = [(rows(piece.u), a, nz), (rows(piece.v), sign * a, nz)]
        steps += [(gr, b, None) for gr in gate_rows]
        blocks.append((sign * c / 4.0 * piece.scale, steps))
    return blocks


def piece_units(piece, rows_of, out_rows: list[int], gate_rows: list[int]):
    """Hidden units of one piece: a list of (W_1 column entries {row: weight}, W_2 entries {row: c}).

    rows_of(atom) gives an input's rows; an input with one row broadcasts over out_rows.
    The readable form, kept as the reference the tests hold piece_unit_entries to; emission
    uses piece_unit_entries.
    """
    def row(atom, r):
        rs = rows_of(atom)
        return rs[r] if len(rs) > 1 else rs[0]

    units = []
    for r in range(len(out_rows)):
        if piece.kind == "unary":
            units += [(w1, {out_rows[r]: k}) for w1, k in _offset_units(piece, row, r, gate_rows)]
            units += [(w1, {out_rows[r]: c}) for w1, c in _branch_units(piece, row, r, gate_rows)]
        else:
            units += [(w1, {out_rows[r]: c}) for w1, c in _product_units(piece, row, r, gate_rows)]
    return units


def _add(w1: dict, r: int, w: float) -> None:
    w1[r] = w1.get(r, 0.0) + w


def _mismatch_penalty(kind: str, val: float, m: float) -> tuple[float, float]:
    """−m · (how far the gate is from the pattern's value `val`), as (constant, coefficient
    of the gate): a sign y against σ is −m(1 − σy); a flag against 1 is −m(1 − y), against 0
    is −m y. Zero when the gate matches, ≤ −m when it does not."""
    if kind == "sign":
        return -m, m * val
    if val == 1.0:
        return -m, m
    return 0.0, -m


def _offset_units(piece, row, r, gate_rows):
    """k·[pattern] for each gated constant: ReLU(1 − Σ mismatches), exactly 0 or 1."""
    for pat, k in piece.offsets.items():
        w1 = {gr: 1.0 for gr in gate_rows}
        for (g, kind), val in zip(piece.gates, pat):
            const, coef = _mismatch_penalty(kind, val, 1.0)
            for gr in gate_rows if const else ():
                w1[gr] += const
            _add(w1, row(g, r), coef)
        yield w1, k


def _branch_units(piece, row, r, gate_rows):
    """The ReLUs of each branch's PL function of the leaf; a gated branch adds −M per
    mismatching gate, which switches its units off for other patterns."""
    for pat, pl in piece.branches.items():
        pat = pat if len(pat) == len(piece.gates) and not piece.offsets else ()
        a, b, c = pl.relu_form()
        margins = gate_margin(a, b, piece.lo, piece.hi) if pat else None
        for j in range(len(c)):
            w1 = {}
            if piece.leaf is not None and a[j] != 0:
                _add(w1, row(piece.leaf, r), a[j])
            gate_w = b[j]
            for (g, kind), val in zip(piece.gates if pat else [], pat):
                const, coef = _mismatch_penalty(kind, val, margins[j])
                gate_w += const
                _add(w1, row(g, r), coef)
            for gr in gate_rows:
                _add(w1, gr, gate_w)
            yield w1, c[j]


def _product_units(piece, row, r, gate_rows):
    """u v = ((u+v)² − (u−v)²)/4 with PL squares."""
    for pl, sign in ((piece.plus, 1.0), (piece.minus, -1.0)):
        a, b, c = pl.relu_form()
        for j in range(len(c)):
            w1 = {}
            if a[j] != 0:
                w1[row(piece.u, r)] = a[j]
                _add(w1, row(piece.v, r), sign * a[j])
            for gr in gate_rows:
                _add(w1, gr, b[j])
            yield w1, sign * c[j] / 4.0 * piece.scale


__all__ = ["UnaryPiece", "ProductPiece", "PieceBuilder", "Words", "piece_units", "piece_unit_entries",
           "piece_unit_count", "exact_pl"]
