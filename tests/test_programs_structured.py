"""The programs written with indexing, slicing, stack, tril/triu and M * I (gram_schmidt_qr,
lanczos, sor, kaczmarz, expm, denman_beavers), and the newer library programs
(fista_elastic_net, huber_irls, adam_least_squares, poisson_newton): each against its numpy/scipy/scikit-learn oracle and the
interpreter, with the README row (layers, width, widest MLP) asserted exactly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

import builds
import tcompile
from arrays import rel

ROOT = Path(__file__).resolve().parents[1]


def build(name: str):
    """The default build and its README numbers (built once per test session, shared with
    test_docs_numbers.py)."""
    prog = builds.build(name)
    rep = prog.report
    return prog, (rep["layers"], rep["width"], rep["mlp_hidden_max"])


def interpret(name: str, **inputs):
    return tcompile.interpret(ROOT / "programs" / f"{name}.tp", None, **inputs)


def compiled_and_interpreted(prog, name: str, problems: list) -> tuple:
    """x of the compiled program and of the interpreter on the problems (A, y), batched."""
    A, y = np.stack([p[0] for p in problems]), np.stack([p[1] for p in problems])
    return prog.run(A=A, y=y)["x"], interpret(name, A=A, y=y)["x"]


def test_gram_schmidt_qr_matches_numpy_qr():
    prog, row = build("gram_schmidt_qr")
    assert row == (28, 23, 82)
    rng = np.random.default_rng(0)
    for n in (5, 30):
        A = rng.standard_normal((n, 4))
        Q, R = np.linalg.qr(A)
        s = np.sign(np.diag(R))                 # numpy's signs: R's diagonal made positive
        Q, R = Q * s, s[:, None] * R
        out = prog.run(A=A)
        assert out["Q"].shape == (n, 4) and out["R"].shape == (4, 4)
        assert np.abs(out["Q"] - Q).max() <= 1e-10 and np.abs(out["R"] - R).max() <= 1e-10
        assert np.array_equal(np.tril(out["R"], -1), np.zeros((4, 4)))
        ref = interpret("gram_schmidt_qr", A=A)
        assert rel(out["Q"], ref["Q"]) <= 1e-13 and rel(out["R"], ref["R"]) <= 1e-13


def _lanczos(S, u0, k=4):
    """Plain Lanczos in numpy, the same k steps (no reorthogonalisation)."""
    q, q_prev, beta = u0 / np.linalg.norm(u0), np.zeros_like(u0), 0.0
    Q, alphas, betas = [], [], []
    for j in range(k):
        Q.append(q)
        w = S @ q - beta * q_prev
        alphas.append(q @ w)
        w = w - alphas[-1] * q
        if j < k - 1:
            beta = np.linalg.norm(w)
            betas.append(beta)
            q_prev, q = q, w / beta
    return np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1), np.array(Q)


def test_lanczos_matches_numpy_lanczos():
    prog, row = build("lanczos")
    assert row == (32, 27, 44)
    rng = np.random.default_rng(1)
    for _ in range(3):
        V, _ = np.linalg.qr(rng.standard_normal((6, 6)))
        S = V @ np.diag(rng.uniform(-1, 1, 6)) @ V.T
        S = (S + S.T) / 2
        u0 = rng.standard_normal(6)
        u0 /= 1.01 * np.linalg.norm(u0)
        T, Q = _lanczos(S, u0)
        out = prog.run(S=S, u0=u0)
        assert np.abs(out["T"] - T).max() <= 1e-13 and np.abs(out["Q"] - Q).max() <= 1e-13
        assert np.abs(out["Q"] @ S @ out["Q"].T - out["T"]).max() <= 1e-13   # T = Q S Qᵀ
        ref = interpret("lanczos", S=S, u0=u0)
        assert rel(out["T"], ref["T"]) <= 1e-13


def _sor(m, C, b, omega=1.2, steps=30):
    """SOR in numpy, entry by entry, as textbooks write it."""
    M = np.diag(m) + np.tril(C, -1) + np.triu(C, 1)
    x = np.zeros(len(b))
    for _ in range(steps):
        for i in range(len(b)):
            rest = b[i] - M[i, :i] @ x[:i] - M[i, i + 1:] @ x[i + 1:]
            x[i] = (1 - omega) * x[i] + omega * rest / M[i, i]
    return x, M


def test_sor_matches_numpy_sor_and_solves():
    prog, row = build("sor")
    assert row == (42, 31, 30)
    rng = np.random.default_rng(2)
    for _ in range(3):
        m, b = rng.uniform(1, 10, 5), rng.standard_normal(5)
        C = rng.uniform(-0.2, 0.2, (5, 5))
        C = (C + C.T) / 2
        x, M = _sor(m, C, b)
        out = prog.run(m=m, C=C, b=b)["x"]
        assert rel(out, x) <= 1e-14
        assert rel(out, np.linalg.solve(M, b)) <= 1e-14
        assert rel(out, interpret("sor", m=m, C=C, b=b)["x"]) <= 1e-14


def _kaczmarz(A, b, sweeps=10):
    x = np.zeros(A.shape[1])
    for _ in range(sweeps):
        for i in range(A.shape[0]):
            x = x + (b[i] - A[i] @ x) / (A[i] @ A[i]) * A[i]
    return x


def test_kaczmarz_matches_numpy_kaczmarz():
    prog, row = build("kaczmarz")
    assert row == (95, 49, 144)
    rng = np.random.default_rng(3)
    for _ in range(3):
        A = rng.uniform(-1, 1, (6, 4))
        b = A @ rng.standard_normal(4)
        out = prog.run(A=A, b=b)["x"]
        assert rel(out, _kaczmarz(A, b)) <= 1e-14
        assert rel(out, interpret("kaczmarz", A=A, b=b)["x"]) <= 1e-14


def test_expm_matches_scipy():
    prog, row = build("expm")
    assert row == (10, 16, 0)
    rng = np.random.default_rng(4)
    for _ in range(3):
        M = rng.uniform(-1, 1, (4, 4))
        out = prog.run(M=M)["E"]
        assert rel(out, scipy.linalg.expm(M)) <= 1e-14
        assert rel(out, interpret("expm", M=M)["E"]) <= 1e-14


def test_denman_beavers_matches_scipy_sqrtm():
    prog, row = build("denman_beavers")
    assert row == (42, 20, 0)
    rng = np.random.default_rng(5)
    for _ in range(3):
        V, _ = np.linalg.qr(rng.standard_normal((4, 4)))
        lam = np.concatenate([[0.5, 4.0], rng.uniform(0.5, 4, 2)])     # the extremes included
        A = V @ np.diag(lam) @ V.T
        A = (A + A.T) / 2
        root = scipy.linalg.sqrtm(A).real
        out = prog.run(A=A)
        assert rel(out["Y"], root) <= 1e-14
        assert rel(out["Z"], np.linalg.inv(root)) <= 1e-14
        assert rel(out["Y"], interpret("denman_beavers", A=A)["Y"]) <= 1e-14


def test_fista_elastic_net_matches_sklearn_elastic_net():
    """sklearn's ElasticNet(alpha, l1_ratio, fit_intercept=False) minimises the same objective
    (run by coordinate descent to tol 1e-15); the ridge term makes FISTA contract by about
    1 - sqrt(mu / L) per step for any data, so 120 steps reach rounding."""
    from sklearn.linear_model import ElasticNet
    prog, row = build("fista_elastic_net")
    assert row == (120, 27, 35)
    rng = np.random.default_rng(6)
    for _ in range(3):
        A = rng.standard_normal((40, 5))
        A /= np.linalg.norm(A, axis=1, keepdims=True)
        y = A @ rng.standard_normal(5) + 0.1 * rng.standard_normal(40)
        ref = ElasticNet(alpha=0.1, l1_ratio=0.5, fit_intercept=False, tol=1e-15,
                         max_iter=100_000).fit(A, y).coef_
        out = prog.run(A=A, y=y)["x"]
        assert rel(out, ref) <= 1e-13
        assert rel(out, interpret("fista_elastic_net", A=A, y=y)["x"]) <= 1e-14


def huber_problem(rng, n=40, d=4):
    """Rows of norm <= 1, a linear signal with small noise, about 15% gross outliers; y
    clipped to the declared [-3, 3]."""
    A = rng.standard_normal((n, d))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    y = A @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    out = rng.random(n) < 0.15
    y[out] += rng.uniform(-2.5, 2.5, out.sum())
    return A, np.clip(y, -3, 3)


def huber_irls_numpy(A, y, delta=1.0, mu=0.1, steps=30):
    """Textbook IRLS in numpy: w = min(1, delta / |r|), then the weighted ridge problem solved
    exactly, the same number of steps."""
    n, d = A.shape
    x = np.zeros(d)
    for _ in range(steps):
        r = y - A @ x
        w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        x = np.linalg.solve(A.T @ (w[:, None] * A) / n + mu * np.eye(d), A.T @ (w * y) / n)
    return x


def huber_scipy(A, y, delta=1.0, mu=0.1):
    """The minimiser of 1/n sum huber(y - A x) + mu/2 ||x||^2 by scipy.optimize (trust-exact
    with the loss's gradient and its Hessian, the weights 1{|r| <= delta}), to gtol 1e-15."""
    import scipy.optimize
    n, d = A.shape

    def f(x):
        a = np.abs(y - A @ x)
        return np.mean(np.where(a <= delta, a * a / 2, delta * (a - delta / 2))) + mu / 2 * x @ x

    def grad(x):
        return -A.T @ np.clip(y - A @ x, -delta, delta) / n + mu * x

    def hess(x):
        inside = np.abs(y - A @ x) <= delta
        return A.T @ (inside[:, None] * A) / n + mu * np.eye(d)
    res = scipy.optimize.minimize(f, np.zeros(d), jac=grad, hess=hess, method="trust-exact",
                                  options={"gtol": 1e-15})
    return res.x


def test_huber_irls_matches_numpy_irls_and_scipy():
    """The compiled IRLS (the step written as a correction by Huber's psi = clip, exact; the
    weights, the weighted Gram matrix and the carried inverse loose, which only set the rate)
    against textbook IRLS in numpy of the same 30 steps and against scipy.optimize on the Huber
    loss: both converged, to rounding."""
    prog, row = build("huber_irls")
    assert row == (120, 24, 608)
    rng = np.random.default_rng(7)
    problems = [huber_problem(rng) for _ in range(4)]
    out, ref = compiled_and_interpreted(prog, "huber_irls", problems)
    for k, (Ak, yk) in enumerate(problems):
        assert np.abs(yk - Ak @ out[k]).max() > 1.5              # outliers beyond delta = 1
        assert rel(out[k], huber_irls_numpy(Ak, yk)) <= 1e-13
        assert rel(out[k], huber_scipy(Ak, yk)) <= 1e-13
        assert rel(out[k], ref[k]) <= 1e-13


def adam_numpy(A, y, steps=10, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam as Kingma & Ba write it (and torch.optim.Adam computes it), in numpy float64, on
    f(x) = ||A x - y||^2 / (2n) from x = 0; also returns the smallest bias-corrected second
    moment it met (the program floors it at 1e-12)."""
    n, d = A.shape
    S, b = A.T @ A / n, A.T @ y / n
    x, m, v, smallest = np.zeros(d), np.zeros(d), np.zeros(d), np.inf
    for t in range(1, steps + 1):
        g = S @ x - b
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        vhat = v / (1 - beta2 ** t)
        smallest = min(smallest, vhat.min())
        x = x - lr * (m / (1 - beta1 ** t)) / (np.sqrt(vhat) + eps)
    return x, smallest


def test_adam_least_squares_matches_numpy_adam_of_the_same_steps():
    """1 / (sqrt(vhat) + eps) by coarse seeds (tol rel 1e-3) refined by Newton steps whose
    products are exact heads: the compiled Adam is numpy's to ~1e-12 relative (the target was
    1e-8), with the floor on vhat inactive on this data."""
    prog, row = build("adam_least_squares")
    assert row == (180, 67, 896)
    rng = np.random.default_rng(8)
    A = rng.standard_normal((4, 40, 4))
    A /= np.linalg.norm(A, axis=2, keepdims=True)
    y = np.clip(np.einsum("bnd,bd->bn", A, rng.standard_normal((4, 4)))
                + 0.1 * rng.standard_normal((4, 40)), -3, 3)
    out = prog.run(A=A, y=y)["x"]
    ref = interpret("adam_least_squares", A=A, y=y)["x"]
    for k in range(4):
        want, smallest = adam_numpy(A[k], y[k])
        assert smallest > 1e-12
        assert rel(out[k], want) <= 1e-11
        assert rel(ref[k], want) <= 1e-14
    import torch                                  # and torch's own Adam, the same steps
    for k in range(2):
        S, b = A[k].T @ A[k] / 40, A[k].T @ y[k] / 40
        xt = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([xt], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
        for _ in range(10):
            opt.zero_grad()
            xt.grad = torch.from_numpy(S @ xt.detach().numpy() - b)
            opt.step()
        assert rel(out[k], xt.detach().numpy()) <= 1e-11


def poisson_problem(rng, n=40, d=4):
    """Rows of norm <= 1, Poisson counts of rates exp(a_i^T x_true) (||x_true|| <= 1), capped
    at the declared 4."""
    A = rng.standard_normal((n, d))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    x_true = rng.standard_normal(d)
    x_true /= max(1.0, np.linalg.norm(x_true))
    return A, np.minimum(rng.poisson(np.exp(A @ x_true)), 4).astype(float)


def test_poisson_newton_matches_sklearn_poisson_regressor():
    """sklearn's PoissonRegressor(alpha=1, fit_intercept=False) minimises the same objective
    (newton-cholesky to tol 1e-14); the compiled model's error is its exp fit's (tol 3e-8),
    the interpreter's is rounding."""
    from sklearn.linear_model import PoissonRegressor
    prog, row = build("poisson_newton")
    assert row == (30, 24, 3028)
    rng = np.random.default_rng(9)
    problems = [poisson_problem(rng) for _ in range(4)]
    out, ref = compiled_and_interpreted(prog, "poisson_newton", problems)
    for k, (Ak, yk) in enumerate(problems):
        want = PoissonRegressor(alpha=1.0, fit_intercept=False, solver="newton-cholesky",
                                tol=1e-14, max_iter=1000).fit(Ak, yk).coef_
        assert rel(out[k], want) <= 3e-8
        assert rel(ref[k], want) <= 1e-12


@pytest.mark.parametrize("name", ["gram_schmidt_qr", "lanczos", "sor", "kaczmarz", "expm",
                                  "denman_beavers", "fista_elastic_net", "huber_irls",
                                  "adam_least_squares", "poisson_newton"])
def test_the_readme_row_is_the_build(name):
    """README's row: layers first in the second column, then 'WIDTH at d = ...' and the widest
    MLP (or 'no MLP') in the third."""
    _, (layers, width, mlp) = build(name)
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith(f"| `{name}`"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1].split()[0] == str(layers), row
    assert cells[2].startswith(f"{width} at "), row
    assert (f"widest MLP {mlp:,}" in cells[2]) if mlp else ("no MLP" in cells[2]), row
