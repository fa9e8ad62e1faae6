"""Division and roots of runtime scalars to float64 precision (issue 11 §1), against numpy.

A scalar's 1/a, √a and 1/√a are a PL seed with geometric knots (relative error, neurons
∝ log(hi/lo)) refined by Newton–Raphson in attention heads (refine.py); relative tolerances
(`tol rel`) fit c·x^p elementwise with the same knots. The compiled models are run as the
paper-form module (encode → module → decode) and judged against numpy / numpy.linalg.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import builds
import tcompile
from tcompile.compiler import refine
from tcompile.compiler.approx import power_relative

EPS = np.finfo(float).eps


def run_module(prog, batched=False, **inputs):
    """The paper's equations: encode, the nn.Module, decode (batch axis kept if `batched`)."""
    with torch.no_grad():
        out = prog.decode(prog.module(prog.encode(**inputs)))
    return out if batched else {k: v[0] for k, v in out.items()}


# ---- the seed: geometric knots, relative error ------------------------------------------------

@pytest.mark.parametrize("p", [-1.0, -0.5, 0.5])
def test_geometric_seed_meets_its_relative_error_with_log_many_knots(p):
    fit = power_relative("f", p, 1e-9, 1.0, 1e-3)
    x = np.geomspace(1e-9, 1.0, 400_001)
    assert np.max(np.abs(fit(x) - x ** p) / x ** p) <= 1e-3
    wide = power_relative("f", p, 1e-18, 1.0, 1e-3)
    # twice the decades, at most twice the intervals: log(hi/lo), not 1/lo
    assert wide.neurons - 2 <= 2 * (fit.neurons - 2) + 1
    assert power_relative("f", -1.0, 1e-9, 1.0, 0.5).neurons == 12


def test_newton_error_recursions_bound_the_iterations():
    """refine.next_error against the iterations themselves, run in numpy."""
    a = np.geomspace(1e-6, 1e6, 101)
    for e0 in (-0.5, -0.1, 0.03, 0.3, 0.5):
        r = (1 + e0) / a
        r1 = 2 * r - a * r * r
        assert np.all(np.abs(a * r1 - 1) <= refine.next_error("reciprocal", abs(e0)) * (1 + 1e-12))
        r, w = (1 + e0) / np.sqrt(a), (1 + e0) * np.sqrt(a)        # w = a r
        r1, w1 = (3 * r - w * r * r) / 2, (3 * w - w * w * r) / 2
        bound = refine.next_error("rsqrt", abs(e0)) * (1 + 1e-12)
        assert np.all(np.abs(r1 * np.sqrt(a) - 1) <= bound)
        assert np.all(np.abs(w1 / np.sqrt(a) - 1) <= bound)
    assert refine.steps_for("reciprocal", 0.1, 1e-16)[0] == 4        # 0.1^16 = 1e-16
    assert refine.steps_for("reciprocal", 0.5, 1e-18)[0] == 6        # floored at rounding: 0.5^64


def test_the_choice_between_a_direct_fit_and_a_refinement_is_by_cost():
    lo, hi = 2 * np.sqrt(0.1), 2 * np.sqrt(0.1) + 5          # newton_logistic's 1/(2√μ + λ)
    direct = refine.direct_neurons("reciprocal", lo, hi, 1e-6, False)
    ref, why = refine.choose("reciprocal", lo, hi, 1e-6, False, direct)
    assert ref is None and why.startswith(f"direct fit: {direct} neurons")
    assert refine.direct_neurons("reciprocal", 1e-12, 1.0, 1e-6, False) is None
    ref, why = refine.choose("reciprocal", 1e-12, 1.0, 1e-6, False, None)
    assert ref is not None and ref.rel_error <= 2 * EPS and "no direct fit" in why
    assert ref.seed.neurons + refine.NEURONS_PER_LAYER * ref.layers == int(why.split("cost ")[1].split()[0])


# ---- compiled scalars ---------------------------------------------------------------------------

SCALARS = """program scalars
input c : [] in [1e-30, 1e6]
input v : [3]
output r, s, q
r = reciprocal(c)
s = sqrt(c) tol rel 1e-16
q = v / sqrt(c)
"""


def test_scalar_reciprocal_sqrt_rsqrt_reach_float64_precision():
    prog = tcompile.compile_source(SCALARS)
    v = np.array([1.0, -2.0, 3.0])
    c = np.geomspace(1e-30, 1e6, 37)
    out = run_module(prog, batched=True, c=c, v=v)
    assert np.max(np.abs(out["r"].ravel() * c - 1)) <= 4 * EPS
    assert np.max(np.abs(out["s"].ravel() / np.sqrt(c) - 1)) <= 4 * EPS
    # q is written over v's dead row, by a head that subtracts v beside it: ulp(v) in q
    err = np.abs(out["q"].reshape(-1, 3) * np.sqrt(c)[:, None] / v - 1)
    assert np.all(err <= 4 * EPS * (1 + np.sqrt(c))[:, None])
    rep = prog.report
    # seeds in layer 0's MLP; rsqrt: w0 = c r0, then 3 steps (√c is its w, 1/√c its r: one
    # chain); reciprocal: 3 steps; q = v r in the last layer
    assert rep["layers"] == 6
    names = [a["name"] for a in rep["approximations"]]
    assert names == ["reciprocal(c) (relative error; seed + 3 Newton steps)",
                     "sqrt(c) (relative error; seed + 3 Newton steps)"]
    assert all(a["max_error"] <= 2 * EPS for a in rep["approximations"])
    assert all(a["choice"].startswith("refined: seed ") and "no direct fit meets the budget"
               in a["choice"] for a in rep["approximations"])


def test_the_choice_is_in_the_saved_manifest(tmp_path):
    """newton_logistic's step size: a direct fit (no layer on the damped step's path), and why."""
    src = """program eta
input t : [] in [0, 25]
output eta
eta = 1 / (2 + sqrt(t))
"""
    prog = tcompile.compile_source(src)
    prog.save(tmp_path / "eta")
    (rec,) = tcompile.load(tmp_path / "eta").report["approximations"]
    assert rec["choice"].startswith("direct fit: its argument is itself an elementwise function")
    assert "cheaper than seed + " in rec["choice"]
    t = np.linspace(0, 25, 101)
    eta = np.array([run_module(prog, t=np.array(x))["eta"] for x in t]).ravel()
    assert np.max(np.abs(eta - 1 / (2 + np.sqrt(t)))) <= rec["tol"]


def test_the_model_card_says_how_each_division_was_chosen():
    card = tcompile.report_text(tcompile.compile_source(SCALARS))
    assert "chosen: refined: seed " in card
    assert "(bound implied by the seed's measured error)" in card
    eta = tcompile.report_text(tcompile.compile_source(
        "program eta\ninput t : [] in [0, 25]\noutput eta\neta = 1 / (2 + sqrt(t))\n"))
    assert "chosen: direct fit: " in eta and "(measured on the domain)" in eta


def test_a_refined_value_is_cleared_exactly_before_its_rows_are_reused():
    """alpha = rr / pSp lands in rows that held 1/pSp (~1e4 here): subtracting that beside the
    new value left ulp(1e4) in alpha (5e-14 relative); an MLP clears it first now."""
    src = """program alpha
dim d = 3
input S : [d, d] symmetric
input p : [d]
input rr : []
output alpha
alpha = rr * reciprocal(p @ S @ p) on [1e-120, 1e6]
"""
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(0)
    for scale in (1e-2, 1e-4, 1e-40):
        M = rng.standard_normal((3, 3))
        S, p = M @ M.T, rng.standard_normal(3) * scale
        alpha = run_module(prog, S=S, p=p, rr=np.array(0.37))["alpha"]
        assert abs(alpha / (0.37 / (p @ S @ p)) - 1) <= 8 * EPS


# ---- relative tolerances, elementwise -------------------------------------------------------------

def test_tol_rel_fits_vectors_with_geometric_knots():
    src = """program rel
input u : [n] in [1e-9, 1]
input v : [4] in [0.001, 100]
output a, b
a = reciprocal(u) tol rel 1e-6
b = 2 * sqrt(v) tol rel 1e-6
"""
    prog = tcompile.compile_source(src)
    u, v = np.geomspace(1e-9, 1, 64), np.array([1e-3, 0.37, 5.0, 100.0])
    out = run_module(prog, u=u, v=v)
    assert np.max(np.abs(out["a"] * u - 1)) <= 1e-6
    assert np.max(np.abs(out["b"] / (2 * np.sqrt(v)) - 1)) <= 1e-6
    per_entry = {a["name"]: a["neurons_per_entry"] for a in prog.report["approximations"]}
    assert per_entry == {"reciprocal(u) (relative)": 7337, "2*sqrt(v) (relative)": 1443}


# ---- the programs -------------------------------------------------------------------------------

def ill_conditioned(rng, d, n, kappa):
    """A with singular values geometric from 1 to 1/kappa, rows scaled to norm <= 1; y in [-1, 1]."""
    U, _ = np.linalg.qr(rng.standard_normal((n, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = U @ np.diag(np.geomspace(1, 1 / kappa, d)) @ V.T
    A /= np.linalg.norm(A, axis=1).max()
    y = rng.standard_normal(n)
    return A, y / np.abs(y).max()


def exact_normal_solution(A, y):
    """(AᵀA)⁻¹Aᵀy of the float64 data in exact rational arithmetic, rounded once: the oracle
    numpy.linalg.solve(AᵀA, Aᵀy) itself is up to ~1e-10 from it at cond(A) = 1e3 (it rounds
    AᵀA, whose condition number is 1e6)."""
    rows = [[Fraction(v) for v in r] for r in A.tolist()]
    rhs = [Fraction(v) for v in y.tolist()]
    d = len(rows[0])
    M = [[sum((r[i] * r[j] for r in rows), Fraction(0)) for j in range(d)]
         + [sum((r[i] * b for r, b in zip(rows, rhs)), Fraction(0))] for i in range(d)]
    for k in range(d):
        for i in range(k + 1, d):
            f = M[i][k] / M[k][k]
            M[i] = [a - f * b for a, b in zip(M[i], M[k])]
    w = [Fraction(0)] * d
    for k in reversed(range(d)):
        w[k] = (M[k][d] - sum((M[k][j] * w[j] for j in range(k + 1, d)), Fraction(0))) / M[k][k]
    return np.array([float(v) for v in w])


def plain_cg(A, y, steps):
    """Textbook CG on AᵀA w = Aᵀy in float64 (no reorthogonalisation)."""
    S, b = A.T @ A, A.T @ y
    w, r = np.zeros_like(b), b.copy()
    p, rr = r.copy(), r @ r
    for _ in range(steps):
        Sp = S @ p
        alpha = rr / (p @ Sp)
        w, r = w + alpha * p, r - alpha * Sp
        p, rr = r + (r @ r) / rr * p, r @ r
    return w


def rel(w, ref):
    return np.linalg.norm(w - ref) / np.linalg.norm(ref)


@pytest.fixture(scope="module")
def cg():
    return builds.build("conjugate_gradient")


def test_conjugate_gradient_meets_issue_11(cg):
    """Issue 11: d = 8, cond(A) up to 1e3, at most d + 2 iterations, ≤ 1e-10 relative to
    numpy.linalg.solve(AᵀA, Aᵀy), no MLP wider than 1,000 units. The program is CGLS with
    reorthogonalised residuals (its header says why); it takes d iterations."""
    rep = cg.report
    assert cg.info.float_params()["steps"] == 8                    # d iterations (≤ d + 2)
    assert (rep["layers"], rep["width"], rep["mlp_hidden_max"]) == (103, 90, 732)
    assert rep["mlp_hidden_max"] <= 1000
    rng = np.random.default_rng(11)
    kappas = [10.0, 1e2, 1e3]
    problems = [ill_conditioned(rng, 8, 64, kappa) for kappa in kappas for _ in range(4)]
    A, y = (np.stack(x) for x in zip(*problems))
    to_exact = np.repeat([1e-13, 1e-12, 1e-11], 4)     # the exact solution, per cond(A)
    # the paper-form module, and the structured executor (PL seeds as tables)
    for w in (run_module(cg, batched=True, A=A, y=y)["w"], cg.run(A=A, y=y)["w"]):
        for Ai, yi, wi, bound in zip(A, y, w, to_exact):
            assert rel(wi, np.linalg.solve(Ai.T @ Ai, Ai.T @ yi)) <= 1e-10
            assert rel(wi, exact_normal_solution(Ai, yi)) <= bound
    # why the reorthogonalisation: textbook float64 CG after d + 2 steps is far off at
    # cond(A) = 1e3 (cond(AᵀA) = 1e6), the program's own arithmetic (the interpreter) is not
    A, y = A[-4:], y[-4:]
    w_prog = tcompile.interpret("programs/conjugate_gradient.tp", A=A, y=y)["w"]
    for Ai, yi, wi in zip(A, y, w_prog):
        w_star = exact_normal_solution(Ai, yi)
        assert rel(plain_cg(Ai, yi, 8 + 2), w_star) >= 1e-6
        assert rel(wi, w_star) <= 1e-11


def test_conjugate_gradient_survives_early_convergence(cg):
    """Where CG converges before d steps (cond(A) = 1, clustered singular values, y in two
    singular directions) the later steps divide rounding noise by rounding noise; the model
    must stay finite and on the solution (it needs the exact row clears of compiler/rows.py:
    with ulp(om) left in reused rows these inputs gave NaN)."""
    rng = np.random.default_rng(5)
    n, d = 64, 8
    U, _ = np.linalg.qr(rng.standard_normal((n, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cases = []
    for sv in (np.ones(d), np.r_[np.ones(4), 0.5 * np.ones(4)], np.geomspace(1, 1e-2, d)):
        A = U @ np.diag(sv) @ V.T
        A /= np.linalg.norm(A, axis=1).max()
        y = rng.uniform(-1, 1, n) if sv[-1] != 1e-2 else U[:, :2] @ np.array([0.5, -0.3])
        cases.append((A, y / max(1.0, np.abs(y).max())))
    A, y = (np.stack(x) for x in zip(*cases))
    # the noise steps divide rounding noise by rounding noise, exact zeros among them (the
    # module sees some: below the seeds' lo; the program's header: they clamp harmlessly), so
    # run's domain guard is told to let them pass
    assert any(r["outside"] for r in tcompile.check_domains(cg, A=A, y=y))
    w = cg.run(A=A, y=y, domains="off")["w"]     # the structured executor (= the module)
    for Ai, yi, wi in zip(A, y, w):
        assert np.all(np.isfinite(wi))
        assert rel(wi, np.linalg.lstsq(Ai, yi, rcond=None)[0]) <= 1e-12


def test_power_iteration_matches_numpy_eigh():
    prog = builds.build("power_iteration")
    rep = prog.report
    assert (rep["layers"], rep["width"], rep["mlp_hidden_max"]) == (283, 21, 290)
    rng = np.random.default_rng(3)
    d, n = 6, 30
    for _ in range(3):
        U, _ = np.linalg.qr(rng.standard_normal((n, d)))
        V, _ = np.linalg.qr(rng.standard_normal((d, d)))
        lam = np.array([1.0, 0.5, 0.3, 0.2, 0.1, 0.05]) * rng.uniform(0.2, 1)   # λ1/λ2 = 2
        A = U @ np.diag(np.sqrt(lam * n)) @ V.T
        A /= max(1.0, np.linalg.norm(A, axis=1).max())
        vals, vecs = np.linalg.eigh(A.T @ A / n)
        u0 = rng.standard_normal(d)
        out = run_module(prog, A=A, u0=u0 / np.linalg.norm(u0))
        u = out["u"] * np.sign(out["u"] @ vecs[:, -1])
        assert np.linalg.norm(u - vecs[:, -1]) <= 1e-10
        assert abs(out["lam"] / vals[-1] - 1) <= 1e-13


def approx_error_text(src: str, file: str) -> str:
    """The ApproxError a build of `src` raises, as the user reads it."""
    from tcompile.errors import ApproxError
    with pytest.raises(ApproxError) as err:
        tcompile.compile_source(src, file=file)
    return str(err.value)


def test_a_fit_that_cannot_meet_its_budget_names_the_statement():
    src = "program t\ninput z : [n]\noutput q\nq = sigmoid(z) on [-1000, 1000] tol 1e-17\n"
    text = approx_error_text(src, "t.tp")
    assert "t.tp:4:5" in text and "below the float64 rounding" in text
    # what to write: a budget above the rounding of values up to 1 (2 x 16 eps), or a
    # narrower range where the values are large for a wide one
    assert "expected: a budget above their rounding (tol 7e-15 or more" in text
    assert "a narrower range for z" in text


WEISZFELD = """program weiszfeld
dim d = 2
param steps = 3
input X : [n, d] assume in [-1, 1]
output z
z = sum(X) / n
repeat steps {
  D = X - z
  r = sqrt((D * D) @ ones(d) + 1e-6)
  w = 1 / (r) on [1e-3, 3]
  z = (X.T @ w / n) / (sum(w) / n) on [0.05, 1000]
}
"""


def test_a_square_of_a_value_a_loop_widened_names_the_value_to_bound():
    """A user's geometric median: z's interval bounds grow to [-20000, 20000] over the
    iterations, so D * D reaches 4e8, whose rounding is above the default budget. The error
    said only that; it now names D and says why its range may be that wide."""
    text = approx_error_text(WEISZFELD, "wz.tp")
    assert "wz.tp:9:13" in text and "values up to 4e+08" in text
    assert "a narrower range for D (bound it where it is assigned" in text
    assert "their bounds grow with the iterations unless declared" in text


def test_the_tutorials_plain_cg_builds_as_it_says():
    """docs/tutorial.md Part 3 quotes this program's build and its error on one problem."""
    prog = tcompile.compile_file("docs/tutorial_programs/cg_plain.tp")
    rep = prog.report
    assert (rep["layers"], rep["width"], rep["mlp_hidden_max"]) == (142, 32, 642)
    A, y = ill_conditioned(np.random.default_rng(0), 8, 30, 1e3)   # the tutorial's problem
    w_star = np.linalg.solve(A.T @ A, A.T @ y)
    assert rel(tcompile.interpret("docs/tutorial_programs/cg_plain.tp", None, A=A, y=y)["w"],
               w_star) <= 2e-11
    assert rel(prog.run(A=A, y=y)["w"], w_star) <= 1e-10


@pytest.mark.parametrize("divide, fix", [
    ("P / c", "diag(1 / c on [0.2, 1]) @ P"),          # row i by c_i: EM's weighted means
])
def test_a_small_matrix_divided_by_a_vector_says_how_diag_divides_it(divide, fix):
    """`[3, 2] / [3]` (EM's means over each cluster's weight) has no broadcast (numpy aligns
    [3] with the last axis); the error names the diag that divides rows, and that program
    follows the interpreter. (`[3, 2] / [2]` is numpy's broadcast: next test.)"""
    from tcompile.errors import ProgramError
    from tcompile.language.parser import parse_source
    src = ("program p\ninput P : [3, 2] in [-1, 1]\ninput c : [3] in [0.2, 1]\n"
           "input e : [2] in [0.2, 1]\noutput M\nM = {}\n")
    with pytest.raises(ProgramError) as err:
        tcompile.compile_source(src.format(divide))
    assert ("diag(1 / b) @ a" if "c" in divide else "a @ diag(1 / b)") in err.value.expected
    assert "(with 1 / b on [lo, hi])" in err.value.expected
    prog = tcompile.compile_source(src.format(fix))
    rng = np.random.default_rng(3)
    ins = dict(P=rng.uniform(-1, 1, (3, 2)), c=rng.uniform(0.2, 1, 3), e=rng.uniform(0.2, 1, 2))
    want = ins["P"] / ins["c"][:, None] if "c" in divide else ins["P"] / ins["e"]
    assert np.allclose(tcompile.interpret_program(parse_source(src.format(fix)), None, **ins)["M"],
                       want, rtol=0, atol=1e-15)
    assert np.max(np.abs(prog.run(**ins)["M"] - want)) <= 1e-5


@pytest.mark.parametrize("stmt, ref", [
    ("M = P / e", lambda P, e, q: P / e),            # column j by e_j, as numpy broadcasts
    ("M = P * e", lambda P, e, q: P * e),            # P @ diag(e): a head, exact
    ("M = q - P", lambda P, e, q: q - P),            # q subtracted from every row: 1 qᵀ, a head
    ("M = max(P, q)", lambda P, e, q: np.maximum(P, q)),
    ("M = q / (P + 2)", lambda P, e, q: q / (P + 2)),   # the vector over the rows: q * (1 / M)
])
def test_a_vector_along_a_small_matrixs_last_axis_broadcasts_as_numpy(stmt, ref):
    """A user's distances to inducing points, `(xq - C) * (xq - C)` with xq : [2] and
    C : [4, 2], were refused ("shapes [2] and [4, 2] do not match"), though numpy (and the
    interpreter) broadcast the vector over the rows, as for token data [n, k]. Now they
    broadcast here too: the vector becomes 1 vᵀ (a head) for + - max min, and a product or
    quotient by it is P @ diag(v) (exact heads; a quotient's reciprocal is fitted)."""
    from tcompile.language.parser import parse_source
    src = ("program p\ninput P : [3, 2] in [-1, 1]\ninput e : [2] in [0.2, 1]\n"
           "input q : [2] in [-1, 1]\noutput M\n" + stmt + "\n")
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(5)
    for _ in range(3):
        ins = dict(P=rng.uniform(-1, 1, (3, 2)), e=rng.uniform(0.2, 1, 2), q=rng.uniform(-1, 1, 2))
        want = ref(**ins)
        got = tcompile.interpret_program(parse_source(src), None, **ins)["M"]
        assert np.max(np.abs(got - want)) <= 1e-15
        tol = 1e-5 if "/" in stmt else 1e-15
        assert np.max(np.abs(prog.run(**ins)["M"] - want)) <= tol


@pytest.mark.parametrize("stmt, ref", [
    ("a = A * f", lambda A, f, g: A * f),
    ("a = A * g", lambda A, f, g: A * g),
    ("a = g * A", lambda A, f, g: g * A),
    ("a = M * g", lambda A, f, g: A[:2] * g),
])
def test_token_data_times_a_sign_or_flag_vector_scales_its_columns(stmt, ref):
    """`A * g` with g : [3] sign and A : [n, 3] was built as an MLP gate of A's own shape and
    came out silently wrong (every token's row gated by the first tokens' values: relative
    error 1.96); a sign or flag vector across the rows is a head, A @ diag(g), exact."""
    from tcompile.language.parser import parse_source
    src = ("program p\ninput f : [3] flag\ninput g : [3] sign\ninput A : [n, 3] in [-1, 1]\n"
           "input M : [2, 3] in [-1, 1]\noutput a\n" + stmt + "\n")
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(11)
    A = rng.uniform(-1, 1, (7, 3))
    ins = dict(A=A, M=A[:2], f=np.array([1.0, 0.0, 1.0]), g=np.array([1.0, -1.0, 1.0]))
    want = ref(A, ins["f"], ins["g"])
    assert np.max(np.abs(tcompile.interpret_program(parse_source(src), None, **ins)["a"] - want)) == 0
    assert np.max(np.abs(prog.run(**ins)["a"] - want)) <= 1e-15
