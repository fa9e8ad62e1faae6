"""exp, log, log1p and powers whose float64 results are the same bits on every CPU.

Why this module exists: numpy picks a SIMD implementation of exp/log/power by CPU (AVX-512
SVML on one machine, AVX2 or libm on another) and glibc's libm picks FMA variants the same
way. They all agree to about an ulp, but the compiler's knot search, its fitted values and its
interval bounds feed those last bits into the weights, so the same program built on an AMD
and an Intel machine gave different artifacts (issue 16). Everything here is built from
IEEE-754 operations that are correctly rounded by definition: + − × ÷ and sqrt, exact
scalings by powers of two (ldexp, frexp) and rint. numpy evaluates these elementwise without
fusing (no FMA contraction across ufuncs), so the results depend on the inputs alone.

The algorithms are fdlibm's (Sun Microsystems, 1993: e_exp.c, e_log.c), vectorised; both
are within 1 ulp. log1p uses u = 1 + x and log(u)·x/(u − 1) (Goldberg 1991, a few ulps).
Accuracy is checked against numpy and the interpreter in tests/test_portable_math.py; the
reference interpreter itself keeps numpy (it is the oracle, and need not be reproducible
bit for bit: only what reaches an artifact must).
"""
from __future__ import annotations

import math

import numpy as np

_LN2_HI = 6.93147180369123816490e-01      # ln 2, its last 32 bits zero: k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_EXP_OVER = 7.09782712893383973096e+02     # exp(x) overflows above this
_EXP_UNDER = -7.45133219101941108420e+02   # and underflows to 0 below this
_P = (1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05,
      -1.65339022054652515390e-06, 4.13813679705723846039e-08)
_LG = (6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
       2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
       1.479819860511658591e-01)
_SQRT_HALF = 0.70710678118654757


def _array(x):
    return np.asarray(x, dtype=np.float64)


def _scalar_or_array(out, x):
    return float(out) if np.ndim(x) == 0 else out


def exp(x):
    """e**x (fdlibm e_exp.c): x = k ln2 + r, |r| ≤ ln2/2, a rational approximation of e**r,
    scaled by 2**k."""
    xa = _array(x)
    if xa.size <= _FEW:
        return _few(_exp_float, xa, x)
    with np.errstate(all="ignore"):
        finite = np.isfinite(xa) & (xa <= _EXP_OVER) & (xa >= _EXP_UNDER)
        xs = np.where(finite, xa, 0.0)
        k = np.rint(xs * _INV_LN2)
        out = np.ldexp(_exp_reduced(xs, k), k.astype(np.int64))
        out = np.where(finite, out, np.where(xa > 0, np.inf, np.where(xa < 0, 0.0, xa)))
    return _scalar_or_array(out, x)


def _exp_reduced(x, k):
    """e**(x − k ln2), |x − k ln2| ≤ ln2/2 (fdlibm's rational approximation), on floats or
    arrays alike: the one copy of the arithmetic both paths run, in the same order."""
    hi = x - k * _LN2_HI
    lo = k * _LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (_P[0] + t * (_P[1] + t * (_P[2] + t * (_P[3] + t * _P[4]))))
    return 1.0 - ((lo - (r * c) / (2.0 - c)) - hi)


def _log_reduced(f, k):
    """k ln2 + log(1 + f) for √½ − 1 ≤ f < √2 − 1 (fdlibm's polynomial in s²), on floats or
    arrays alike, like _exp_reduced."""
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
    t2 = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6])))
    r = t2 + t1
    hfsq = 0.5 * f * f
    return k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f)


def log(x):
    """Natural log (fdlibm e_log.c): x = 2**k m with √½ ≤ m < √2, f = m − 1, and
    log(1 + f) from s = f / (2 + f) by a polynomial in s²."""
    xa = _array(x)
    if xa.size <= _FEW:
        return _few(_log_float, xa, x)
    with np.errstate(all="ignore"):
        ok = np.isfinite(xa) & (xa > 0)
        m, k = np.frexp(np.where(ok, xa, 1.0))            # m in [0.5, 1)
        small = m < _SQRT_HALF
        m = np.where(small, m * 2.0, m)
        k = (k - small).astype(np.float64)
        out = _log_reduced(m - 1.0, k)                    # m - 1 exact (Sterbenz)
        special = np.where(xa == 0, -np.inf, np.where(xa == np.inf, np.inf, np.nan))
        out = np.where(ok, out, special)
    return _scalar_or_array(out, x)


# A few values at a time: the compiler's knot search calls exp and log on 1-16 values (its live
# chunks) tens of thousands of times per build, where numpy's per-call overhead (~40 ufunc
# calls of ~1 µs) is all the cost. These are the same operations in the same order on Python
# floats, which are IEEE-754 binary64 with every + − × ÷ correctly rounded and no contraction,
# so they give the vector code's bits (tests/test_portable_math.py compares them bit for bit).
_FEW = 16


def _few(fn, xa, x):
    if np.ndim(x) == 0:
        return fn(float(xa))
    return np.array([fn(v) for v in xa.ravel().tolist()], dtype=np.float64).reshape(xa.shape)


def _exp_float(x: float) -> float:
    if not (_EXP_UNDER <= x <= _EXP_OVER):
        return x if x != x else (math.inf if x > 0 else 0.0)
    k = round(x * _INV_LN2)               # round half to even, as np.rint
    try:
        return math.ldexp(_exp_reduced(x, float(k)), k)
    except OverflowError:             # np.ldexp's inf
        return math.inf


def _log_float(x: float) -> float:
    if not (0.0 < x < math.inf):
        return -math.inf if x == 0 else (math.inf if x == math.inf else math.nan)
    m, k = math.frexp(x)                  # m in [0.5, 1)
    if m < _SQRT_HALF:
        m, k = m * 2.0, k - 1
    return _log_reduced(m - 1.0, float(k))


def log1p(x):
    """log(1 + x), accurate for tiny x: with u = 1 + x rounded, log(u) · x / (u − 1)."""
    xa = _array(x)
    with np.errstate(all="ignore"):
        u = 1.0 + xa
        d = u - 1.0
        out = np.where(d == 0, xa, log(u) * (xa / np.where(d == 0, 1.0, d)))
        out = np.where(np.isinf(xa) & (xa > 0), np.inf, out)
    return _scalar_or_array(out, x)


def power(x, p: float):
    """x ** p for a constant p: halves and whole powers exactly as sqrt and products (in a
    fixed order), anything else as exp(p log x) for x > 0 (a few ulps more per unit of
    |p log x|). Negative x: whole p only; otherwise NaN, like numpy."""
    xa = _array(x)
    p = float(p)
    with np.errstate(all="ignore"):
        if p == 0.0:
            out = np.ones_like(xa)
        elif p == 0.5:
            out = np.sqrt(xa)
        elif p == -0.5:
            out = 1.0 / np.sqrt(xa)
        elif p.is_integer() and abs(p) <= 64:
            out = _whole_power(xa, int(abs(p)))
            if p < 0:
                out = 1.0 / out
        elif (2 * p).is_integer() and abs(p) <= 64:
            out = _whole_power(np.sqrt(xa), int(abs(2 * p)))
            if p < 0:
                out = 1.0 / out
        else:
            out = exp(p * log(xa))
            out = np.where(xa == 0, 0.0 if p > 0 else np.inf, out)
            out = np.where(xa < 0, np.nan, out)
    return _scalar_or_array(out, x)


def _whole_power(x, n: int):
    """x ** n by binary powering: the same products in the same order everywhere."""
    result, base = np.ones_like(x), x
    while n:
        if n & 1:
            result = result * base
        n >>= 1
        if n:
            base = base * base
    return result


def sigmoid(x):
    xa = _array(x)
    e = exp(-np.abs(xa))
    return _scalar_or_array(np.where(xa >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), x)


def softplus(x):
    xa = _array(x)
    return _scalar_or_array(np.maximum(xa, 0.0) + log1p(exp(-np.abs(xa))), x)


# ---- tanh, sin, cos -----------------------------------------------------------------------

_TANH_SMALL = 0.55          # below: Lambert's continued fraction; above: 1 − 2/(e^{2|x|} + 1)
_TANH_DEPTH = 10            # its truncation error at |x| = 0.55 is far below an ulp


def _tanh_small(x):
    """tanh x = x / (1 + x²/(3 + x²/(5 + ...))), evaluated from the tail, on floats or arrays
    alike (the one copy of the arithmetic both paths run); |x| < _TANH_SMALL."""
    z = x * x
    d = 2.0 * _TANH_DEPTH + 1.0
    for k in range(_TANH_DEPTH, 0, -1):
        d = (2.0 * k - 1.0) + z / d
    return x / d


def tanh(x):
    """tanh from exp: 1 − 2/(e^{2|x|} + 1) (≥ 0.5 there, so no cancellation) with the sign
    of x; a continued fraction near 0, where that form would cancel."""
    xa = _array(x)
    if xa.size <= _FEW:
        return _few(_tanh_float, xa, x)
    with np.errstate(all="ignore"):
        ax = np.abs(xa)
        big = 1.0 - 2.0 / (exp(2.0 * ax) + 1.0)
        small = _tanh_small(np.where(ax < _TANH_SMALL, ax, 0.0))
        out = np.where(ax < _TANH_SMALL, small, big)
        out = np.where(xa < 0, -out, out)
        out = np.where(np.isnan(xa), xa, out)
    return _scalar_or_array(out, x)


def _tanh_float(x: float) -> float:
    if x != x:
        return x
    ax = abs(x)
    out = _tanh_small(ax) if ax < _TANH_SMALL else 1.0 - 2.0 / (_exp_float(2.0 * ax) + 1.0)
    return -out if x < 0 else out


# sin and cos (fdlibm k_sin.c, k_cos.c, and the Cody–Waite reduction of e_rem_pio2.c): x =
# k π/2 + r, |r| ≤ π/4, with π/2 in three 33-bit parts so that k·part is exact for |k| < 2²⁰;
# accurate to about an ulp for |x| up to ~1e6. Beyond _TRIG_MAX the reduction means nothing
# and the value is NaN (the checker then refuses the domain; a fit there could not be made).
_TRIG_MAX = 2.0 ** 30
_PIO2 = (1.57079632673412561417e+00, 6.07710050630396597660e-11, 2.02226624871116645580e-21)
_TWO_OVER_PI = 6.36619772367581382433e-01
_S = (-1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04,
      2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10)
_C = (4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05,
      -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11)


def _reduce(x, k):
    """x − k π/2 for a whole k near x · 2/π."""
    return ((x - k * _PIO2[0]) - k * _PIO2[1]) - k * _PIO2[2]


def _sin_kernel(r):
    z = r * r
    return r + (z * r) * (_S[0] + z * (_S[1] + z * (_S[2] + z * (_S[3] + z * (_S[4] + z * _S[5])))))


def _cos_kernel(r):
    z = r * r
    return 1.0 - (0.5 * z - z * (z * (_C[0] + z * (_C[1] + z * (_C[2] + z * (_C[3] + z * (
        _C[4] + z * _C[5])))))))


def _quadrant(k):
    """k mod 4 of a whole float k, in float arithmetic (exact below 2⁵³; larger floats are
    multiples of 4), on floats or arrays alike: no integer conversion, which differs between
    the two paths where k is huge."""
    return k - 4.0 * (np.floor(k * 0.25) if isinstance(k, np.ndarray) else math.floor(k * 0.25))


def _sin_cos(x, shift: int):
    """sin x (shift 0) or cos x = sin(x + π/2) (shift 1), from the quadrant k mod 4."""
    xa = _array(x)
    if xa.size <= _FEW:
        return _few(lambda v: _sin_cos_float(v, shift), xa, x)
    with np.errstate(all="ignore"):
        finite = np.abs(xa) <= _TRIG_MAX
        xs = np.where(finite, xa, 0.0)
        k = np.rint(xs * _TWO_OVER_PI)
        r = _reduce(xs, k)
        q = _quadrant(k + shift)
        s, c = _sin_kernel(r), _cos_kernel(r)
        out = np.where(q == 0, s, np.where(q == 1, c, np.where(q == 2, -s, -c)))
        out = np.where(finite, out, np.nan)
    return _scalar_or_array(out, x)


def _sin_cos_float(x: float, shift: int) -> float:
    if not abs(x) <= _TRIG_MAX:
        return math.nan
    k = float(round(x * _TWO_OVER_PI))     # round half to even, as np.rint
    r = _reduce(x, k)
    q = _quadrant(k + shift)
    return (_sin_kernel(r), _cos_kernel(r), -_sin_kernel(r), -_cos_kernel(r))[int(q)]


def sin(x):
    return _sin_cos(x, 0)


def cos(x):
    return _sin_cos(x, 1)


# The language's scalar functions as the compiler evaluates them (same names as
# functions.EXACT, which the interpreter uses).
PORTABLE = {
    "sigmoid": sigmoid,
    "sqrt": np.sqrt,
    "reciprocal": lambda x: 1.0 / np.asarray(x, dtype=np.float64),
    "exp": exp,
    "log": log,
    "softplus": softplus,
    "tanh": tanh,
    "sin": sin,
    "cos": cos,
    "abs": np.abs,
    "relu": lambda x: np.maximum(x, 0.0),
    "square": np.square,
}
