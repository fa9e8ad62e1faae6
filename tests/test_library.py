"""The program library (programs/*.tp), each compiled and checked against an independent oracle:
numpy.linalg, scipy.linalg or scikit-learn — never only the interpreter. Sizes are small so
the builds stay quick; depth and width are asserted exactly (as built), errors against the
oracle with the bound each program's header derives.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

import builds
import tcompile


def build(name: str, **params):
    return builds.build(name, params)


def unit_rows(rng, n: int, d: int) -> np.ndarray:
    """Token data with every row of norm <= 1 (the programs' `row_norm <= 1`)."""
    A = rng.standard_normal((n, d))
    return A / np.linalg.norm(A, axis=1, keepdims=True) * rng.uniform(0.5, 1.0, (n, 1))


def logistic_data(rng, n: int, d: int):
    A = unit_rows(rng, n, d)
    y = np.where(A @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) > 0, 1.0, -1.0)
    return A, y


def shape_of(prog) -> tuple[int, int]:
    return prog.report["layers"], prog.report["width"]


# ---- linear algebra ------------------------------------------------------------------------

def test_gd_least_squares_vs_lstsq():
    """A step eta = 3 (valid for this data: lambda_max(S) < 2/3) to keep the build short."""
    prog = build("gd_least_squares", steps=60, eta=3)
    assert shape_of(prog) == (60, 18)           # one layer per step (x0 = 0: the first step reads b)
    rng = np.random.default_rng(1)
    A, y = unit_rows(rng, 200, 4), rng.standard_normal(200)
    w_star = np.linalg.lstsq(A, y, rcond=None)[0]
    lam = np.linalg.eigvalsh(A.T @ A / 200)
    assert lam[-1] < 2 / 3
    rate = max(abs(1 - 3 * lam[0]), abs(1 - 3 * lam[-1]))
    bound = rate ** 60 * np.linalg.norm(w_star)          # the header's contraction
    err = np.linalg.norm(prog.run(A=A, y=y)["w"] - w_star)
    assert err <= bound + 1e-13 and err <= 1e-8


def test_ridge_newton_schulz_vs_sklearn():
    from sklearn.linear_model import Ridge
    prog = build("ridge_newton_schulz")
    assert shape_of(prog) == (9, 17)
    rng = np.random.default_rng(2)
    A, y = unit_rows(rng, 30, 4), rng.standard_normal(30)
    ref = Ridge(alpha=30 * 0.1, fit_intercept=False, solver="cholesky").fit(A, y).coef_
    w = prog.run(A=A, y=y)["w"]
    assert np.linalg.norm(w - ref) <= 1e-12 * np.linalg.norm(ref)


def test_cubic_newton_schulz_is_one_layer_per_step_vs_inv():
    prog = build("cubic_newton_schulz", steps=8)
    assert shape_of(prog) == (9, 12)            # R = I - X A first, then one layer per step
    rng = np.random.default_rng(3)
    Q1, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    Q2, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    A = Q1 @ np.diag([1.0, 0.7, 0.4, 0.2]) @ Q2              # ||A|| = 1, cond 5
    X = prog.run(A=A)["X"]
    inv = np.linalg.inv(A)
    # the residual (1 - 0.2^2)^(3^8) is far below rounding: what is left is rounding
    assert np.linalg.norm(X - inv) / np.linalg.norm(inv) <= 1e-14


def test_newton_schulz_sign_vs_signm():
    prog = build("newton_schulz_sign", steps=16)
    assert shape_of(prog) == (16, 8)
    rng = np.random.default_rng(4)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    A = Q @ np.diag([0.9, 0.1, -0.05, -0.6]) @ Q.T
    X = prog.run(A=A)["X"]
    assert np.max(np.abs(X - scipy.linalg.signm(A))) <= 1e-12


def test_newton_schulz_sqrt_vs_sqrtm():
    prog = build("newton_schulz_sqrt")
    assert shape_of(prog) == (12, 12)
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    A = Q @ np.diag([1.0, 0.6, 0.25, 0.1]) @ Q.T
    R = prog.run(A=A)["R"]
    ref = scipy.linalg.sqrtm(A).real
    assert np.max(np.abs(R - ref)) <= 1e-12
    assert np.max(np.abs(R @ R - A)) <= 1e-12


# ---- learning ------------------------------------------------------------------------------

def test_gd_logistic_vs_sklearn():
    from sklearn.linear_model import LogisticRegression
    prog = build("gd_logistic", steps=40)
    assert shape_of(prog) == (80, 20)           # two layers per step (x0 = 0: z0 = 0 is no layer)
    assert prog.report["mlp_hidden_max"] == 4482
    rng = np.random.default_rng(6)
    A, y = logistic_data(rng, 26, 5)
    ref = LogisticRegression(C=1 / (26 * 0.1), fit_intercept=False, tol=1e-12,
                             max_iter=10_000).fit(A, y).coef_[0]
    x = prog.run(A=A, y=y)["x"]
    # (1 - mu/L)^40 ||x*|| from the iteration plus 1e-8 / mu from the fitted sigmoid
    bound = (1 - 0.1 / 0.35) ** 40 * np.linalg.norm(ref) + 1e-7
    assert np.linalg.norm(x - ref) <= bound


def test_ista_lasso_vs_sklearn():
    """A step eta = 2.5 (valid for this data: 1 / lambda_max(S) > 2.5) keeps the build short."""
    from sklearn.linear_model import Lasso
    prog = build("ista_lasso", steps=80, eta=2.5)
    assert shape_of(prog) == (80, 22)
    assert all(a["exact"] for a in prog.report["approximations"])
    rng = np.random.default_rng(7)
    A = unit_rows(rng, 200, 5)
    assert np.linalg.eigvalsh(A.T @ A / 200)[-1] < 1 / 2.5
    y = A @ np.array([1.0, 0.0, -0.5, 0.0, 0.02]) + 0.05 * rng.standard_normal(200)
    ref = Lasso(alpha=0.05, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(A, y).coef_
    x = prog.run(A=A, y=y)["x"]
    assert np.array_equal(np.abs(x) <= 1e-15, ref == 0)     # the same support
    assert np.max(np.abs(x - ref)) <= 1e-9


def newton_logistic_optimum(A, y, mu=0.1):
    """x* by exact Newton steps in numpy (a dense solve each step), to rounding."""
    n, d = A.shape
    x = np.zeros(d)
    for _ in range(30):
        s = 1 / (1 + np.exp(y * (A @ x)))
        g = mu * x - A.T @ (y * s) / n
        x = x - np.linalg.solve(A.T @ (A * (s * (1 - s))[:, None]) / n + mu * np.eye(d), g)
    return x


def test_newton_logistic_warm_reaches_1e6_in_30_layers():
    """The paper's setting, d = 5, n = 26, mu = 0.1: the Hessian inverse carried across damped
    steps with one Newton–Schulz refinement each, 6 steps, 30 layers in all."""
    prog = build("newton_logistic_warm")
    assert shape_of(prog) == (30, 36)
    assert prog.report["mlp_hidden_max"] == 5577
    rng = np.random.default_rng(8)
    for _ in range(4):
        A, y = logistic_data(rng, 26, 5)
        x0 = rng.standard_normal(5)
        x0 *= rng.uniform(0, 1) / np.linalg.norm(x0)
        x = prog.run(A=A, y=y, x0=x0)["x"]
        assert np.linalg.norm(x - newton_logistic_optimum(A, y)) <= 1e-6
        assert not any(c["outside"] for c in tcompile.check_domains(prog, A=A, y=y, x0=x0))


def test_jacobi_vs_solve():
    prog = build("jacobi", steps=20)
    assert shape_of(prog) == (34, 62)           # diag (3 layers) and D^-1 (7) overlap the steps
    rng = np.random.default_rng(9)
    m, C, b = rng.uniform(1, 10, 5), rng.uniform(-0.2, 0.2, (5, 5)), rng.standard_normal(5)
    M = np.diag(m) + C - np.diag(np.diag(C))
    q = np.max((np.abs(M).sum(axis=1) - m) / m)
    x_star = np.linalg.solve(M, b)
    err = np.max(np.abs(prog.run(m=m, C=C, b=b)["x"] - x_star))
    assert err <= q ** 20 * np.max(np.abs(x_star)) + 1e-14 and err <= 1e-9


def test_softmax_regression_vs_sklearn():
    """Multinomial logistic regression, K = 3: sklearn's multinomial LogisticRegression with
    C = 1 / (n mu) has the same minimiser; the error is the header's contraction 1 - mu/L = 1/2
    per step plus the fitted exp/log budgets (1e-7, divided by mu and s >= K e^-B)."""
    from sklearn.linear_model import LogisticRegression
    prog = build("softmax_regression", steps=8)
    assert shape_of(prog) == (32, 28)           # four layers per step (W0 = 0: Z0 = 0 is no layer)
    assert prog.report["mlp_hidden_max"] == 11934
    rng = np.random.default_rng(10)
    n = 60
    A = unit_rows(rng, n, 4)
    labels = np.argmax(2 * A @ rng.standard_normal((4, 3)) + 0.5 * rng.standard_normal((n, 3)), 1)
    Y = np.eye(3)[labels]
    ref = LogisticRegression(C=1 / (n * 0.5), fit_intercept=False, tol=1e-12,
                             max_iter=10_000).fit(A, labels).coef_.T
    W = prog.run(A=A, Y=Y)["W"]
    assert np.linalg.norm(W - ref) <= 0.5 ** 8 * np.linalg.norm(ref) + 1e-6
