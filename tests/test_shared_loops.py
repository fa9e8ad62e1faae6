"""Shared builds (`loops="shared"`): each repeat body stored once and run as a loop.

Oracles: the unrolled build of the same program and params (the same weights' arithmetic,
≤ 1e-14 relative in float64), and the reference interpreter at every step count tried.
"""
from __future__ import annotations

import functools
import warnings
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import builds
import tcompile
import tcompile.compiler.shared_build as shared_build_module
from tcompile.compiler.pipeline import check_program
from tcompile.compiler.steady_state import loop_sites
from tcompile.errors import InputError, NotConvergedWarning
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_file, parse_source
from tcompile.language.run_params import run_time_counts
from tcompile.compiler.fold import Loop, digest
from tcompile.runtime.loops import LoopItem

from arrays import rel, with_singular_values
from test_pass_plan import STENCIL

PROGRAMS = "programs/"


def random_inverse_problem(rng, d):
    return {"A": with_singular_values(rng, d, d, np.linspace(1.0, 0.2, d))}


def random_regression(rng, n, d):
    A = rng.standard_normal((n, d))
    A /= np.linalg.norm(A, axis=1).max()
    return {"A": A, "y": A @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n),
            "a_test": rng.standard_normal(d)}


def random_logistic_problem(rng, n, d):
    A = rng.standard_normal((n, d))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    return {"A": A, "y": np.where(rng.standard_normal(n) > 0, 1.0, -1.0), "x0": np.zeros(d)}


def interpreted(path, params, inputs):
    prog = parse_file(path)
    return interpret_program(prog, params, **inputs)


def runs_as_unrolled(prog, source: str, counts: dict, inputs: dict, extra_layers: int = 0):
    """Shared build `prog` of `source`, run at these run-time counts: asserts it runs as many
    layers as the unrolled build compiled at them (plus `extra_layers`, a kernel's tail), and
    returns (its outputs, the unrolled build's)."""
    unrolled = tcompile.compile_source(source, params=counts)
    assert prog.loops.n_layers(prog.loops.counts(counts)) == unrolled.n_layers + extra_layers, \
        counts
    return prog.run(**counts, **inputs), unrolled.run(**inputs)


@pytest.fixture(scope="module")
def inverse():
    return tcompile.compile_file(PROGRAMS + "newton_inverse.tp", {"d": 4}, loops="shared")


@pytest.fixture(scope="module")
def least_squares():
    return tcompile.compile_file(PROGRAMS + "least_squares.tp", loops="shared")


@functools.lru_cache(maxsize=None)
def shared_build(name: str, params: tuple = ()):
    """The session's shared build (tests/builds.py: one per program and settings, read by
    test_exact_products' Sinkhorn test too)."""
    return builds.build(PROGRAMS + name, dict(params), loops="shared")


@pytest.fixture(scope="module")
def logistic():
    return shared_build("newton_logistic.tp")


# ---- depth: the body is the unrolled schedule's steady state --------------------------------

def test_newton_inverse_is_one_stored_layer_per_iteration(inverse):
    (spec,) = inverse.loops.loops
    assert spec.param == "steps" and spec.layers_per_iteration == 1
    unrolled = tcompile.compile_file(PROGRAMS + "newton_inverse.tp", {"d": 4})
    assert inverse.module.n_layers() == unrolled.n_layers == 30
    assert len(inverse.layers) == 2              # the first step, then the body


def test_least_squares_keeps_one_layer_per_step(least_squares):
    (spec,) = least_squares.loops.loops
    assert spec.layers_per_iteration == 1
    unrolled = tcompile.compile_file(PROGRAMS + "least_squares.tp")
    assert least_squares.module.n_layers() == unrolled.n_layers


def test_logistic_nests_the_inversion_loop_inside_the_damped_step(logistic):
    outer, inner = sorted(logistic.loops.loops, key=lambda s: s.depth)
    k = logistic.info.params["inv_steps"]
    assert (outer.param, inner.param) == ("steps", "inv_steps")
    assert inner.layers_per_iteration == 1 and inner.depth == 1
    assert outer.layers_per_iteration <= k + 4            # the issue's bound; it is k + 3
    assert outer.layers_per_iteration == k + 3
    unrolled = tcompile.compile_file(PROGRAMS + "newton_logistic.tp")
    assert logistic.module.n_layers() == unrolled.n_layers
    names = dict(logistic.module.named_children())
    assert {"prologue", "body", "epilogue"} <= set(names) and hasattr(names["body"], "loop")


def test_equal_layers_are_stored_once(logistic):
    """A body layer and the same layer of the pipelined iteration in the epilogue (and an
    inner loop's body in its instances) are equal bit for bit: one stored layer runs in every
    such place (21 stored layers before, 18 by that; parameters 1,121,472 → 1,030,320). Every
    value made inside a loop takes its previous iteration's rows where they are free (rows.py,
    twins), so the first and last damped steps lay out their values as the body does: 12
    stored layers, 767,880 parameters. A second row scan offers the first iteration's values
    the rows of the next iteration's, and x0 and A x0 the rows of x and z: the body runs from
    the first damped step's inversion on (the outer loop's offset 3 → 1), and the layers
    around it are the fill (the first gradient and Hessian) and the drain (the last step):
    10 stored layers, 550,368 parameters (≤ ¼ of the unrolled build's 2,368,008)."""
    from tcompile.compiler.fold import digest
    digests = [digest(w) for w in logistic.layers]
    assert len(set(digests)) == len(digests) == 10
    assert sum(p.numel() for p in logistic.module.parameters()) == 550_368
    outer = next(s for s in logistic.loops.loops if s.depth == 0)
    (body,) = [i for i in logistic.loops.sequence if getattr(i, "loop", None) == outer.key]
    assert body.offset == 1 and outer.min_count == 3
    assert 4 * 550_368 <= 2_368_008
    text = tcompile.report_text(logistic)
    assert "body.{i}.loop.{j}.0, epilogue.loop.{i}.0" in text


# ---- shared vs unrolled, and the interpreter at other counts ---------------------------------

def test_shipped_programs_match_their_unrolled_builds(inverse, least_squares, logistic):
    rng = np.random.default_rng(3)
    cases = [(inverse, "newton_inverse.tp", {"d": 4}, random_inverse_problem(rng, 4)),
             (least_squares, "least_squares.tp", {}, random_regression(rng, 40, 4)),
             (logistic, "newton_logistic.tp", {}, random_logistic_problem(rng, 26, 5))]
    for shared, name, params, inputs in cases:
        unrolled = tcompile.compile_file(PROGRAMS + name, params)
        a, b = shared.run(**inputs), unrolled.run(executor="module", **inputs)
        for key in b:
            assert rel(a[key], b[key]) <= 1e-14, (name, key)


@pytest.mark.parametrize("steps", [5, 20, 60])
def test_newton_inverse_runs_any_step_count_built_once(inverse, steps):
    A = random_inverse_problem(np.random.default_rng(steps), 4)["A"]
    want = interpreted(PROGRAMS + "newton_inverse.tp", {"d": 4, "steps": steps}, {"A": A})["X"]
    got = inverse.run(A=A, steps=steps)["X"]
    assert rel(got, want) <= 1e-13
    assert inverse.module.n_layers(steps=steps) == steps


def test_logistic_runs_other_outer_and_inner_counts(logistic):
    inputs = random_logistic_problem(np.random.default_rng(5), 26, 5)
    for steps, inv in ((5, 8),):
        params = {"steps": steps, "inv_steps": inv}
        unrolled = tcompile.compile_file(PROGRAMS + "newton_logistic.tp", params)
        want = unrolled.run(executor="module", **inputs)["x"]
        assert rel(logistic.run(**inputs, **params)["x"], want) <= 1e-14


def test_artifact_size_does_not_depend_on_the_step_count(tmp_path):
    sizes = []
    for steps in (10, 1000):
        prog = tcompile.compile_file(PROGRAMS + "newton_inverse.tp", {"steps": steps},
                                     loops="shared")
        paths = prog.save(tmp_path / f"inv{steps}")
        sizes.append(next(p for p in paths if p.suffix == ".safetensors").stat().st_size)
    assert abs(sizes[0] - sizes[1]) <= 0.01 * sizes[0]


def test_saved_shared_build_loads_and_runs_the_same(tmp_path, least_squares):
    least_squares.save(tmp_path / "ls")
    back = tcompile.load(tmp_path / "ls")
    assert back.loops == least_squares.loops
    inputs = random_regression(np.random.default_rng(1), 30, 4)
    a, b = back.run(steps=9, **inputs), least_squares.run(steps=9, **inputs)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ---- run-time counts: what may change, and clear refusals ------------------------------------

def test_run_time_counts_are_the_params_that_only_count_repeats():
    for name, want in (("newton_inverse", {"steps"}), ("newton_logistic", {"steps", "inv_steps"})):
        assert run_time_counts(parse_file(PROGRAMS + name + ".tp")) == want
    src = """program p
dim d = 2
param steps = 4
param k = 3
param b = 2
input v : [d] assume norm <= 1
output w
def twice(x, m) {
  repeat m {
    x = 0.5 * x + v
  }
  return x
}
w = v
repeat steps {
  w = twice(w, k) / b
}
repeat b {
  w = 0.5 * w
}
"""
    assert run_time_counts(parse_source(src)) == {"steps", "k"}


def test_refusals_name_what_may_be_given(inverse):
    A = random_inverse_problem(np.random.default_rng(0), 4)["A"]
    with pytest.raises(InputError, match="norm_bound is not a run-time count"):
        inverse.run(A=A, norm_bound=2)
    with pytest.raises(InputError, match="at least 2 times"):
        inverse.run(A=A, steps=1)
    for bad in (2.5, float("nan"), float("inf"), "5", True):
        with pytest.raises(InputError, match="whole number"):
            inverse.run(A=A, steps=bad)
    assert rel(inverse.run(A=A, steps=np.int64(7))["X"], inverse.run(A=A, steps=7)["X"]) == 0
    unrolled = tcompile.compile_file(PROGRAMS + "newton_inverse.tp", {"d": 4})
    with pytest.raises(InputError, match="shared build"):
        unrolled.run(A=A, steps=5)


def test_a_count_the_domains_depend_on_is_capped_at_the_built_count(tmp_path):
    src = """program grow
param steps = 4
input s : [] in [0, 1]
output t, c
t = s
c = s
repeat steps {
  t = sigmoid(t) + t
  c = c + t
}
"""
    prog = tcompile.compile_source(src, loops="shared")
    (spec,) = prog.loops.loops
    assert spec.max_count == 4                 # t's bound grows with every iteration
    assert spec.growing == ("t",)              # (c's never reach a fit: not a limit)
    want = interpret_program(parse_source(src), {"steps": 3}, s=0.5)["t"]
    assert rel(prog.run(s=0.5, steps=3)["t"], want) <= 1e-5
    with pytest.raises(InputError, match="at most 4 iterations") as e:
        prog.run(s=0.5, steps=5)
    assert "derived from the bounds of t, which grow with the count" in str(e.value)
    assert ("or declare the bounds of the loop's variables (t) where its body assigns them "
            "last (t = (...) on [lo, hi])" in str(e.value))
    assert "at most 4 (the bounds of t grow with the count)" in tcompile.report_text(prog)
    # the artifact keeps it (a build without a limit writes no such field)
    prog.save(tmp_path / "grow")
    assert tcompile.load(tmp_path / "grow").loops.loops[0].growing == ("t",)


MULTIPLICATIVE_WEIGHTS = """program multiplicative_weights
dim k = 4
param steps = 10
param eta = 0.3
input L : [k] in [0, 1]
output w
w = ones(k) / k
repeat steps {
  v = w * exp(-eta * L)
  w = (v / sum(v)) on [0, 1]
}
"""


def test_declared_bounds_that_do_not_lift_the_count_limit_say_why(tmp_path):
    """A user's multiplicative weights declared w's bounds, as the card's limit said to, and
    the limit stayed: from w in [0, 1] the divisor sum(v) may be 0. The spec, the card, the
    run-time error and the saved artifact say so; declaring the divisor's domain lifts it."""
    prog = tcompile.compile_source(MULTIPLICATIVE_WEIGHTS, loops="shared")
    (spec,) = prog.loops.loops
    assert (spec.max_count, spec.growing) == (10, ("w",))
    why = ("one iteration from the declared w on [0, 1] fails: the divisor may be 0: its "
           "values lie in [0, 4] (line 10)")
    assert spec.declared_fails == why
    assert "the declared bounds do not lift the limit: one iteration" in tcompile.report_text(prog)
    with pytest.raises(InputError) as e:
        prog.run(L=np.array([0.1, 0.2, 0.3, 0.4]), steps=11)
    assert f"steps, or make the declared bounds lift it: {why}" in str(e.value)
    prog.save(tmp_path / "mw")
    assert tcompile.load(tmp_path / "mw").loops.loops[0].declared_fails == why
    fixed = MULTIPLICATIVE_WEIGHTS.replace("(v / sum(v)) on", "(v / (sum(v)) on [0.1, 4]) on")
    (spec,) = tcompile.compile_source(fixed, loops="shared").loops.loops
    assert (spec.max_count, spec.growing, spec.declared_fails) == (None, (), "")


def test_a_loop_that_does_not_fold_stays_unrolled_and_says_why():
    src = """program p
dim d = 2
input v : [d] assume norm <= 1
output w
w = v
repeat 3 {
  w = 0.5 * w
}
"""
    prog = tcompile.compile_source(src, loops="shared")
    assert prog.loops.loops == ()
    ((line, count, why),) = prog.loops.unrolled
    assert (line, count) == (6, 3) and "no layers of its own" in why
    assert rel(prog.run(v=np.array([0.3, -0.2]))["w"], 0.125 * np.array([0.3, -0.2])) <= 1e-15


PACKED_RIDGE = """program icl_ridge
param steps = 8
param lam = 0.1
dim d = 3
input Z : [n, 4] in [-1, 1]
input eta : [] in [0.1, 1]
output w
X = Z[:, 0:3]
y = Z[:, 3]
w = zeros(d)
repeat steps {
  w = w - eta * (X.T @ (X @ w - y) / n + lam * w)
}
"""


def test_a_loop_whose_first_iterations_merge_folds_from_a_longer_base():
    """Ridge steps on packed tokens with a runtime step size run 1, 3, 4, 6, 6, 7, 8 layers
    at 0..6 steps unrolled: the third and fourth steps share their layers, and from there one
    step is one layer. The fold, from its base unrolling of 3 steps, saw a fourth step add no
    layer ("it has no layers of its own") and kept the loop unrolled without trying a longer
    base, as a loop that never has layers of its own needs no more tries. It now tries up to
    the longest base: the loop folds and runs every count as the unrolled build."""
    prog = tcompile.compile_source(PACKED_RIDGE, loops="shared")
    (spec,) = prog.loops.loops
    assert not prog.loops.unrolled and spec.layers_per_iteration / spec.every == 1
    rng = np.random.default_rng(7)
    inputs = {"Z": rng.uniform(-1, 1, (16, 4)), "eta": np.array(0.6)}
    for steps in (spec.min_count, 8, 13):
        got, unrolled = runs_as_unrolled(prog, PACKED_RIDGE, {"steps": steps}, inputs)
        want = interpret_program(parse_source(PACKED_RIDGE), {"steps": steps}, **inputs)["w"]
        assert np.abs(got["w"] - unrolled["w"]).max() <= 1e-15
        assert np.abs(got["w"] - want).max() <= 1e-14


# ---- halting ----------------------------------------------------------------------------------

def _iterate_w(A, y, steps):
    """least_squares.tp's iteration in numpy: every w_t."""
    n = len(A)
    S, b = A.T @ A / n, A.T @ y / n
    X, w, out = np.eye(A.shape[1]), b.copy(), [b.copy()]
    for _ in range(steps):
        w, X = 2 * w - X @ S @ w, 2 * X - X @ S @ X
        out.append(w.copy())
    return out


def test_halting_stops_each_problem_where_its_iterate_settles(least_squares):
    rng = np.random.default_rng(11)
    B, n, d, tol, cap = 64, 40, 4, 1e-10, 40
    As, ys = [], []
    for kappa in np.logspace(0, 3, B):
        U, _ = np.linalg.qr(rng.standard_normal((n, d)))
        V, _ = np.linalg.qr(rng.standard_normal((d, d)))
        A = U @ np.diag(np.linspace(1, 1 / kappa, d)) @ V.T
        A /= np.linalg.norm(A, axis=1).max()
        As.append(A)
        ys.append(A @ rng.standard_normal(d) + 0.01 * rng.standard_normal(n))
    out = least_squares.run(A=np.stack(As), y=np.stack(ys), a_test=np.zeros((B, d)),
                            until=("w", tol), max_steps=cap)
    steps = out["steps"]
    for i in range(B):
        ws = _iterate_w(As[i], ys[i], cap)
        first = next((t for t in range(1, cap + 1) if np.abs(ws[t] - ws[t - 1]).max() <= tol), cap)
        assert abs(int(steps[i]) - first) <= 2, (i, steps[i], first)
    for i in range(0, B, 9):         # a halted problem kept its state: a fixed-count run's
        # of the same batch (the same calls, bit for bit on any machine; a run of problem i
        # alone may round otherwise: 2e-12 at cond(A) = 1e3 with MKL_CBWR=COMPATIBLE)
        fixed = least_squares.run(A=np.stack(As), y=np.stack(ys), a_test=np.zeros((B, d)),
                                  steps=int(steps[i]))
        assert np.array_equal(out["w"][i], fixed["w"][i]), i
    assert len(set(steps.tolist())) > 3


def test_until_names_a_loop_variable(least_squares):
    inputs = random_regression(np.random.default_rng(2), 30, 4)
    with pytest.raises(InputError, match="its loop variables: X, w"):
        least_squares.run(until=("b", 1e-9), **inputs)


RIDGE = """program ridge
dim d = 4
param steps = 30
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


def test_halting_watches_a_variable_the_loop_starts_from_a_constant():
    """Ridge by gradient descent: w starts as zeros(d) and the body leaves it in the rows its
    first application writes; halting stops each problem where numpy's iterate settles."""
    prog = tcompile.compile_source(RIDGE, loops="shared")
    (spec,) = prog.loops.loops
    assert spec.watchable == ["w"] and spec.layers_per_iteration == 1
    rng = np.random.default_rng(4)
    B, n, d, tol, cap = 6, 12, 4, 1e-9, 120
    A = rng.standard_normal((B, n, d))
    A /= np.linalg.norm(A, axis=2).max(axis=1)[:, None, None]
    A *= np.linspace(1, 0.4, B)[:, None, None]               # slower for smaller A
    y = rng.standard_normal((B, n))
    y /= 2 * np.linalg.norm(y, axis=1, keepdims=True)
    out = prog.run(A=A, y=y, until=("w", tol), max_steps=cap)
    assert out["converged"].all()
    for i in range(B):
        w, ws = np.zeros(d), [np.zeros(d)]
        for _ in range(cap):
            w = w - (A[i].T @ (A[i] @ w - y[i]) / n + 0.3 * w)
            ws.append(w)
        # the first count the build runs on, the first where w moved by at most tol
        t = next(t for t in range(spec.min_count, cap + 1) if np.abs(ws[t] - ws[t - 1]).max() <= tol)
        assert int(out["steps"][i]) == t, (i, out["steps"][i], t)
        assert rel(out["w"][i], ws[t]) <= 1e-12
    assert len(set(out["steps"].tolist())) > 2
    short = prog.run(A=A, y=y, until=("w", 1e-300), max_steps=20)
    assert not short["converged"].any() and (short["steps"] == 20).all()


# ---- the module shows the loop -----------------------------------------------------------------

def test_hook_names_carry_the_iteration(inverse):
    A = random_inverse_problem(np.random.default_rng(0), 4)["A"]
    x = inverse.encode(A=A)
    _, cache = inverse.module.run_with_cache(x, steps=4)
    assert "prologue.0.hook_resid_post" in cache
    assert {f"body.{i}.0.hook_resid_post" for i in range(3)} <= set(cache)
    assert "body.3.0.hook_resid_post" not in cache          # offset 1: 3 applications
    # the residual after body iteration i decodes to the interpreter's X after i + 2 steps
    X = interpreted(PROGRAMS + "newton_inverse.tp", {"d": 4, "steps": 3}, {"A": A})["X"]
    got = inverse.decode(cache["body.1.0.hook_resid_post"])["X"][0]
    assert rel(got, X) <= 1e-13


def test_parameters_do_not_grow_with_the_step_count():
    counts = []
    for steps in (10, 200):
        prog = tcompile.compile_file(PROGRAMS + "newton_inverse.tp", {"steps": steps},
                                     loops="shared")
        counts.append(sum(p.numel() for p in prog.module.parameters()))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("loops", ["unrolled", "shared"])
def test_the_compiled_module_trains(loops):
    prog = tcompile.compile_file(PROGRAMS + "newton_inverse.tp", {"d": 3, "steps": 6}, loops=loops)
    model = prog.module_for("float64")
    A = random_inverse_problem(np.random.default_rng(0), 3)["A"]
    x = prog.encode(A=A)
    target = torch.as_tensor(np.linalg.inv(A))
    model.requires_grad_(True)
    try:
        y = model(x)
        block = prog.layout.output_block("X")          # [d, d] in the first d token columns
        X = y[0, :3, list(block.rows)]
        X = X if block.transposed else X.T
        ((X - target) ** 2).sum().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    finally:
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)


# ---- as deep as the unrolled build; loops that used to stay unrolled -----------------------------

def _shared_vs_unrolled(name: str, params: dict, shared, counts: dict | None = None):
    """The largest output gap, relative to max(1, |unrolled output|), between the shared build
    run at `counts` and an unrolled build of those counts (and the unrolled build)."""
    from tcompile.inspection.sampling import sample_inputs
    unrolled = tcompile.compile_file(PROGRAMS + name, {**params, **(counts or {})})
    inputs = sample_inputs(parse_file(PROGRAMS + name), unrolled.info.params, n=8, batch=2, seed=1)
    a = shared.run(**(counts or {}), **inputs)
    b = unrolled.run(executor="module", **inputs)
    gap = max(float(np.abs(a[k] - b[k]).max()) / max(float(np.abs(b[k]).max()), 1.0) for k in b)
    return gap, unrolled


def test_code_after_a_loop_inlines_its_last_iteration_as_the_unrolled_build_does():
    """A reader outside a loop (jacobi's sweep after the inner Newton–Schulz loop, the code
    after a top-level loop) may read the last iteration's definition instead of its stored
    value, as the unrolled build does (depth.py); only a later iteration of the same loop may
    not. jacobi ran 56 layers shared against 55 unrolled, denman_beavers 49 against 42."""
    jac = shared_build("jacobi.tp", (("d", 4),))
    assert jac.loops.unrolled == () and len(jac.loops.loops) == 2
    gap, unrolled = _shared_vs_unrolled("jacobi.tp", {"d": 4}, jac)
    assert jac.loops.n_layers(jac.loops.counts()) == unrolled.n_layers == 54 and gap <= 1e-14
    gap, unrolled = _shared_vs_unrolled("jacobi.tp", {"d": 4}, jac, {"steps": 13})
    assert jac.module.n_layers(steps=13) == unrolled.n_layers and gap <= 1e-14
    db = shared_build("denman_beavers.tp", (("d", 4),))
    gap, unrolled = _shared_vs_unrolled("denman_beavers.tp", {"d": 4}, db)
    # one layer more than unrolled remains (the outer loop stays unrolled: its bounds change)
    assert (db.loops.n_layers(db.loops.counts()), unrolled.n_layers) == (43, 42) and gap <= 1e-14


def test_a_variable_holding_another_ones_previous_value_keeps_rows_of_its_own():
    """fista_elastic_net's `x_prev = x`: one value is x's state in one iteration and x_prev's
    in the next. It stayed unrolled (its rows alternated); now x_prev is a copy with rows of
    its own (steady_state.py), and the loop folds to 1 layer per iteration, as unrolled."""
    prog = shared_build("fista_elastic_net.tp", (("d", 4),))
    assert prog.loops.unrolled == ()
    (spec,) = prog.loops.loops
    assert spec.layers_per_iteration == 1 and len(prog.layers) == 4
    assert sorted(var for var, *_ in spec.state) == ["x", "x_prev"]
    gap, unrolled = _shared_vs_unrolled("fista_elastic_net.tp", {"d": 4}, prog)
    assert prog.loops.n_layers(prog.loops.counts()) == unrolled.n_layers == 120 and gap <= 1e-14
    gap, unrolled = _shared_vs_unrolled("fista_elastic_net.tp", {"d": 4}, prog, {"steps": 37})
    assert prog.module.n_layers(steps=37) == unrolled.n_layers and gap <= 1e-14


RICHARDSON = """program rich
dim d = 4
param steps = 40
param omega = 0.5
input M : [d, d] assume spectrum in [0.2, 1]
input b : [d] assume norm <= 1
output x
x = zeros(d)
repeat steps {
  x = x + omega * (b - M @ x)
}
"""


@functools.lru_cache(maxsize=None)
def richardson():
    return tcompile.compile_source(RICHARDSON, loops="shared")


def _richardson_problem(rng, lows=None):
    def one(lo):
        Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
        b = rng.standard_normal(4)
        return (Q * np.linspace(lo, 1, 4)) @ Q.T, b / np.linalg.norm(b)
    if lows is None:
        M, b = one(0.2)
        return {"M": M, "b": b}
    pairs = [one(lo) for lo in lows]
    return {"M": np.stack([m for m, _ in pairs]), "b": np.stack([b for _, b in pairs])}


def test_richardson_runs_two_iterations_per_layer_as_unrolled():
    """x + ω(b − M x): the unrolled build fits two iterations in a layer (x_(k+2) from x_k,
    M x_k and M M x_k in one attention). A one-iteration body cost a layer per iteration (41
    layers run at 40 steps against 21); the shared build now runs a kernel of 2 iterations —
    1 layer —, and a count it does not divide runs the one left over in a tail (2 layers: the
    partial group and the last whole one), so every even count runs as many layers as the
    unrolled build of that count and an odd one at most one more, and gives its values. (From
    x0 = 0 the unrolled build needs no layer for x1 = ωb and starts an odd count's pairs there:
    its 7 steps take 3 layers, the kernel's 4.)"""
    prog = richardson()
    (spec,) = prog.loops.loops
    (item,) = [i for i in prog.loops.sequence if isinstance(i, LoopItem)]
    assert (spec.every, spec.layers_per_iteration, item.every) == (2, 1, 2)
    assert len(prog.layers) == 3 and [len(t) for t in item.tails] == [0, 2]
    inputs = _richardson_problem(np.random.default_rng(6))
    for steps in (spec.min_count, 7, 40, 41):
        unrolled = tcompile.compile_source(RICHARDSON, params={"steps": steps})
        assert prog.module.n_layers(steps=steps) <= unrolled.n_layers + steps % 2, steps
        want = interpret_program(parse_source(RICHARDSON), {"steps": steps}, **inputs)["x"]
        b = unrolled.run(executor="module", **inputs)["x"]
        for executor in (None, "module"):
            a = prog.run(steps=steps, executor=executor, **inputs)["x"]
            assert np.abs(a - b).max() <= 1e-14 and np.abs(a - want).max() <= 1e-14, steps
    assert "1 layer per 2 iterations (a kernel of 2)" in tcompile.report_text(prog)


def test_a_kernel_loop_saves_and_loads(tmp_path):
    """The kernel's tails and offsets go through the artifact (loops.py JSON: written only
    for a kernel, so other artifacts are unchanged) and run the same after loading."""
    prog = richardson()
    prog.save(tmp_path / "rich")
    back = tcompile.load(tmp_path / "rich")
    assert back.loops == prog.loops
    inputs = _richardson_problem(np.random.default_rng(8))
    for steps in (8, 9):
        assert np.array_equal(back.run(steps=steps, **inputs)["x"], prog.run(steps=steps, **inputs)["x"])


def test_halting_on_a_kernel_loop_checks_every_two_iterations():
    """until on a kernel of 2 iterations: tested between kernel applications (the rows hold
    x after 2, 4, ... iterations), so each problem halts at the first even count where x moved
    by at most tol over the last application's 2 iterations (an even step limit: its residue's
    tail ends the run); that count is exact (a fixed-count run at it gives the same output).
    The kernel writes x at even counts only (x₍ₖ₊₂₎ from x, M x and M M x): an odd limit runs
    to the even count below it, the last count it can stop at."""
    from tcompile.runtime.exec_loops import shared_executor_for
    prog = richardson()
    assert shared_executor_for(prog) is not None
    B, tol, cap = 4, 1e-8, 100
    inputs = _richardson_problem(np.random.default_rng(7), [0.9, 0.7, 0.5, 0.4])
    out = prog.run(until=("x", tol), max_steps=cap, **inputs)
    assert out["converged"].all() and len(set(out["steps"].tolist())) > 1
    for i in range(B):
        M, b = inputs["M"][i], inputs["b"][i]
        xs = [np.zeros(4)]
        for _ in range(cap):
            xs.append(xs[-1] + 0.5 * (b - M @ xs[-1]))
        want = next(t for t in range(2, cap, 2) if np.abs(xs[t] - xs[t - 2]).max() <= tol)
        assert int(out["steps"][i]) == want, (i, out["steps"][i], want)
        fixed = prog.run(M=M, b=b, steps=want)["x"]     # alone: to rounding (see above)
        assert np.abs(out["x"][i] - fixed).max() <= 1e-14 * max(np.abs(fixed).max(), 1.0)
    with pytest.warns(NotConvergedWarning) as caught:
        stuck = prog.run(until=("x", 0.0), max_steps=9, **inputs)
    assert (stuck["steps"] == 8).all() and not stuck["converged"].any()
    assert np.array_equal(stuck["x"], prog.run(steps=8, **inputs)["x"])
    # the warning says why the limit is not the one asked
    text = " ".join(str(w.message) for w in caught)
    assert "steps = 8 there is the limit (not the 9 asked: the loop runs a kernel of 2 " \
           "iterations, and this build writes x only at counts 2 apart, of which 9 is none)" in text
    with pytest.warns(NotConvergedWarning) as caught:
        prog.run(until=("x", 0.0), max_steps=10, **inputs)
    assert "steps = 10 there is the limit, not a convergence" in str(caught[0].message)


# ---- outputs whose rows depend on the residue of a kernel loop's count -------------------------

@functools.lru_cache(maxsize=None)
def power_iteration():
    return shared_build("power_iteration.tp")


def _power_problem(rng, gaps=(0.5,)):
    """A (9 × 6, rows of norm ≤ 1) with S = AᵀA/n's second eigenvalue `gap`² of its first
    (one problem per gap: power iteration settles faster for a smaller one), u0 (norm ≤ 1)."""
    As, us = [], []
    for gap in gaps:
        U, _ = np.linalg.qr(rng.standard_normal((9, 6)))
        V, _ = np.linalg.qr(rng.standard_normal((6, 6)))
        A = (U * np.array([1, gap, gap / 2, gap / 3, gap / 4, gap / 5])) @ V.T
        u0 = rng.standard_normal(6)
        As.append(A / np.linalg.norm(A, axis=1).max())
        us.append(u0 / (1.5 * np.linalg.norm(u0)))
    if len(gaps) == 1:
        return {"A": As[0], "u0": us[0]}
    return {"A": np.stack(As), "u0": np.stack(us)}


def test_power_iteration_reads_ahead_in_a_kernel_as_deep_as_unrolled():
    """power_iteration's orientation alternates from one iteration to the next, so it runs a
    kernel of 2 iterations. The kernel reads ahead (nodes.LOOP_AHEAD): the next v = S u is the
    one head S v r, as in the unrolled build, with u stored beside it, so it runs 14 layers
    per 2 iterations (15 waiting for u, 8 for a one-iteration body) and 283 layers at 40
    steps, as many as the unrolled build, from 19 stored layers (43 before reading ahead).
    Its outputs used to end in other rows at odd counts than at even ones; with the last
    iteration's u pinned before its other orientation takes rows (rows.py `_pinnable`) they
    end in the same rows at every count. The outputs are the unrolled build's and the
    interpreter's at even and odd counts, on the structured executor and the looped module."""
    prog = power_iteration()
    (spec,) = prog.loops.loops
    assert prog.loops.unrolled == () and (spec.every, spec.layers_per_iteration) == (2, 14)
    assert prog.loops.residue_loop() is None
    assert (prog.loops.n_layers(prog.loops.counts()), builds.build("power_iteration").n_layers,
            len(prog.layers), prog.width) == (283, 283, 19, builds.build("power_iteration").width)
    inputs = _power_problem(np.random.default_rng(21))
    source = parse_file(PROGRAMS + "power_iteration.tp")
    for steps, layers, unrolled_layers in ((7, 52, 52), (8, 59, 59)):
        unrolled = tcompile.compile_file(PROGRAMS + "power_iteration.tp", {"steps": steps})
        assert (prog.module.n_layers(steps=steps), unrolled.n_layers) == (layers, unrolled_layers)
        b = unrolled.run(executor="module", **inputs)
        want = interpret_program(source, {**prog.info.float_params(), "steps": steps}, **inputs)
        for executor in (None, "module"):
            a = prog.run(steps=steps, executor=executor, **inputs)
            for name in ("u", "lam"):
                assert np.abs(a[name] - b[name]).max() <= 1e-14, (steps, executor, name)
                assert np.abs(a[name] - want[name]).max() <= 1e-14, (steps, executor, name)


@functools.lru_cache(maxsize=None)
def stencil():
    """The stencil (test_pass_plan.STENCIL) built shared at 10 steps: a kernel of 2 whose
    tails leave u in other rows at odd counts than at even ones."""
    return tcompile.compile_source(STENCIL, params={"steps": 10}, loops="shared")


def test_a_kernel_whose_outputs_end_by_the_counts_residue():
    """The stencil's kernel tails leave u in other rows at odd counts than at even ones. The
    build records the rows per residue (loops.py `LoopItem.outputs`) and every run reads them
    from the rows of its own count's residue, on the structured executor and the looped
    module, and the card says so."""
    prog = stencil()
    (spec,) = prog.loops.loops
    item = prog.loops.item(spec.key)
    assert prog.loops.residue_loop() == item and len(item.outputs) == 2
    assert prog.output_blocks(steps=8)["u"].rows != prog.output_blocks(steps=7)["u"].rows
    u0 = np.random.default_rng(21).uniform(-1, 1, 6)
    for steps in (7, 8):
        want = interpret_program(parse_source(STENCIL), {"steps": steps}, u0=u0)["u"]
        for executor in (None, "module"):
            got = prog.run(steps=steps, executor=executor, u0=u0)["u"]
            assert np.abs(got - want).max() <= 1e-15, (steps, executor)
    assert "outputs u end in other rows at each residue of K mod 2" in " ".join(
        tcompile.report_text(prog).split())


def test_the_card_gives_a_kernel_loops_layers_at_every_count():
    """A kernel loop's tails differ by residue of its count, so the card gives the layers run
    at one count of each residue (`layers_by_residue`), and one formula where every residue
    keeps the per-iteration rate: power_iteration 283 + 7 (K − 40); Richardson (1 layer per 2
    iterations) one per residue. Each holds at counts around the built one."""
    for prog, text in ((power_iteration(), "layers run at steps = K: 283 + 7 (K − 40)"),
                       (richardson(), "layers run at steps = K: 20 + 1 per 2 more iterations "
                                      "(K − 40) for K ≡ 0 (mod 2); 21 + 1 per 2 more "
                                      "iterations (K − 41) for K ≡ 1 (mod 2)")):
        (lp,) = prog.report["loops"]["loops"]
        every, per = lp["every"], lp["layers_per_iteration"]
        assert every == 2 and len(lp["layers_by_residue"]) == 2
        for K0, L0 in lp["layers_by_residue"]:
            for j in range(-1, 4):
                K = K0 + every * j
                assert prog.loops.n_layers(prog.loops.counts({"steps": K})) == L0 + per * j, K
        assert text in " ".join(tcompile.report_text(prog).split())


def test_per_residue_outputs_save_load_and_trace(tmp_path):
    """The rows per residue go through the artifact (its loop section's `outputs`, written only
    where they differ, so other artifacts are unchanged); the loaded build reads each count's
    outputs where it left them, and the trace compares them with the interpreter there."""
    prog = stencil()
    prog.save(tmp_path / "stencil")
    back = tcompile.load(tmp_path / "stencil")
    assert back.loops == prog.loops and back.loops.residue_loop().outputs == \
        prog.loops.residue_loop().outputs
    inputs = {"u0": np.random.default_rng(22).uniform(-1, 1, 6)}
    for steps in (7, 8):
        a, b = back.run(steps=steps, **inputs), prog.run(steps=steps, **inputs)
        assert np.array_equal(a["u"], b["u"])
    for steps in (7, 8):
        finals = [r for r in tcompile.trace(back, steps=steps, **inputs) if r["iteration"] is None]
        assert {r["variable"].split("@")[0] for r in finals} == {"u"}
        assert all(r["ok"] and r["max_abs_err"] <= 1e-14 for r in finals), steps


def test_bad_per_residue_output_rows_are_refused():
    """An artifact whose per-residue rows lie outside the stream, or miss an output, is an
    error when read, not a silent misread."""
    from tcompile.runtime import artifact
    doc = artifact.manifest_to_json(stencil().typed_manifest)
    assert artifact.manifest_from_json(doc).loops == stencil().loops
    (item,) = [i for i in doc["loops"]["sequence"] if isinstance(i, dict)]
    good = item["outputs"]
    item["outputs"] = [[[n, [r + 10 ** 6 for r in rows], t] for n, rows, t in res] for res in good]
    with pytest.raises(ValueError, match="bad rows"):
        artifact.manifest_from_json(doc)
    item["outputs"] = [res[:0] for res in good]
    with pytest.raises(ValueError, match="do not name"):
        artifact.manifest_from_json(doc)


def test_halting_at_odd_and_even_counts_reads_the_outputs_of_its_residue():
    """until on random program 8's kernel (offsets 4 and 3): the step limit's residue picks the
    tail the batch ends with, so an even limit halts at even counts (4 + 2j) and an odd one at
    odd counts (3 + 2j), and the outputs are read from the rows that residue leaves them in
    (its even residue's `w` is not in the layout's rows). Each problem's outputs are those of a
    fixed-count run at the count it reports and of the interpreter there, on the structured
    executor and on the looped module."""
    seed = 8
    src, prog = random_loop_program(seed), shared_random(seed)
    assert prog.loops.residue_loop().offsets == (4, 3)
    assert prog.output_blocks(steps=30)["w"].rows != prog.layout.output_block("w").rows
    problems = [_inputs(10 * seed + i, prog.info.params["d"]) for i in range(3)]
    batch = {k: np.stack([np.asarray(p[k]) for p in problems]) for k in problems[0]}
    for cap in (30, 31):
        for executor in (None, "module"):
            out = prog.run(until=("w", 1e-6), max_steps=cap, executor=executor, **batch)
            assert out["converged"].all() and len(set(out["steps"].tolist())) > 1
            for i, steps in enumerate(out["steps"].tolist()):
                assert steps % 2 == cap % 2 and steps <= cap, (cap, steps)
                fixed = prog.run(steps=steps, executor=executor, **problems[i])
                want = interpret_program(parse_source(src), {"steps": steps}, **problems[i])
                for name in fixed:
                    assert np.abs(out[name][i] - fixed[name]).max() <= 1e-15, (cap, executor, name)
                    assert np.abs(out[name][i] - want[name]).max() <= 1e-14, (cap, executor, name)


def test_the_trace_reads_each_kernel_application_from_the_rows_it_leaves():
    """The loop state a kernel carries (each variable's rows after an application, and the
    assignment they hold) matches the interpreter at every application of random programs 8,
    13 and 16, at an even and an odd count, and so do the outputs."""
    for seed in (8, 13, 16):
        prog = shared_random(seed)
        inputs = _inputs(seed, prog.info.params["d"])
        for steps in (7, 8):
            rows = tcompile.trace(prog, steps=steps, **inputs)
            assert any(r["iteration"] is not None for r in rows)
            assert all(r["ok"] for r in rows), (seed, steps, [r for r in rows if not r["ok"]])



def test_the_trace_reads_a_variable_no_rows_hold_between_applications_where_it_is_written():
    """power_iteration's u is in no rows between applications (the next S u starts from v and
    r; its stored u is written over within the application), so the loop state holds nothing
    to trace: the trace reads it where an application writes it (LoopSpec.watch, as halting
    does), every iteration the applications run (u@1 .. u@38 at 40 steps, u@1 .. u@40 at
    41), each within tolerance of the interpreter's u at that count."""
    prog = power_iteration()
    (spec,) = prog.loops.loops
    # (v, which the body assigns and does not carry, is watched where it is written too)
    assert spec.state == () and spec.watchable == ["u", "v"]
    inputs = _power_problem(np.random.default_rng(23), gaps=(0.5, 0.8))
    source = parse_file(PROGRAMS + "power_iteration.tp")
    for steps, last in ((40, 38), (41, 40)):
        rows = tcompile.trace(prog, steps=steps, **inputs)
        looped = [r for r in rows if r["iteration"] is not None]
        assert [r["variable"] for r in looped if r["variable"].startswith("u@")] == \
            [f"u@{k}" for k in range(1, last + 1)]
        # (v's value is in rows of its own at one residue of the kernel of 2: v@1, v@3, ...)
        vs = [int(r["variable"][2:]) for r in looped if r["variable"].startswith("v@")]
        assert vs == list(range(1, last + 1, 2))
        assert all(r["ok"] for r in rows) and max(r["rel_err"] for r in looped) <= 1e-12
        want = interpret_program(source, {**prog.info.float_params(), "steps": steps}, **inputs)
        final = [r for r in rows if r["iteration"] is None and r["variable"].startswith("u@")]
        assert final and final[0]["variable"] == f"u@{steps}"
        assert np.abs(prog.run(steps=steps, **inputs)["u"] - want["u"]).max() <= 1e-14

# ---- random loop programs -----------------------------------------------------------------------

HEADER = """program rand{seed}
dim d = {d}
param steps = {steps}
input A : [n, d] assume row_norm <= 1
input H : [d, d] assume spectrum in [0.5, 1]
input M : [d, d] assume norm <= 1
input v : [d] assume norm <= 1
input s : [] in [-1, 1]
output {outputs}
"""

# state variable → (initial value, updates it may take; {c} a coefficient in (0, 1))
STATE = {
    "X": ("I", ["2 * X - X @ H @ X", "X - {c} * (X @ H @ X - X)"]),
    "w": ("v", ["w - {c} * (H @ w - v)", "{c} * w + (1 - {c}) * (M @ w)",
                "clip(w - {c} * (H @ w - v), -1, 1)", "w - {c} * (X @ (H @ w - v))"]),
    "z": ("A @ v", ["{c} * z + (1 - {c}) * (A @ w)", "relu(z) - {c} * (A @ v)",
                    "{c} * z + s * (A @ w)"]),
    "t": ("s", ["{c} * t + (1 - {c}) * (w @ v)", "{c} * t * s + w @ H @ w"]),
}
NEEDS = {"X": set(), "w": set(), "z": {"w"}, "t": {"w"}}


def random_loop_program(seed: int) -> str:
    """A program with one loop whose 1-3 state variables update from themselves and each
    other (Newton–Schulz, gradient steps, clipped and rectified steps, token vectors, scalars);
    every update is a contraction or Newton on H, so values stay tame."""
    rng = np.random.default_rng(seed)
    names = [str(x) for x in rng.choice(list(STATE), size=rng.integers(1, 4), replace=False)]
    for name in list(names):
        names += [m for m in NEEDS[name] if m not in names]
    lines, body = [], []
    for name in sorted(names, key=list(STATE).index):
        init, updates = STATE[name]
        options = [u for u in updates if "X @" not in u or "X" in names]
        update = options[rng.integers(len(options))].format(c=rng.choice([0.25, 0.5, 0.75]))
        lines.append(f"{name} = {init}")
        body.append(f"  {name} = {update}")
    rng.shuffle(body)
    outputs = sorted(set(names) | ({"r"} if "w" in names else set()))
    tail = ["r = v @ H @ w"] if "w" in names else []
    return (HEADER.format(seed=seed, d=int(rng.integers(2, 5)), steps=int(rng.integers(4, 7)),
                          outputs=", ".join(outputs))
            + "\n".join(lines) + "\nrepeat steps {\n" + "\n".join(body) + "\n}\n" + "\n".join(tail) + "\n")


def _inputs(seed: int, d: int, n: int = 7):
    rng = np.random.default_rng(100 + seed)
    A = rng.standard_normal((n, d))
    A /= np.linalg.norm(A, axis=1).max()
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    M = with_singular_values(rng, d, d, np.linspace(1, 0.3, d))
    v = rng.standard_normal(d)
    return {"A": A, "H": (Q * np.linspace(0.5, 1, d)) @ Q.T, "M": M, "v": v / np.linalg.norm(v),
            "s": float(rng.uniform(-1, 1))}


SEEDS = range(24)


@functools.lru_cache(maxsize=None)
def shared_random(seed: int):
    return tcompile.compile_source(random_loop_program(seed), loops="shared")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_loop_programs_match_unrolled_and_interpreter(seed):
    src = random_loop_program(seed)
    shared = shared_random(seed)
    assert shared.loops.unrolled == () and len(shared.loops.loops) == 1, src
    steps = shared.info.params["steps"]
    inputs = _inputs(seed, shared.info.params["d"])
    for k in (steps + 3,):    # a count it was not built with
        unrolled = tcompile.compile_source(src, params={"steps": k})
        a, b = shared.run(steps=k, **inputs), unrolled.run(executor="module", **inputs)
        want = interpret_program(parse_source(src), {"steps": k}, **inputs)
        for name in b:
            # every value is bounded by 1 here (norm bounds), so the rounding floor is absolute:
            # the unrolled build merges iterations, the shared one keeps them, and the two
            # orders of operations differ by ulps of O(1) intermediates
            scale = max(float(np.abs(b[name]).max()), 1.0)
            assert np.abs(a[name] - b[name]).max() <= 1e-14 * scale, (src, name, k)
            assert np.abs(a[name] - want[name]).max() <= 1e-9 * scale, (src, name, k)


@pytest.mark.parametrize("seed", [8, 13, 16])
def test_random_loops_whose_outputs_end_by_residue_fold(seed):
    """Random programs 8, 13 and 16 fold only as kernels of 2 iterations (their rows return
    every 2), and their outputs end in other rows at odd counts than at even ones: they stayed
    unrolled until the build recorded the rows per residue. At an even and an odd count, as
    many layers as the unrolled build of that count, and its outputs, on both executors."""
    src = random_loop_program(seed)
    shared = shared_random(seed)
    (spec,) = shared.loops.loops
    assert spec.every == 2 and shared.loops.residue_loop() is not None
    inputs = _inputs(seed, shared.info.params["d"])
    for k in (shared.info.params["steps"] + 3, shared.info.params["steps"] + 4):
        unrolled = tcompile.compile_source(src, params={"steps": k})
        assert shared.module.n_layers(steps=k) == unrolled.n_layers, k
        b = unrolled.run(executor="module", **inputs)
        want = interpret_program(parse_source(src), {"steps": k}, **inputs)
        for executor in (None, "module"):
            a = shared.run(steps=k, executor=executor, **inputs)
            for name in b:
                scale = max(float(np.abs(b[name]).max()), 1.0)
                assert np.abs(a[name] - b[name]).max() <= 1e-14 * scale, (name, k, executor)
                assert np.abs(a[name] - want[name]).max() <= 1e-14 * scale, (name, k, executor)


def test_every_random_loop_folds():
    assert [seed for seed in SEEDS if not shared_random(seed).loops.loops] == []


# ---- trace, card, command line, artifact -------------------------------------------------------

def test_trace_compares_every_iteration_with_the_interpreter(least_squares):
    inputs = random_regression(np.random.default_rng(4), 30, 4)
    rows = tcompile.trace(least_squares, steps=8, **inputs)
    looped = [r for r in rows if r["iteration"] is not None]
    assert all(r["ok"] for r in rows)
    (item,) = [i for i in least_squares.loops.sequence if isinstance(i, LoopItem)]
    assert sorted({r["iteration"] for r in looped}) == list(range(8 - item.offset))
    ws = [r["variable"] for r in looped if r["variable"].startswith("w@")]
    assert ws == [f"w@{k}" for k in range(2, 8)]        # w_2 .. w_7 after applications 0..5
    assert rows[-1]["variable"] in ("w@8", "y_hat@0") and rows[-1]["layer"] == 8 + 2 - 1


def test_the_card_gives_layers_per_iteration_and_run_time_counts(logistic):
    text = tcompile.report_text(logistic)
    k = logistic.info.params["inv_steps"]
    assert f"{k + 3} layers per iteration" in text and "1 layer per iteration  (nested)" in text
    assert "repeat steps = 8, run-time: 3 or more" in text
    assert "body.{i}.loop.{j}.0" in text and "73 run" in text
    assert "layers run at steps = K: 73 + 9 (K − 8)" in text
    assert logistic.module.n_layers(steps=20) == 73 + 9 * (20 - 8)
    rep = logistic.report
    assert rep["loops"]["layers_run"] == 73 and rep["layers"] == len(logistic.layers)


def test_command_line_builds_runs_halts_and_traces(tmp_path):
    from cli_in_process import run_in_process
    out = run_in_process(["build", PROGRAMS + "least_squares.tp", "--loops", "shared",
                          "-o", tmp_path])
    assert out.returncode == 0 and "1 layer per iteration" in out.stdout, out.stderr
    inputs = random_regression(np.random.default_rng(0), 30, 4)
    np.savez(tmp_path / "in.npz", **inputs)
    art = tmp_path / "least_squares"
    ran = run_in_process(["run", art, "--inputs", tmp_path / "in.npz", "-p", "steps=30",
                          "-o", tmp_path / "out.npz"])
    assert ran.returncode == 0, ran.stderr
    want = interpreted(PROGRAMS + "least_squares.tp", {"steps": 30}, inputs)
    with np.load(tmp_path / "out.npz") as got:
        assert rel(got["w"], want["w"]) <= 1e-12
    halted = run_in_process(["run", art, "--inputs", tmp_path / "in.npz", "--until", "w=1e-12",
                             "--max-steps", "60"])
    assert halted.returncode == 0 and "steps = " in halted.stdout
    assert "all 1 converged (w moved by at most 1e-12)" in halted.stdout
    stuck = run_in_process(["run", art, "--inputs", tmp_path / "in.npz", "--until", "w=0",
                            "--max-steps", "4"])
    assert stuck.returncode == 0 and "1 of 1 did not converge" in stuck.stdout, stuck.stdout
    bad = run_in_process(["run", art, "--inputs", tmp_path / "in.npz", "-p", "steps=1"])
    assert bad.returncode != 0 and "at least 3 times" in bad.stderr
    traced = run_in_process(["trace", art, "--inputs", tmp_path / "in.npz"])
    assert traced.returncode == 0 and "every traced value matches" in traced.stdout
    longer = run_in_process(["trace", art, "--inputs", tmp_path / "in.npz", "-p", "steps=40",
                             "--var", "w", "--all"])      # every iteration of a run at 40
    assert longer.returncode == 0 and "every traced value matches" in longer.stdout
    assert " w@39 " in longer.stdout
    for args, why in ((["-p", "steps=two"], "a run-time count is a whole number"),
                      (["-p", "d=5"], "is not a run-time count of this build")):
        bad = run_in_process(["trace", art, "--inputs", tmp_path / "in.npz", *args])
        assert bad.returncode != 0 and why in bad.stderr, bad.stderr
    unrolled = run_in_process(["build", PROGRAMS + "least_squares.tp", "-o", tmp_path / "u"])
    assert unrolled.returncode == 0
    bad = run_in_process(["trace", tmp_path / "u" / "least_squares", "--inputs",
                          tmp_path / "in.npz", "-p", "steps=8"])
    assert bad.returncode != 0 and "only in a shared build" in bad.stderr, bad.stderr


def test_the_artifact_digest_covers_the_loops(tmp_path, inverse):
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file

    from tcompile import ArtifactError
    from tcompile.runtime.artifact import safetensors_bytes
    paths = inverse.save(tmp_path / "inv")
    st = next(p for p in paths if p.suffix == ".safetensors")
    with safe_open(str(st), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(st))
    doc = json.loads(meta["manifest"])
    doc["loops"]["loops"][0]["min_count"] = 1                 # claim fewer iterations work
    meta = {**meta, "manifest": json.dumps(doc)}
    st.write_bytes(safetensors_bytes(tensors, meta))
    with pytest.raises(ArtifactError):
        tcompile.load(tmp_path / "inv")


def test_forward_states_of_a_shared_build_follow_the_layers_it_runs(inverse):
    A = random_inverse_problem(np.random.default_rng(0), 4)["A"]
    x = inverse.encode(A=A)
    for steps in (3, 9):
        states = inverse.forward_states(x, steps=steps)
        assert len(states) == 1 + 2 * inverse.module.n_layers(steps=steps)
        assert torch.equal(states[-1], inverse.module(x, steps=steps))
        X = interpreted(PROGRAMS + "newton_inverse.tp", {"d": 4, "steps": steps}, {"A": A})["X"]
        assert rel(inverse.decode(states[-1])["X"][0], X) <= 1e-13


def test_the_compiled_executor_refuses_a_shared_build(tmp_path, inverse):
    A = random_inverse_problem(np.random.default_rng(0), 4)["A"]
    with pytest.raises(InputError, match="shared build"):      # (sublayer_states and the
        inverse.run(A=A, executor="compiled")                   # labels: test_labels_shared)


def test_domain_checks_cover_every_iteration(logistic):
    """The ranges a shared build's pieces see over all iterations are the unrolled build's,
    at a run-time count it was not built with. Compared per piece (its function and domain):
    a shared check covers every application of its stored layer, the first iteration's
    included, whose label may word the piece's argument differently (and names other
    temporaries)."""
    inputs = random_logistic_problem(np.random.default_rng(8), 26, 5)
    for steps in (10,):
        unrolled = tcompile.compile_file(PROGRAMS + "newton_logistic.tp", {"steps": steps})
        ranges = {}
        for which, rows in (("shared", tcompile.check_domains(logistic, steps=steps, **inputs)),
                            ("unrolled", tcompile.check_domains(unrolled, **inputs))):
            for r in rows:
                label = (re.sub(r"\(.*", "", r["label"]), r["lo"], r["hi"])
                lo, hi = ranges.setdefault((which, label), [np.inf, -np.inf])
                ranges[(which, label)] = [min(lo, r["min"]), max(hi, r["max"])]
                assert not r["outside"]
        labels = {label for _, label in ranges}
        for label in labels:
            assert np.allclose(ranges[("shared", label)], ranges[("unrolled", label)],
                               rtol=1e-9, atol=1e-12), label


def test_a_loop_carrying_a_changing_constant_stays_unrolled():
    src = """program p
dim d = 2
param steps = 4
input v : [d] assume norm <= 1
input H : [d, d] assume spectrum in [0.5, 1]
output w, c
w = v
c = 0
repeat steps {
  c = c + 1
  w = w - 0.5 * (H @ w - v)
}
"""
    prog = tcompile.compile_source(src, loops="shared")
    assert prog.loops.loops == ()
    ((line, count, why),) = prog.loops.unrolled
    assert (line, count) == (9, 4) and "'c' is a compile-time number" in why
    inputs = {"v": np.array([0.6, -0.3]), "H": np.diag([0.5, 1.0])}
    want = interpret_program(parse_source(src), None, **inputs)
    got = prog.run(**inputs)
    assert rel(got["w"], want["w"]) <= 1e-14 and got["c"] == 4


def test_a_loop_that_runs_fewer_times_than_the_fold_starts_from_folds_from_its_count():
    """The fold starts from 3 iterations of every loop where loops nest; a loop that runs 2
    times starts from 2 (it stayed unrolled: 'runs 2 times, and the layers around its body
    hold 3 pipelined iterations'; adam_least_squares' line 59 folds so, 92 → 88 stored
    layers). Outputs equal the interpreter's and the unrolled build's. (sqrt(c) keeps c a
    number the outer loop cannot carry as a runtime value: that loop stays unrolled.)"""
    src = """program p
dim d = 3
param steps = 3
input H : [d, d] assume spectrum in [0.5, 1]
input v : [d] assume norm <= 1
output x
x = v
c = 1
repeat steps {
  c = 0.5 * c
  r = x
  repeat 2 {
    r = (r * (2 - H @ r)) on [-4, 4]
  }
  x = sqrt(c) * r
}
"""
    prog = tcompile.compile_source(src, loops="shared")
    ((line, count, why),) = prog.loops.unrolled
    assert (line, count) == (9, 3) and "'c' is a compile-time number" in why
    (spec,) = prog.loops.loops
    assert (spec.line, spec.count, spec.min_count) == (12, 2, 2)
    assert len(prog.layers) == 13           # 15 with the inner loop unrolled
    inputs = {"v": np.array([0.6, 0.3, 0.2]), "H": np.diag([0.5, 0.75, 1.0])}   # r stays in [0, 2]
    want = interpret_program(parse_source(src), None, **inputs)["x"]
    unrolled = tcompile.compile_source(src).run(**inputs)["x"]
    got = prog.run(**inputs)["x"]
    assert rel(got, want) <= 1e-14 and rel(got, unrolled) <= 1e-14


def test_the_structured_executor_runs_shared_builds_as_the_looped_module_does(least_squares,
                                                                                logistic):
    rng = np.random.default_rng(12)
    for prog, inputs in ((least_squares, random_regression(rng, 30, 4)),
                         (logistic, random_logistic_problem(rng, 26, 5))):
        for steps in (prog.info.params["steps"], 11):
            a = prog.run(steps=steps, **inputs)
            b = prog.run(steps=steps, executor="module", **inputs)
            for name in b:
                assert rel(a[name], b[name]) <= 1e-13, (prog.name, steps, name)


def test_the_looping_executor_plans_each_body_once_and_matches_the_expanded_plan(
        inverse, least_squares, logistic):
    """The structured executor runs a loop body's plan in a loop (exec_loops.py): the same
    sublayers as the plan expanded for one count, and one plan for every count.

    Compared within 1e-14 of scale, not bit for bit: the two plans make the same products but
    not always the same BLAS calls (a constant the expanded plan folds is a slot the loop
    reads; a kernel's slots are laid out for every application, not for one count), and
    whether such calls round alike depends on the BLAS kernel the CPU gets — equal on the
    machine this was written on, up to 8e-16 apart on an AMD EPYC (MKL, AVX-512)."""
    from tcompile.runtime.exec_loops import shared_executor_for
    from tcompile.runtime.executor import expanded_executor_for
    rng = np.random.default_rng(14)
    for prog, inputs in ((inverse, random_inverse_problem(rng, 4)),
                         (least_squares, random_regression(rng, 30, 4)),
                         (logistic, random_logistic_problem(rng, 26, 5))):
        looping = shared_executor_for(prog)
        assert looping is not None
        prepared = prog.prepare_inputs(inputs)
        for steps in (prog.info.params["steps"], 13):
            counts = prog.loops.counts({"steps": steps})
            a, _, ranges = looping.run_inputs(prepared, counts, watch=True)
            b, want = expanded_executor_for(prog, counts).run_watched(prepared)
            for name in b:
                assert rel(a[name], b[name]) <= 1e-14, (prog.name, steps, name)
            assert ranges.keys() == want.keys()    # the domain guard's ranges, every check
            for c, (lo, hi) in want.items():         # (values that are rounding noise,
                scale = max(abs(lo), abs(hi), 1.0)      # ~1e-33, compared absolutely)
                assert max(abs(ranges[c][0] - lo), abs(ranges[c][1] - hi)) <= 1e-14 * scale
        assert (prepared.n, torch.float64, "cpu") in looping._runners
        runners = len(looping._runners)
        prog.run(steps=40, **inputs)
        assert len(looping._runners) == runners    # planned and resolved once for every count


def test_random_loop_programs_run_looping_as_expanded():
    from tcompile.runtime.exec_loops import shared_executor_for
    from tcompile.runtime.executor import expanded_executor_for
    for seed in SEEDS:
        prog = shared_random(seed)
        if not prog.loops.loops:
            continue
        looping = shared_executor_for(prog)
        assert looping is not None, seed
        prepared = prog.prepare_inputs(_inputs(seed, prog.info.params["d"]))
        counts = prog.loops.counts({"steps": prog.info.params["steps"] + 2})
        a, _, _ = looping.run_inputs(prepared, counts)
        b = expanded_executor_for(prog, counts).run_inputs(prepared)
        for name in b:       # within rounding, as the looping executor's own test says why
            scale = max(float(b[name].abs().max()), 1.0)
            assert float((a[name] - b[name]).abs().max()) <= 1e-14 * scale, (seed, name)


def test_halting_on_the_structured_executor_agrees_with_the_looped_module(least_squares):
    from tcompile.runtime.halting import run_until
    rng = np.random.default_rng(15)
    inputs = {k: np.stack([random_regression(rng, 30, 4)[k] for _ in range(8)])
              for k in ("A", "y", "a_test")}
    inputs["A"] *= np.linspace(1, 0.3, 8)[:, None, None]        # different halting steps
    out = least_squares.run(until=("X", 1e-11), max_steps=40, **inputs)
    x = least_squares.encode(**inputs)
    with torch.no_grad():
        y, steps, converged, _ = run_until(least_squares, least_squares.module, x, {},
                                        ("X", 1e-11), 40)
    assert np.array_equal(out["steps"], steps) and np.array_equal(out["converged"], converged)
    assert len(set(steps.tolist())) > 2
    ref = least_squares.decode(y)
    for name in ref:
        assert rel(out[name], ref[name]) <= 1e-13, name


def test_the_expanded_executor_without_block_templates_is_still_exact(monkeypatch, logistic):
    """A stored layer whose runs in the base unrolling write different blocks gets none: its
    rows become anonymous slots (slower, still exact). Forced here for every layer."""
    import tcompile.runtime.executor as executor
    monkeypatch.setattr(executor, "_block_templates", lambda *_: {})
    inputs = random_logistic_problem(np.random.default_rng(13), 26, 5)
    plain = executor.ExpandedExecutor(logistic.loops.expand(logistic.loops.counts()),
                                      logistic.layers, logistic.layout,
                                      logistic.loops.expand(dict(logistic.loops.base_counts)))
    got = plain.run_inputs(logistic.prepare_inputs(inputs))["x"].numpy()[0]
    want = logistic.run(executor="module", **inputs)["x"]
    assert rel(got, want) <= 1e-13


def test_block_templates_skip_a_layer_whose_runs_write_differently():
    from tcompile.runtime.executor import _block_templates
    from tcompile.runtime.layout import Block

    def blk(key, rows, t):
        return Block(key=key, kind="attn", rows=rows, transposed=False, cshape=(len(rows), 1),
                     written=t, last_read=t + 2)
    by_time = {1: [blk("a@1", (0, 1), 1)], 3: [blk("a@2", (0, 1), 3)],
               5: [blk("b@1", (2,), 5)], 7: [blk("b@2", (3,), 7)]}
    # base sequence: stored layer 0 runs at positions 0 and 1 (same rows), layer 1 at 2 and 3
    # (rows 2 then 3: not the same)
    assert set(_block_templates([0, 0, 1, 1], by_time)) == {0}


def test_a_sweep_over_counts_keeps_only_the_last_few_executors():
    """run plans a loop once for every count (exec_loops.py); the plan expanded per count,
    which remains for counts that run a loop 0 times, keeps the last few only. A build of its
    own: the module's shared fixture may have run a count of 0 before."""
    from tcompile.runtime.executor import EXPANDED_KEPT, expanded_executor_for
    inverse = tcompile.compile_file(PROGRAMS + "newton_inverse.tp", {"d": 4}, loops="shared")
    A = random_inverse_problem(np.random.default_rng(0), 4)["A"]
    for steps in range(2, 12):
        inverse.run(A=A, steps=steps)
    assert not inverse._executors.get("expanded")
    for steps in range(2, 12):
        expanded_executor_for(inverse, inverse.loops.counts({"steps": steps}))
    kept = inverse._executors["expanded"]
    assert len(kept) == EXPANDED_KEPT and (("15:1", 11),) in kept


NEWTON_RIDGE = """program newton_ridge
dim d = 3
param steps = 5
param inner = 4
param lam = 0.5
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output x

def inv(M, k) {
  X = 1 / (1 + lam) * I
  repeat k {
    X = 2 * X - X @ M @ X
  }
  return X
}

H = A.T @ A / n + lam * I
x = zeros(d)
repeat steps {
  g = A.T @ (A @ x - y) / n + lam * x
  x = x - inv(H, inner) @ g
}
"""


def test_a_nested_loop_hoisted_out_of_its_loop_is_said_to_run_once():
    """inv(H, inner) inside the outer loop does not depend on x: the lowering computes it once
    before the loop, so the inner loop runs once per run, not per outer iteration. The card
    says so ("hoisted ... runs once"), not "(nested)"; newton_logistic's inversion, which
    depends on the iterate, is nested; the build runs as the unrolled one and the interpreter.
    With the inner loop hoisted no loop runs inside another (shared_build._runs_flat), so the
    outer loop may read ahead: 1 layer per step as unrolled (2 waiting for x; 13 layers run at
    the built counts before, 9 now, as the unrolled build's: x0 = 0 costs no layer)."""
    prog = tcompile.compile_source(NEWTON_RIDGE, loops="shared")
    outer, inner = sorted(prog.loops.loops, key=lambda s: s.depth)
    assert inner.depth == 1 and prog.loops.hoisted(inner.key) and not prog.loops.hoisted(outer.key)
    assert (outer.layers_per_iteration, prog.loops.n_layers(prog.loops.counts())) == (1, 9)
    text = " ".join(tcompile.report_text(prog).split())
    assert "1 layer per iteration (nested in the source, hoisted out of its loop: runs once)" \
        in text
    (nested,) = [s for s in shared_build("newton_logistic.tp").loops.loops if s.depth]
    assert not shared_build("newton_logistic.tp").loops.hoisted(nested.key)
    rng = np.random.default_rng(8)
    A = rng.standard_normal((10, 3))
    inputs = {"A": A / (1.01 * np.linalg.norm(A, axis=1).max()), "y": rng.uniform(-1, 1, 10)}
    for counts in ({}, {"steps": 8, "inner": 6}):
        got, unrolled = runs_as_unrolled(prog, NEWTON_RIDGE, counts, inputs)
        want = interpret_program(parse_source(NEWTON_RIDGE), {"steps": 5, "inner": 4, **counts},
                                 **inputs)["x"]
        assert np.abs(got["x"] - unrolled["x"]).max() <= 1e-14
        assert np.abs(got["x"] - want).max() <= 1e-12


NORMALIZED_GD = """program normalized_gd
dim d = 3
param steps = 15
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w

S = A.T @ A / n + 0.2 * I
b = A.T @ y / n
w = zeros(d)
repeat steps {
  g = S @ w - b
  w = w - 0.3 * g
  w = w / sqrt(1 + w @ w) on [1, 10]
}
"""


def test_reading_ahead_runs_a_normalised_step_as_deep_as_unrolled(monkeypatch):
    """A step renormalised every iteration (w / sqrt(1 + w·w)): with the next iteration reading
    ahead (nodes.LOOP_AHEAD) the shared build runs the unrolled build's layers at the built
    count and at others, with its outputs to 1e-15 and `until w` where the interpreter stops;
    without it (the chooser off) it runs more."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(NORMALIZED_GD, loops="shared")
    inputs = sample_inputs(prog.program, {}, n=10, batch=3, seed=2)
    for steps in (6, 15, 18):
        got, unrolled = runs_as_unrolled(prog, NORMALIZED_GD, {"steps": steps}, inputs)
        gap = np.abs(got["w"] - unrolled["w"]).max()
        assert gap <= 1e-15, (steps, gap)
    from test_until import halts_as_interpreted
    out, _ = halts_as_interpreted(prog, parse_source(NORMALIZED_GD), inputs, ("w", 1e-6), 120,
                                  (None, "module"), exact=False)
    assert out["converged"].all()
    monkeypatch.setattr(shared_build_module, "_choose_read_ahead", lambda *a: (frozenset(), a[-1]))
    waiting = tcompile.compile_source(NORMALIZED_GD, loops="shared")
    assert waiting.loops.n_layers(waiting.loops.counts()) > prog.loops.n_layers(
        prog.loops.counts())


EXPONENTIATED_GRADIENT = """program exponentiated_gradient
dim d = 3
param eta = 0.5
param steps = 10
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w

w = ones(d) / d
repeat steps {
  g = A.T @ (A @ w - y) / n
  u = w * exp(-eta * g) on [-1, 1]
  w = (u / (sum(u)) on [0.2, 3]) on [0, 1]
}
"""


def test_reading_ahead_is_judged_by_the_width_as_built(monkeypatch):
    """Exponentiated gradient (a multiplicative step renormalised onto the simplex), written
    as a new user would: reading ahead runs it as deep as the unrolled build (5 layers per
    step; 6 waiting for w) with its outputs to 1e-14 of the unrolled build's and `until w` where
    the interpreter stops. The chooser once compared widths at the base unrolling, where reading
    ahead takes 2 more rows than waiting, though as built both take 50, and refused it."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(EXPONENTIATED_GRADIENT, loops="shared")
    (spec,) = prog.loops.loops
    assert (spec.layers_per_iteration, spec.min_count, prog.n_layers) == (5, 4, 21)
    inputs = sample_inputs(prog.program, {}, n=10, batch=4, seed=2)
    for steps in (4, 7, 10, 13):
        got, unrolled = runs_as_unrolled(prog, EXPONENTIATED_GRADIENT, {"steps": steps}, inputs)
        gap = np.abs(got["w"] - unrolled["w"]).max()
        assert gap <= 1e-14, (steps, gap)        # 7e-16 here
    from test_until import halts_as_interpreted
    halts_as_interpreted(prog, parse_source(EXPONENTIATED_GRADIENT), inputs, ("w", 1e-3), 40,
                         (None, "module"), exact=False)
    monkeypatch.setattr(shared_build_module, "_choose_read_ahead", lambda *a: (frozenset(), a[-1]))
    waiting = tcompile.compile_source(EXPONENTIATED_GRADIENT, loops="shared")
    assert waiting.loops.n_layers(waiting.loops.counts()) == 62 > prog.loops.n_layers(
        prog.loops.counts()) == 54


def test_declared_bounds_of_a_loop_state_widen_its_hull():
    """w's lower bound shrinks every step (w >= u / 3 >= w e^-1 / 3) inside its declared
    [0, 1], so the hull of the built steps was never closed and the build refused counts above
    the built one. Widened to the declared interval (steady_state._declared_bounds), one body
    stays inside it: every count runs (max_count None), as deep as the unrolled build and
    within 1e-15 of it (the count loop above). Without the declaration nothing is widened."""
    def site(source):
        program = parse_source(source)
        (s,) = loop_sites(program, check_program(program, {})).values()
        return s
    assert site(EXPONENTIATED_GRADIENT).max_count is None
    undeclared = EXPONENTIATED_GRADIENT.replace("w = (u / (sum(u)) on [0.2, 3]) on [0, 1]",
                                                "w = u / (sum(u)) on [0.2, 3]")
    assert site(undeclared).max_count == 10


HINGE = """program hinge_subgradient
dim d = 3
param steps = 20
param eta = 0.2
input A : [n, d] assume row_norm <= 1
input y : [n] sign
output w
w = zeros(d)
repeat steps {
  m = (y * (A @ w)) on [-5, 5]
  active = clip(1000 * (1 - m), 0, 1)
  w = w + eta * A.T @ (y * active) / n - eta * 0.01 * w
}
"""

COORDINATE_LASSO = """program coordinate_lasso
param sweeps = 10
input A : [n, 2] assume row_norm <= 1
input y : [n] in [-1, 1]
output w
S = A.T @ A / n
b = A.T @ y / n
w = zeros(2)
repeat sweeps {
  z0 = (b[0] - S[0, 1] * w[1]) / (S[0, 0]) on [0.05, 2]
  w = stack(relu(z0 - 0.1) - relu(-z0 - 0.1), w[1])
  z1 = (b[1] - S[1, 0] * w[0]) / (S[1, 1]) on [0.05, 2]
  w = stack(w[0], relu(z1 - 0.1) - relu(-z1 - 0.1))
}
"""


@pytest.mark.parametrize("source, d, param", [(HINGE, 3, "steps"),
                                               (COORDINATE_LASSO, 2, "sweeps")])
def test_a_state_whose_bounds_reach_no_fit_runs_any_count_though_its_step_is_bounded(
        source, d, param):
    """The step of w is a mean over the tokens of bounded products (`A.T @ (y * active) /
    n`), or a quotient by one scalar entry (`/ S[0, 0]`), so w's bounds grow with every
    iteration. They reach no fit: w is read only through matrix products with no bounds
    (`A @ w`), products with one scalar entry (`S[0, 1] * w[1]`, heads) and exact relus. So
    w's growing bounds do not limit the count (`_bounds_needed`): any count runs, as the
    unrolled build does."""
    from tcompile.compiler.steady_state import _bounds_needed
    program = parse_source(source)
    assert "w" not in _bounds_needed(program, frozenset(), {"S": 2, "b": 1, "w": 1})
    if "S[0, 1]" in source:     # an entry of a variable of unknown rank may be a row
        assert "w" in _bounds_needed(program, frozenset(), {})
    (s,) = loop_sites(program, check_program(program, {})).values()
    assert s.max_count is None
    prog = tcompile.compile_source(source, loops="shared")
    rng = np.random.default_rng(5)
    A = rng.standard_normal((12, d))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    y = np.sign(rng.standard_normal(12))
    for count in (4, 25):
        got = prog.run(A=A, y=y, **{param: count})["w"]
        want = interpret_program(program, {param: count}, A=A, y=y)["w"]
        assert np.max(np.abs(got - want)) <= 1e-9


def test_the_bounds_a_loop_needs_pass_matrix_products_only_with_a_fill():
    """softmax_regression: W's bounds reach Z = A @ W, a product with no bounds, and no fit;
    L = log(E @ ones(K)) reads a fill, but L is no fill itself (a first mended version of
    the rule took anything that mentions one for one, needed W, and capped the shipped
    program's count at its built 30). A variable that always holds a fill passes bounds."""
    from tcompile.compiler.steady_state import _bounds_needed
    program = parse_file(PROGRAMS + "softmax_regression.tp")
    assert "W" not in _bounds_needed(program, frozenset(), {"W": 2})
    prog = tcompile.compile_file(PROGRAMS + "softmax_regression.tp", loops="shared")
    assert [s.max_count for s in prog.loops.loops] == [None]
    src = ("program p\ndim d = 2\ninput D : [n, d] in [-1, 1]\noutput x\no = ones(d)\n"
           "o2 = 2 * o\nx = zeros(d)\nrepeat 3 {\n  x = x + D.T @ sigmoid(D @ x + D @ o2) / n\n}\n")
    needed = _bounds_needed(parse_source(src), frozenset(), {"x": 1})
    assert {"o2", "o"} <= needed and "x" not in needed


def test_a_mean_over_the_tokens_has_no_bounds_in_an_iteration_whose_products_have_none():
    """The first iteration from w = zeros has A @ w = 0: the means sum(A @ w) / n and
    A.T @ (A @ w) / n are bounded there and not in the next. The walker kept the first
    iteration's bounds for the next (they were recorded per expression and never cleared),
    so a function of the mean was fitted on [0, 0] alone."""
    from tcompile.language.checker import Walker, resolve_params
    src = ("program p\ndim d = 2\ninput A : [n, d] in [-1, 1]\ninput b : [d] in [-1, 1]\n"
           "output w, m, g\nw = zeros(d)\n"
           "repeat {k} {\n  m = sum(A @ w) / n\n  g = A.T @ (A @ w) / n\n  w = w + b\n}\n")
    one = parse_source(src.replace("{k}", "1"))
    env = Walker(one, resolve_params(one)).run()
    assert (env["m"].ty.lo, env["m"].ty.hi, env["g"].ty.lo, env["g"].ty.hi) == (0, 0, 0, 0)
    two = parse_source(src.replace("{k}", "2"))
    env = Walker(two, resolve_params(two)).run()
    assert env["m"].ty.lo is None and env["g"].ty.lo is None


def test_no_reading_ahead_over_huge_gate_offsets(monkeypatch):
    """Without the declared bounds on w, its bounds grow five-fold an iteration and the gate
    offsets of the exact product w * exp(...) reach 7.2e10 (a head writes -c I). Read ahead,
    values land in rows such an offset was cleared from, and the dense module keeps ~c·2⁻⁵³ of
    it (it differed from the structured executor by 4e-6); so the loop waits for its state, and
    the two agree to rounding (READ_AHEAD_MAX_HEAD_WEIGHT)."""
    from tcompile.inspection.sampling import sample_inputs
    loose = EXPONENTIATED_GRADIENT.replace("w = (u / (sum(u)) on [0.2, 3]) on [0, 1]",
                                           "w = u / (sum(u)) on [0.2, 3]")
    prog = tcompile.compile_source(loose, loops="shared")
    assert shared_build_module._largest_head_weight(prog.layers) > 1e10
    inputs = sample_inputs(prog.program, {}, n=10, batch=8, seed=2)

    def disagreement(p):
        return np.abs(p.run(**inputs)["w"] - p.run(executor="module", **inputs)["w"]).max()
    assert prog.loops.n_layers(prog.loops.counts()) == 62 and disagreement(prog) <= 1e-13
    monkeypatch.setattr(shared_build_module, "READ_AHEAD_MAX_HEAD_WEIGHT", float("inf"))
    ahead = tcompile.compile_source(loose, loops="shared")
    assert ahead.loops.n_layers(ahead.loops.counts()) == 54 and disagreement(ahead) > 1e-9


BFGS = """program bfgs_least_squares
dim d = 6
param steps = 6
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output x

S = A.T @ A / n + 0.1 * I
b = A.T @ y / n
x = zeros(d)
H = I
g = S @ x - b
repeat steps {
  p = -(H @ g)
  alpha = -(g @ p) / (p @ S @ p) on [1e-30, 100]
  s = alpha * p
  x = x + s
  g_new = S @ x - b
  yv = g_new - g
  rho = 1 / (yv @ s) on [1e-40, 100]
  V = I - rho * outer(s, yv)
  H = V @ H @ V.T + rho * outer(s, s)
  g = g_new
}
"""


def test_bfgs_folds_by_a_kernel_of_its_plain_walk():
    """BFGS with exact line search, written as a new user would: its rows return every 2
    iterations of the plain walk, while the kernel's grouping (nodes.LOOP_PHASE) pipelines
    them apart, so it stayed unrolled. Folded every 2 iterations of the plain walk
    (_Unrollings.unmarked), it runs the unrolled build's 14 layers per step at both residues,
    the same numbers at 5 steps (bit for bit here; 1e-13 allowed for other BLAS kernels: the
    steps near convergence amplify rounding) and within the interpreter's own gap at 6 (the
    last steps divide by p·Sp near 1e-30)."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(BFGS, loops="shared")
    (spec,) = prog.loops.loops
    assert (spec.layers_per_iteration, spec.every, prog.n_layers) == (28, 2, 58)
    inputs = sample_inputs(prog.program, {}, n=16, batch=4, seed=3)
    for steps, tol in ((5, 1e-13), (6, 1e-11)):
        out, unrolled = runs_as_unrolled(prog, BFGS, {"steps": steps}, inputs)
        got = out["x"]
        assert np.abs(got - unrolled["x"]).max() <= tol, steps
        want = np.stack([interpret_program(parse_source(BFGS), {"steps": steps},
                                           **{k: v[i] for k, v in inputs.items()})["x"]
                         for i in range(4)])
        assert np.abs(got - want).max() <= 1e-12
    # its layout is the odd residue's (the even unrolling lacks a fitted layer of the odd
    # tail): the built count, 6, is refused naming 7 — not 5, which runs the kernel 0 times
    with pytest.raises(InputError, match=r"residue 1 \(steps = 7\), or build it unrolled"):
        tcompile.residual_labels(prog)
    assert tcompile.residual_labels(prog, steps=7)


TWO_INVERSES = """program two_inverses
dim d = 3
param k = 6
param steps = 8
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output x, X2

def inv(M, c, m) {
  X = c * I
  repeat m {
    X = 2 * X - X @ M @ X
  }
  return X
}

S = A.T @ A / n + 0.3 * I
X1 = inv(S, 0.7, k)
X2 = inv(S + 0.5 * I, 0.05, k)
x = zeros(d)
repeat steps {
  x = x - X1 @ (S @ x - A.T @ y / n)
}
"""


def test_a_param_that_counts_a_loop_kept_unrolled_is_fixed():
    """`k` counts both calls' loops; the first folds, the second is kept unrolled (its rows
    alternate). A run at k = 9 ran 9 iterations in one and 6 in the other: X2 was 0.044 off
    the interpreter's, without a word. k is now fixed at its built value (a run asking for
    another is an InputError naming the run-time params), the card says "(fixed)" and lists
    no `until` variable there, and `steps` still runs at any count."""
    prog = tcompile.compile_source(TWO_INVERSES, loops="shared")
    assert prog.loops.unrolled and [s.param for s in prog.loops.loops] == [None, "steps"]
    text = tcompile.report_text(prog)
    assert "repeat 6 (fixed)   1 layer per iteration\n    line 21" in text
    rng = np.random.default_rng(2)
    A = rng.standard_normal((10, 3))
    inputs = {"A": A / (1.01 * np.linalg.norm(A, axis=1, keepdims=True)),
              "y": rng.uniform(-1, 1, 10)}
    with pytest.raises(InputError, match="k is not a run-time count of this build"):
        prog.run(k=9, **inputs)
    for counts in ({}, {"steps": 12}):
        got = prog.run(**counts, **inputs)
        want = interpret_program(parse_source(TWO_INVERSES), counts, **inputs)
        assert max(np.abs(got[v] - want[v]).max() for v in want) <= 1e-14


NEWTON_LOGISTIC_USER = """program logistic_newton_user
dim d = 3
param mu = 0.1
param steps = 6
param inv_steps = 8
input A : [n, d] assume row_norm <= 1
input y : [n] sign
output w, nll
def inv_spd(H, lo, hi, k) {
  X = 2 / (lo + hi) * I
  repeat k {
    X = 2 * X - X @ H @ X
  }
  return X
}
w = zeros(d)
repeat steps {
  z = (A @ w) on [-8, 8]
  p = sigmoid(-y * z)
  g = mu * w - A.T @ (y * p) / n
  H = A.T @ ((p * (1 - p)) * A) / n + mu * I
  w = w - inv_spd(H, mu, mu + 0.25, inv_steps) @ g
}
nll = sum(softplus(-y * ((A @ w) on [-8, 8]))) / n + 0.5 * mu * (w @ w) on [0, 100]
"""


def test_a_loop_around_a_nested_one_reads_ahead():
    """Newton's method for regularised logistic regression with the Hessian inverted by a
    nested Newton–Schulz loop, written as a new user would: the next z = A w reads w's
    definition (nodes.LOOP_AHEAD on the outer loop; the chooser once skipped every program
    with a loop inside another). 10 layers per step as unrolled (11 waiting for w): the
    unrolled build's layers and outputs (1e-14) at the built counts and at others, and `until
    w` halts where the interpreter does."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(NEWTON_LOGISTIC_USER, loops="shared")
    outer = next(s for s in prog.loops.loops if not s.depth)
    assert outer.layers_per_iteration == 10
    inputs = sample_inputs(prog.program, {}, n=12, batch=3, seed=4)
    for counts in ({}, {"steps": 8}, {"steps": 4, "inv_steps": 10}):
        got, want = runs_as_unrolled(prog, NEWTON_LOGISTIC_USER, counts, inputs)
        assert max(np.abs(got[k] - want[k]).max() for k in want) <= 1e-14, counts   # 2e-16
    from test_until import halts_as_interpreted
    halts_as_interpreted(prog, parse_source(NEWTON_LOGISTIC_USER), inputs, ("w", 1e-4), 12,
                         (None,), exact=False)


RICHARDSON_TWO_PHASE = """program richardson_two_phase
dim d = 4
param omega = 0.6
param warm = 6
param steps = 20
input M : [d, d] spectrum in [0.5, 1.5]
input b : [d] assume norm <= 1
output x
x = zeros(d)
repeat warm {
  x = x + 0.3 * (b - M @ x)
}
repeat steps {
  x = x + omega * (b - M @ x)
}
"""


def test_a_warm_up_loop_takes_a_kernel_its_base_unrolling_hides():
    """Two Richardson loops, each fitting two steps in a layer unrolled. The kernel chooser's
    cheap look compared the base unrollings (3 steps each), where a group of 2 gains nothing
    for the warm-up loop, and skipped it: 17 layers at the built counts against 14. It also
    looks one step longer now: 13, the unrolled build's, and within one layer of it at an odd
    warm-up count (the kernel's tail: from x0 = 0 the unrolled build's first step is no
    layer, and it starts an odd count's pairs there); the outputs are the interpreter's."""
    prog = tcompile.compile_source(RICHARDSON_TWO_PHASE, loops="shared")
    assert [s.every for s in prog.loops.loops] == [2, 2]
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    inputs = {"M": Q @ np.diag([0.5, 0.8, 1.1, 1.5]) @ Q.T, "b": np.full(4, 0.45)}
    for counts, extra in (({}, 0), ({"warm": 7, "steps": 21}, 1), ({"warm": 9, "steps": 30}, 1),
                          ({"warm": 8, "steps": 30}, 0)):
        got, _ = runs_as_unrolled(prog, RICHARDSON_TWO_PHASE, counts, inputs, extra)
        want = interpret_program(parse_source(RICHARDSON_TWO_PHASE), counts, **inputs)["x"]
        assert np.abs(got["x"] - want).max() <= 1e-14


HEAT = """program heat2d
param steps = 25
param r = 0.2
dim k = 5
input U0 : [k, k] in [0, 1]
output U
T = triu(tril(ones(k, k), 1), -1) - 3 * I
U = U0
repeat steps {
  U = U + r * (T @ U + U @ T)
}
"""


def test_a_kernel_whose_gain_shows_from_four_iterations_is_found():
    """A 2-D heat stencil fits two steps in a layer unrolled (17 layers at 25 steps), but a
    group of 2 is no shorter at the fold's base unrollings of 2 and 3 steps (5 and 6 layers
    either way); from 4 it is (6 against 7). The kernel chooser's cheap look skipped it, and
    the shared build ran a layer per step (28 at 25). It now also looks two steps longer: a
    kernel of 2, the unrolled build's layers at every count tried, its outputs to rounding."""
    prog = tcompile.compile_source(HEAT, loops="shared")
    assert [s.every for s in prog.loops.loops] == [2]
    U0 = np.random.default_rng(3).uniform(0, 1, (5, 5))
    for steps in (8, 25, 26, 31):
        got, unrolled = runs_as_unrolled(prog, HEAT, {"steps": steps}, {"U0": U0})
        want = interpret_program(parse_source(HEAT), {"steps": steps}, U0=U0)["U"]
        assert np.abs(got["U"] - unrolled["U"]).max() <= 1e-15
        assert np.abs(got["U"] - want).max() <= 1e-15


def test_a_stencil_on_a_stack_folds_now_that_its_rows_are_reused():
    """The stencil (test_pass_plan.STENCIL): its 6-row u is taller than the 1-row identity,
    so no head could subtract it and its rows were never reused; the rows of every iteration
    were new, and the loop stayed unrolled ("rows alternate"). With the MLP clearing them it
    folds (a kernel of 2 iterations, from 4 steps) and runs any count as unrolled."""
    prog = tcompile.compile_source(STENCIL, params={"steps": 10}, loops="shared")
    assert not prog.loops.unrolled and prog.loops.params == {"steps": 10}
    u0 = np.random.default_rng(2).uniform(-1, 1, 6)
    for steps in (4, 7, 12):
        got, unrolled = runs_as_unrolled(prog, STENCIL, {"steps": steps}, {"u0": u0})
        want = interpret_program(parse_source(STENCIL), {"steps": steps}, u0=u0)["u"]
        assert np.array_equal(got["u"], unrolled["u"]) and np.abs(got["u"] - want).max() <= 1e-15
    assert prog.layout.width == 13


RAYLEIGH = """program rayleigh
dim d = 5
param steps = 25
input M : [d, d] spectrum in [0.1, 1]
input v0 : [d] assume norm <= 1
output v, lam
v = v0 / 2 + 0.5 * ones(d) / d
repeat steps {
  u = M @ v
  s = sqrt(u @ u) on [1e-3, 2] tol rel 1e-12
  v = u / s
  lam = v @ M @ v
}
"""


def test_a_first_value_is_not_laid_out_by_the_code_after_the_loop():
    """A normalised power step with a refined square root. Read ahead (in a kernel of 2) it
    runs 5 layers per step as unrolled, but it did not fold: the first v, stored as a column,
    took the rows of the only other v stored so, the output copy after the last iteration,
    which the code after the loop lays out differently at odd and even counts; the layers
    before the loop then differed between the residues. It ran 6 per step (5.5 in a kernel
    of 2: 140 layers against 128). The first value's hint now skips the last iteration's."""
    prog = tcompile.compile_source(RAYLEIGH, loops="shared")
    (spec,) = prog.loops.loops
    assert spec.every == 2 and spec.layers_per_iteration == 10
    inputs = {"M": _symmetric_with([1.0, 0.6, 0.4, 0.2, 0.1], 3), "v0": np.full(5, 0.4)}
    _bit_for_bit_as_unrolled(prog, RAYLEIGH, ({}, {"steps": 24}, {"steps": 31}), inputs, 1e-9)


def _symmetric_with(eigenvalues, seed: int) -> np.ndarray:
    """A symmetric matrix with these eigenvalues and random eigenvectors."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return Q @ np.diag(eigenvalues) @ Q.T


def _bit_for_bit_as_unrolled(prog, source: str, counts_list, inputs: dict, tol: float) -> None:
    """At each counts: as many layers as the unrolled build, its outputs bit for bit, and the
    interpreter's within tol."""
    for counts in counts_list:
        got, unrolled = runs_as_unrolled(prog, source, counts, inputs)
        want = interpret_program(parse_source(source), counts, **inputs)
        for k in want:
            assert np.array_equal(got[k], unrolled[k]), (counts, k)
            assert np.abs(got[k] - want[k]).max() <= tol, (counts, k)


DEFLATION = """program deflation
dim d = 5
param steps = 10
input M : [d, d] spectrum in [0.1, 1]
input v0 : [d] assume norm <= 1
output v1, v2, l1, l2
v1 = v0 / 2 + 0.5 * ones(d) / d
repeat steps {
  u = M @ v1
  v1 = u / sqrt(u @ u) on [1e-4, 4]
}
l1 = v1 @ M @ v1
M2 = M - l1 * outer(v1, v1)
v2 = v0 / 2 - 0.5 * ones(d) / d
repeat steps {
  u = M2 @ v2
  v2 = u / sqrt(u @ u) on [1e-6, 4]
}
l2 = v2 @ M2 @ v2
"""


def test_two_power_iterations_in_sequence_both_read_ahead_in_kernels():
    """Deflation: each loop runs 5 layers per step unrolled, reading ahead in a kernel of 2.
    The first loop could not: its last v1, pinned to the rows of the v1 before it, found
    them taken by its own other orientation (written in the same sublayer, allocated first),
    so the code after it differed by the count's residue and the second loop had no layers
    of its own; and the chooser never tried reading ahead with a kernel on a loop that got no
    kernel alone. 320 layers against 306 unrolled at 30 steps (335 at the last stop); now
    306, and every count as deep as unrolled and bit-identical to it."""
    prog = tcompile.compile_source(DEFLATION, loops="shared")
    assert [(s.every, s.layers_per_iteration) for s in prog.loops.loops] == [(2, 10), (2, 10)]
    inputs = {"M": _symmetric_with([1.0, 0.7, 0.4, 0.2, 0.1], 4), "v0": np.full(5, 0.4)}
    _bit_for_bit_as_unrolled(prog, DEFLATION, ({}, {"steps": 13}, {"steps": 30}), inputs, 1e-8)


SIGN_FIXED_POWER = """program sign_fixed_power
dim d = 4
param steps = 20
input M : [d, d] spectrum in [0.1, 1]
input u0 : [d] assume norm <= 1
output u, lam
u = u0 + 0.5 * ones(d)
repeat steps {
  w = M @ u
  u = w / sqrt(w @ w) on [1e-4, 16]
}
s = clip(1000 * u[0], -1, 1)
u = s * u
lam = u @ (M @ u)
"""


def test_a_read_ahead_kernel_whose_residues_differ_in_width_folds_laid_out_at_the_wider():
    """Power iteration with its sign fixed after the loop by the first coordinate (u[0]):
    reading ahead in a kernel of 2, the last group leaves other rows free at even counts than
    at odd ones, and the sign s then takes a new row at even counts (16 rows against 15). Every
    layer's shape differed between the residues, so the kernel was refused ("its kernel
    differs from one residue of the count to the next") and the loop ran 11 layers per 2
    iterations against the unrolled build's 10 (114 layers at 20 steps against 105). Every
    unrolling of the fold is now laid out at the wider width: 10 per 2, every count as deep
    as unrolled and bit-identical to it, at one width."""
    prog = tcompile.compile_source(SIGN_FIXED_POWER, loops="shared")
    assert [(s.every, s.layers_per_iteration) for s in prog.loops.loops] == [(2, 10)]
    assert prog.width == 16
    inputs = {"M": _symmetric_with([1.0, 0.6, 0.3, 0.1], 5), "u0": np.full(4, 0.3)}
    _bit_for_bit_as_unrolled(prog, SIGN_FIXED_POWER,
                             ({}, {"steps": 5}, {"steps": 6}, {"steps": 21}), inputs, 1e-8)
    widths = {tcompile.compile_source(SIGN_FIXED_POWER, params={"steps": c}).width
              for c in (5, 6)}
    assert widths == {15, 16}                 # the unrolled build's, by residue


TWO_RICHARDSON = """program two_richardson
dim d = 4
param steps = 6
input M : [d, d] spectrum in [0.2, 1]
input b : [d] assume norm <= 1
output x, y
x = zeros(d)
repeat steps {
  x = x + 0.5 * (b - M @ x)
}
y = x
repeat steps {
  y = y + 0.5 * (x - M @ y)
}
"""

WARM_THEN_MAIN = """program warm_then_main
dim d = 3
param warm = 3
param steps = 8
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w
w = zeros(d)
repeat warm {
  w = w - 0.05 * A.T @ (A @ w - y) / n
}
repeat steps {
  w = w - 0.5 * A.T @ (A @ w - y) / n
}
"""


def test_carried_over_keeps_the_folds_whose_layers_are_unchanged():
    """A loop token stays where the longer unrolling keeps its layers (here before the
    change); one whose layers the longer unrolling changes leaves no fold to carry over."""
    loop = Loop("L", ("b",), 1)
    folded = ["a", loop, "c", "d"]                  # a b b c d at L = 3
    assert shared_build_module._carried_over(folded, {"L": 3}, list("abbcxd")) == [
        "a", loop, "c", "x", "d"]
    assert shared_build_module._carried_over(folded, {"L": 3}, list("abzbcd")) is None


def test_an_outer_loop_run_longer_keeps_its_inner_loops_folded():
    """Nested loops: the outer loop one iteration longer adds an inner loop as unrolled
    (b b at I = 3, its first iteration before the loop); it is found there and put back as the inner loop, so the outer loop
    folds over the inner one's fold without compiling the inner loop's unrollings again."""
    inner = Loop("I", ("b",), 1)
    folded = ["a", inner, "c", inner, "d"]          # a bb c bb d at I = 3
    assert shared_build_module._carried_over(folded, {"I": 3}, list("abbcbbcbbd")) == [
        "a", inner, "c", inner, "c", inner, "d"]
    # an inner loop whose layers changed (b z) is not found: no fold to carry over
    assert shared_build_module._carried_over(folded, {"I": 3}, list("abzcbzcbzd")) is None


@pytest.mark.parametrize("source, kernels", [
    (TWO_RICHARDSON, [2, 2]), (WARM_THEN_MAIN, [1, 1]),
    ((Path(__file__).parents[1] / PROGRAMS / "newton_logistic.tp").read_text(),
     [1, 1])])                                      # nested: 12 -> 9 compiles
def test_loops_fold_across_as_the_grid_does(monkeypatch, source, kernels):
    """Loops fold across (each loop's unrollings with the others at their base, their folds
    carried over: in sequence, or an inner loop's inside an outer loop run longer) instead
    of over the grid of every loop's unrollings: the same artifact from fewer compiles; and
    where the fold across does not hold at the corner unrolling, the grid's."""
    compiles = []
    real = shared_build_module.compile_dataflow
    monkeypatch.setattr(shared_build_module, "compile_dataflow",
                        lambda *a, **k: compiles.append(1) or real(*a, **k))

    def build():
        compiles.clear()
        prog = tcompile.compile_source(source, loops="shared")
        return ([digest(layer) for layer in prog.layers], prog.loops, prog.typed_manifest), \
            len(compiles)

    across, fewer = build()
    assert [s.every for s in across[1].loops] == kernels and not across[1].unrolled
    with monkeypatch.context() as m:
        m.setattr(shared_build_module, "_carried_over", lambda *a: None)
        grid, more = build()
    assert across == grid and fewer < more
    with monkeypatch.context() as m:      # a corner that differs: the grid decides
        m.setattr(shared_build_module, "_expanded", lambda seq, counts: ["differs"])
        assert build()[0] == grid


VALUE_ITERATION = """program value_iteration
dim k = 5
param steps = 40
param gamma = 0.9
input P1 : [k, k] in [0, 0.2]
input P2 : [k, k] in [0, 0.2]
input R1 : [k] in [0, 1]
input R2 : [k] in [0, 1]
output V, Q1
V = zeros(k)
repeat steps {
  Q1 = R1 + gamma * P1 @ V
  V = max(Q1, R2 + gamma * P2 @ V)
}
"""

HOPFIELD = """program hopfield_retrieval
dim d = 4
param steps = 5
param beta = 2
input X : [n, d] assume row_norm <= 1
input q0 : [d] assume norm <= 1
output q
q = q0
repeat steps {
  e = exp(beta * (X @ q) on [-1, 1]) tol rel 1e-6
  m = sum(e) / n
  q = X.T @ e / n / (m) on [0.13, 7.4]
}
"""


def _value_iteration_inputs(rng):
    return {"P1": rng.uniform(0, 0.2, (5, 5)), "P2": rng.uniform(0, 0.2, (5, 5)),
            "R1": rng.uniform(0, 1, 5), "R2": rng.uniform(0, 1, 5)}


def _hopfield_inputs(rng):
    X = rng.standard_normal((12, 4))
    return {"X": X / np.linalg.norm(X, axis=1, keepdims=True), "q0": np.full(4, 0.3)}


@pytest.mark.parametrize("source, inputs, per_step, counts, tol", [
    (VALUE_ITERATION, _value_iteration_inputs, 1, ({}, {"steps": 37}, {"steps": 50}), 1e-12),
    (HOPFIELD, _hopfield_inputs, 4, ({}, {"steps": 3}, {"steps": 9}), 1e-5),   # exp's fit
], ids=["value_iteration", "hopfield"])
def test_reading_ahead_a_row_wider_is_kept_where_each_iteration_moves_less(source, inputs,
                                                                         per_step, counts, tol):
    """Value iteration (1 layer per step unrolled) and a Hopfield retrieval step (4) read
    ahead as the unrolled build runs them, a row or more wider than waiting for the state
    (28 rows against 27; 21 against 17). The chooser refused any wider read-ahead, so they
    ran 1.5 (a kernel of 2) and 5 layers per step: 61 layers against 42, 25 against 21. It
    now keeps it where layers per iteration × width does not grow; and reading ahead needs no
    kernel here (value iteration's first choice, a kernel of 2 waiting for V, is dropped for
    it: the loop then runs from 3 steps, not 4)."""
    prog = tcompile.compile_source(source, loops="shared")
    (spec,) = prog.loops.loops
    assert (spec.every, spec.layers_per_iteration) == (1, per_step)
    data = inputs(np.random.default_rng(5))
    for c in counts:
        got, unrolled = runs_as_unrolled(prog, source, c, data)
        want = interpret_program(parse_source(source), c, **data)
        for k in want:      # the same layers; their rows may differ (rounding order)
            assert np.abs(got[k] - unrolled[k]).max() <= 1e-14 * max(1, np.abs(want[k]).max())
            assert np.abs(got[k] - want[k]).max() <= tol, (c, k)


def test_a_kernel_that_stores_its_state_every_other_iteration_keeps_its_first_values_hint():
    """Random program 102: z and w fold two steps per layer, so a kernel of 2 stores them only
    at the end of each group. The first values' hint took the state's rows only from a value
    with a twin in the *next* iteration, which no stored w or z has in a kernel: the kernel
    stopped folding (2 layers more than unrolled at 6 steps). It takes any later one now."""
    src = random_loop_program(102)
    prog = tcompile.compile_source(src, loops="shared")
    (spec,) = prog.loops.loops
    assert (spec.every, spec.layers_per_iteration) == (2, 1)
    inputs = _inputs(102, 3)
    for counts in ({}, {"steps": 7}, {"steps": 8}):
        got, unrolled = runs_as_unrolled(prog, src, counts, inputs)
        for k in unrolled:
            assert np.abs(got[k] - unrolled[k]).max() <= 1e-14 * max(1, np.abs(unrolled[k]).max())


SWEEPS = """program outer_inner
dim d = 3
param sweeps = 5
param inner = 4
input S : [d, d] spectrum in [0.2, 1]
input b : [d] assume norm <= 1
output x, X
x = zeros(d)
X = I
repeat sweeps {
  repeat inner {
    X = 2 * X - X @ S @ X
  }
  x = x + X @ (b - S @ x)
}
"""

NEWTON_DEPENDENT = """program newton_nested_dependent
dim d = 3
param steps = 4
param k = 6
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w
def inv(B, iters) {
  X = 0.4 * I
  repeat iters {
    X = 2 * X - X @ B @ X
  }
  return X
}
w = zeros(d)
repeat steps {
  r = (A @ w - y) on [-3, 3]
  D = diag(ones(d) + 0.1 * (w * w))
  H = A.T @ A / n + D
  w = (w - inv(H, k) @ (A.T @ r / n + 0.1 * w)) on [-3, 3]
}
"""


@pytest.mark.parametrize("source, counts, inputs", [
    (SWEEPS, ({}, {"sweeps": 7}, {"sweeps": 5, "inner": 6}),
     lambda: {"S": _symmetric_with([0.3, 0.6, 0.9], 7), "b": np.full(3, 0.5)}),
    (NEWTON_DEPENDENT, ({}, {"steps": 6}, {"steps": 4, "k": 8}),
     lambda: {"A": _inputs(8, 3)["A"], "y": np.linspace(-0.9, 0.9, 7)}),
], ids=["sweeps", "newton_dependent"])
def test_a_loops_first_step_from_constants_is_read_ahead_into_its_second(source, counts, inputs):
    """An inner Newton–Schulz loop from X = I (or 0.4 I): the unrolled build multiplies its
    first step, 2I − S, out into the second (one layer on S), but a stored body reads every
    state stored, so the shared build ran one layer more, once (21 against 20; 39 against 38).
    The read-ahead chooser now also tries reading ahead the first iteration's state only
    (FIRST_ONLY, nodes.LOOP_FIRST): as deep as unrolled at every count tried."""
    prog = tcompile.compile_source(source, loops="shared")
    data = inputs()
    for c in counts:
        got, unrolled = runs_as_unrolled(prog, source, c, data)
        want = interpret_program(parse_source(source), c, **data)
        for k in want:
            scale = max(1.0, float(np.abs(want[k]).max()))
            assert np.abs(got[k] - unrolled[k]).max() <= 1e-14 * scale, (c, k)
            assert np.abs(got[k] - want[k]).max() <= 1e-12 * scale, (c, k)


TWO_PHASE = """program two_phase
dim d = 3
param warm = 5
param steps = 10
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w

S = A.T @ A / n + 0.1 * I
b = A.T @ y / n
w = zeros(d)
repeat warm {
  w = w - 0.2 * (S @ w - b)
}
X = 1 / 1.2 * I
repeat steps {
  X = 2 * X - X @ S @ X
  w = w - X @ (S @ w - b)
}
"""


def test_two_loops_carrying_one_variable_trace_and_halt_at_any_counts():
    """w is carried by a warm-up loop and by the main one. The main loop's w@k are numbered
    after the warm-up's assignments, so at another warm-up count they are other program points
    than in the base unrolling: the trace names them at the run's counts (run_layout.
    point_mover) and matches the interpreter (it compared w@4 with w@6 before, 1.9 apart).
    `until w` halts the later loop (LoopProgram.until_loops), and only its card line lists w."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(TWO_PHASE, loops="shared")
    inputs = sample_inputs(prog.program, {}, n=10, batch=2, seed=3)
    for counts in ({}, {"warm": 7, "steps": 12}, {"warm": 3}):
        rows = tcompile.trace(prog, **counts, **inputs)
        assert all(r["ok"] for r in rows), (counts, [r for r in rows if not r["ok"]][:2])
        warm = counts.get("warm", 5)
        main = [r["variable"] for r in rows if r["loop_line"] == 16 and r["variable"][0] == "w"]
        assert main[0] == f"w@{warm + 1}" and main == [f"w@{warm + 1 + j}" for j in
                                                      range(len(main))]
    warm_loop, main_loop = prog.loops.loops
    assert warm_loop.watchable == ["w"] and prog.loops.until_loops()["w"] == main_loop.key
    lines = [lp["until"] for lp in prog.report["loops"]["loops"]]
    assert lines == [[], ["X", "w"]]
    from test_until import halts_as_interpreted
    out, rule = halts_as_interpreted(prog, parse_source(TWO_PHASE), inputs, ("w", 1e-10), 40,
                                     (None, "module"), exact=False)
    assert rule.loop == main_loop.key and out["converged"].all()


def test_the_fold_digest_reads_the_nonzeros_a_layer_holds():
    """fold.digest: equal for equal weights whether a matrix is held as its nonzeros or
    dense (the canonical sparse form the artifact stores), different for one changed bit of a
    nonzero or another shape; reading it builds no dense MLP matrix on the layer."""
    from dataclasses import replace as dc_replace

    from tcompile.compiler.fold import digest
    fresh = tcompile.compile_file(PROGRAMS + "power_iteration.tp", {"d": 3, "steps": 6},
                                  loops="shared")      # its own: nothing read densely yet
    layer = next(l for l in fresh.layers if l.mlp_hidden)
    assert layer._held("W_1") is not None
    d = digest(layer)
    assert "W_1" not in layer.__dict__ and "W_2" not in layer.__dict__      # nothing densified
    dense = dc_replace(layer, W_1=np.array(layer.W_1), W_2=np.array(layer.W_2))
    assert dense._held("W_1") is None and digest(dense) == d
    W_1 = np.array(layer.W_1)
    i = np.flatnonzero(W_1)[0]
    W_1.reshape(-1)[i] = np.nextafter(W_1.reshape(-1)[i], np.inf)
    assert digest(dc_replace(dense, W_1=W_1)) != d
    assert digest(dc_replace(dense, W_1=np.zeros((W_1.shape[0] + 1, W_1.shape[1])))) != \
        digest(dc_replace(dense, W_1=np.zeros((W_1.shape[0], W_1.shape[1]))))


@pytest.mark.parametrize("update", ["t = t + sum(w)", "t = t + w[0] + w[1] + w[2]"])
def test_a_state_whose_bounds_reach_no_fit_does_not_bound_the_count(update):
    """An accumulator's interval bounds grow with every iteration; nothing fitted reads
    them, so the shared build runs any count (it ran at most the built one), and the
    consensus step X - h (X - mean) likewise."""
    src = ("program acc\ndim k = 3\nparam steps = 6\ninput v : [k] in [0, 1]\n"
           "input w0 : [k] in [0, 1]\noutput t, w\nt = 0\nw = w0\nrepeat steps {\n"
           f"  w = clip(w - 0.3 * (w - v), 0, 1)\n  {update}\n}}\n")
    shared = tcompile.compile_source(src, file="a.tp", loops="shared")
    assert [spec.max_count for spec in shared.loops.loops] == [None]
    v, w0 = np.array([0.2, 0.5, 0.9]), np.array([1.0, 0.0, 0.5])
    for k in (6, 40):
        want = tcompile.interpret_program(parse_source(src, "a.tp"), {"steps": k}, v=v, w0=w0)
        got = shared.run(v=v, w0=w0, steps=k)
        assert max(float(np.max(np.abs(got[x] - want[x]))) for x in want) <= 1e-12


def test_the_bounds_a_fit_reads_still_bound_the_count():
    """x * x is fitted on x's bounds, which grow: they stay the build's limit."""
    src = ("program grow\nparam steps = 4\ninput a : [3] in [0, 1]\noutput x\nx = a\n"
           "repeat steps {\n  x = x + 0.1 * a * x * x\n}\n")
    shared = tcompile.compile_source(src, file="g.tp", loops="shared")
    assert [spec.max_count for spec in shared.loops.loops] == [4]


def test_consensus_dynamics_run_one_layer_per_step():
    """X ← X − h (X − 1 mᵀ), m the token mean: 1·1ᵀX/n is one head (the encoder's row of
    1/n, heads.py), so a step is one layer unrolled and shared (two before), against the same
    dynamics written in numpy, at token counts the build was not sampled at."""
    src = ("program consensus\nparam steps = 10\ninput X0 : [n, 3] in [-1, 1]\noutput X\n"
           "X = X0\nrepeat steps {\n  m = sum(X) / n\n  X = X - 0.3 * (X - m)\n}\n")
    unrolled = tcompile.compile_source(src, file="c.tp")
    shared = tcompile.compile_source(src, file="c.tp", loops="shared")
    assert unrolled.n_layers == 10
    rng = np.random.default_rng(5)
    for n, steps in ((4, 10), (9, 17), (31, 3)):
        X0 = rng.uniform(-1, 1, (n, 3))
        want = X0.copy()
        for _ in range(steps):
            want = want - 0.3 * (want - want.mean(axis=0))
        assert shared.loops.n_layers(shared.loops.counts({"steps": steps})) == steps
        np.testing.assert_allclose(shared.run(X0=X0, steps=steps)["X"], want, rtol=0, atol=1e-14)
    np.testing.assert_allclose(unrolled.run(X0=X0)["X"], shared.run(X0=X0, steps=10)["X"],
                               rtol=0, atol=1e-15)


def test_extrapolated_hull_goes_past_a_geometric_limit_and_not_across_zero():
    """steady_state._extrapolated: ends whose steps shrink by q go to the limit they point
    to (a margin past it); an end that kept one sign stops at 0; steps that do not shrink,
    or nothing moving, give None."""
    from tcompile.compiler.steady_state import _extrapolated
    from tcompile.language.types import Ty

    def walk(seq):        # per iteration: (lo, hi) of v
        return [{"v": Ty((3,), lo=lo, hi=hi)} for lo, hi in seq]
    # hi_k = 0.9 hi + 0.4 -> 4; lo_k = 0.9 lo -> 0 from above
    seq = [(1.0, 1.0)]
    for _ in range(6):
        seq.append((0.9 * seq[-1][0], 0.9 * seq[-1][1] + 0.4))
    hull = {"v": Ty((3,), lo=seq[-1][0], hi=seq[-1][1])}
    out = _extrapolated(hull, walk(seq), 1e-6)["v"]
    assert out.lo == 0.0 and 4.0 < out.hi < 4.0 + 1e-4
    # a drift by equal steps has no limit; nothing moving needs none
    assert _extrapolated({"v": Ty((3,), lo=-3.0, hi=3.0)},
                         walk([(-1.0, 1.0), (-2.0, 2.0), (-3.0, 3.0)]), 1e-6) is None
    assert _extrapolated(hull, walk([(0.5, 2.0)] * 3), 1e-6) is None


DAMPED_MEAN_FIELD = """program ising_mean_field
dim k = 5
param steps = 12
param beta = 0.8
input J : [k, k] symmetric, norm <= 1
input h : [k] in [-0.5, 0.5]
output m
m = zeros(k)
repeat steps {
  m = 0.5 * m + 0.5 * tanh(beta * (J @ m + h) on [-2, 2])
}
"""

RMSPROP = """program rmsprop
dim d = 3
param steps = 12
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w
w = zeros(d)
v = ones(d)
repeat steps {
  g = clip(A.T @ (A @ w - y) / n, -2, 2)
  v = 0.9 * v + 0.1 * g * g
  w = w - 0.05 * g / sqrt(v + 1e-3)
}
"""


def test_a_damped_state_converging_to_its_bounds_runs_any_count():
    """m = 0.5 m + 0.5 tanh(...) and v = 0.9 v + 0.1 g²: their bounds approach a limit that
    no built count reaches, so the hull was never closed and the shared build ran at most
    its built count. Widened to the limit (steady_state._extrapolated, checked closed), it
    runs past it, as the unrolled build of that count and as numpy (RMSprop's w drifts by
    equal steps: its bounds reach no fit, only clip, so they are dropped)."""
    rng = np.random.default_rng(4)
    S = rng.normal(size=(5, 5))
    J = (S + S.T) / np.linalg.norm(S + S.T, 2)             # symmetric, norm 1
    h = rng.uniform(-0.5, 0.5, 5)
    shared = tcompile.compile_source(DAMPED_MEAN_FIELD, file="m.tp", loops="shared")
    assert [spec.max_count for spec in shared.loops.loops] == [None]
    m = np.zeros(5)
    for _ in range(30):
        m = 0.5 * m + 0.5 * np.tanh(0.8 * (J @ m + h))
    assert np.abs(shared.run(J=J, h=h, steps=30)["m"] - m).max() <= 1e-5

    A = rng.uniform(-1, 1, (20, 3)) / np.sqrt(3)
    y = rng.uniform(-1, 1, 20)
    shared = tcompile.compile_source(RMSPROP, file="r.tp", loops="shared")
    assert [spec.max_count for spec in shared.loops.loops] == [None]
    w, v = np.zeros(3), np.ones(3)
    for _ in range(25):
        g = np.clip(A.T @ (A @ w - y) / 20, -2, 2)
        v = 0.9 * v + 0.1 * g * g
        w = w - 0.05 * g / np.sqrt(v + 1e-3)
    unrolled = tcompile.compile_source(RMSPROP, file="r.tp", params={"steps": 25})
    got = shared.run(A=A, y=y, steps=25)["w"]
    assert np.abs(got - w).max() <= 1e-6
    assert np.abs(got - unrolled.run(A=A, y=y)["w"]).max() <= 1e-6


DECAYING_STEP = """program gd_decaying_step
dim d = 3
param steps = 12
param eta0 = 0.8
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w, eta
w = zeros(d)
eta = eta0
repeat steps {
  w = w - eta * A.T @ (A @ w - y) / n
  eta = 0.9 * eta
}
"""


def test_a_decaying_step_size_is_carried_as_a_runtime_value():
    """eta = 0.9 * eta with eta0 a param: a compile-time number per iteration, so the loop
    stayed unrolled in the shared build ("'eta' is a compile-time number that changes every
    iteration"). It is only multiplied, so the shared build carries it as loop state (the
    encoder writes 0.8, heads compute 0.9·eta exactly): the loop runs any count, one layer per
    step (one more than unrolled in all), as GD with that schedule in numpy."""
    from tcompile.compiler.steady_state import _linear_scalars
    assert _linear_scalars(parse_source(DECAYING_STEP)) == {"eta"}
    shared = tcompile.compile_source(DECAYING_STEP, file="e.tp", loops="shared")
    assert shared.loops.unrolled == ()
    (spec,) = shared.loops.loops
    assert (spec.param, spec.max_count) == ("steps", None)
    rng = np.random.default_rng(6)
    A = rng.uniform(-1, 1, (14, 3)) / np.sqrt(3)
    y = rng.uniform(-1, 1, 14)
    for steps in (12, 19):
        w, eta = np.zeros(3), 0.8
        for _ in range(steps):
            w, eta = w - eta * A.T @ (A @ w - y) / 14, 0.9 * eta
        got = shared.run(A=A, y=y, steps=steps)
        assert np.abs(got["w"] - w).max() <= 1e-14 and abs(float(got["eta"]) - eta) <= 1e-16
        unrolled = tcompile.compile_source(DECAYING_STEP, params={"steps": steps}).n_layers
        assert shared.loops.n_layers(shared.loops.counts({"steps": steps})) == unrolled + 1


def test_a_carried_number_is_saved_and_loaded_with_the_artifact(tmp_path):
    """The encoder writes eta's first value from the block's name (const:number:0.8): a
    saved build loads and runs as built."""
    from tcompile.inspection.naming import constant_name
    shared = tcompile.compile_source(DECAYING_STEP, file="e.tp", loops="shared")
    assert "number:0.8" in {b.const for b in shared.layout.blocks if b.const}
    assert constant_name("const:number:0.8") == "0.8"           # as probes and labels name it
    assert constant_name("const:ones_inv_n") == "ones/n"
    shared.save(tmp_path / "e")
    again = tcompile.load(tmp_path / "e")
    A, y = np.eye(3)[[0, 1, 2, 1]] / 2, np.array([0.5, -0.5, 0.25, 0.1])
    for steps in (12, 20):
        a, b = shared.run(A=A, y=y, steps=steps), again.run(A=A, y=y, steps=steps)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_counter_is_carried_where_no_deeper_and_a_nonlinear_number_is_not():
    """A counter t = t + 1 beside a 1-layer-per-step GD is carried as a runtime value (as
    deep as unrolled; its output is the count, exactly); one beside a step the unrolled build
    runs two per layer stays a number (test_a_loop_carrying_a_changing_constant_stays_
    unrolled); 1 / (1 - c1), Adam's bias correction, needs c1 as a number."""
    from tcompile.compiler.steady_state import _linear_scalars
    assert "c1" not in _linear_scalars(parse_file(PROGRAMS + "adam_least_squares.tp"))
    counter = DECAYING_STEP.replace("eta = 0.9 * eta", "eta = eta + 1").replace(
        "w - eta * A.T", "w - 0.5 * A.T")
    shared = tcompile.compile_source(counter, file="c.tp", loops="shared")
    assert shared.loops.unrolled == ()
    A, y = np.eye(3)[[0, 1, 2, 0]] / 2, np.array([0.5, -0.5, 0.25, 0.1])
    for steps in (12, 31):
        t = 0.8
        for _ in range(steps):
            t += 1
        assert float(shared.run(A=A, y=y, steps=steps)["eta"]) == t
        assert shared.loops.n_layers(shared.loops.counts({"steps": steps})) == \
            tcompile.compile_source(counter, params={"steps": steps}).n_layers


def test_a_growing_scalar_that_only_scales_the_step_does_not_bound_the_count():
    """A warm-up step size eta = eta + 0.1 (eta0 an input) grows every iteration, and
    `eta * A.T @ ...` read textually as a product of two values made its bounds needed: the
    shared build ran at most its built count. A runtime scalar times a value is heads, exact,
    so those bounds reach no fit: the loop runs past the built count, as numpy does."""
    src = ("program warm\ndim d = 3\nparam warm = 5\ninput A : [n, d] assume row_norm <= 1\n"
           "input y : [n] in [-1, 1]\ninput eta0 : [] in [0, 0.1]\noutput w\nw = zeros(d)\n"
           "eta = eta0\nrepeat warm {\n  eta = eta + 0.1\n"
           "  w = w - eta * A.T @ (A @ w - y) / n\n}\n")
    shared = tcompile.compile_source(src, file="w.tp", loops="shared")
    assert [spec.max_count for spec in shared.loops.loops] == [None]
    A, y = np.eye(3)[[0, 1, 2, 0, 1]] / 2, np.array([0.5, -0.5, 0.25, 0.1, 0.3])
    w, eta = np.zeros(3), 0.05
    for _ in range(9):
        eta += 0.1
        w = w - eta * A.T @ (A @ w - y) / 5
    assert np.abs(shared.run(A=A, y=y, eta0=np.array(0.05), warm=9)["w"] - w).max() <= 1e-14


def test_an_inner_loop_is_aligned_by_its_insertions_not_by_the_longest_common_block():
    """difflib pairs the longest common block: with three Newton–Schulz steps between
    damped steps (KLM NN OPQR NNN OPQR NNN ST against one more each) it matched OPQR NNN
    across outer iterations and reported a deletion, so the inner loop of
    newton_logistic_warm stayed unrolled at every refine count. The leftmost match reads one
    N inserted at each of the three places."""
    import difflib
    from tcompile.compiler.fold import _leftmost_inserts, fold_loop
    seqs = [list("KLM" + "N" * (c - 1) + ("OPQR" + "N" * c) * 2 + "ST") for c in (3, 4, 5)]
    ops = difflib.SequenceMatcher(None, seqs[0], seqs[1], autojunk=False).get_opcodes()
    assert any(tag == "delete" for tag, *_ in ops)                  # what difflib saw
    assert _leftmost_inserts(seqs[0], seqs[1]) == [(5, 6), (13, 14), (21, 22)]
    assert _leftmost_inserts(list("abc"), list("axc")) is None      # a change, not an insert
    assert fold_loop("I", 3, seqs) == ["K", "L", "M", Loop("I", ("N",), 1), "O", "P", "Q", "R",
                                        Loop("I", ("N",), 0), "O", "P", "Q", "R",
                                        Loop("I", ("N",), 0), "S", "T"]


def test_newton_logistic_warms_inverse_refinement_runs_as_a_loop(refine=2):
    """With refine >= 2 the inner loop folds: its count is set at run time, and every count
    runs as deep as the unrolled build and within 1e-14 of its outputs' scale. (refine = 1,
    the default, stays unrolled: its one iteration is pipelined into the layers around it.)"""
    from tcompile.inspection.sampling import sample_inputs
    path = str(Path(__file__).parents[1] / PROGRAMS / "newton_logistic_warm.tp")
    shared = builds.build(path, {"refine": refine}, loops="shared")
    inner = next(s for s in shared.loops.loops if s.depth == 1)
    assert (inner.param, inner.count, inner.min_count, inner.layers_per_iteration) == (
        "refine", refine, refine, 1)
    assert not shared.loops.unrolled
    inputs = sample_inputs(parse_file(path), n=16, seed=1)
    for given in ({}, {"refine": refine + 2}, {"steps": 9, "refine": refine + 1}):
        unrolled = tcompile.compile_file(path, params={"refine": refine, **given})
        assert shared.loops.n_layers(shared.loops.counts(given)) == unrolled.n_layers
        want = unrolled.run(**inputs)["x"]
        assert rel(shared.run(**inputs, **given)["x"], want) <= 1e-14


TWO_RATES = """program two_rates
dim d = 3
param steps = 4
input X : [n, d] in [-1, 1]
input r : [n] in [-1, 1]
output a, b
a = r
b = X[:, 1]
repeat steps {
  a = clip(abs(max(a, X[:, 2])), -1, 1)
  b = clip(0.5 * (b + X[:, 0]), -1, 1)
}
"""


def test_a_loop_whose_chains_run_at_two_rates_is_paced_and_folds():
    """a's step takes 2 layers (a max, then abs and clip), b's 1. Scheduled as soon as
    possible, b's iterations all ran in the first half of the layers and a's alone in the
    second: no run of layers repeated per iteration, and the loop stayed unrolled ("its
    iterations do not repeat the same layers"; 14 of 60 such random two-variable loops did).
    Paced (schedule.paced_release: iteration i no earlier than start + 2i), every 2 layers
    hold one step of each: the loop folds into a 2-layer body, runs every count as deep as
    the unrolled build and equals the interpreter, and `until` stops where it does."""
    prog = tcompile.compile_source(TWO_RATES, loops="shared")
    assert not prog.loops.unrolled
    (spec,) = prog.loops.loops
    assert spec.layers_per_iteration == 2 and spec.min_count <= 4
    rng = np.random.default_rng(5)
    ins = dict(X=rng.uniform(-1, 1, (9, 3)), r=rng.uniform(-1, 1, 9))
    for steps in (4, 7, 12):
        unrolled = tcompile.compile_source(TWO_RATES, params={"steps": steps})
        assert prog.loops.n_layers(prog.loops.counts({"steps": steps})) == unrolled.n_layers
        want = interpret_program(parse_source(TWO_RATES), {"steps": steps}, **ins)
        got = prog.run(**ins, steps=steps)
        assert all(np.max(np.abs(got[k] - want[k])) <= 1e-15 for k in want)
        assert all(np.max(np.abs(prog.run(**ins, steps=steps, executor="module")[k] - want[k]))
                   <= 1e-15 for k in want)
    halted = prog.run(**ins, until=("b", 1e-9), max_steps=80)
    b, k = ins["X"][:, 1], 0
    while True:
        nxt = np.clip(0.5 * (b + ins["X"][:, 0]), -1, 1)
        k += 1
        if np.max(np.abs(nxt - b)) < 1e-9:
            break
        b = nxt
    assert int(halted["steps"]) == k


THREE_RATES = """program three_rates
dim d = 3
param steps = 5
input X : [n, d] in [-1, 1]
input r : [n] in [-1, 1]
input s : [] in [-1, 1]
output a, b, c
a = r
b = X[:, 1]
c = 0.5 * r
repeat steps {
  a = clip(0.5 * a + s * s * s, -1, 1)
  b = clip(0.5 * b + (max(b, c) - a), -1, 1)
  c = clip(0.5 * c + (0.5 * a + X[:, 1]), -1, 1)
}
"""


def test_a_paced_loop_whose_rows_alternate_folds_as_a_kernel_of_two():
    """a runs ahead of b (1 layer a step against 2) and its values piled up: the width grew
    with the count (10, 11, ... 15 rows at 2 ... 7 steps) and the loop stayed unrolled.
    Paced, the width is constant (11 rows at every count, where the unrolled build's grows:
    13, 17, 28 at 5, 9, 20 steps) and the rows alternate between iterations; a kernel of 2
    iterations of the plain walk folds it. It runs every count as deep as the unrolled build
    and equals the interpreter; structured equals module."""
    prog = tcompile.compile_source(THREE_RATES, loops="shared")
    assert not prog.loops.unrolled
    (spec,) = prog.loops.loops
    assert spec.every == 2
    assert prog.layout.width == 11      # the unrolled build: 13, 17, 28 rows at 5, 9, 20 steps
    rng = np.random.default_rng(2)
    ins = dict(X=rng.uniform(-1, 1, (7, 3)), r=rng.uniform(-1, 1, 7), s=np.array(0.7))
    for steps in (5, 8, 13):
        unrolled = tcompile.compile_source(THREE_RATES, params={"steps": steps})
        assert prog.loops.n_layers(prog.loops.counts({"steps": steps})) == unrolled.n_layers
        want = interpret_program(parse_source(THREE_RATES), {"steps": steps}, **ins)
        for executor in ("structured", "module"):
            got = prog.run(**ins, steps=steps, executor=executor)
            assert all(np.max(np.abs(got[k] - want[k])) <= 1e-15 for k in want)


ORTHOGONAL_ITERATION = """program orthogonal_iteration
dim d = 3
param steps = 6
input A : [n, d] assume row_norm <= 1
input q0 : [d] assume norm <= 1
input q1 : [d] assume norm <= 1
output u, v
C = A.T @ A / n + 0.1 * I
u = q0
v = q1
repeat steps {
  u = C @ u
  u = u / sqrt(u @ u) on [0.001, 2]
  v = C @ v
  v = v - (u @ v) * u
  v = v / sqrt(v @ v) on [0.0001, 2]
}
"""


def test_a_chain_that_feeds_a_slower_one_keeps_its_lead_when_paced():
    """Orthogonal iteration for two eigenvectors: u's step (a product, a normalisation) is
    shorter than v's, which is orthogonalised against the new u. Scheduled as soon as
    possible u's chain ran ahead, its values piling up (the unrolled width grows with the
    count); paced with every value of iteration i released at start + i·II, the latest first
    step of iteration 0 (a Newton step of u's normalisation) held u back until v waited for
    it: 31 layers at 2 steps against 20, and the loop stayed unrolled ('rows alternate').
    Paced with each value at its own offset in iteration 0, it folds: 7 layers an iteration
    as unrolled, one layer more in all, the width constant; every count and `until` agree
    with the interpreter to the fits' accuracy."""
    prog = tcompile.compile_source(ORTHOGONAL_ITERATION, loops="shared")
    assert not prog.loops.unrolled
    (spec,) = prog.loops.loops
    assert (spec.every, spec.layers_per_iteration, spec.min_count) == (1, 7, 2)
    from tcompile.inspection.sampling import sample_inputs
    program = parse_source(ORTHOGONAL_ITERATION)
    ins = sample_inputs(program, n=12, batch=4, seed=3)
    for steps in (2, 9):
        unrolled = tcompile.compile_source(ORTHOGONAL_ITERATION, params={"steps": steps})
        assert prog.loops.n_layers(prog.loops.counts({"steps": steps})) == unrolled.n_layers + 1
        assert prog.layout.width < unrolled.layout.width
        want = interpret_program(program, {"steps": steps}, **ins)
        got = prog.run(**ins, steps=steps)
        assert all(rel(got[k], want[k]) <= 1e-8 for k in want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        halted = prog.run(**ins, until=("u", 1e-6), max_steps=40)
    for i, steps in enumerate(np.asarray(halted["steps"]).tolist()):
        one = {k: a[i] for k, a in ins.items()}
        want = interpret_program(program, {"steps": steps}, **one)
        assert rel(halted["u"][i], want["u"]) <= 1e-8


NESTED_TWO_RATES = """program nested_two_rates
dim d = 3
param steps = 4
param inner = 3
input X : [n, d] in [-1, 1]
input r : [n] in [-1, 1]
output a, b, c
a = r
b = X[:, 1]
c = 0.5 * r
repeat steps {
  repeat inner {
    a = clip(abs(max(a, X[:, 2])), -1, 1)
    b = clip(0.5 * (b + X[:, 0]), -1, 1)
  }
  c = clip(0.5 * c + a - b, -1, 1)
}
"""


def test_a_nested_loop_is_paced_per_instance_and_both_loops_fold():
    """The two rates inside an inner loop: each instance (one per outer iteration) is paced
    from where its slower chain can start (the next instance's b is free long before its a),
    so the inner loop folds, and then the outer; before, the inner loop stayed unrolled.
    Both counts are set at run time, every count as deep as the unrolled build, equal to the
    interpreter."""
    prog = tcompile.compile_source(NESTED_TWO_RATES, loops="shared")
    assert not prog.loops.unrolled and set(prog.loops.params) == {"steps", "inner"}
    rng = np.random.default_rng(1)
    ins = dict(X=rng.uniform(-1, 1, (7, 3)), r=rng.uniform(-1, 1, 7))
    for given in ({}, {"inner": 5}, {"steps": 7, "inner": 4}):
        unrolled = tcompile.compile_source(NESTED_TWO_RATES, params=given)
        assert prog.loops.n_layers(prog.loops.counts(given)) == unrolled.n_layers
        want = interpret_program(parse_source(NESTED_TWO_RATES), given, **ins)
        got = prog.run(**ins, **given)
        assert all(np.max(np.abs(got[k] - want[k])) <= 1e-15 for k in want)


SLOW_FILL = """program slow_fill
dim d = 3
param steps = 5
input X : [n, d] in [-1, 1]
input r : [n] in [-1, 1]
input u : [d] in [-1, 1]
input s : [] in [-1, 1]
output a, b, c
a = r
b = X[:, 1]
c = 0.5 * r
repeat steps {
  a = clip(0.5 * a + (((X @ u) - X[:, 0]) * s), -1, 1)
  b = clip(0.5 * b + r, -1, 1)
  c = clip(0.5 * c + max(X[:, 1], (b * X[:, 0])), -1, 1)
}
"""


def test_a_loop_too_short_for_its_paced_pipeline_says_which_count_folds_it():
    """Paced, this loop folds as a kernel of 2 only from 6 iterations (its pipeline fills
    over them); at the built 5 it stays unrolled, and the card said only that one more
    iteration changes layers. It now says the count that folds it, and built with that count
    it runs as a loop."""
    short = tcompile.compile_source(SLOW_FILL, loops="shared")
    ((line, count, why),) = short.loops.unrolled
    assert (line, count) == (12, 5)
    assert why == ("it runs 5 times, and the layers around its body hold 6 pipelined "
                   "iterations; built with steps = 6 or more it may run as a loop")
    folded = tcompile.compile_source(SLOW_FILL, loops="shared", params={"steps": 6})
    (spec,) = folded.loops.loops
    assert not folded.loops.unrolled and (spec.min_count, spec.every) == (6, 2)
