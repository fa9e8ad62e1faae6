"""portable_math against numpy and Python's math (independent implementations): within a few
ulps everywhere, the same special values, and the compiler's fits use it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcompile.compiler import approx
from tcompile.language import functions, portable_math as pm

RNG = np.random.default_rng(20261205)


def ulps(got, want) -> float:
    got, want = np.asarray(got, float), np.asarray(want, float)
    return float(np.max(np.abs(got - want) / np.spacing(np.abs(want))))


@pytest.mark.parametrize("name,fn,ref,xs,bound", [
    ("exp", pm.exp, np.exp, np.concatenate([RNG.uniform(-745, 709.7, 50_000),
                                            RNG.uniform(-1, 1, 20_000), RNG.uniform(-1e-9, 1e-9, 500)]), 1),
    ("log", pm.log, np.log, np.concatenate([np.exp(RNG.uniform(-700, 700, 50_000)),
                                            RNG.uniform(0.5, 2, 20_000), [5e-324, 1e-310, 1e308, 1.0]]), 1),
    ("log1p", pm.log1p, np.log1p, np.concatenate([RNG.uniform(-0.999, 5, 20_000),
                                                  RNG.uniform(-1e-10, 1e-10, 2_000),
                                                  np.exp(RNG.uniform(-30, 30, 5_000))]), 2),
    ("sigmoid", pm.sigmoid, functions.sigmoid, RNG.uniform(-40, 40, 20_000), 2),
    ("softplus", pm.softplus, functions.softplus, RNG.uniform(-40, 40, 20_000), 3),
    ("tanh", pm.tanh, np.tanh, np.concatenate([RNG.uniform(-25, 25, 20_000), RNG.uniform(-1, 1, 20_000),
                                               RNG.uniform(-1e-8, 1e-8, 500), [0.55, -0.55]]), 2),
])
def test_within_a_few_ulps_of_numpy(name, fn, ref, xs, bound):
    assert ulps(fn(xs), ref(xs)) <= bound


@pytest.mark.parametrize("fn,ref", [(pm.sin, np.sin), (pm.cos, np.cos)], ids=["sin", "cos"])
def test_sin_cos_within_an_ulp_of_one_of_numpy(fn, ref):
    """Absolutely: near a zero of sin the relative error of any float64 reduction is larger."""
    xs = np.concatenate([RNG.uniform(-7, 7, 50_000), RNG.uniform(-1e5, 1e5, 50_000),
                         np.pi * np.arange(-8, 9) / 4, RNG.uniform(-1e-9, 1e-9, 500)])
    assert np.max(np.abs(fn(xs) - ref(xs))) <= 2.0 ** -52
    assert fn(0.0) == (0.0 if fn is pm.sin else 1.0)
    assert np.isnan(fn(np.inf)) and np.isnan(fn(np.nan)) and np.isnan(fn(2.0 ** 31))


@pytest.mark.parametrize("p,bound", [(-1, 0), (0.5, 0), (-0.5, 2), (2, 0), (3, 1), (-2, 2),
                                     (1.5, 3), (1 / 3, 6), (0.7, 12), (-2.5, 8)])
def test_powers_within_a_few_ulps_of_numpy(p, bound):
    x = np.exp(RNG.uniform(-20, 20, 20_000))
    assert ulps(pm.power(x, p), x ** p) <= bound


def test_special_values_match_math():
    assert np.isnan(pm.exp(np.nan)) and pm.exp(np.inf) == np.inf and pm.exp(-np.inf) == 0.0
    assert pm.exp(800.0) == np.inf and pm.exp(-800.0) == 0.0 and pm.exp(0.0) == 1.0
    assert pm.log(0.0) == -np.inf and pm.log(np.inf) == np.inf
    assert np.isnan(pm.log(-1.0)) and np.isnan(pm.log(np.nan))
    assert pm.log1p(-1.0) == -np.inf and pm.log1p(np.inf) == np.inf
    assert pm.power(0.0, 0.7) == 0.0 and pm.power(0.0, -0.7) == np.inf
    assert pm.power(-2.0, 3) == -8.0 and np.isnan(pm.power(-2.0, 0.7))
    for x in (1e-300, 0.1, 1.0, 2.5, 700.0):
        assert abs(pm.log(x) - math.log(x)) <= math.ulp(math.log(x))
        assert abs(pm.exp(-x) - math.exp(-x)) <= 1.01 * math.ulp(math.exp(-x))
    assert isinstance(pm.exp(1.0), float) and pm.exp(np.array([1.0])).shape == (1,)


def test_the_fits_evaluate_the_portable_functions():
    """The compiler's fits (approx.FUNCTIONS) are portable_math's, not numpy's SIMD ones."""
    for name in ("exp", "log", "sigmoid", "softplus", "tanh", "sin", "cos"):
        assert approx.FUNCTIONS[name] is pm.PORTABLE[name]
    assert set(pm.PORTABLE) == set(functions.EXACT)


def test_one_value_at_a_time_gives_the_vector_bits():
    """exp and log on a few values take a pure-Python path (the knot search's calls); it must
    be the vector code's bits on every input, specials and both ends of the range included."""
    rng = np.random.default_rng(7)
    xs = np.concatenate([
        rng.uniform(-745.2, 709.8, 4000), rng.uniform(-1, 1, 2000), rng.normal(size=2000) * 1e-8,
        np.exp(rng.uniform(-700, 700, 3000)), rng.uniform(0, 1e-300, 200) * 1e-10,
        [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 5e-324, 1e-310, 709.78, 709.79, 710.0,
         -745.13, -745.14, -746.0, np.finfo(float).max, 0.5 * np.log(2), -0.5 * np.log(2)]])
    for fn in (pm.exp, pm.log, pm.tanh, pm.sin, pm.cos):
        vector = fn(xs)
        one = np.array([fn(float(x)) for x in xs])
        shaped = np.concatenate([fn(xs[i:i + 1]) for i in range(len(xs))])
        few = np.concatenate([fn(xs[i:i + 12].reshape(3, -1)).ravel()
                              for i in range(0, len(xs) - 12, 12)])
        assert vector.tobytes() == one.tobytes() == shaped.tobytes(), fn.__name__
        assert few.tobytes() == vector[:len(few)].tobytes(), fn.__name__
