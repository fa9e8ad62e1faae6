"""Loop-invariant code motion in the lowering (lower.hoist_invariants): a product whose
per-iteration operand would otherwise be stored every iteration reads its loop-invariant
factors, stored once, instead. Oracles: the same program with the invariant hoisted by hand
(its layer count), the reference interpreter (its values)."""
from __future__ import annotations

import numpy as np

import tcompile
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

RAW = """program gd
dim d = 4
param steps = 10
param eta = 1
param lam = 0.3
input A : [n, d] assume row_norm <= 1
input y : [n] assume norm <= 1
output w
w = zeros(d)
repeat steps {
  w = w - eta * (A.T @ (A @ w - y) / n + lam * w)
}
"""
BY_HAND = RAW.replace("w = zeros(d)\n", "S = A.T @ A / n\nb = A.T @ y / n\nw = zeros(d)\n").replace(
    "(A.T @ (A @ w - y) / n + lam * w)", "(S @ w - b + lam * w)")


def _problem(seed: int, n: int = 12, d: int = 4):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    A /= np.linalg.norm(A, axis=1).max()
    y = rng.standard_normal(n)
    return {"A": A, "y": y / (2 * np.linalg.norm(y))}


def test_the_raw_token_gradient_step_takes_one_layer_as_with_s_hoisted_by_hand():
    raw = {k: tcompile.compile_source(RAW, params={"steps": k}).n_layers for k in (10, 20)}
    hand = {k: tcompile.compile_source(BY_HAND, params={"steps": k}).n_layers for k in (10, 20)}
    assert raw[20] - raw[10] == 10 == hand[20] - hand[10]          # one layer per step
    assert raw[10] <= hand[10]
    inputs = _problem(1)
    got = tcompile.compile_source(RAW, params={"steps": 20}).run(**inputs)["w"]
    want = interpret_program(parse_source(RAW), {"steps": 20}, **inputs)["w"]
    assert np.abs(got - want).max() <= 1e-13


def test_a_shared_build_of_the_raw_step_runs_one_layer_per_iteration():
    prog = tcompile.compile_source(RAW, loops="shared")
    (spec,) = prog.loops.loops
    assert spec.layers_per_iteration == 1
    inputs = _problem(2)
    want = interpret_program(parse_source(RAW), {"steps": 25}, **inputs)["w"]
    assert np.abs(prog.run(steps=25, **inputs)["w"] - want).max() <= 1e-13


def test_a_value_stored_anyway_is_not_hoisted_beside_it(monkeypatch):
    """q = A p is a program variable another statement reads: it is stored every iteration
    anyway, so qᵀq keeps reading it and AᵀA gets no rows (the same build as without LICM)."""
    from tcompile.compiler.lower import Lowering
    src = """program cgish
dim d = 3
param steps = 4
input A : [n, d] assume row_norm <= 1
input v : [d] assume norm <= 1
output p, e
p = v
e = A @ v
repeat steps {
  q = A @ p
  e = 0.5 * e - 0.25 * q
  p = 0.5 * p + 0.25 * (q @ q / n) * v
}
"""
    prog = tcompile.compile_source(src)
    monkeypatch.setattr(Lowering, "hoist_invariants", lambda *_: None)
    plain = tcompile.compile_source(src)
    assert (prog.n_layers, prog.layout.width) == (plain.n_layers, plain.layout.width)
    inputs = {"A": _problem(3, d=3)["A"], "v": np.array([0.5, -0.2, 0.1])}
    want = interpret_program(parse_source(src), None, **inputs)
    got = prog.run(**inputs)
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-13
