"""The reference interpreter against independent oracles (numpy, scipy) on synthetic and real
data, its batch axis, its input validation, and the semantics of each construct."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize, root
from scipy.special import expit
from sklearn.datasets import load_breast_cancer, load_diabetes

import tcompile
from arrays import with_singular_values
from tcompile import InputError
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

ROOT = Path(__file__).resolve().parents[1]
NEWTON_INVERSE = ROOT / "programs" / "newton_inverse.tp"
LEAST_SQUARES = ROOT / "programs" / "least_squares.tp"
NEWTON_LOGISTIC = ROOT / "programs" / "newton_logistic.tp"


def rel(x, ref) -> float:
    return float(np.linalg.norm(np.asarray(x) - ref) / np.linalg.norm(ref))


# ---- data generators -----------------------------------------------------------------------

def inverse_problem(seed, d=4, kappa=100.0, norm=1.0):
    rng = np.random.default_rng(seed)
    return with_singular_values(rng, d, d, norm * np.geomspace(1.0, 1.0 / kappa, d))


def least_squares_problem(seed, n=50, d=4, kappa=100.0):
    """Ill-conditioned A (cond(A) = kappa, so cond(A^T A) = kappa^2), every row norm <= 1."""
    rng = np.random.default_rng(seed)
    a = with_singular_values(rng, n, d, np.geomspace(1.0, 1.0 / kappa, d))
    a /= np.linalg.norm(a, axis=1).max()
    y = a @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return a, y, rng.standard_normal(d)


def logistic_problem(seed, n=26, d=5):
    """The paper's setting: ||a_i|| <= 1, labels from a random linear separator."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d))
    a *= rng.uniform(0.1, 1.0, (n, 1)) / np.linalg.norm(a, axis=1, keepdims=True)
    y = np.sign(a @ rng.standard_normal(d))
    assert np.all(np.abs(y) == 1)
    return a, y


def logistic_optimum(a, y, mu):
    """argmin 1/n sum log(1 + exp(-y_i a_i.x)) + mu/2 |x|^2, to a gradient norm < 1e-12.

    scipy's trust-exact with the exact Hessian gets close; it can stop at |g| ~ 1e-10 because
    f is too flat there to compare in float64, so scipy's root finder finishes on g = 0.
    """
    n, d = a.shape

    def f(x):
        return np.mean(np.logaddexp(0.0, -y * (a @ x))) + mu / 2 * x @ x

    def grad(x):
        return mu * x - a.T @ (y * expit(-y * (a @ x))) / n

    def hess(x):
        p = expit(-y * (a @ x))
        return a.T @ ((p * (1 - p))[:, None] * a) / n + mu * np.eye(d)

    x = minimize(f, np.zeros(d), jac=grad, hess=hess, method="trust-exact",
                 options={"gtol": 1e-14}).x
    x = root(grad, x, jac=hess, method="hybr", options={"xtol": 1e-15}).x
    assert np.linalg.norm(grad(x)) < 1e-12
    return x


# ---- newton_inverse vs numpy.linalg.inv ----------------------------------------------------

@pytest.mark.parametrize("kappa", [1.5, 10.0, 100.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_newton_inverse_matches_inv(seed, kappa):
    a = inverse_problem(seed, kappa=kappa)
    assert np.linalg.norm(a - a.T) > 0.1          # genuinely non-symmetric
    x = tcompile.interpret(NEWTON_INVERSE, A=a)["X"]
    assert x.shape == (4, 4)
    assert rel(x, np.linalg.inv(a)) < 1e-9


def test_newton_inverse_other_size_and_norm_bound():
    # d = 7 by override; ||A|| = 3 declared through norm_bound
    a = inverse_problem(5, d=7, kappa=100.0, norm=3.0)
    x = tcompile.interpret(NEWTON_INVERSE, {"d": 7, "norm_bound": 3}, A=a)["X"]
    assert rel(x, np.linalg.inv(a)) < 1e-9


def test_newton_inverse_needs_enough_steps():
    a = inverse_problem(0, kappa=100.0)
    few = tcompile.interpret(NEWTON_INVERSE, {"steps": 8}, A=a)["X"]
    assert rel(few, np.linalg.inv(a)) > 1e-3      # 2^8 (1 - 1e-4) ... far from converged


# ---- least_squares vs numpy.linalg.lstsq ---------------------------------------------------

@pytest.mark.parametrize("kappa, steps", [(10.0, 24), (100.0, 24), (1000.0, 34)])
def test_least_squares_ill_conditioned(kappa, steps):
    a, y, a_test = least_squares_problem(int(kappa), kappa=kappa)
    w_ref = np.linalg.lstsq(a, y, rcond=None)[0]
    out = tcompile.interpret(LEAST_SQUARES, {"steps": steps}, A=a, y=y, a_test=a_test)
    assert rel(out["w"], w_ref) < 1e-8
    assert abs(out["y_hat"] - a_test @ w_ref) < 1e-8 * np.linalg.norm(a_test) * np.linalg.norm(w_ref)
    assert out["y_hat"].shape == ()


def test_least_squares_diabetes():
    """sklearn's diabetes data (442 x 10), scaled so every row has norm <= 1; d = 10."""
    a, y = load_diabetes(return_X_y=True)
    a = a / np.linalg.norm(a, axis=1).max()
    s = a.T @ a / len(a)
    assert np.linalg.cond(s) > 100                # not a trivial problem
    w_ref = np.linalg.lstsq(a, y, rcond=None)[0]
    out = tcompile.interpret(LEAST_SQUARES, {"d": 10}, A=a, y=y, a_test=a[0])
    assert rel(out["w"], w_ref) < 1e-8
    assert abs(out["y_hat"] - a[0] @ w_ref) < 1e-8 * abs(a[0] @ w_ref)


# ---- newton_logistic vs a high-precision optimum -------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_newton_logistic_paper_setting(seed):
    a, y = logistic_problem(seed)
    x_ref = logistic_optimum(a, y, mu=0.1)
    x = tcompile.interpret(NEWTON_LOGISTIC, A=a, y=y, x0=np.zeros(5))["x"]
    assert rel(x, x_ref) < 1e-9


def test_newton_logistic_from_a_nonzero_start():
    a, y = logistic_problem(10)
    x0 = np.random.default_rng(10).standard_normal(5)
    x0 /= 1.01 * np.linalg.norm(x0)
    x = tcompile.interpret(NEWTON_LOGISTIC, A=a, y=y, x0=x0)["x"]
    assert rel(x, logistic_optimum(a, y, mu=0.1)) < 1e-9


@pytest.mark.parametrize("d", [3, 6])
def test_newton_logistic_breast_cancer(d):
    """sklearn's breast cancer data: standardised, the first d features, rows scaled to norm
    <= 1, labels mapped to +-1; d by override."""
    a, labels = load_breast_cancer(return_X_y=True)
    a = (a - a.mean(axis=0)) / a.std(axis=0)
    a = a[:, :d]
    a /= np.linalg.norm(a, axis=1).max()
    y = 2.0 * labels - 1.0
    x_ref = logistic_optimum(a, y, mu=0.1)
    x = tcompile.interpret(NEWTON_LOGISTIC, {"d": d}, A=a, y=y, x0=np.zeros(d))["x"]
    assert rel(x, x_ref) < 1e-9


# ---- the optional leading batch axis -------------------------------------------------------

def test_batch_least_squares_equals_one_at_a_time():
    problems = [least_squares_problem(s, n=30, kappa=30.0) for s in range(3)]
    batch = tcompile.interpret(LEAST_SQUARES, A=np.stack([p[0] for p in problems]),
                               y=np.stack([p[1] for p in problems]),
                               a_test=np.stack([p[2] for p in problems]))
    assert batch["w"].shape == (3, 4) and batch["y_hat"].shape == (3,)
    for b, (a, y, a_test) in enumerate(problems):
        one = tcompile.interpret(LEAST_SQUARES, A=a, y=y, a_test=a_test)
        np.testing.assert_allclose(batch["w"][b], one["w"], rtol=1e-13, atol=0)
        np.testing.assert_allclose(batch["y_hat"][b], one["y_hat"], rtol=1e-13, atol=0)


def test_batch_logistic_and_inverse_equal_one_at_a_time():
    data = [logistic_problem(s) for s in range(3)]
    a = np.stack([d[0] for d in data])
    y = np.stack([d[1] for d in data])
    x0 = np.zeros((3, 5))
    batch = tcompile.interpret(NEWTON_LOGISTIC, A=a, y=y, x0=x0)["x"]
    mats = np.stack([inverse_problem(s, kappa=20.0) for s in range(3)])
    inv = tcompile.interpret(NEWTON_INVERSE, A=mats)["X"]
    assert batch.shape == (3, 5) and inv.shape == (3, 4, 4)
    for b in range(3):
        one = tcompile.interpret(NEWTON_LOGISTIC, A=a[b], y=y[b], x0=x0[b])["x"]
        np.testing.assert_allclose(batch[b], one, rtol=1e-13, atol=0)
        np.testing.assert_allclose(inv[b], tcompile.interpret(NEWTON_INVERSE, A=mats[b])["X"],
                                   rtol=1e-13, atol=0)


def test_unbatched_inputs_are_shared_across_the_batch():
    a, y, a_test = least_squares_problem(0, n=30)
    ys = np.stack([y, 2 * y])
    out = tcompile.interpret(LEAST_SQUARES, A=a, y=ys, a_test=a_test)   # only y is batched
    assert out["w"].shape == (2, 4)
    np.testing.assert_allclose(out["w"][1], 2 * out["w"][0], rtol=1e-12)
    single = tcompile.interpret(LEAST_SQUARES, A=a[None], y=y[None], a_test=a_test)
    assert single["w"].shape == (1, 4)                                  # a batch of one stays one


# ---- bad data ------------------------------------------------------------------------------

def ls_inputs(**change):
    a, y, a_test = least_squares_problem(0, n=10)
    inputs = {"A": a, "y": y, "a_test": a_test}
    inputs.update(change)
    return {k: v for k, v in inputs.items() if v is not None}


def logistic_inputs(**change):
    a, y = logistic_problem(0)
    inputs = {"A": a, "y": y, "x0": np.zeros(5)}
    inputs.update(change)
    return inputs


def with_nan(x, where):
    x = np.array(x, dtype=float)
    x[where] = np.nan
    return x


BAD_DATA = [
    ("missing", LEAST_SQUARES, lambda: ls_inputs(a_test=None),
     ["missing input a_test", "a_test [4]"]),
    ("unknown", LEAST_SQUARES, lambda: ls_inputs(b=np.zeros(4)),
     ["unknown input b", "the program takes: A, y, a_test"]),
    ("wrong_width", LEAST_SQUARES, lambda: ls_inputs(A=np.zeros((10, 3))),
     ["input 'A'", "[n, 4]", "got shape [10, 3]"]),
    ("wrong_rank", LEAST_SQUARES, lambda: ls_inputs(a_test=np.zeros((1, 1, 4))),
     ["input 'a_test'", "must have shape [4]", "got shape [1, 1, 4]"]),
    ("not_numeric", LEAST_SQUARES, lambda: ls_inputs(a_test="abc"),
     ["input 'a_test'", "numeric with shape [4]", "got str"]),
    ("ragged", LEAST_SQUARES, lambda: ls_inputs(a_test=[[1, 2], [3]]),
     ["input 'a_test'", "numeric with shape [4]", "got list"]),
    ("nan", LEAST_SQUARES, lambda: ls_inputs(A=with_nan(ls_inputs()["A"], (2, 1))),
     ["input 'A'", "NaN"]),
    ("inf", LEAST_SQUARES, lambda: ls_inputs(y=np.full(10, np.inf)),
     ["input 'y'", "infinity"]),
    ("inconsistent_n", LEAST_SQUARES, lambda: ls_inputs(y=np.zeros(9)),
     ["input 'y'", "9 tokens", "n = 10"]),
    ("no_tokens", LEAST_SQUARES, lambda: ls_inputs(A=np.zeros((0, 4)), y=np.zeros(0)),
     ["input 'A'", "no tokens"]),
    ("row_norm", LEAST_SQUARES, lambda: ls_inputs(A=3 * ls_inputs()["A"]),
     ["input 'A'", "row_norm <= 1", "got a row of norm 3"]),
    ("inconsistent_batch", LEAST_SQUARES,
     lambda: ls_inputs(A=np.stack([ls_inputs()["A"]] * 3), y=np.stack([ls_inputs()["y"]] * 2)),
     ["input 'y'", "batch size 2", "batch size 3"]),
    ("sign", NEWTON_LOGISTIC, lambda: logistic_inputs(y=np.r_[0.5, np.ones(25)]),
     ["input 'y'", "'sign'", "-1 or +1", "got 0.5"]),
    ("sign_zero", NEWTON_LOGISTIC, lambda: logistic_inputs(y=np.r_[np.ones(25), 0.0]),
     ["input 'y'", "-1 or +1", "got 0"]),
    ("norm", NEWTON_LOGISTIC, lambda: logistic_inputs(x0=np.ones(5)),
     ["input 'x0'", "norm <= 1", "got norm 2.23607"]),
    ("spectral_norm", NEWTON_INVERSE, lambda: {"A": 2 * np.eye(4)},
     ["input 'A'", "norm <= 1", "got norm 2"]),
    ("n_across_inputs_in_a_batch", NEWTON_LOGISTIC,
     lambda: logistic_inputs(A=np.zeros((2, 26, 5)), y=np.ones((2, 27))),
     ["input 'y'", "27 tokens", "n = 26"]),
]


@pytest.mark.parametrize("path, make, fragments", [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_bad_data(path, make, fragments):
    with pytest.raises(InputError) as info:
        tcompile.interpret(path, **make())
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    assert info.value.format().startswith("error: ")


def test_override_changes_expected_shapes():
    a, y, a_test = least_squares_problem(0, n=10)
    with pytest.raises(InputError, match=r"input 'A' must have shape \[n, 6\]"):
        tcompile.interpret(LEAST_SQUARES, {"d": 6}, A=a, y=y, a_test=a_test)


QUALIFIED = """program q
input F : [n] flag
input R : [2] in [-1, 1]
input S : [2, 2] symmetric
input P : [2, 2] spectrum in [0.5, 2]
output z
z = S @ P @ R + sum(F)
"""


def qualified_inputs(**change):
    inputs = {"F": np.array([0.0, 1.0, 1.0]), "R": np.array([0.5, -1.0]),
              "S": np.array([[1.0, 2.0], [2.0, 3.0]]), "P": np.diag([0.5, 2.0])}
    inputs.update(change)
    return inputs


def test_qualified_inputs_accepted():
    out = interpret_program(parse_source(QUALIFIED), None, **qualified_inputs())
    s, p, r = (qualified_inputs()[k] for k in "SPR")
    np.testing.assert_allclose(out["z"], s @ p @ r + 2.0)


@pytest.mark.parametrize("change, fragments", [
    ({"F": np.array([0.0, 0.5, 1.0])}, ["input 'F'", "'flag'", "0 or 1", "got 0.5"]),
    ({"R": np.array([0.0, 1.5])}, ["input 'R'", "in [-1, 1]", "got values in [0, 1.5]"]),
    ({"S": np.array([[1.0, 2.0], [0.0, 3.0]])}, ["input 'S'", "symmetric", "max |M - M.T| = 2"]),
    ({"P": np.diag([0.1, 1.0])}, ["input 'P'", "spectrum in [0.5, 2]", "eigenvalues in [0.1, 1]"]),
    ({"P": np.array([[1.0, 0.5], [0.0, 1.0]])}, ["input 'P'", "must be symmetric"]),
])
def test_bad_qualified_inputs(change, fragments):
    with pytest.raises(InputError) as info:
        interpret_program(parse_source(QUALIFIED), None, **qualified_inputs(**change))
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message


def test_program_errors_come_before_data_errors():
    # a broken program is reported as such even when the data is also wrong
    with pytest.raises(tcompile.ProgramError):
        interpret_program(parse_source("program t\ninput A : [n, 2]\noutput x\nx = A + B\n"), None)


# ---- semantics of each construct, against numpy --------------------------------------------

SEMANTICS = """program sem
param k = 3
input A : [n, 3] in [-2, 2]
input u : [n]
input b : [3]
input M : [3, 3]
input c : [] in [0.5, 4]
output token_scale, row_sub, identity, col_sum, mean, row_times, mat_vec, dot, contract
output powers, unary, transpose, funcs, trig, clipped, loop, folded
token_scale = u * A
row_sub = A - b
identity = 2 * I - M @ I + I / 4
col_sum = sum(A)
mean = sum(u) / n
row_times = b @ M
mat_vec = A @ b
dot = b @ b
contract = A.T @ u
powers = c ** 0.5 + c ** -1 + c ** 2 + 2 ** k
unary = +b - -b
transpose = M.T
funcs = sigmoid(A) + softplus(A) + exp(A) + log(A + 3) + sqrt(A + 2) + reciprocal(A + 3) + abs(A) + relu(A)
trig = tanh(A) + sin(A) * cos(A)
clipped = clip(A, -1, 0.5)
loop = twice(M, k)
folded = (1 + 2) * k / 9 - 1
def twice(X, times) {
  repeat times {
    X = X + X
  }
  return X
}
"""


def test_semantics_against_numpy():
    rng = np.random.default_rng(0)
    a = rng.uniform(-2, 2, (7, 3))
    u, b, m = rng.standard_normal(7), rng.standard_normal(3), rng.standard_normal((3, 3))
    out = interpret_program(parse_source(SEMANTICS), None, A=a, u=u, b=b, M=m, c=2.0)
    expect = {
        "token_scale": u[:, None] * a,        # [n] * [n, k] scales each token's row
        "row_sub": a - b,
        "identity": 2 * np.eye(3) - m + np.eye(3) / 4,
        "col_sum": a.sum(axis=0),
        "mean": u.mean(),
        "row_times": b @ m,
        "mat_vec": a @ b,
        "dot": b @ b,
        "contract": a.T @ u,
        "powers": np.sqrt(2) + 0.5 + 4 + 8,
        "unary": 2 * b,
        "transpose": m.T,
        "funcs": expit(a) + np.logaddexp(0, a) + np.exp(a) + np.log(a + 3) + np.sqrt(a + 2)
                 + 1 / (a + 3) + np.abs(a) + np.maximum(a, 0),
        "trig": np.tanh(a) + np.sin(a) * np.cos(a),
        "clipped": np.clip(a, -1, 0.5),
        "loop": 8 * m,
        "folded": 0.0,
    }
    assert set(out) == set(expect)
    for name, value in expect.items():
        assert out[name].shape == np.shape(value), name
        np.testing.assert_allclose(out[name], value, rtol=1e-14, atol=1e-14, err_msg=name)


def test_repeat_zero_leaves_values_unchanged():
    a = inverse_problem(0)
    x = tcompile.interpret(NEWTON_INVERSE, {"steps": 0}, A=a)["X"]
    np.testing.assert_allclose(x, a.T)


def test_function_calls_do_not_leak_into_the_caller():
    src = ("program t\ndef f(a) {\n  b = 2 * a\n  a = b + 1\n  return a\n}\n"
           "input v : [2]\noutput w, z\nb = v\nw = f(v)\nz = b\n")
    v = np.array([1.0, -2.0])
    out = interpret_program(parse_source(src), None, v=v)
    np.testing.assert_allclose(out["w"], 2 * v + 1)
    np.testing.assert_allclose(out["z"], v)


# ---- interpreter bugs found while writing these tests (tcompile/ is the lead's to fix) -----

@pytest.mark.parametrize("expr, expect", [
    ("M + -I", lambda m: m - np.eye(2)),
    ("M + (I + I)", lambda m: m + 2 * np.eye(2)),
    ("M - (I - I)", lambda m: m),
    ("M + I * I", lambda m: m + np.eye(2)),
    ("(I + I) @ M", lambda m: 2 * m),
], ids=["neg", "sum", "difference", "product", "sum_then_matmul"])
def test_unsized_identity_arithmetic(expr, expect):
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    src = f"program t\ninput M : [2, 2]\noutput X\nX = {expr}\n"
    out = interpret_program(parse_source(src), None, M=m)
    np.testing.assert_allclose(out["X"], expect(m))
