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


RUNTIME_ETA = """program gd_eta
dim d = 4
param steps = 12
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
input eta0 : [] in [0.05, 0.5]
output w
w = zeros(d)
eta = eta0
repeat steps {
  w = w - eta * A.T @ (A @ w - y) / n
  eta = eta * 0.9
}
"""


def _hoisted_by_hand(src: str) -> str:
    """The program with S = AᵀA/n and b = Aᵀy/n written before the loop."""
    return src.replace("w = zeros(d)\n",
                       "S = A.T @ A / n\nb = A.T @ y / n\nw = zeros(d)\n").replace(
        "eta * A.T @ (A @ w - y) / n", "eta * (S @ w - b)")


def _with_eta(seed: int) -> dict:
    return {**_problem(seed), "eta0": np.array(0.3)}


def test_a_runtime_step_size_builds_and_keeps_one_layer_per_step():
    """`eta * A.T @ (A @ w - y) / n` with eta a runtime scalar: the scalar cannot ride with
    AᵀA (no head computes eta·AᵀA: no side of length 1) and the 1/n comes after the product.
    The build once failed ("no assignment of stored orientations", a hoisted eta·AᵀA), and
    before that took 2 layers per step; now AᵀA/n is hoisted and eta stays in the step's head,
    1 layer per step as with S and b written by hand — decaying (eta = 0.9 eta) or not."""
    for src in (RUNTIME_ETA, RUNTIME_ETA.replace("  eta = eta * 0.9\n", "")):
        raw = {k: tcompile.compile_source(src, params={"steps": k}).n_layers for k in (6, 12)}
        hand = {k: tcompile.compile_source(_hoisted_by_hand(src), params={"steps": k}).n_layers
                for k in (6, 12)}
        assert raw[12] - raw[6] == 6 == hand[12] - hand[6]
        assert raw[12] <= hand[12] + 1
        inputs = _with_eta(4)
        got = tcompile.compile_source(src).run(**inputs)["w"]
        want = interpret_program(parse_source(src), {}, **inputs)["w"]
        assert np.abs(got - want).max() <= 1e-13


def test_a_product_of_invariants_too_long_for_one_head_is_hoisted_whole(monkeypatch):
    """eta·Aᵀy/n has four factors (Aᵀ, y, eta, 1/n) and reads no loop state: it becomes one
    invariant atom. Kept as it stands, it made each step's product a layer of its own."""
    from tcompile.compiler.lower import Lowering
    assert tcompile.compile_source(RUNTIME_ETA).n_layers == 13
    monkeypatch.setattr(Lowering, "_one_head", lambda *_: True)
    assert tcompile.compile_source(RUNTIME_ETA).n_layers == 24


PACKED = """program icl_packed
param steps = 8
param eta = 0.8
dim d = 3
input Z : [n, 4] in [-1, 1]
output w
X = Z[:, 0:3]
y = Z[:, 3]
w = zeros(d)
repeat steps {
  w = w - eta * X.T @ (X @ w - y) / n
}
"""


def test_tokens_that_pack_x_and_y_take_one_layer_per_step(monkeypatch):
    """The in-context learning layout: each token z_i = (x_i, y_i), X and y sliced out of Z.
    XᵀX w/n is PᵀZᵀZP w/n (P selects the columns), and no head computes PᵀZᵀZP: hoisting the
    longest run failed, and each step stored a value of its own (2 layers per step). Windows
    of the run and then runs of the products just made are hoisted now (PᵀZᵀZ, then that
    times P/n), so the step is one head: 9 layers at 8 steps, against 17
    without. A step that would keep a runtime scalar is not hoisted so (kaczmarz's
    projections keep their layers: tests/test_build_identity.py)."""
    from tcompile.compiler.lower import Lowering
    prog = tcompile.compile_source(PACKED)
    rng = np.random.default_rng(5)
    Z = rng.uniform(-1, 1, (20, 4))
    want = interpret_program(parse_source(PACKED), {}, Z=Z)["w"]
    assert prog.n_layers == 9 and np.abs(prog.run(Z=Z)["w"] - want).max() <= 1e-14
    shared = tcompile.compile_source(PACKED, loops="shared")
    assert shared.loops.loops[0].layers_per_iteration == 1
    assert np.abs(shared.run(Z=Z, steps=13)["w"] - interpret_program(
        parse_source(PACKED), {"steps": 13}, Z=Z)["w"]).max() <= 1e-14
    monkeypatch.setattr(Lowering, "_hoist_repeatedly", lambda *_: None)
    assert tcompile.compile_source(PACKED).n_layers == 17


CENTRED = """program centred_regression
dim d = 3
param steps = 10
param eta = 0.5
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w
Ac = A - sum(A) / n
yc = y - sum(y) / n
w = zeros(d)
repeat steps {
  w = w - eta * Ac.T @ (Ac @ w - yc) / n
}
"""


def test_values_computed_before_the_loop_are_hoisted_like_inputs():
    """Centred data Ac = A - sum(A) / n is computed once, before the loop; the step's
    Acᵀ Ac / n is then hoisted as AᵀA / n is (it took 2 layers per step: only inputs and
    constants counted as invariant factors). Against numpy's GD on centred data, and the
    shared build as deep."""
    unrolled = {k: tcompile.compile_source(CENTRED, params={"steps": k}).n_layers for k in (10, 20)}
    assert unrolled[20] - unrolled[10] == 10
    rng = np.random.default_rng(3)
    A = rng.uniform(-1, 1, (15, 3)) / np.sqrt(3)
    y = rng.uniform(-1, 1, 15)
    Ac, yc = A - A.mean(axis=0), y - y.mean()
    w = np.zeros(3)
    for _ in range(17):
        w = w - 0.5 * Ac.T @ (Ac @ w - yc) / 15
    shared = tcompile.compile_source(CENTRED, loops="shared")
    assert shared.loops.loops[0].layers_per_iteration == 1
    assert np.abs(shared.run(A=A, y=y, steps=17)["w"] - w).max() <= 1e-13
