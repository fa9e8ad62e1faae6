"""Exact products where a head can do them (issue 18 §4): an elementwise product whose
factors can be written diag(u) @ v — u a bounded small vector [k], v a [k] vector or token
data [n, k] — is an attention head (diag(u) exact with ReLUs gated by the identity), not fitted
squares; the card says which products are exact and which are fitted. Judged against the
interpreter, and Sinkhorn against a float64 numpy Sinkhorn of the same iterations.
"""
from __future__ import annotations

import numpy as np

import builds
import tcompile
from tcompile.language.parser import parse_source


PRODUCTS = """program products
dim k = 4
input b : [k] assume in [0.1, 1]
input M : [k, k]
input x : [k]
input A : [n, k]
output v, w, s, q
r = M @ x
v = b * r                      # diag(b) @ r
w = A * b                      # A @ diag(b): every token's row scaled entrywise
s = b / (M @ x) on [1, 2]      # diag(b) @ reciprocal(M @ x)
rb = (r) on [-9, 9]
q = rb * rb * x                # diag(rb) @ (diag(rb) @ x): one diag(rb) for both
"""


def _data(rng):
    M = np.eye(4) * 1.5 + 0.05 * rng.standard_normal((4, 4))
    return dict(b=rng.uniform(0.1, 1, 4), M=M, x=np.ones(4) + 0.1 * rng.standard_normal(4),
                A=rng.standard_normal((6, 4)))


def test_products_of_a_bounded_small_vector_are_exact_heads():
    prog = tcompile.compile_source(PRODUCTS)
    data = _data(np.random.default_rng(0))
    got, want = prog.run(**data), tcompile.interpret_program(parse_source(PRODUCTS), None, **data)
    for name in ("v", "w", "q"):
        assert np.max(np.abs(got[name] - want[name])) <= 1e-13 * np.max(np.abs(want[name]))
    assert np.max(np.abs(got["s"] - want["s"])) <= 1e-6          # the fitted reciprocal only
    approx = prog.report["approximations"]
    assert not any(a["name"].startswith("(u+v)^2") for a in approx)   # no fitted product
    exact = [a for a in approx if a.get("choice", "").startswith("exact: the elementwise product")]
    assert exact and all(a["exact"] for a in exact)
    assert "chosen: exact: the elementwise product is diag(u) @ v" in tcompile.report_text(prog)


def test_a_product_no_head_can_do_is_fitted_and_the_card_says_so():
    src = ("program fitted\ninput y : [n] in [-1, 1]\ninput z : [n] in [0, 2]\noutput p\n"
           "p = y * z tol 1e-4\n")
    prog = tcompile.compile_source(src)
    approx = prog.report["approximations"]
    assert len(approx) == 2 and all(a.get("choice", "").startswith("fitted:") for a in approx)
    assert "chosen: fitted: no head computes this product" in tcompile.report_text(prog)
    rng = np.random.default_rng(1)
    y, z = rng.uniform(-1, 1, 20), rng.uniform(0, 2, 20)
    assert np.max(np.abs(prog.run(y=y, z=z)["p"] - y * z)) <= 1e-4


def numpy_sinkhorn(K, b, iters):
    n, k = K.shape
    v = np.ones(k)
    for _ in range(iters):
        u = 1 / n / (K @ v)
        v = b / (K.T @ u)
    return u, v


def sinkhorn_problem(seed):
    rng = np.random.default_rng(seed)
    K = np.exp(-rng.uniform(0, 1, (32, 8)) / 0.5)
    b = rng.uniform(0.5, 1.5, 8)
    return K, b / b.sum()


def test_sinkhorn_has_no_fitted_product_and_matches_numpy():
    """n = 32 sources, k = 8 targets, 3 iterations unrolled (the default 50 are for a shared
    build): 13 layers per iteration, every product a head."""
    prog = builds.build("sinkhorn", {"iters": 3})
    assert (prog.report["layers"], prog.report["width"]) == (40, 82)
    assert not any(a["name"].startswith("(u+v)^2") for a in prog.report["approximations"])
    worst = 0.0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        K = np.exp(-rng.uniform(0, 1, (32, 8)) / 0.5)
        b = rng.uniform(0.5, 1.5, 8)
        b /= b.sum()
        out = prog.run(K=K, b=b)
        u, v = numpy_sinkhorn(K, b, 3)
        worst = max(worst, np.max(np.abs(out["u"] - u) / u), np.max(np.abs(out["v"] - v) / v))
    assert worst <= 1e-8


def test_sinkhorn_50_iterations_shared_within_1e8_of_numpy_in_5m_parameters():
    """The issue's targets: 50 iterations (the shared build, the one test_shared_loops reads)
    within 1e-8 relative of numpy's. The program's normalisation a <- (2 - s) a, s = a . v,
    keeps the token reciprocal's mean fit error out of v's scale, where it added up over the
    iterations (4.9e-8 after 50 at tol rel 2e-9 without it; bench/sinkhorn_error.py): the error
    is its last fit's (7e-9) at any count, and the budget is 7e-9 instead of 2e-9: 3.5 M
    parameters (target 5 M; 6.0 M before)."""
    prog = builds.build("sinkhorn", loops="shared")
    assert prog.report["parameters"] <= 5_000_000
    worst = 0.0
    for seed in range(3):
        K, b = sinkhorn_problem(seed)
        for iters in (10, 50):
            out = prog.run(K=K, b=b, iters=iters)
            u, v = numpy_sinkhorn(K, b, iters)
            worst = max(worst, np.max(np.abs(out["u"] - u) / u), np.max(np.abs(out["v"] - v) / v))
    assert worst <= 1e-8
