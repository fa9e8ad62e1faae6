"""MLP pieces end to end: tiny programs whose only work is one elementwise expression, compiled,
run, and compared with the exact numpy function on a dense set of token values.

Covers: every approximated scalar function within its tolerance (and the report agreeing),
the exact cases (sign / flag gating, affine maps, `/ n`, relu/abs/clip on all of R), gated pieces and
how many fits they cost, products of two bounded reals, out-of-domain detection and clamping,
the error for a call without a knowable domain, and how tolerances reach the fits.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit

import tcompile
from tcompile.errors import DomainError

from references import REFERENCE  # numpy/scipy, not tcompile's own table

N_POINTS = 2000          # tokens per check: a dense grid over the domain, endpoints included
EXACT_ATOL = 1e-12


def compile_body(body: str, inputs: str, tol: float | None = None, output: str = "s"):
    """A tiny program: `inputs` declarations, one output, `body` statements."""
    source = f"program t\n{inputs}\noutput {output}\n{body}\n"
    return tcompile.compile_source(source, file="t.tp", tol=tol)


def grid(lo: float, hi: float, n: int = N_POINTS) -> np.ndarray:
    u = np.linspace(lo, hi, n)
    assert u[0] == lo and u[-1] == hi
    return u


def approximations(prog) -> list[dict]:
    return prog.report["approximations"]


# ---- scalar functions ----------------------------------------------------------------------

SCALAR_CASES = [
    ("sigmoid", -6.0, 6.0),
    ("sqrt", 0.0, 4.0),           # infinite slope at 0: the steep end must still be within tol
    ("reciprocal", 0.5, 4.0),
    ("exp", -3.0, 2.0),
    ("log", 0.2, 5.0),
    ("softplus", -5.0, 5.0),
    ("tanh", -3.0, 3.0),
    ("sin", -4.0, 4.0),
    ("cos", -2.0, 5.0),
]


@pytest.mark.parametrize("suffix, tol", [("", 1e-6), (" tol 1e-4", 1e-4)],
                         ids=["default_tol", "tol_1e-4"])
@pytest.mark.parametrize("func, lo, hi", SCALAR_CASES, ids=[c[0] for c in SCALAR_CASES])
def test_scalar_function_within_tol(func, lo, hi, suffix, tol):
    prog = compile_body(f"s = {func}(u){suffix}", f"input u : [n] in [{lo:g}, {hi:g}]")
    assert prog.n_layers == 1
    u = grid(lo, hi)
    # the steep end of sqrt / reciprocal / log / exp gets extra points
    u = np.concatenate([u, lo + (hi - lo) * np.geomspace(1e-9, 1e-2, 200)])
    got = prog.run(u=u)["s"]
    want = REFERENCE[func](u)
    assert got.shape == u.shape
    err = float(np.max(np.abs(got - want)))
    assert err <= tol, f"{func}: max error {err:.3e} > tol {tol:g}"

    (entry,) = approximations(prog)
    assert entry["name"] == f"{func}(u)"
    assert (entry["lo"], entry["hi"]) == (lo, hi)
    assert entry["tol"] == tol
    assert not entry["exact"]
    assert entry["entries"] == 1
    # the report measures on a denser grid than ours: it cannot claim less than we observe
    assert err <= entry["max_error"] * (1 + 1e-6) + 1e-15
    assert not any(c["outside"] for c in tcompile.check_domains(prog, u=u))


def test_scalar_function_batched_tokens():
    """A leading batch axis runs the same piece on every problem."""
    prog = compile_body("s = softplus(u)", "input u : [n] in [-5, 5]")
    u = np.stack([grid(-5, 5, 300), grid(5, -5, 300)])
    got = prog.run(u=u)["s"]
    assert got.shape == (2, 300)
    assert np.max(np.abs(got - REFERENCE["softplus"](u))) <= 1e-6


# ---- exact cases ---------------------------------------------------------------------------

RNG = np.random.default_rng(20240601)
U_EXACT = grid(-3.0, 3.0)
Y_SIGN = RNG.choice([-1.0, 1.0], size=N_POINTS)
F_FLAG = RNG.choice([0.0, 1.0], size=N_POINTS)
EXACT_INPUTS = "input u : [n] in [-3, 3]\ninput y : [n] sign\ninput f : [n] flag"

EXACT_OK = [
    ("y * u", lambda: Y_SIGN * U_EXACT),
    ("f * u", lambda: F_FLAG * U_EXACT),
    ("u * y", lambda: Y_SIGN * U_EXACT),
    ("3*u - 1", lambda: 3 * U_EXACT - 1),
    ("u / n", lambda: U_EXACT / N_POINTS),
]


@pytest.mark.parametrize("expr, ref", EXACT_OK, ids=[c[0] for c in EXACT_OK])
def test_exact_expressions_are_exact(expr, ref):
    prog = compile_body(f"s = {expr}", EXACT_INPUTS)
    got = prog.run(u=U_EXACT, y=Y_SIGN, f=F_FLAG)["s"]
    assert np.max(np.abs(got - ref())) <= EXACT_ATOL
    for entry in approximations(prog):
        assert entry["exact"] and entry["max_error"] <= EXACT_ATOL, entry


@pytest.mark.parametrize("expr, ref", [("3*u - 1", lambda u: 3 * u - 1),
                                       ("u / n", lambda u: u / len(u))])
def test_affine_and_scaling_need_no_mlp(expr, ref):
    prog = compile_body(f"s = {expr}", "input u : [n]")     # no bounds needed either
    assert approximations(prog) == []
    assert prog.report["mlp_hidden_max"] == 0
    u = np.linspace(-1e3, 1e3, 777)
    assert np.max(np.abs(prog.run(u=u)["s"] - ref(u))) <= 1e-12 * 3e3


def test_sign_gate_costs_few_units():
    """y * u on a bounded u: two exact linear branches, a handful of ReLUs (paper: 4)."""
    prog = compile_body("s = y * u", EXACT_INPUTS)
    assert prog.report["mlp_hidden_max"] <= 8


PL_EXACT = [
    ("relu(u)", lambda u: np.maximum(u, 0.0)),
    ("abs(u)", np.abs),
    ("clip(u, -1, 2)", lambda u: np.clip(u, -1.0, 2.0)),
]


@pytest.mark.parametrize("expr, ref", PL_EXACT, ids=[c[0] for c in PL_EXACT])
def test_piecewise_linear_functions_are_exact(expr, ref):
    prog = compile_body(f"s = {expr}", "input u : [n] in [-3, 3]")
    got = prog.run(u=U_EXACT)["s"]
    assert np.max(np.abs(got - ref(U_EXACT))) <= EXACT_ATOL
    entries = approximations(prog)
    assert entries
    for entry in entries:
        assert entry["exact"] and entry["max_error"] <= EXACT_ATOL, entry
    assert prog.report["mlp_hidden_max"] <= 6


@pytest.mark.parametrize("expr, ref", PL_EXACT, ids=[c[0] for c in PL_EXACT])
def test_piecewise_linear_functions_need_no_domain(expr, ref):
    """Their ReLU forms are exact on all of R: no bounds needed, no clamping far out."""
    prog = compile_body(f"s = {expr}", "input u : [n]")
    u = np.linspace(-1e3, 1e3, 2001)
    assert np.max(np.abs(prog.run(u=u)["s"] - ref(u))) <= 1e-9
    assert not any(c["outside"] for c in tcompile.check_domains(prog, u=u))


# ---- gated pieces --------------------------------------------------------------------------

Z = grid(-3.0, 3.0)
Y = RNG.choice([-1.0, 1.0], size=N_POINTS)
GATED_INPUTS = "input y : [n] sign\ninput z : [n] in [-3, 3]"


def test_sigmoid_of_signed_margin():
    prog = compile_body("s = sigmoid(-y * z)", GATED_INPUTS)
    for y in (Y, np.ones_like(Z), -np.ones_like(Z)):
        got = prog.run(y=y, z=Z)["s"]
        assert np.max(np.abs(got - expit(-y * Z))) <= 1e-6
    entries = approximations(prog)
    # the two sign patterns are different functions of z: one fit each
    assert len(entries) == 2
    assert all(e["tol"] == 1e-6 for e in entries)
    assert all((e["lo"], e["hi"]) == (-3.0, 3.0) for e in entries)
    assert {e["name"].split("[")[-1] for e in entries} == {"y=+1]", "y=-1]"}
    total = sum(e["neurons_per_entry"] for e in entries)
    assert total <= prog.report["mlp_hidden_max"] <= total + 4


def test_signed_sigmoid_uses_one_fit():
    """y·σ(−y z) = σ(−z) + (y − 1)/2: the sign branches differ by a constant, so ONE fit plus a
    gated constant — about half the units of σ(−y z)."""
    prog = compile_body("s = y * sigmoid(-y * z)", GATED_INPUTS)
    for y in (Y, np.ones_like(Z), -np.ones_like(Z)):
        got = prog.run(y=y, z=Z)["s"]
        assert np.max(np.abs(got - y * expit(-y * Z))) <= 1e-6
    (entry,) = approximations(prog)
    assert "[" not in entry["name"], entry["name"]        # not a per-pattern branch
    assert entry["tol"] == 1e-6 and entry["entries"] == 1
    hidden = prog.report["mlp_hidden_max"]
    assert entry["neurons_per_entry"] <= hidden <= entry["neurons_per_entry"] + 4

    two_fits = compile_body("s = sigmoid(-y * z)", GATED_INPUTS).report["mlp_hidden_max"]
    assert hidden < 0.55 * two_fits


def test_p_one_minus_p_is_ungated():
    prog = compile_body("p = sigmoid(-y * z)\ns = p * (1 - p)", GATED_INPUTS)
    got = prog.run(y=Y, z=Z)["s"]
    p = expit(-Y * Z)
    assert np.max(np.abs(got - p * (1 - p))) <= 1e-6
    (entry,) = approximations(prog)                     # p itself is not an output: inlined
    assert "[" not in entry["name"] and entry["tol"] == 1e-6
    assert prog.report["mlp_hidden_max"] <= entry["neurons_per_entry"] + 4
    assert prog.n_layers == 1


def test_declared_domain_and_input_range_intersect():
    """`on [-6, 6]` for a z known to lie in [-3, 3]: the fit spans [-3, 3]; per-call tol holds."""
    prog = compile_body("s = sigmoid(-y * z) on [-6, 6] tol 1e-7", GATED_INPUTS)
    got = prog.run(y=Y, z=Z)["s"]
    assert np.max(np.abs(got - expit(-Y * Z))) <= 1e-7
    for e in approximations(prog):
        assert (e["lo"], e["hi"]) == (-3.0, 3.0) and e["tol"] == 1e-7


# ---- products ------------------------------------------------------------------------------

PRODUCT_INPUTS = "dim d = 3\ninput w : [n] in [0, 0.25]\ninput A : [n, d] in [-1, 1]"


@pytest.mark.parametrize("tol", [None, 1e-4])
def test_product_within_tol(tol):
    rng = np.random.default_rng(7)
    w = rng.uniform(0, 0.25, N_POINTS)
    A = rng.uniform(-1, 1, (N_POINTS, 3))
    w[:4] = [0.0, 0.25, 0.25, 0.0]                      # the corners of the box
    A[:4] = [[-1, 1, -1], [1, -1, 1], [-1, -1, 1], [1, 1, -1]]
    prog = compile_body("s = w * A", PRODUCT_INPUTS, tol=tol)
    got = prog.run(w=w, A=A)["s"]
    assert got.shape == (N_POINTS, 3)
    want_tol = tol or 1e-6
    assert np.max(np.abs(got - w[:, None] * A)) <= want_tol
    entries = approximations(prog)
    assert entries and all(e["name"].startswith(("(u+v)^2", "(u-v)^2")) for e in entries)
    for e in entries:                 # each PL square within 2 tol: the product within tol
        assert e["tol"] == 2 * want_tol
        assert e["lo"] == pytest.approx(-1.0) and e["hi"] == pytest.approx(1.25)
    assert not any(c["outside"] for c in tcompile.check_domains(prog, w=w, A=A))


CHAINED = """program t
input z : [n] in [-6, 6]
input w : [n] in [-1, 1]
output s
q = sigmoid(z) * (1 - sigmoid(z)) tol 1e-4
s = w * q
"""


def test_product_of_a_piece_within_budget():
    """q = σ(z)(1 − σ(z)) to 1e-4, then w * q to 1e-6: within 1e-4 · |w| + 1e-6."""
    prog = tcompile.compile_source(CHAINED)
    z = grid(-6.0, 6.0)
    w = np.linspace(-1.0, 1.0, N_POINTS)[::-1].copy()
    got = prog.run(z=z, w=w)["s"]
    assert np.max(np.abs(got - w * expit(z) * (1 - expit(z)))) <= 1e-4 + 1e-6


def test_product_fed_by_a_piece_is_fitted_on_its_whole_range():
    prog = tcompile.compile_source(CHAINED)
    z = grid(-6.0, 6.0)
    checks = tcompile.check_domains(prog, z=z, w=np.ones_like(z))
    assert len(checks) == 3
    assert not any(c["outside"] for c in checks), [c for c in checks if c["outside"]]


@pytest.mark.parametrize("inputs, factor", [
    ("dim d = 3\ninput w : [n]\ninput A : [n, d] in [-1, 1]", "w"),
    ("dim d = 3\ninput w : [n] in [0, 0.25]\ninput A : [n, d]", "A"),
    ("input w : [n] in [0, 1]\ninput v : [n]", "v"),
])
def test_product_of_unbounded_factor_is_an_error(inputs, factor):
    body = "s = w * A" if "A" in inputs else "s = w * v"
    with pytest.raises(tcompile.CompileError) as info:
        compile_body(body, inputs)
    assert f"'{factor}'" in info.value.message
    assert info.value.line == inputs.count("\n") + 4      # the statement's line


# ---- out of domain -------------------------------------------------------------------------

def test_out_of_domain_is_detected_and_clamped():
    prog = compile_body("s = sigmoid(u) on [-2, 2]", "input u : [n]")
    (entry,) = approximations(prog)
    assert (entry["lo"], entry["hi"]) == (-2.0, 2.0)

    inside = grid(-2.0, 2.0, 401)
    (chk,) = tcompile.check_domains(prog, u=inside)
    assert chk["label"] == "sigmoid(u)" and (chk["lo"], chk["hi"]) == (-2.0, 2.0)
    assert chk["outside"] is False and chk["min"] == -2.0 and chk["max"] == 2.0
    assert np.max(np.abs(prog.run(u=inside)["s"] - expit(inside))) <= 1e-6

    outside = np.array([-1e3, -5.0, -2.5, -2.0, 0.0, 1.0, 2.0, 2.0001, 3.0, 100.0])
    (chk,) = tcompile.check_domains(prog, u=outside)
    assert chk["outside"] is True and chk["min"] == -1e3 and chk["max"] == 100.0
    (chk,) = tcompile.check_domains(prog, u=np.array([0.0, 2.5]))            # one side is enough
    assert chk["outside"] is True
    (chk,) = tcompile.check_domains(prog, u=np.array([[0.0, 1.0], [-2.1, 0.0]]))   # any batch member
    assert chk["outside"] is True

    # run's domain guard says so (DomainError, by default) ...
    with pytest.raises(DomainError, match=r"values in \[-1000, 100\], fitted on \[-2, 2\]"):
        prog.run(u=outside)
    # ... and outside the domain the PL function is constant: the clamped value, σ(±2) within tol
    got = prog.run(u=outside, domains="off")["s"]
    assert np.max(np.abs(got - expit(np.clip(outside, -2.0, 2.0)))) <= 1e-6
    assert np.ptp(got[outside <= -2]) <= 1e-12 and np.ptp(got[outside >= 2]) <= 1e-12


def test_gated_piece_far_outside_is_flagged():
    """Beyond one domain length outside, a sign-gated piece is undefined (the gate offsets are
    sized for domain ± its length, see mlp.gate_margin); check_domains must say so."""
    prog = compile_body("s = sigmoid(-y * z) on [-3, 3]", "input y : [n] sign\ninput z : [n]")
    z = np.array([-100.0, -20.0, -4.0, 4.0, 20.0, 100.0])
    for sign in (1.0, -1.0):
        y = np.full_like(z, sign)
        report = tcompile.check_domains(prog, y=y, z=z)[0]
        assert report["outside"] and report["min"] == -100.0 and report["max"] == 100.0


def test_gated_piece_near_domain_is_clamped():
    """Just outside (within the margin the gates are sized for) the clamp does hold."""
    prog = compile_body("s = sigmoid(-y * z) on [-3, 3]", "input y : [n] sign\ninput z : [n]")
    z = np.array([-8.0, -4.0, -3.5, 3.5, 4.0, 8.0])
    for sign in (1.0, -1.0):
        y = np.full_like(z, sign)
        got = prog.run(y=y, z=z, domains="off")["s"]      # the guard would raise (above)
        assert np.max(np.abs(got - expit(-y * np.clip(z, -3, 3)))) <= 1e-6
        assert tcompile.check_domains(prog, y=y, z=z)[0]["outside"]


SATURATING_GATED = [
    # a hinge's active set, signed: constant outside [-1, 1] under either sign
    ("y * clip(1e4 * (1 - y * z), 0, 1)",
     lambda y, f, z: y * np.clip(1e4 * (1 - y * z), 0, 1)),
    ("y * clip(z, -2, 2)", lambda y, f, z: y * np.clip(z, -2, 2)),
    ("f * sigmoid(clip(z, -3, 3))", lambda y, f, z: f * expit(np.clip(z, -3, 3))),
    ("f * relu(1 - relu(z))", lambda y, f, z: f * np.maximum(1 - np.maximum(z, 0), 0)),
]


@pytest.mark.parametrize("expr, ref", SATURATING_GATED, ids=[c[0] for c in SATURATING_GATED])
def test_gated_piece_of_an_unbounded_value_that_saturates(expr, ref):
    """A gate needs its leaf's range, and nothing bounds z here; but every sign pattern is
    constant outside a known interval, so the piece reads z clamped to it (an exact piece one
    sublayer before): the same values at every z, however far out, and no domain left."""
    prog = compile_body(f"s = {expr}", "input y : [n] sign\ninput f : [n] flag\ninput z : [n]")
    z = np.concatenate([grid(-4.0, 4.0), [-1e6, -50.0, 50.0, 1e6]])
    for y, f in ((Y, RNG.integers(0, 2, Y.size)), (1.0, 1.0), (-1.0, 0.0)):
        y = np.broadcast_to(np.pad(np.broadcast_to(y, Y.shape), (0, 4), mode="wrap"), z.shape)
        f = np.broadcast_to(np.pad(np.broadcast_to(f, Y.shape), (0, 4), mode="wrap"), z.shape)
        inputs = dict(y=y.astype(float), f=f.astype(float), z=z)
        assert np.max(np.abs(prog.run(**inputs)["s"] - ref(y, f, z))) <= 1e-6
        assert not any(c["outside"] for c in tcompile.check_domains(prog, **inputs))
    assert prog.n_layers == 2            # the clamp's MLP, then the gated piece's


def test_gated_exact_offsets_need_no_clamp():
    """clip(z, 0, 1) + y differs between the patterns by a constant: one exact form and a
    gated offset, which needs no range of z, so no clamp (and no second layer) is added."""
    prog = compile_body("s = clip(z, 0, 1) + y", "input y : [n] sign\ninput z : [n]")
    assert prog.n_layers == 1
    z = np.array([-1e6, -1.0, 0.25, 0.5, 3.0, 1e6])
    y = np.array([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    assert np.max(np.abs(prog.run(y=y, z=z)["s"] - (np.clip(z, 0, 1) + y))) <= 1e-12


def test_gated_piece_that_does_not_saturate_still_needs_bounds():
    """y * relu(z) grows without bound in z: no clamp gives its values, so the error stays."""
    with pytest.raises(tcompile.CompileError, match="bound z"):
        compile_body("s = y * relu(z)", "input y : [n] sign\ninput z : [n]")


def test_a_divisor_declared_on_abs_is_stored_and_checked_there():
    """`a / (abs(u)) on [0.1, 5]` bounds abs(u), but one piece of u was fitted on u's domain
    read back through abs, [-5, 5], where 1 / abs(u) is infinite at 0: the build was refused
    (first with a numpy RuntimeWarning leaking, then "not finite on the domain (at 0)"). Now
    abs(u) is stored by a piece of its own (exact) and the reciprocal reads it on the
    declared domain, which the model checks: a value of abs(u) below 0.1 is a DomainError
    naming the statement, as for any divisor. Nothing is printed on the way."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prog = compile_body("s = a / (abs(u)) on [0.1, 5]", "input u : [n]\ninput a : [n] in [-1, 1]")
    # weight for weight the program a user would write with abs(u) stored by hand
    by_hand = compile_body("t = abs(u)\ns = a / (t) on [0.1, 5]",
                           "input u : [n]\ninput a : [n] in [-1, 1]")
    mine, theirs = prog.module.state_dict(), by_hand.module.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    rng = np.random.default_rng(4)
    u = rng.choice([-1.0, 1.0], 40) * rng.uniform(0.1, 5, 40)
    a = rng.uniform(-1, 1, 40)
    assert np.max(np.abs(prog.run(u=u, a=a)["s"] - a / np.abs(u))) <= 2e-6
    u[3] = -0.05
    with pytest.raises(tcompile.errors.DomainError, match=r"line 5 `s = a / \(abs\(u\)\) on "
                                                          r"\[0.1, 5\]`.*values in \[0.05"):
        prog.run(u=u, a=a)


def test_call_without_domain_is_a_program_error():
    source = "program t\ninput u : [n]\noutput s\nx = 2 * u\ns = sigmoid(x)\n"
    with pytest.raises(tcompile.ProgramError) as info:
        tcompile.compile_source(source, file="nodomain.tp")
    err = info.value
    assert (err.file, err.line, err.column) == ("nodomain.tp", 5, 5)     # at `sigmoid`
    assert "sigmoid" in err.message
    assert "nodomain.tp:5:5" in err.format()


# ---- tolerance plumbing --------------------------------------------------------------------

SIG_INPUT = "input u : [n] in [-4, 4]"
U4 = grid(-4.0, 4.0)


def neurons(prog) -> int:
    return sum(e["neurons"] for e in approximations(prog))


def test_default_tol_sets_neurons_and_error():
    loose = compile_body("s = sigmoid(u)", SIG_INPUT, tol=1e-3)
    tight = compile_body("s = sigmoid(u)", SIG_INPUT, tol=1e-6)
    assert neurons(loose) < neurons(tight)
    assert loose.report["mlp_hidden_max"] < tight.report["mlp_hidden_max"]
    # O(1/sqrt(tol)) neurons: 1000x tighter is about 30x more
    assert 10 * neurons(loose) < neurons(tight) < 100 * neurons(loose)
    for prog, tol in ((loose, 1e-3), (tight, 1e-6)):
        assert prog.manifest["default_tol"] == tol
        (entry,) = approximations(prog)
        assert entry["tol"] == tol
        assert np.max(np.abs(prog.run(u=U4)["s"] - expit(U4))) <= tol


def test_default_tol_is_1e_6():
    prog = compile_body("s = sigmoid(u)", SIG_INPUT)
    assert prog.manifest["default_tol"] == 1e-6 and approximations(prog)[0]["tol"] == 1e-6


@pytest.mark.parametrize("call_tol, default_tol", [(1e-6, 1e-3), (1e-3, 1e-6)])
def test_call_tol_overrides_default(call_tol, default_tol):
    prog = compile_body(f"s = sigmoid(u) tol {call_tol:g}", SIG_INPUT, tol=default_tol)
    (entry,) = approximations(prog)
    assert entry["tol"] == call_tol
    assert np.max(np.abs(prog.run(u=U4)["s"] - expit(U4))) <= call_tol
    same = compile_body("s = sigmoid(u)", SIG_INPUT, tol=call_tol)
    assert neurons(prog) == neurons(same)


def test_statement_tol_budgets_its_approximations():
    """`tol` after a statement is the budget of the whole elementwise value it computes."""
    prog = compile_body("s = 2 * sigmoid(u) + 1 tol 1e-4", SIG_INPUT, tol=1e-7)
    (entry,) = approximations(prog)
    assert entry["tol"] == 1e-4
    assert np.max(np.abs(prog.run(u=U4)["s"] - (2 * expit(U4) + 1))) <= 1e-4


def test_statement_tol_reaches_products():
    prog = compile_body("s = w * A tol 1e-3", PRODUCT_INPUTS)
    assert all(e["tol"] == 2e-3 for e in approximations(prog))
    default = compile_body("s = w * A", PRODUCT_INPUTS)
    assert neurons(prog) < neurons(default)


def test_bad_default_tol_is_rejected():
    for bad in (0, -1e-3, 1.5):
        with pytest.raises(tcompile.ParamError):
            compile_body("s = sigmoid(u)", SIG_INPUT, tol=bad)


KURAMOTO = """program kuramoto_mean_field
param steps = 10
param dt = 0.1
param K = 1.5
input th0 : [n] in [-3, 3]
input w : [n] in [-0.5, 0.5]
output th
th = th0
repeat steps {
  s = sin(th)
  c = cos(th)
  S = sum(s) / n
  C = sum(c) / n
  th = (th + dt * (w + K * (S * c - C * s))) on [-6, 6]
}
"""


def test_a_loop_of_sin_and_cos_follows_numpy_unrolled_and_shared():
    """Mean-field Kuramoto oscillators: each step's sin and cos are fitted within 1e-6, so ten
    steps stay within 2e-6 of the same recursion in numpy; a step is one layer (the means
    times the token vectors, S·cos θ, are heads reading the encoder's row of 1/n: two layers
    per step before), and the shared build runs any count as deep as the unrolled one."""
    rng = np.random.default_rng(5)
    th0, w = rng.uniform(-3, 3, 16), rng.uniform(-0.5, 0.5, 16)

    def numpy_steps(k):
        th = th0.copy()
        for _ in range(k):
            s, c = np.sin(th), np.cos(th)
            th = th + 0.1 * (w + 1.5 * (s.mean() * c - c.mean() * s))
        return th
    unrolled = tcompile.compile_source(KURAMOTO, file="k.tp")
    shared = tcompile.compile_source(KURAMOTO, file="k.tp", loops="shared")
    assert np.max(np.abs(unrolled.run(th0=th0, w=w)["th"] - numpy_steps(10))) < 2e-6
    assert unrolled.n_layers == 11
    for k in (4, 13):
        got = shared.run(th0=th0, w=w, steps=k)["th"]
        assert np.max(np.abs(got - numpy_steps(k))) < 3e-6
        assert shared.loops.n_layers(shared.loops.counts({"steps": k})) == \
            tcompile.compile_source(KURAMOTO, file="k.tp", params={"steps": k}).n_layers


PRODUCT_HEAD = ("program p\ninput u : [n] in [0.5, 2]\ninput v : [n] in [-1, 0.5]\noutput z\n")
SCALED_PRODUCTS = [   # (statement, numpy, what the report's pieces are)
    ("z = 3.2 * u * v", lambda u, v: 3.2 * u * v, "3.2*u*v"),
    ("z = u * v / 4", lambda u, v: u * v / 4, "0.25*u*v"),
    ("z = -(u * v)", lambda u, v: -(u * v), "-u*v"),
    ("z = u * (1 - u)", lambda u, v: u * (1 - u), "u"),
    ("z = (1 - v) * (2 * v + 1)", lambda u, v: (1 - v) * (2 * v + 1), "v"),
]


@pytest.mark.parametrize("stmt, ref, piece", SCALED_PRODUCTS, ids=[s[0] for s in SCALED_PRODUCTS])
def test_a_product_scaled_by_numbers_or_of_one_value_is_one_piece(stmt, ref, piece):
    """`3.2 * u * v` was refused ("other than a plain product u * v"), `u * v / 4` took a
    head layer after the product, and `u * (1 - u)` was a product of two values (u and a
    stored 1 - u). Now a number scales the product piece's output, and a factor c₀ + c·u of
    the other's u makes the product a function of u alone: one layer, one piece, within the
    default budget of numpy."""
    src = PRODUCT_HEAD + stmt + "\n"
    prog = tcompile.compile_source(src, file="p.tp")
    u, v = np.linspace(0.5, 2, 23), np.linspace(-1, 0.5, 23)[::-1]
    assert np.abs(prog.run(u=u, v=v)["z"] - ref(u, v)).max() <= 1e-6
    assert prog.n_layers == 1
    names = [a["name"] for a in prog.report["approximations"]]
    if piece in ("u", "v"):                   # one unary piece of that input
        assert len(names) == 1 and "^2 of" not in names[0]
    else:                                     # the two fitted squares of one scaled product
        swapped = piece.replace("u*v", "v*u")       # the factors in either order
        assert len(names) == 2 and all(n.endswith(("= " + piece, "= " + swapped)) for n in names)
