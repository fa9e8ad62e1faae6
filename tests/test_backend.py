"""The back end against its targets: depth and width of the shipped programs (asserted exactly,
they are what the compiler promises), the compiled model against the float64 interpreter and
against numpy, batching, float32, encode/decode, determinism, input errors, and a small custom
program exercising transposes, long products, token sums, scalars, `/ n` and `c * I`.

Relative errors are norm-free: max |got - want| / max |want|.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

import tcompile
from arrays import rel, with_singular_values
from tcompile import CompileError, InputError
from tcompile.compiler.pipeline import compile_source
from tcompile.language.interpreter import interpret_program

ROOT = Path(__file__).resolve().parents[1]
NEWTON_INVERSE = ROOT / "programs" / "newton_inverse.tp"
LEAST_SQUARES = ROOT / "programs" / "least_squares.tp"


@lru_cache(maxsize=None)
def compiled(path: Path, **params):
    return tcompile.compile_file(path, params=params)


def inverse_batch(seed, d, kappa, batch=3):
    """Spectral norm exactly 1 (the declared bound), condition number kappa."""
    rng = np.random.default_rng(seed)
    return np.stack([with_singular_values(rng, d, d, np.geomspace(1.0, 1.0 / kappa, d))
                     for _ in range(batch)])


def lstsq_batch(seed, n, d, kappa, batch=3):
    """A with kappa(A) = kappa and max row norm exactly 1; y, a_test standard normal."""
    rng = np.random.default_rng(seed)
    As = []
    for _ in range(batch):
        A = with_singular_values(rng, n, d, np.geomspace(1.0, 1.0 / kappa, d))
        As.append(A / np.linalg.norm(A, axis=1).max())
    return dict(A=np.stack(As), y=rng.standard_normal((batch, n)), a_test=rng.standard_normal((batch, d)))


# ---- newton_inverse: depth and width -------------------------------------------------------

@pytest.mark.parametrize("d", [2, 3, 5, 8])
@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_newton_inverse_one_layer_per_step(d, steps):
    prog = compiled(NEWTON_INVERSE, d=d, steps=steps)
    assert prog.n_layers == steps                      # the bound is steps + 1
    assert prog.report["heads_per_layer"] == [2] * steps     # (-X, A^T, X) and (X, I, I)
    # width 3d (the target): X, A^T (stored for the X A X head) and the identity block, the
    # only constant. One step needs no identity (X_0 = A^T is the input itself): 2d.
    assert prog.width == (2 * d if steps == 1 else 3 * d)


# ---- newton_inverse: numerics --------------------------------------------------------------

# enough steps to converge: ||I - X_t A|| = (1 - 1/kappa^2)^(2^t)
CONVERGED_STEPS = {1: 8, 10: 14, 100: 30, 1000: 40}


@pytest.mark.parametrize("kappa", [1, 10, 100, 1000])
@pytest.mark.parametrize("d", [3, 5])
def test_newton_inverse_matches_interpreter_and_numpy(d, kappa):
    steps = CONVERGED_STEPS[kappa]
    prog = compiled(NEWTON_INVERSE, d=d, steps=steps)
    A = inverse_batch(seed=10 * d + kappa, d=d, kappa=kappa)
    assert abs(np.linalg.norm(A[0], 2) - 1) < 1e-12 and abs(np.linalg.cond(A[0]) / kappa - 1) < 1e-9
    assert np.abs(A[0] - A[0].T).max() > 0.01                     # non-symmetric
    got = prog.run(A=A)["X"]
    want = tcompile.interpret(NEWTON_INVERSE, params={"d": d, "steps": steps}, A=A)["X"]
    assert got.shape == (3, d, d)
    assert rel(got, want) <= 1e-12
    assert rel(got, np.linalg.inv(A)) <= 1e-9


@pytest.mark.parametrize("kappa, steps", [(1000, 5), (1000, 20), (100, 12)])
def test_newton_inverse_matches_interpreter_before_convergence(kappa, steps):
    """Far from converged the iterate is a large matrix polynomial in A: still the same numbers."""
    prog = compiled(NEWTON_INVERSE, d=8, steps=steps)
    A = inverse_batch(seed=kappa + steps, d=8, kappa=kappa)
    got = prog.run(A=A)["X"]
    want = tcompile.interpret(NEWTON_INVERSE, params={"d": 8, "steps": steps}, A=A)["X"]
    assert rel(got, want) <= 1e-12
    assert rel(got, np.linalg.inv(A)) > 1e-3                       # really not converged


# ---- least_squares: depth and width --------------------------------------------------------

@pytest.mark.parametrize("d", [2, 4, 6, 10])
@pytest.mark.parametrize("steps", [1, 3, 10, 24])
def test_least_squares_depth_and_width(d, steps):
    prog = compiled(LEAST_SQUARES, d=d, steps=steps)
    # what the compiler promises today: T + 2 layers (T + 1 for a single step)
    assert prog.n_layers == (2 if steps == 1 else steps + 2)
    assert prog.width <= 4 * d + 3


def test_least_squares_depth_two_steps():
    assert compiled(LEAST_SQUARES, d=4, steps=2).n_layers == 4


def test_least_squares_width():
    # S, X, w, the identity block (A's rows reused), a_test and b as rows, 1/n
    for d in (2, 4, 6):
        assert compiled(LEAST_SQUARES, d=d, steps=10).width == 4 * d + 2


# ---- least_squares: numerics ---------------------------------------------------------------

@pytest.mark.parametrize("kappa", [1, 10, 30])
@pytest.mark.parametrize("d", [2, 4, 6])
def test_least_squares_matches_interpreter_and_lstsq(d, kappa):
    steps = 30
    prog = compiled(LEAST_SQUARES, d=d, steps=steps)
    inputs = lstsq_batch(seed=100 * d + kappa, n=20, d=d, kappa=kappa)
    assert np.linalg.norm(inputs["A"], axis=2).max() <= 1 + 1e-12
    assert abs(np.linalg.cond(inputs["A"][0]) / kappa - 1) < 1e-9
    got = prog.run(**inputs)
    want = tcompile.interpret(LEAST_SQUARES, params={"d": d, "steps": steps}, **inputs)
    assert set(got) == {"w", "y_hat"}
    assert got["w"].shape == (3, d) and got["y_hat"].shape == (3,)
    for name in ("w", "y_hat"):
        assert rel(got[name], want[name]) <= 1e-12, name
    w_star = np.stack([np.linalg.lstsq(A, y, rcond=None)[0] for A, y in zip(inputs["A"], inputs["y"])])
    assert rel(got["w"], w_star) <= 1e-9
    assert rel(got["y_hat"], np.einsum("bi,bi->b", inputs["a_test"], w_star)) <= 1e-9


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_least_squares_matches_interpreter_few_steps(steps):
    prog = compiled(LEAST_SQUARES, d=4, steps=steps)
    inputs = lstsq_batch(seed=steps, n=9, d=4, kappa=10)
    got = prog.run(**inputs)
    want = tcompile.interpret(LEAST_SQUARES, params={"d": 4, "steps": steps}, **inputs)
    for name in ("w", "y_hat"):
        assert rel(got[name], want[name]) <= 1e-12, name


# ---- batching ------------------------------------------------------------------------------

def test_batch_equals_one_at_a_time_newton_inverse():
    prog = compiled(NEWTON_INVERSE, d=4, steps=20)
    A = inverse_batch(seed=7, d=4, kappa=50, batch=5)
    batched = prog.run(A=A)["X"]
    assert batched.shape == (5, 4, 4)
    for b in range(5):
        single = prog.run(A=A[b])["X"]
        assert single.shape == (4, 4)
        assert rel(batched[b], single) <= 1e-14


def test_batch_equals_one_at_a_time_least_squares():
    prog = compiled(LEAST_SQUARES, d=3, steps=12)
    inputs = lstsq_batch(seed=8, n=11, d=3, kappa=5, batch=5)
    batched = prog.run(**inputs)
    for b in range(5):
        single = prog.run(**{k: v[b] for k, v in inputs.items()})
        assert single["w"].shape == (3,) and np.shape(single["y_hat"]) == ()
        for name in ("w", "y_hat"):
            assert rel(batched[name][b], single[name]) <= 1e-14, name


def test_unbatched_input_is_broadcast_over_the_batch():
    prog = compiled(LEAST_SQUARES, d=3, steps=12)
    inputs = lstsq_batch(seed=9, n=11, d=3, kappa=5, batch=4)
    a = inputs["a_test"][0]
    got = prog.run(A=inputs["A"], y=inputs["y"], a_test=a)
    want = prog.run(A=inputs["A"], y=inputs["y"], a_test=np.broadcast_to(a, (4, 3)))
    for name in ("w", "y_hat"):
        assert rel(got[name], want[name]) <= 1e-14


# ---- float32 -------------------------------------------------------------------------------

def test_float32_close_to_float64_newton_inverse():
    prog = compiled(NEWTON_INVERSE, d=4, steps=12)
    A = inverse_batch(seed=11, d=4, kappa=4)
    f64 = prog.run(A=A)["X"]
    f32 = prog.run(A=A, dtype="float32")["X"]
    assert np.all(np.isfinite(f32))
    assert rel(f32, f64) <= 1e-4
    assert rel(f32, f64) > 0                           # really computed in float32


def test_float32_close_to_float64_least_squares():
    prog = compiled(LEAST_SQUARES, d=4, steps=10)
    inputs = lstsq_batch(seed=12, n=16, d=4, kappa=2)
    f64 = prog.run(**inputs)
    f32 = prog.run(dtype="float32", **inputs)
    for name in ("w", "y_hat"):
        assert rel(f32[name], f64[name]) <= 1e-4, name


# ---- encode / decode -----------------------------------------------------------------------

def test_encode_module_decode_equals_run_least_squares():
    prog = compiled(LEAST_SQUARES, d=4, steps=6)
    inputs = lstsq_batch(seed=13, n=10, d=4, kappa=5, batch=2)
    x = prog.encode(**inputs)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float64
    assert tuple(x.shape) == (2, 10, prog.width)
    assert isinstance(prog.module, torch.nn.Module)
    with torch.no_grad():
        out = prog.decode(prog.module(x))
    ran = prog.run(executor="module", **inputs)
    assert set(out) == set(ran) == {"w", "y_hat"}
    for name in out:
        np.testing.assert_array_equal(out[name], ran[name])


def test_encode_module_decode_equals_run_unbatched_newton_inverse():
    prog = compiled(NEWTON_INVERSE, d=3, steps=5)
    A = inverse_batch(seed=14, d=3, kappa=3, batch=1)[0]
    x = prog.encode(A=A)
    # no token input: n is the program's min_tokens; a batch axis of 1 is added
    assert tuple(x.shape) == (1, prog.manifest["min_tokens"], prog.width)
    with torch.no_grad():
        out = prog.decode(prog.module(x))
    assert out["X"].shape == (1, 3, 3)
    np.testing.assert_array_equal(out["X"][0], prog.run(A=A)["X"])


# ---- determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("path, params", [(NEWTON_INVERSE, {"d": 5, "steps": 7}),
                                          (LEAST_SQUARES, {"d": 3, "steps": 6})])
def test_compilation_is_deterministic(tmp_path, path, params):
    a = tcompile.compile_file(path, params=params)
    b = tcompile.compile_file(path, params=params)
    assert a.manifest == b.manifest
    assert len(a.layers) == len(b.layers) == a.n_layers
    for la, lb in zip(a.layers, b.layers):
        for w in ("W_K", "W_Q", "W_V", "W_1", "W_2"):
            np.testing.assert_array_equal(getattr(la, w), getattr(lb, w))
        assert la.head_labels == lb.head_labels
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    a.save(tmp_path / "one" / "art")
    b.save(tmp_path / "two" / "art")
    a.save(tmp_path / "three" / "art")
    for suffix in (".safetensors", ".json"):
        first = (tmp_path / "one" / f"art{suffix}").read_bytes()
        assert first == (tmp_path / "two" / f"art{suffix}").read_bytes()
        assert first == (tmp_path / "three" / f"art{suffix}").read_bytes()


# ---- input errors --------------------------------------------------------------------------

def test_too_few_tokens_is_an_input_error():
    prog = compiled(LEAST_SQUARES, d=4, steps=3)
    assert prog.manifest["min_tokens"] == 4
    rng = np.random.default_rng(15)
    A = rng.standard_normal((3, 4))
    inputs = dict(A=A / np.linalg.norm(A, axis=1, keepdims=True), y=rng.standard_normal(3),
                  a_test=rng.standard_normal(4))
    # the interpreter has no such limit; the compiled program has
    tcompile.interpret(LEAST_SQUARES, params={"d": 4, "steps": 3}, **inputs)
    with pytest.raises(InputError, match=r"at least 4 tokens.*n = 3"):
        prog.run(**inputs)
    with pytest.raises(InputError, match=r"at least 4 tokens"):
        prog.encode(**inputs)


@pytest.mark.parametrize("name, value", [("A", np.zeros((8, 3))), ("a_test", np.zeros(5)),
                                         ("y", np.zeros((8, 2))), ("y", np.zeros(7))])
def test_wrong_input_shape_names_the_input(name, value):
    prog = compiled(LEAST_SQUARES, d=4, steps=3)
    inputs = {k: v[0] for k, v in lstsq_batch(seed=16, n=8, d=4, kappa=2, batch=1).items()}
    inputs[name] = value
    with pytest.raises(InputError, match=f"'{name}'"):
        prog.run(**inputs)


def test_wrong_matrix_shape_names_the_input():
    prog = compiled(NEWTON_INVERSE, d=3, steps=2)
    with pytest.raises(InputError, match=r"'A'.*\[3, 3\]"):
        prog.run(A=np.zeros((3, 4)))
    with pytest.raises(InputError, match="missing input A"):
        prog.run()
    with pytest.raises(InputError, match="unknown input B"):
        prog.run(A=np.eye(3) / 2, B=np.eye(3))


def test_violated_assumption_is_an_input_error():
    prog = compiled(NEWTON_INVERSE, d=3, steps=2)
    with pytest.raises(InputError, match=r"'A'.*norm <= 1"):
        prog.run(A=2 * np.eye(3))


# ---- a custom program ----------------------------------------------------------------------

CUSTOM = """program custom
dim d = 3
dim k = 2
input M : [d, k]
input B : [d, d]
input C : [d, d]
input D : [d, d]
input E : [d, d]
input Z : [n, d]
input v : [d]
input y : [n]
input s : []
output P, Q, K4, R, G, u, sy, z, b, Bn
P = M.T @ B
Q = B @ C @ D @ E
K4 = M.T @ B @ C.T @ M
R = 2 * I - B @ C + 0.5 * I
G = Z.T @ Z / n + 0.25 * I
u = s * v / n
sy = s * y
z = Z @ v
b = Z.T @ y / n
Bn = B / n + B.T
"""


def custom_inputs(seed, n=7):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal
    return dict(M=g((3, 2)), B=g((3, 3)), C=g((3, 3)), D=g((3, 3)), E=g((3, 3)), Z=g((n, 3)),
                v=g(3), y=g(n), s=np.array(g()))


def test_custom_program_matches_interpreter():
    prog = compile_source(CUSTOM, "custom.tp")
    inputs = custom_inputs(seed=17)
    got = prog.run(**inputs)
    want = interpret_program(prog.program, None, **inputs)
    assert set(got) == set(want) == {"P", "Q", "K4", "R", "G", "u", "sy", "z", "b", "Bn"}
    for name in want:
        assert rel(got[name], want[name]) <= 1e-12, name
    # independent numpy check of the interesting ones
    M, B, C, D, E, Z, v = (inputs[k] for k in "MBCDEZv")
    s, n = float(inputs["s"]), 7
    assert rel(got["P"], M.T @ B) <= 1e-12 and got["P"].shape == (2, 3)
    assert rel(got["Q"], B @ C @ D @ E) <= 1e-12
    assert rel(got["K4"], M.T @ B @ C.T @ M) <= 1e-12 and got["K4"].shape == (2, 2)
    assert rel(got["G"], Z.T @ Z / n + 0.25 * np.eye(3)) <= 1e-12
    assert rel(got["u"], s * v / n) <= 1e-12


def test_custom_program_batched_and_other_n():
    prog = compile_source(CUSTOM, "custom.tp")
    per = [custom_inputs(seed=18 + i, n=12) for i in range(3)]
    inputs = {k: np.stack([p[k] for p in per]) for k in per[0]}
    got = prog.run(**inputs)
    want = interpret_program(prog.program, None, **inputs)
    for name in want:
        assert rel(got[name], want[name]) <= 1e-12, name


def test_four_factor_product_stores_an_intermediate():
    prog = compile_source("program p4\ndim d = 4\ninput A : [d, d]\ninput B : [d, d]\n"
                          "input C : [d, d]\ninput D : [d, d]\noutput Q\nQ = A @ B @ C @ D\n")
    # one head multiplies at most three stored values: two layers, an intermediate stored
    assert prog.n_layers == 2
    rng = np.random.default_rng(19)
    inputs = {k: rng.standard_normal((2, 4, 4)) for k in "ABCD"}
    got = prog.run(**inputs)["Q"]
    assert rel(got, inputs["A"] @ inputs["B"] @ inputs["C"] @ inputs["D"]) <= 1e-12


def test_runtime_scalar_times_matrix_is_row_split():
    """s * B has no side of length 1 for the scalar to sit on: one head per row, one layer."""
    src = "program u\ndim d = 3\ninput B : [d, d]\ninput s : []\noutput R\nR = s * B + s * s * B.T\n"
    prog = compile_source(src, "u.tp")
    assert prog.n_layers == 1
    rng = np.random.default_rng(21)
    inputs = dict(B=rng.standard_normal((3, 3)), s=np.array(1.3))
    want = interpret_program(prog.program, None, **inputs)["R"]
    assert rel(prog.run(**inputs)["R"], want) <= 1e-12


@pytest.mark.parametrize("body, message", [
    # a product of two scaled reals is one scaled product piece, fitted on B's bounds
    ("R = 2 * B * (s * B)", "'B' has no known bounds"),
])
def test_unsupported_forms_are_compile_errors(body, message):
    src = "program u\ndim d = 3\ninput B : [d, d]\ninput s : []\noutput R\n" + body + "\n"
    with pytest.raises(CompileError, match=message) as exc:
        compile_source(src, "u.tp")
    assert exc.value.line == 6                    # points at the offending statement


def test_a_product_of_two_scaled_reals_with_bounds_is_one_piece():
    """2 * B * (s * B), refused as "not supported" until products took their numbers along:
    with B bounded it is 2s · B ⊙ B, one layer, within the default budget of numpy."""
    src = ("program u\ndim d = 3\ninput B : [d, d] in [-1, 1]\ninput s : [] in [0, 2]\n"
           "output R\nR = 2 * B * (s * B)\n")
    prog = compile_source(src, "u.tp")
    B, s = np.random.default_rng(1).uniform(-1, 1, (3, 3)), np.array(1.3)
    assert prog.n_layers == 1
    assert np.abs(prog.run(B=B, s=s)["R"] - 2 * s * B * B).max() <= 2 * 2 * 1e-6


@pytest.mark.parametrize("body", ["t = sum(y)", "t = sum(y) / n", "t = sum(Z) / n",
                                  "t = s + sum(y) / n", "t = y + 2"])
def test_token_sums_and_scalar_broadcast_over_tokens(body):
    """Regression: these use the constant ones row, whose block key once was 'const:ones.T',
    which the encoder did not know (KeyError in CompiledProgram._storage_at_input)."""
    src = ("program sums\ninput y : [n]\ninput Z : [n, 3]\ninput s : []\noutput t\n" + body + "\n")
    prog = compile_source(src, "sums.tp")
    rng = np.random.default_rng(20)
    inputs = dict(y=rng.standard_normal(6), Z=rng.standard_normal((6, 3)), s=np.array(0.3))
    got = prog.run(**inputs)["t"]
    want = interpret_program(prog.program, None, **inputs)["t"]
    assert rel(got, want) <= 1e-12
