"""Continuous piecewise-linear (PL) approximation of scalar functions, in MLP form.

An MLP sublayer W_2 ReLU(W_1 h) has no biases: constants enter through a gate row that is 1
where the function applies and 0 elsewhere (where the input is 0 as well).  So every hidden unit
here is ReLU(a*u + b*gate) and the whole piece outputs 0 when u = gate = 0.

Knot placement is what buys accuracy per neuron (DESIGN §5): the interval a knot may span shrinks
like sqrt(tol/|f''|), so knots are placed by a greedy sweep that makes every interval as long as
the tolerance allows.  Greedy reach is optimal for covering [lo, hi] with intervals whose error
grows with their length, and it needs no smoothness: sqrt's infinite curvature at 0 only makes
the first intervals tiny.  The sweep runs in independent chunks (cut where the curvature integral
∫sqrt|f''| is equal) advanced in lockstep, so numpy vectorises over chunks; each chunk boundary
costs at most one extra knot.

By default the PL function is not the interpolant: knot values are f(t) -/+ tol where f is
convex/concave, so the error band [-tol, tol] is used on both sides and each interval may be
sqrt(2) longer than an interpolant's (about ∫sqrt|f''| / sqrt(16 tol) knots instead of
/ sqrt(8 tol)).  `interpolate=True` gives plain interpolation (values == f(knots)), which is
also the fallback when shifted values cannot get past a point (cbrt's flip of convexity at 0).

Outside [lo, hi] the PL function is constant (clamped to its end values), which the ReLU form
reproduces exactly; abs, relu and clip are instead their exact ReLU forms on all of R.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..language import functions as _fn
from ..language import portable_math as pm
from ..errors import ApproxError

# Fits evaluate the bit-reproducible versions (portable_math's doc says why), not numpy's.
FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = dict(pm.PORTABLE)
PIECEWISE_LINEAR_EXACT = {"abs", "relu", "clip"}

_GRID = 200_001        # dense check grid (plus knots, midpoints, 64 samples per interval)
_M = 32                # samples per interval while placing knots
_MARGIN = 2e-3         # placement aims below tol: _M samples miss a parabola's peak by < 1/_M**2
_RTOL = 1e-3           # interval lengths are searched to this relative precision
_EPS = np.finfo(float).eps


def exact_function(name: str, *args: float) -> Callable[[np.ndarray], np.ndarray]:
    if name == "clip":
        if len(args) != 2 or not args[0] <= args[1]:
            raise ApproxError(f"clip needs two bounds lo <= hi, got {args}")
        lo_c, hi_c = map(float, args)
        return lambda x: _fn.clip(np.asarray(x, dtype=float), lo_c, hi_c)
    if name not in FUNCTIONS:
        raise ApproxError(f"unknown function {name!r}; known: {sorted(FUNCTIONS) + ['clip']}")
    if args:
        raise ApproxError(f"{name} takes no parameters, got {args}")
    return FUNCTIONS[name]


@dataclass(frozen=True, eq=False)
class PLApprox:
    """A PL function of one variable with its measured error, and the ReLU units it costs.

    Called outside [lo, hi] it returns the end values (clamped), exactly what the ReLU form
    computes there, so an out-of-domain input gives a bounded, predictable output rather than a
    wild extrapolation.  abs/relu/clip are the exception: their ReLU forms are the functions
    themselves on all of R, so they extend exactly.
    """
    name: str
    lo: float
    hi: float
    knots: np.ndarray = field(repr=False)    # strictly increasing, lo ... hi
    values: np.ndarray = field(repr=False)   # pl(knots): f(knots) shifted by <= tol, see module doc
    max_error: float                         # max |pl - f| on [lo, hi], measured
    tol: float
    exact: bool                              # pl == f on [lo, hi] (to rounding)
    # abs/relu/clip: the exact function and its ReLU form, both valid on all of R.
    _f: Callable | None = field(default=None, repr=False)
    _form: tuple | None = field(default=None, repr=False)
    relative: bool = False                   # max_error and tol are relative: |pl - f| / |f|

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if self._f is not None:
            return self._f(x)
        return np.interp(x, self.knots, self.values)   # np.interp clamps outside the knots

    @property
    def neurons(self) -> int:
        return len(self.relu_form()[2])

    @property
    def absolute_error(self) -> float:
        """How far pl may be from f on [lo, hi], absolute: 0 for an exact form, max_error, or
        max_error times the largest |value| for a relative fit."""
        if self.exact:
            return 0.0
        return self.max_error * (float(np.abs(self.values).max()) if self.relative else 1.0)

    def relu_form(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, c) with pl(u) == sum_j c[j] * relu(a[j]*u + b[j]*gate) at gate = 1, on all of R.

        One unit per knot carries that knot's slope change; the constant comes from a unit
        relu(1*gate) (a = 0), which is 0 when the gate is.  The units all face away from the end
        with the steeper slope, so steep units (sqrt near 0) are only active near that end and
        their large coefficients never cancel inside the domain.  Units with c == 0 are dropped.
        That is knots + 1 units: clamping both ends costs one more than a PL function that is
        left to extrapolate linearly on one side (DESIGN §5 counts intervals + 1).
        Inside `errors_shifted` a fitted function's form is moved by its own error.
        """
        shift = _ERROR_SHIFT.get()
        if shift and not self.exact and self.max_error > 0:
            return self._shifted_form(shift)
        if self._form is not None:
            return self._form
        cached = self.__dict__.get("_relu_form")
        if cached is None:            # computed once: emission asks for it per unit row
            cached = self._relu_form_of_knots()
            for arr in cached:
                arr.flags.writeable = False
            object.__setattr__(self, "_relu_form", cached)
        return cached

    def _shifted_form(self, direction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ReLU form of this fit moved by its own measured error (see errors_shifted):
        up or down by max_error, or scaled by 1 ± max_error for a relative fit."""
        moved = self.values * (1 + direction * self.max_error) if self.relative else \
            self.values + direction * self.max_error
        return _relu_form_of(self.knots, moved)

    @property
    def slopes(self) -> np.ndarray:
        """The slope of each interval between knots."""
        return np.diff(self.values) / np.diff(self.knots)

    def _relu_form_of_knots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _relu_form_of(self.knots, self.values)


def _relu_form_of(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PLApprox.relu_form of the PL function through the points (t, v)."""
    s = np.diff(v) / np.diff(t)
    c = np.diff(np.concatenate([[0.0], s, [0.0]]))          # slope change at each knot
    if abs(s[0]) > abs(s[-1]):      # relu(t - u): zero right of hi, so constant = v[-1]
        a, b, const = -np.ones_like(t), t.copy(), v[-1]
    else:                           # relu(u - t): zero left of lo, so constant = v[0]
        a, b, const = np.ones_like(t), -t, v[0]
    a, b, c = np.append(a, 0.0), np.append(b, 1.0), np.append(c, const)
    keep = c != 0
    return a[keep], b[keep], c[keep]


# A what-if build for the tolerance of `check` and `trace` (inspection/tolerance.py): every
# fitted function off by its own measured error, all in one direction, shows how far errors
# of that size carry to each value on given inputs, which the card's fixed estimate cannot
# (a loop applies a fit once per iteration). The what-if build is a whole compile inside it;
# its layout is checked equal to the build's.
_ERROR_SHIFT: ContextVar[float] = ContextVar("fit_error_shift", default=0.0)


@contextmanager
def errors_shifted(direction: float = 1.0):
    """Inside: PLApprox.relu_form of every fitted (not exact) function is moved by
    `direction` times its measured error (relative fits: scaled by 1 + direction·error)."""
    token = _ERROR_SHIFT.set(float(direction))
    try:
        yield
    finally:
        _ERROR_SHIFT.reset(token)


def rounding_floor(largest: float) -> float:
    """The float64 rounding of values up to `largest` in magnitude, as a fit's check sees it:
    an absolute budget at or below it could not be told from rounding."""
    return 16 * _EPS * largest


def approximate(name: str, lo: float, hi: float, tol: float, *args: float,
                max_neurons: int = 200_000, interpolate: bool = False) -> PLApprox:
    """The named functions know where they are defined, so a bad domain fails here, by name,
    before any sampling; abs/relu/clip skip the search (their ReLU forms are exact)."""
    f = exact_function(name, *args)
    lo, hi, tol = _check_interval(name, lo, hi, tol)
    need = {"sqrt": (lo >= 0, "lo >= 0"), "log": (lo > 0, "lo > 0"),
            "reciprocal": (not lo <= 0 <= hi, "0 outside the domain")}
    if name in need and not need[name][0]:
        raise ApproxError(f"{name} on [{lo:g}, {hi:g}]: undefined there, needs {need[name][1]}")
    if name in PIECEWISE_LINEAR_EXACT:
        return _exact(name, f, lo, hi, tol, args)
    return approximate_callable(name, f, lo, hi, tol, max_neurons, interpolate=interpolate)


def approximate_callable(name: str, f: Callable, lo: float, hi: float, tol: float,
                         max_neurons: int = 200_000, *, interpolate: bool = False) -> PLApprox:
    """f must be vectorised (any array shape) and continuous on [lo, hi]."""
    lo, hi, tol = _check_interval(name, lo, hi, tol)
    where = f"{name} on [{lo:g}, {hi:g}] at tol {tol:g}"
    xg = np.linspace(lo, hi, _GRID)
    with np.errstate(all="ignore"):
        fg = _feval(f, xg)
    if not np.all(np.isfinite(fg)):
        at = float(xg[np.flatnonzero(~np.isfinite(fg))[0]])
        raise ApproxError(f"{where}: the function is not finite on the domain (at {at:g})",
                          reason=ApproxError.NOT_FINITE)
    noise = rounding_floor(float(np.max(np.abs(fg))))
    if tol <= noise:
        raise ApproxError(f"{where}: tol is below the float64 rounding of values up to "
                          f"{np.max(np.abs(fg)):.3g}, so no error could be checked",
                          reason=ApproxError.BELOW_ROUNDING, largest=float(np.max(np.abs(fg))))
    target = tol * (1 - _MARGIN)
    # Knot values sit a hair inside the band: where f is straight the error is the shift itself,
    # and rounding must not push it over the target.
    shift = 0.0 if interpolate else max(target * (1 - _RTOL) - 256 * _EPS * np.max(np.abs(fg)), 0.0)
    sig = _convexity_sign(xg, fg)
    step = (hi - lo) / (_GRID - 1)
    w, cell = _curvature(fg, step, noise)
    total = float(cell.sum())
    per_knot = np.sqrt(8 * target * (1 if interpolate else 2))
    estimate = total / per_knot
    if estimate > 2 * max_neurons:
        raise ApproxError(f"{where}: needs about {estimate:.3g} neurons "
                          f"> max_neurons {max_neurons}", reason=ApproxError.TOO_MANY_NEURONS)
    n_chunks = int(min(max(estimate // 250, 1), 4096))
    refined = _refined_cells(f, xg, cell, noise, per_knot)
    if refined is None:
        ends = _chunk_ends(xg, cell, total, n_chunks, lo, hi)
        w_at = w[np.minimum(np.rint((ends[:-1] - lo) / step).astype(int), len(w) - 1)]
    else:
        xr, cell = refined
        total = float(cell.sum())
        n_chunks = int(min(max(total / per_knot // 250, 1), 4096))
        ends = _chunk_ends(xr, cell, total, n_chunks, lo, hi)
        inside = np.minimum(np.searchsorted(xr, ends[:-1], side="right") - 1, len(cell) - 1)
        w_at = cell[inside] / np.diff(xr)[inside]
    with np.errstate(divide="ignore"):       # first guess: the length where h**2 |f''| / 8 = tol
        h0 = np.minimum(per_knot / w_at, np.diff(ends))
    try:
        t, v = _sweep(f, ends, h0, target, shift, sig, max_neurons, where)
    except _Stuck as stuck:
        # A shifted knot can leave no feasible next interval (convexity flips at a singular
        # point, as cbrt at 0); interpolated knots always leave one where f is continuous.
        if shift == 0:
            raise ApproxError(f"{where}: cannot meet tol near x = {stuck.args[0]:g} (the "
                              "function is not continuous there, or tol is below rounding)")
        return approximate_callable(name, f, lo, hi, tol, max_neurons, interpolate=True)
    t, v = _prune(f, t, v, target)
    t, v, err = _verify(f, t, v, tol, xg, fg, where, max_neurons)
    exact = bool(err <= 4 * _EPS * np.max(np.abs(fg)))
    out = PLApprox(name, lo, hi, _frozen(t), _frozen(v), err, tol, exact)
    if out.neurons > max_neurons:
        raise ApproxError(f"{where}: needs {out.neurons} neurons > max_neurons {max_neurons}",
                          reason=ApproxError.TOO_MANY_NEURONS)
    return out


def power_relative(name: str, p: float, lo: float, hi: float, rtol: float,
                   max_neurons: int = 200_000) -> PLApprox:
    """x ** p on [lo, hi] (0 < lo) within a *relative* error rtol, with geometric knots.

    x ** p is homogeneous, so the chord's relative error on [t, q t] does not depend on t: knots
    t_j = lo q^j with one ratio q make the relative error the same in every interval, and the
    count grows with log(hi / lo), not with 1 / lo (reciprocal on [1e-9, 1] at rtol 1/2 is
    10 knots). Values are f(t_j) scaled by one factor k that centres the chord's relative
    error band [e_lo, e_hi] on 0, so the error is (e_hi - e_lo) / (2 + e_hi + e_lo) instead of
    the chord's e_hi - e_lo. The error is measured afterwards, like every fit's."""
    lo, hi, rtol = _check_interval(name, lo, hi, rtol)
    if lo <= 0:
        raise ApproxError(f"{name} on [{lo:g}, {hi:g}]: a relative fit needs 0 < lo")
    if not rtol < 1:
        raise ApproxError(f"{name}: a relative tolerance must be below 1, got {rtol:g}")

    def f(x):
        return pm.power(x, p)

    s = np.linspace(0.0, 1.0, 257)

    def band(q):                     # chord relative errors on [1, q], centred by the factor k
        x = 1 + (q - 1) * s
        e = (1 + (pm.power(q, p) - 1) * s) / pm.power(x, p) - 1
        k = 2 / (2 + e.max() + e.min())
        return k, max(k * (1 + e.max()) - 1, 1 - k * (1 + e.min()))

    target = rtol * (1 - _MARGIN)
    a, b = 0.0, 64.0                 # bisection on log q
    for _ in range(100):
        m = (a + b) / 2
        a, b = (m, b) if band(pm.exp(m))[1] <= target else (a, m)
    q = pm.exp(a)
    count = int(np.ceil(pm.log(hi / lo) / pm.log(q))) if q > 1 else max_neurons + 1
    if count + 2 > max_neurons:
        raise ApproxError(f"{name} on [{lo:g}, {hi:g}] at relative tol {rtol:g}: needs "
                          f"{count + 2} neurons > max_neurons {max_neurons}",
                          reason=ApproxError.TOO_MANY_NEURONS)
    t = np.minimum(lo * pm.exp(np.arange(count + 1) * pm.log(q)), hi)     # lo q**j
    t[-1] = hi
    t = np.unique(t)
    k = band(q)[0]
    v = k * f(t)
    if not np.all(np.isfinite(np.diff(v) / np.diff(t))) or np.max(np.abs(np.diff(v) / np.diff(t))) > 1e300:
        raise ApproxError(f"{name} on [{lo:g}, {hi:g}]: slopes beyond float64 range "
                          "(narrow the domain)")
    err = _relative_error(f, t, v)
    if err > rtol:
        raise ApproxError(f"{name} on [{lo:g}, {hi:g}]: relative error {err:.3g} over {rtol:g}")
    return PLApprox(name, lo, hi, _frozen(t), _frozen(v), err, rtol, False, relative=True)


def relative_callable(name: str, f: Callable, lo: float, hi: float, rtol: float,
                      max_neurons: int = 200_000, ref: Callable | None = None) -> PLApprox:
    """f on [lo, hi] within a *relative* error rtol (|pl - f| <= rtol |f|), for any continuous
    f without a zero there: the domain is cut where |f| has changed by a factor 2, each band is
    fitted as an interpolant (so the bands join) to the absolute budget rtol · min |f| of that
    band, and the bands' knots are joined. Within a band the budget is at most twice too tight,
    so the count is within √2 of the best for the relative budget, and it grows with the
    decades f spans (exp on [-20, 5], sigmoid far left), not with 1 / min |f|.
    `ref`: the error is relative to |ref| instead of |f| (|pl - f| <= rtol |ref|): a
    relative budget asked of one function inside a larger one (exp(z) tol rel 1e-6 fused
    with the - 1 after it: the error is relative to exp(z), the part the budget was asked of,
    and exp(z) - 1 may pass through 0)."""
    lo, hi, rtol = _check_interval(name, lo, hi, rtol)
    scale = f if ref is None else ref
    if not rtol < 1:
        raise ApproxError(f"{name}: a relative tolerance must be below 1, got {rtol:g}")
    where = f"{name} on [{lo:g}, {hi:g}] at relative tol {rtol:g}"
    xg = np.linspace(lo, hi, _GRID)
    with np.errstate(all="ignore"):
        fg = np.abs(_feval(scale, xg))
        finite = np.all(np.isfinite(fg)) and np.all(np.isfinite(_feval(f, xg)))
    if not finite:
        raise ApproxError(f"{where}: the function is not finite on the domain",
                          reason=ApproxError.NOT_FINITE)
    if fg.min() <= 0:
        raise ApproxError(f"{where}: the function reaches 0 on the domain, where no relative "
                          "error can be met (use an absolute tol)")
    cuts, start, low, high = [lo], 0, fg[0], fg[0]
    for i in range(1, len(xg)):
        low, high = min(low, fg[i]), max(high, fg[i])
        if high > 2 * low and i - 1 > start:
            cuts.append(float(xg[i - 1]))
            start, low, high = i - 1, min(fg[i - 1], fg[i]), max(fg[i - 1], fg[i])
    cuts.append(hi)
    ts, vs = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        band = fg[(xg >= a) & (xg <= b)]
        piece = approximate_callable(name, f, a, b, rtol * float(band.min()),
                                     max_neurons, interpolate=True)
        ts.append(np.asarray(piece.knots)[:-1] if b < hi else np.asarray(piece.knots))
        vs.append(np.asarray(piece.values)[:-1] if b < hi else np.asarray(piece.values))
    t, v = np.concatenate(ts), np.concatenate(vs)
    if len(t) - 1 + 2 > max_neurons:
        raise ApproxError(f"{where}: needs {len(t) + 1} neurons > max_neurons {max_neurons}",
                          reason=ApproxError.TOO_MANY_NEURONS)
    err = _relative_error(f, t, v, ref=ref)
    if err > rtol:
        raise ApproxError(f"{where}: relative error {err:.3g} over {rtol:g}")
    return PLApprox(name, lo, hi, _frozen(t), _frozen(v), err, rtol, False, relative=True)


def _relative_error(f, t, v, m=1024, iters=40, ref=None):
    """max |pl - f| / |f| (|ref| where given) over every interval: m samples, then a ternary
    search at the peak."""
    a, h, va, dv = t[:-1, None], np.diff(t)[:, None], v[:-1, None], np.diff(v)[:, None]
    s = np.arange(m + 1) / m

    def err(q, rows=slice(None)):
        x = a[rows] + h[rows] * q
        fx = _feval(f, x)                            # once: it is both the error and the scale
        scale = fx if ref is None else _feval(ref, x)
        return np.abs(fx - (va[rows] + dv[rows] * q)) / np.abs(scale)

    # the m + 1 samples of every interval, a few intervals at a time (the same numbers as one
    # (intervals, m + 1) array, without its memory traffic: 16,508 intervals are 17 M samples)
    chunk = max(1, (1 << 16) // (m + 1))
    highest, k = [], np.empty(len(a), dtype=np.intp)
    for i in range(0, len(a), chunk):
        e = err(s, slice(i, i + chunk))
        highest.append(e.max())
        k[i:i + chunk] = np.argmax(e, axis=1)
    k = np.clip(k, 1, m - 1)
    peak = _ternary_peak(err, s[k - 1][:, None], s[k + 1][:, None], iters)
    return float(max(np.max(highest), err(peak).max()))


def _ternary_peak(err, left, right, iters):
    """Where `err` peaks in each row's bracket [left, right] (columns of interval fractions),
    by `iters` steps of ternary search: the refinement that follows a sampled maximum."""
    for _ in range(iters):
        m1, m2 = left + (right - left) / 3, right - (right - left) / 3
        up = err(m1) < err(m2)
        left, right = np.where(up, m1, left), np.where(up, right, m2)
    return (left + right) / 2


def best_uniform_neurons(f: Callable, lo: float, hi: float, tol: float) -> int:
    """Neurons (knots + 1, as PLApprox.neurons counts) of the uniform-knot interpolant with
    error <= tol, for comparing against adapted knots.  Counts far beyond a dense evaluation
    (sqrt near 0 needs ~1e11) are found by checking the end intervals, the intervals at the
    largest |f''| and a uniform sample of the rest."""
    lo, hi = float(lo), float(hi)
    xg = np.linspace(lo, hi, 2**16 + 1)
    hot = xg[1:-1][np.argsort(-np.abs(np.diff(_feval(f, xg), 2)))[:1024]]

    def error(n: int) -> float:
        if n <= 2**16:
            idx = np.arange(n)
        else:
            idx = np.concatenate([np.arange(512), n - 1 - np.arange(512),
                                  np.linspace(0, n - 1, 4096).astype(np.int64),
                                  np.minimum(((hot - lo) / (hi - lo) * n).astype(np.int64), n - 1)])
        idx = np.unique(idx)
        a, b = lo + (hi - lo) * idx / n, lo + (hi - lo) * (idx + 1) / n
        return float(_segment_errors(f, a, _feval(f, a), b, _feval(f, b), _M).max())

    n = 1
    while error(n) > tol:
        n *= 2
        if n > 2**62:
            raise ApproxError(f"uniform knots cannot reach tol {tol:g} on [{lo:g}, {hi:g}]")
    good, bad = n, n // 2
    while good - bad > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if error(mid) <= tol else (good, mid)
    return good + 2


# --- internals ---------------------------------------------------------------------------


def _check_interval(name, lo, hi, tol):
    lo, hi, tol = float(lo), float(hi), float(tol)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ApproxError(f"{name} on [{lo:g}, {hi:g}]: the domain needs finite lo < hi")
    if not (np.isfinite(tol) and tol > 0):
        raise ApproxError(f"{name} on [{lo:g}, {hi:g}]: tol must be > 0, got {tol:g}")
    return lo, hi, tol


def _feval(f, x):
    x = np.asarray(x, dtype=float)
    return np.asarray(f(x.ravel()), dtype=float).reshape(x.shape)


def _frozen(a):
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


def _exact(name, f, lo, hi, tol, args):
    """abs, relu, clip: their natural ReLU forms are exact on all of R, so no clamping."""
    if name == "clip":
        lo_c, hi_c = map(float, args)
        breaks = [lo_c, hi_c]
        units = [(0.0, 1.0, lo_c)]                                  # (a, b, c) of each unit
        if lo_c < hi_c:
            units += [(1.0, -lo_c, 1.0), (1.0, -hi_c, -1.0)]
    else:
        breaks = [0.0]
        units = [(1.0, 0.0, 1.0)] + ([(-1.0, 0.0, 1.0)] if name == "abs" else [])
    a, b, c = (np.array(col) for col in zip(*[u for u in units if u[2] != 0]))
    t = np.unique([lo, hi] + [x for x in breaks if lo < x < hi])
    xs = np.concatenate([np.linspace(lo, hi, _GRID), t])
    err = float(np.max(np.abs(_relu_eval((a, b, c), xs) - f(xs))))
    return PLApprox(name, lo, hi, _frozen(t), _frozen(f(t)), err, tol, True, f, (a, b, c))


def _relu_eval(form, u):
    """Σ_j c_j relu(a_j u + b_j), summed unit by unit in a fixed order (a matrix product
    would let the BLAS kernel choose the order, and the measured error reaches the manifest)."""
    a, b, c = form
    out = np.zeros(np.shape(u))
    for aj, bj, cj in zip(a, b, c):
        out = out + cj * np.maximum(aj * u + bj, 0.0)
    return out


def _convexity_sign(xg, fg, stride=64):
    """-sign(f'') on a coarse grid (wide enough that tiny curvature beats rounding): knot values
    move down where f is convex, up where concave, and stay put where f is linear."""
    xc, fc = xg[::stride], fg[::stride]
    d2 = np.diff(fc, 2)
    s = np.where(np.abs(d2) > 64 * _EPS * np.max(np.abs(fc)), -np.sign(d2), 0.0)
    lo, dx = xc[0], xc[1] - xc[0]
    last = len(s) - 1
    return lambda x: s[np.minimum(np.maximum(np.rint((x - lo) / dx).astype(int) - 1, 0), last)]


def _segment_errors(f, a, va, b, vb, m, fa=None, fb=None):
    """Max |f - line| over m-1 interior samples of each segment [a, b], and the same for the
    chord through (a, fa), (b, fb): that one vanishes like h**2 even when the knot values are
    shifted, which makes it the quantity to solve for."""
    s = np.arange(1, m) / m
    fx = _feval(f, a[:, None] + (b - a)[:, None] * s)
    err = np.abs(fx - (va[:, None] + (vb - va)[:, None] * s)).max(axis=1)
    if fa is None:
        return err
    return err, np.abs(fx - (fa[:, None] + (fb - fa)[:, None] * s)).max(axis=1)


class _Stuck(Exception):
    """No interval from this knot meets the target, however short."""


def _next_length(h, c, prev_h, prev_c, ok_h, bad_h, level, tries):
    """The next trial length per chunk: a secant step in log-log (exponent from the last two
    trials) towards the chord-error level, kept inside the bracket [longest good, shortest
    bad] (with one side unknown, moved by bounded factors); every third try bisects, in case
    the secant stalls."""
    p = np.clip(pm.log(c / prev_c) / pm.log(h / prev_h), 0.25, 4.0)
    p = np.where(np.isfinite(p), p, 2.0)
    hn = h * pm.exp(pm.log(level * (1 - 1.5 * _RTOL) / np.maximum(c, 1e-300)) / p)
    ratio = bad_h / ok_h
    low = np.where(np.isinf(bad_h), ok_h * (1 + _RTOL), ok_h * pm.power(ratio, 0.05))
    high = np.where(np.isinf(bad_h), ok_h * 16, ok_h * pm.power(ratio, 0.95))
    low = np.where(ok_h == 0, bad_h * 1e-6, low)
    high = np.where(ok_h == 0, bad_h * 0.9, high)
    hn = np.minimum(np.maximum(hn, low), high)
    return np.where((tries % 3 == 0) & np.isfinite(ratio), ok_h * np.sqrt(ratio), hn)


def _curvature(fvals, step: float, noise: float):
    """sqrt|f''| at the interior points of a uniform grid of spacing `step` (second
    differences above rounding only), and its integral over each grid cell: it sizes the
    chunks, the first guesses, and the early size check."""
    d2 = np.abs(np.diff(fvals, 2))
    w = np.sqrt(np.where(d2 > 4 * noise, d2, 0.0)) / step                  # at x[1:-1]
    return w, np.concatenate([w[:1], (w[1:] + w[:-1]) / 2, w[-1:]]) * step     # per cell


def _chunk_ends(x, cell, total: float, n_chunks: int, lo: float, hi: float) -> np.ndarray:
    """The ends of n_chunks chunks of the grid x over [lo, hi] holding equal shares of the
    cells' curvature integral (plus a floor, so that flat parts get chunks too)."""
    cum = np.concatenate([[0.0], np.cumsum(cell + 1e-3 * total / len(cell) + 1e-300)])
    ends = np.unique(np.interp(np.linspace(0, cum[-1], n_chunks + 1), cum, x))
    ends[0], ends[-1] = lo, hi
    return ends


_REFINE_SPLIT = 64       # subcells per refined grid cell
_REFINE_ROUNDS = 12      # refinements of a cell within a cell at most


def _refined_cells(f, xg, cell, noise, per_knot):
    """Where one cell of the check grid holds more knots than a chunk is meant to (250), the
    grid's estimate of sqrt|f''| there is too coarse: near a singular end (1/sqrt(x) on
    [1e-8, 1]: x^-5/4 concentrates four fifths of the knots in the first cell) the chunks
    split that cell evenly and the first one gets most of the knots, so the sweep runs them
    one at a time (a 86k-knot fit took 23 s). Such cells are re-estimated on a finer grid of
    their own, recursively. Returns the refined grid and its cells' estimates, or None where
    no cell needed it (the chunks are then the grid's, as before)."""
    share = 250 * per_knot
    if not np.any(cell > share):
        return None
    xs, cs = xg, cell
    for _ in range(_REFINE_ROUNDS):
        big = np.flatnonzero(cs > share)
        if not len(big):
            break
        new_x, new_c, start = [], [], 0
        for i in big:
            sub = np.linspace(xs[i], xs[i + 1], _REFINE_SPLIT + 1)
            with np.errstate(all="ignore"):
                fs = _feval(f, sub)
            _, sub_c = _curvature(fs, sub[1] - sub[0], noise)
            new_x += [xs[start:i + 1], sub[1:-1]]
            new_c += [cs[start:i], sub_c]
            start = i + 1
        xs = np.concatenate(new_x + [xs[start:]])
        cs = np.concatenate(new_c + [cs[start:]])
    return xs, cs


def _sweep(f, ends, h0, target, shift, sig, cap, where):
    """Greedy reach in every chunk at once: the longest interval from the current knot whose
    error is <= target, found by secant steps on log(chord error) vs log(length) in a bracket.
    With both ends shifted by `shift` the way f bends, the error is <= target while the chord
    error is <= target + shift: that is the level the secant aims at."""
    a, stop = ends[:-1].copy(), ends[1:]
    fa = _feval(f, a)
    va = fa + shift * sig(a)
    xs, vs = [a[:1]], [va[:1]]
    live = np.ones(len(a), bool)
    h, last, tries = h0.copy(), np.full_like(h0, np.nan), np.zeros(len(h0), int)
    # per chunk: the longest length known good (with its chord error, end, value, f there),
    # the shortest known bad, and the previous trial for the secant
    ok_h, ok_c, ok_b, ok_v, ok_f = np.zeros_like(a), np.zeros_like(a), a, va, fa
    bad_h, prev_h, prev_c = np.full_like(a, np.inf), np.full_like(a, np.nan), np.full_like(a, np.nan)
    count, level = 1, target + shift
    with np.errstate(all="ignore"):   # 0/0 and inf/inf in masked-off lanes
        while live.any():
            rem = stop - a
            b = np.where(h >= rem, stop, a + h)
            fb = _feval(f, b)
            vb = fb + shift * sig(b)
            e, c = _segment_errors(f, a, va, b, vb, _M, fa, fb)
            good = e <= target
            ok_h, ok_c = np.where(good, h, ok_h), np.where(good, c, ok_c)
            ok_b = np.where(good, b, ok_b)
            ok_v, ok_f = np.where(good, vb, ok_v), np.where(good, fb, ok_f)
            bad_h = np.where(good, bad_h, h)
            done = live & (ok_h > 0) & ((ok_b >= stop) | (bad_h <= ok_h * (1 + _RTOL))
                                        | (ok_c >= level * (1 - 3 * _RTOL)))
            stuck = live & (ok_h == 0) & (bad_h <= 1e-15 * (np.abs(a) + rem))
            if stuck.any():
                raise _Stuck(float(a[stuck][0]))
            tries += 1
            hn = _next_length(h, c, prev_h, prev_c, ok_h, bad_h, level, tries)
            prev_h, prev_c = np.where(done, np.nan, h), np.where(done, np.nan, c)
            if done.any():
                xs.append(ok_b[done])
                vs.append(ok_v[done])
                count += int(done.sum())
                if count + 1 > cap:
                    raise ApproxError(f"{where}: needs more than max_neurons {cap} neurons",
                                      reason=ApproxError.TOO_MANY_NEURONS)
                a, va = np.where(done, ok_b, a), np.where(done, ok_v, va)
                fa = np.where(done, ok_f, fa)
                # lengths vary smoothly: extrapolate the last two accepted ones
                grow = np.where(np.isfinite(last), np.clip(ok_h / last, 0.5, 2.0), 1.0)
                hn = np.where(done, ok_h * grow, hn)
                last = np.where(done, ok_h, last)
                ok_h, ok_c = np.where(done, 0.0, ok_h), np.where(done, 0.0, ok_c)
                bad_h = np.where(done, np.inf, bad_h)
                tries = np.where(done, 0, tries)
                live &= ~(done & (ok_b >= stop))
            h = np.where(live, np.minimum(hn, stop - a), 0.0)
    t, v = np.concatenate(xs), np.concatenate(vs)
    order = np.argsort(t)
    return t[order], v[order]


def _prune(f, t, v, target):
    """Drop knots whose neighbours' chord already meets the target (chunk ends, flat parts);
    alternating parities keep the removed knots non-adjacent, so each check stays valid."""
    for parity in (1, 0, 1, 0):
        i = np.arange(1, len(t) - 1)
        i = i[i % 2 == parity]
        if len(i) == 0:
            continue
        drop = i[_segment_errors(f, t[i - 1], v[i - 1], t[i + 1], v[i + 1], _M) <= target]
        keep = np.ones(len(t), bool)
        keep[drop] = False
        t, v = t[keep], v[keep]
    return t, v


def _interval_max(f, t, v, m=64, iters=40):
    """Per-interval max |f - pl|: m samples, then a ternary search around the largest."""
    a, h, va, dv = t[:-1, None], np.diff(t)[:, None], v[:-1, None], np.diff(v)[:, None]
    s = np.arange(m + 1) / m
    e = np.abs(_feval(f, a + h * s) - (va + dv * s))
    k = np.argmax(e[:, 1:-1], axis=1) + 1      # interior peak: the ends are exact samples already

    def err(q):
        return np.abs(_feval(f, a + h * q) - (va + dv * q))

    peak = _ternary_peak(err, s[k - 1][:, None], s[k + 1][:, None], iters)
    return np.maximum(e.max(axis=1), err(peak)[:, 0])


def _verify(f, t, v, tol, xg, fg, where, cap):
    """Measure the error independently of the sweep's sampling; split any interval over tol."""
    for _ in range(64):
        per = _interval_max(f, t, v)
        dense = np.abs(fg - np.interp(xg, t, v))
        bad = per > tol
        bad[np.clip(np.searchsorted(t, xg[dense > tol], side="right") - 1, 0, len(t) - 2)] = True
        if not bad.any():
            return t, v, float(max(per.max(), dense.max()))
        if len(t) + bad.sum() + 1 > cap:
            break
        mid = (t[:-1][bad] + t[1:][bad]) / 2
        t, v = np.concatenate([t, mid]), np.concatenate([v, _feval(f, mid)])
        order = np.argsort(t)
        t, v = t[order], v[order]
    raise ApproxError(f"{where}: could not meet tol within max_neurons {cap}",
                      reason=ApproxError.TOO_MANY_NEURONS)
