"""The operations of issue 11 §2, end to end: the checker accepts them, the interpreter and the
compiled model both agree with numpy written here (not with each other), and each refusal
names what the user wrote, at its line and column, with what to write instead.

Exact operations (ones, zeros, sum over a small axis, a scalar or vector added to a larger
value, max, min, abs of a difference) must match numpy to rounding; a division by a runtime
value is a fitted reciprocal, within the budget it was given.
"""
from __future__ import annotations

import numpy as np
import pytest

import tcompile
from tcompile.compiler import nodes
from tcompile.compiler.dataflow import build_dataflow
from tcompile.errors import ProgramError, ProgramSyntaxError, TcompileError
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

HEAD = """program ops
dim d = 3
input u : [d] in [-2, 2]
input v : [d]
input M : [d, d]
input A : [n, d]
input y : [n] in [1, 3]
input b : [d]
input s : [] in [1, 2]
input B : [n, d] in [-1, 1]
output r
"""
RNG = np.random.default_rng(11)
DATA = dict(u=RNG.uniform(-2, 2, 3), v=RNG.normal(size=3), M=RNG.normal(size=(3, 3)),
            A=RNG.normal(size=(7, 3)), y=RNG.uniform(1, 3, 7), b=RNG.normal(size=3),
            s=np.array(1.5), B=RNG.uniform(-1, 1, (7, 3)))
ONES = np.ones(3)

EXACT = [  # (statement, numpy, (layers, width)) as built
    ("r = max(u, v)", lambda u, v, **_: np.maximum(u, v), (2, 7)),
    ("r = min(M, 0.5)", lambda M, **_: np.minimum(M, 0.5), (1, 6)),
    ("r = min(s, u)", lambda s, u, **_: np.minimum(s, u), (3, 8)),
    ("r = abs(M @ v - u)", lambda M, v, u, **_: np.abs(M @ v - u), (1, 8)),
    ("r = u - 2 * s + ones(d)", lambda u, s, **_: u - 2 * s + 1, (2, 8)),
    ("r = M + 1 + zeros(d, d)", lambda M, **_: M + 1, (1, 6)),
    ("r = 3 - M @ M", lambda M, **_: 3 - M @ M, (1, 6)),
    ("r = u + s", lambda u, s, **_: u + s, (2, 8)),
    ("r = sum(M)", lambda M, **_: M.sum(axis=0), (2, 8)),
    ("r = sum(u)", lambda u, **_: u.sum(), (2, 7)),
    ("r = sum(A.T)", lambda A, **_: A.T.sum(axis=0), (2, 8)),
    ("r = A - b", lambda A, b, **_: A - b, (1, 8)),
    ("r = ones(n) * 2 + y", lambda y, **_: 2 + y, (1, 3)),
    ("r = A - y", lambda A, y, **_: A - y[:, None], (2, 10)),          # per token
    ("r = diag(u)", lambda u, **_: np.diag(u), (3, 15)),
    ("r = diag(clip(M, -3, 3))", lambda M, **_: np.diag(np.clip(M, -3, 3)), (3, 15)),
    ("r = M @ diag(u)", lambda M, u, **_: M @ np.diag(u), (3, 18)),
    ("r = y + A @ M", lambda A, y, M, **_: y[:, None] + A @ M, (2, 13)),
    # a token mean broadcast back to the tokens: 1·1ᵀA/n is one head, reading the encoder's
    # row of 1/n (heads.py); it took 2 layers when 1/n needed an operand of its own
    ("r = A - sum(A) / n", lambda A, **_: A - A.mean(axis=0), (1, 8)),
    ("r = y * (sum(y) / n)", lambda y, **_: y * y.mean(), (1, 3)),
    ("r = A.T @ (A - sum(A) / n) / n", lambda A, **_: np.cov(A.T, bias=True), (2, 12)),
]


def _both(src: str):
    prog = tcompile.compile_source(src, file="ops.tp")
    return prog, prog.run(**DATA)["r"], interpret_program(parse_source(src, "ops.tp"), None, **DATA)["r"]


@pytest.mark.parametrize("stmt, ref, size", EXACT, ids=[e[0] for e in EXACT])
def test_exact_operations_match_numpy(stmt, ref, size):
    prog, got, interp = _both(HEAD + stmt + "\n")
    want = ref(**DATA)
    assert interp.shape == np.shape(want)
    np.testing.assert_allclose(interp, want, rtol=0, atol=1e-13)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert (prog.report["layers"], prog.report["width"]) == size
    assert all(a["exact"] for a in prog.report["approximations"])


DIVISIONS = [  # (statement, numpy, relative budget the fit was given)
    ("r = u / (s * s) on [1, 4] tol 1e-8", lambda u, s, **_: u / (s * s), 1e-8),
    ("r = b / (u @ u + 1) on [1, 13] tol 1e-9", lambda b, u, **_: b / (u @ u + 1), 1e-9),
    ("r = B / y tol 1e-8", lambda B, y, **_: B / y[:, None], 1e-8),
    ("r = 1 / y tol 1e-8", lambda y, **_: 1 / y, 1e-8),
    ("r = u / s tol 1e-8", lambda u, s, **_: u / s, 1e-8),
    # every row divided entrywise by a [d] vector (numpy's broadcast), per feature
    ("r = B / (u * u + 1) tol 1e-8", lambda B, u, **_: B / (u * u + 1), 1e-8),
    ("r = 2 * A / (u * u + 1) tol 1e-8", lambda A, u, **_: 2 * A / (u * u + 1), 1e-8),
]


@pytest.mark.parametrize("stmt, ref, tol", DIVISIONS, ids=[e[0] for e in DIVISIONS])
def test_division_by_runtime_values(stmt, ref, tol):
    """The reciprocal is fitted within `tol` absolutely; the numerators are at most ~4 here."""
    _prog, got, interp = _both(HEAD + stmt + "\n")
    want = ref(**DATA)
    np.testing.assert_allclose(interp, want, rtol=1e-14, atol=0)
    assert np.max(np.abs(got - want)) <= 4 * tol


def _error(src: str, compile_too=False) -> TcompileError:
    with pytest.raises(TcompileError) as info:
        if compile_too:
            tcompile.compile_source(src, file="ops.tp")
        else:
            interpret_program(parse_source(src, "ops.tp"), None, **DATA)
    return info.value


@pytest.mark.parametrize("stmt, col, words", [
    ("r = u / (M @ v)", 10, ["divisor", "no known bounds", "on [lo, hi]"]),
    ("r = u / (M @ v) on [-1, 1]", 20, ["contains 0", "one side of 0"]),
    ("r = u / (u + 1)", 10, ["divisor may be 0", "[-1, 3]"]),
    ("r = u / 2 on [1, 2]", 14, ["compile-time number"]),
    ("r = (M @ v) ** -1", 5, ["x ** -1", "no known bounds", "1 / (expr) on [lo, hi]"]),
    ("r = u / (s * s) on [1, 4] tol rel 2", 35, ["relative tolerance must be below 1"]),
    ("r = u / v on [1e-9, 1] tol 1e-12", 28, ["below the float64 rounding of 1 / divisor",
                                              "1e+09", "tol rel 1e-12"]),
])
def test_division_refusals_name_what_was_written(stmt, col, words):
    err = _error(HEAD + stmt + "\n")
    assert isinstance(err, ProgramError)
    assert (err.line, err.column) == (12, col), err.format()
    text = err.format()
    assert "reciprocal" not in text
    for w in words:
        assert w in text, text


def test_tol_rel_reaches_the_graph():
    """`tol rel eps` on a call, a division and a statement: TOL with TOL_REL on the node
    (absent for an absolute budget); every attribute stays documented."""
    src = HEAD.replace("output r", "output r, q, w, z") + (
        "r = sqrt(s) on [1, 2] tol rel 1e-7\n"
        "q = u / (s * s) on [1, 4] tol rel 1e-9\n"
        "w = exp(u) tol rel 1e-6\n"
        "z = exp(u) tol 1e-6\n")
    df = build_dataflow(parse_source(src, "ops.tp"))
    calls = sorted(((a["func"], a["tol"], a.get("tol_rel"), a["domain"])
                    for _, a in df.graph.nodes(data=True) if a["op"] == "call"), key=repr)
    assert calls == sorted([("sqrt", 1e-7, True, (1.0, 2.0)), ("reciprocal", 1e-9, True, (1.0, 4.0)),
                            ("exp", 1e-6, True, (-2.0, 2.0)), ("exp", 1e-6, None, (-2.0, 2.0))],
                           key=repr)
    for _, attrs in df.graph.nodes(data=True):
        assert not nodes.undocumented(attrs), attrs


def test_tol_rel_statement_refuses_products_of_two_values():
    """A relative budget is for functions of one value; a product piece of two is fitted to
    an absolute one, so a `tol rel` statement with such a product is refused, not silently
    treated as absolute (u * v of a bounded small vector u is a head, exact: allowed)."""
    tcompile.compile_source(HEAD + "r = u * v tol rel 1e-6\n", file="p.tp")
    err = _error(HEAD + "r = y * B tol rel 1e-6\n", compile_too=True)
    assert (err.line, err.column) == (12, 5)
    assert "relative tolerance (tol rel)" in err.message and "absolute tol" in err.expected


@pytest.mark.parametrize("text, keyword", [
    ("if x > 0 {\n  r = u\n}", "if"), ("while (s) {\n}", "while"), ("  for i in 3 {\n}", "for")])
def test_control_flow_is_explained(text, keyword):
    err = _error(HEAD + text + "\n")
    assert isinstance(err, ProgramSyntaxError)
    assert err.line == 12 and err.column == text.index(keyword) + 1
    assert "no data-dependent control flow" in err.message
    assert "repeat" in err.expected and "max(u, v)" in err.expected


def test_if_is_still_a_name():
    src = HEAD + "if = 2\nr = if * u\n"
    np.testing.assert_allclose(interpret_program(parse_source(src), None, **DATA)["r"], 2 * DATA["u"])


@pytest.mark.parametrize("stmt, words", [
    ("r = ones(2.5)", ["positive integer"]),
    ("r = ones(d) on [0, 1]", ["exact", "no domain"]),
    ("r = max(u)", ["takes 2 arguments"]),
    ("r = max(u, y)", ["do not match"]),
    ("r = diag(A)", ["diag() of a [n, 3] value", "square matrix"]),
    ("r = diag(s)", ["diag() of a [] value"]),
])
def test_structural_builtin_errors(stmt, words):
    err = _error(HEAD + stmt + "\n")
    for w in words:
        assert w in err.format()


def test_bounds_of_max_min_and_fill_feed_domains():
    """max/min/ones carry intervals, so a smooth function of them needs no `on`."""
    src = HEAD + "r = sigmoid(max(u, -1) + ones(d)) tol 1e-9\n"
    _prog, got, _ = _both(src)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(np.maximum(DATA["u"], -1) + 1))), atol=1e-8)


# ---- issue 11 §3: defects found on the way --------------------------------------------------

def test_relu_output_times_a_bounded_value_compiles():
    """relu(b) is bounded by b's bounds (the checker's interval), so its product with another
    bounded value is a product piece fitted on [0, 10] x [0.1, 1], within its budget."""
    src = ("program p\ndim d = 4\ninput b : [d] in [-10, 10]\ninput dinv : [d] in [0.1, 1]\n"
           "output x\nr = relu(b)\nx = dinv * r tol 1e-7\n")
    rng = np.random.default_rng(3)
    data = dict(b=rng.uniform(-10, 10, 4), dinv=rng.uniform(0.1, 1, 4))
    got = tcompile.compile_source(src, file="p.tp").run(**data)["x"]
    assert np.max(np.abs(got - data["dinv"] * np.maximum(data["b"], 0))) <= 1e-7


def test_diag_of_unbounded_value_needs_bounds():
    err = _error(HEAD + "r = diag(M)\n", compile_too=True)
    assert (err.line, err.column) == (12, 5)
    assert "diag()" in err.message and "bounds" in err.expected


@pytest.mark.parametrize("stmt, words, matrix", [
    ("r = (A.T @ A) ** 2", "'**' is elementwise", True), ("r = (M @ v) ** 2", "'**'", False),
    ("t = M @ v\nr = t * t", "t * t squares every entry", False),
    ("t = M @ v\nr = t ** 3", "'**' is elementwise: t ** 3", False),
    ("r = (M @ v) * (M @ v)", "a value times itself squares every entry", False)])
def test_elementwise_square_of_unbounded_value_says_so(stmt, words, matrix):
    """The base is named where it is a variable (a mean-shift step's D = X - q, q a weighted
    mean, squared as D * D, was "this value")."""
    err = _error(HEAD + stmt + "\n", compile_too=True)
    assert (err.line, err.column) == (12 + stmt.count("\n"), 5)
    assert words in err.message and "sign or flag" not in err.format()
    assert ("M @ M" in err.expected) == matrix
    if "t = " in stmt:
        assert "and t has no known bounds" in err.message
        assert "clip(t, lo, hi), or (t) on [lo, hi] where it is assigned" in err.expected
    if "(M @ v) * (M @ v)" in stmt:
        assert "name it and bound it, r = (...) on [lo, hi]" in err.expected
