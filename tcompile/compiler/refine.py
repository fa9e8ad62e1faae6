"""Scalar division and roots refined in attention heads: a PL seed, then Newton–Raphson.

For a runtime scalar a (a 1×1 value: pᵀSp, uᵀu, the Newton decrement) a product of three
scalars is ONE head, so Newton's iterations for 1/a and 1/√a cost one attention layer each and
make no approximation error of their own (DESIGN §9, "Scalars refine in heads"):

    reciprocal   r ← 2r − a·r·r                     1 − a r' = (1 − a r)²: e' = −e²
    rsqrt        r ← (3r − w·r·r)/2,  w ← (3w − w·w·r)/2   with w = a·r carried, so no
                 monomial has more than three factors; e' = −(3e² + e³)/2
    sqrt         √a = a·(1/√a) = w: the same iteration, its w

The seed r₀ is an MLP piece: a PL fit of a^p with a *relative* error (approx.power_relative,
geometric knots: neurons grow with log(hi/lo), not with 1/lo). rsqrt needs w₀ = a·r₀ exactly
(the ratio w/(a r) is invariant under the iteration), which costs one more head layer.
A sqrt whose domain starts at 0 is seeded on [δ, hi], δ = (tol/2)²: below δ the clamped seed
makes the iteration increase monotonically towards 1/√a, so 0 ≤ a·r ≤ √a ≤ tol/2.

The number of steps follows from the seed's *measured* error through the exact error
recursion above, until the relative error is below the budget (tol / max|f| for an absolute
tol, the tol itself for a relative one), floored at float64 rounding: O(log log 1/tol) layers.
Whether to refine or fit the function directly (approx.py, as every other function) is a
cost comparison, neurons + NEURONS_PER_LAYER · layers, and the reason is kept in the
approximation record so the report can show it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ApproxError
from ..language import portable_math as pm
from .approx import PLApprox, approximate_callable, power_relative

NEURONS_PER_LAYER = 500      # what a layer of depth is worth in ReLU units, for the choice
FLOAT64_REL = 2.0 ** -52     # relative rounding of the refined value: the floor of any target
SEED_RTOLS = (0.5, 0.25, 0.1, 3e-2, 1e-2, 3e-3, 1e-3)
MAX_STEPS = 12
POWER = {"reciprocal": -1.0, "rsqrt": -0.5, "sqrt": 0.5}


@dataclass(frozen=True)
class Refinement:
    """How one scalar call is computed: `kind` of a on [lo, hi], seed, Newton steps."""
    kind: str                    # reciprocal | rsqrt | sqrt
    lo: float                    # the seed's domain (sqrt from 0: starts at the floor δ)
    hi: float
    seed: PLApprox               # of |a|^p on [|lo|, |hi|] (mirrored for negative a)
    steps: int
    rel_error: float             # predicted relative error after `steps` (≥ rounding)
    target: float                # the relative error asked for
    layers: int                  # head layers after the seed's MLP
    negative: bool = False       # reciprocal of a negative a: 1/a = −1/|a|
    floor: float = 0.0           # sqrt: inputs below it give a value within tol/2 of √a
    choice: str = ""

    @property
    def cost(self) -> int:
        """What the choice weighs: seed neurons plus NEURONS_PER_LAYER per head layer."""
        return self.seed.neurons + NEURONS_PER_LAYER * self.layers


def next_error(kind: str, e: float) -> float:
    """Worst-case relative error after one Newton step from relative error e."""
    if kind == "reciprocal":
        return e * e
    return 1.5 * e * e + 0.5 * e ** 3


def steps_for(kind: str, e0: float, target: float) -> tuple[int, float] | None:
    """Steps until the relative error is ≤ max(target, rounding), and the bound reached."""
    goal = max(target, FLOAT64_REL)
    e, k = e0, 0
    while e > goal:
        e = next_error(kind, e)
        k += 1
        if k > MAX_STEPS or e >= e0 and k > 1:
            return None
    return k, max(e, FLOAT64_REL)


def relative_target(kind: str, lo: float, hi: float, tol: float, relative: bool) -> float:
    """The relative error that meets the budget everywhere on [lo, hi]."""
    if relative:
        return tol
    biggest = {"reciprocal": 1 / min(abs(lo), abs(hi)), "sqrt": math.sqrt(hi),
               "rsqrt": 1 / math.sqrt(lo)}[kind]
    return tol / biggest


def choose(kind: str, lo: float, hi: float, tol: float, relative: bool = False,
           direct: int | None = None) -> tuple[Refinement | None, str]:
    """The cheapest seeded refinement of `kind` on [lo, hi] for the budget, unless the direct
    fit (`direct` neurons; None where no direct fit meets the budget) costs less; and why."""
    ref = _cheapest(kind, lo, hi, tol, relative)
    cost = None if ref is None else ref.cost
    if ref is None or (direct is not None and direct <= cost):
        if direct is None:
            return None, ""
        why = (f"direct fit: {direct} neurons" + (
            "; no seeded refinement applies" if ref is None else
            f", cheaper than seed + {ref.layers} head layers (cost {cost} at "
            f"{NEURONS_PER_LAYER} neurons per layer)"))
        return None, why
    alt = ("no direct fit meets the budget" if direct is None else
           f"a direct fit needs {direct} neurons")
    why = (f"refined: seed {ref.seed.neurons} neurons (relative error {ref.seed.max_error:.2g}) "
           f"+ {ref.layers} head layers ({ref.steps} Newton steps) to relative error "
           f"{ref.rel_error:.2g}; cost {cost} at {NEURONS_PER_LAYER} neurons per layer, {alt}")
    return replace(ref, choice=why), why


def _cheapest(kind, lo, hi, tol, relative) -> Refinement | None:
    negative = kind == "reciprocal" and hi < 0
    if negative:
        lo, hi = -hi, -lo
    floor = 0.0
    if kind == "sqrt" and lo <= 0.0 and not relative:
        floor = lo = (tol / 2) ** 2
    if not 0 < lo < hi:
        return None
    target = relative_target(kind, lo, hi, tol, relative)
    best = None
    for seed_rtol in SEED_RTOLS:
        try:
            seed = power_relative(kind, POWER["rsqrt" if kind == "sqrt" else kind], lo, hi,
                                  seed_rtol)       # √a = a·(1/√a): sqrt seeds 1/√a too
        except ApproxError:
            continue
        found = steps_for(kind, seed.max_error, target)
        if found is None or found[0] == 0:
            continue
        steps, err = found
        ref = Refinement(kind, lo, hi, seed, steps, err, target, steps + (kind != "reciprocal"),
                         negative, floor)
        if best is None or ref.cost < best.cost:
            best = ref
    return best


def direct_neurons(kind: str, lo: float, hi: float, tol: float, relative: bool,
                   cap: int = 20_000) -> int | None:
    """Neurons of the direct PL fit of `kind` on [lo, hi] within the budget, None if none
    fits under `cap` (or the budget is below float64 rounding)."""
    p = POWER[kind]
    try:
        if relative:
            if lo <= 0 < hi or (p != -1 and lo < 0):
                return None
            a, b = (lo, hi) if lo > 0 else (-hi, -lo)
            return power_relative(kind, p, a, b, tol, max_neurons=cap).neurons
        if (lo <= 0 <= hi) if p == -1 else (lo < 0 or (p < 0 and lo == 0)):
            return None

        def f(x):
            return np.sign(x) * pm.power(np.abs(x), p)
        return approximate_callable(kind, f, lo, hi, tol, max_neurons=cap).neurons
    except ApproxError:
        return None


def seed_approx(ref: Refinement) -> PLApprox:
    """The seed as a PL function of a itself (mirrored to negative a for a reciprocal)."""
    s = ref.seed
    if not ref.negative:
        return s
    t, v = -s.knots[::-1], -s.values[::-1]
    return PLApprox(s.name, -s.hi, -s.lo, t, v, s.max_error, s.tol, False, relative=True)


def iteration(kind: str, a: int, r: int, w: int | None):
    """One Newton step as {(factor atoms): coefficient} over scalar atoms: (r', w')."""
    if kind == "reciprocal":
        return {(r,): 2.0, (a, r, r): -1.0}, None
    return ({(r,): 1.5, (w, r, r): -0.5}, {(w,): 1.5, (w, w, r): -0.5})


__all__ = ["Refinement", "choose", "direct_neurons", "steps_for", "next_error",
           "seed_approx", "iteration", "NEURONS_PER_LAYER"]
