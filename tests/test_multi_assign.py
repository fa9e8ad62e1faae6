"""Assigning several values at once: `x, y = e1, e2` and `x, y = f(...)` (multi_assign.py).

Oracles: numpy written from the statement's meaning (every right side reads the values from
before the statement), for the interpreter and the compiled model unrolled and shared; the
same program written without the syntax, for what the compiler builds (a def of several
values is inlined once per value, and the hash-consed graph keeps one copy of its body).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tcompile
from tcompile.errors import ProgramError, ProgramSyntaxError
from tcompile.inspection.sampling import sample_inputs
from tcompile.language import ast
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

FACTORS = """program lowrank
dim d = 4
dim r = 2
param eta = 0.1
param steps = 12
input M : [d, d] in [-1, 1]
input U0 : [d, r] in [-1, 1]
input V0 : [d, r] in [-1, 1]
output U, V

U = U0
V = V0
repeat steps {
  R = U @ V.T - M
  U, V = U - eta * R @ V, V - eta * R.T @ U
}
"""

INVERSE_AND_RESIDUAL = """program inverse_and_residual
dim d = 3
param k = 6
input A : [d, d] symmetric, spectrum in [0.5, 1.5]
input b : [d] in [-1, 1]
output X, r

def inverse_and_residual(S, c, m) {
  X = 0.5 * I
  repeat m {
    X = 2 * X - X @ S @ X
  }
  return X, S @ (X @ c) - c
}

X, r = inverse_and_residual(A, b, k)
"""


def _factors_numpy(M, U, V, eta, steps):
    for _ in range(steps):
        R = U @ V.T - M
        U, V = U - eta * R @ V, V - eta * R.T @ U
    return U, V


def _statements(src: str) -> list[str]:
    """The top-level statements as `target <- names read`, in order."""
    out = []
    for s in parse_source(src).body:
        if isinstance(s, ast.Assign):
            reads = sorted({n.id for n, _ in ast.walk(s.value) if isinstance(n, ast.Name)})
            out.append(f"{s.target} <- {','.join(reads)}")
    return out


def test_assignments_are_ordered_so_each_reads_the_old_values():
    head = "program p\ninput a : [] in [0, 1]\noutput x, y, z\nx = a\ny = a\nz = a\n"
    # no right side reads another target: in order, no temporary
    assert _statements(head + "x, y = x + 1, y * 2")[3:] == ["x <- x", "y <- y"]
    # x's new value reads y: y is assigned after it
    assert _statements(head + "y, x = x, y")[3:] == ["y' <- x", "x <- y", "y <- y'"]
    assert _statements(head + "x, y = y, z")[3:] == ["x <- y", "y <- z"]
    assert _statements(head + "y, x = z, y")[3:] == ["x <- y", "y <- z"]
    # a cycle of three: one temporary
    assert _statements(head + "x, y, z = y, z, x")[3:] == ["x' <- y", "y <- z", "z <- x",
                                                           "x <- x'"]


def test_a_swap_and_a_fibonacci_step_match_numpy_interpreted_and_compiled():
    src = ("program fib\ninput a : [3] in [-1, 1]\ninput b : [3] in [-1, 1]\noutput x, y\n"
           "x = a\ny = b\nrepeat 5 {\n  x, y = y, x + y\n}\n")
    program = parse_source(src)
    inputs = sample_inputs(program, {}, n=4, batch=1, seed=3)
    a, b = (np.asarray(inputs[k][0], dtype=float) for k in "ab")
    x, y = a, b
    for _ in range(5):
        x, y = y, x + y
    ref = interpret_program(program, **{k: v[0] for k, v in inputs.items()})
    np.testing.assert_allclose(ref["x"], x, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ref["y"], y, rtol=0, atol=1e-15)
    for loops in ("unrolled", "shared"):
        out = tcompile.compile_source(src, loops=loops).run(**inputs)
        np.testing.assert_allclose(out["x"][0], x, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(out["y"][0], y, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("loops", ["unrolled", "shared"])
def test_gradient_descent_on_both_factors_matches_numpy(loops):
    """The low-rank factorisation a user wrote with a temporary before the syntax existed."""
    program = parse_source(FACTORS)
    inputs = sample_inputs(program, {}, n=4, batch=3, seed=5)
    prog = tcompile.compile_source(FACTORS, loops=loops)
    counts = (12, 17) if loops == "shared" else (12,)
    for steps in counts:
        out = prog.run(steps=steps, **inputs) if steps != 12 else prog.run(**inputs)
        for i in range(3):
            U, V = _factors_numpy(inputs["M"][i], inputs["U0"][i], inputs["V0"][i], 0.1, steps)
            np.testing.assert_allclose(out["U"][i], U, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(out["V"][i], V, rtol=1e-12, atol=1e-13)


def test_until_watches_a_variable_assigned_with_others():
    prog = tcompile.compile_source(FACTORS, loops="shared")
    (spec,) = prog.loops.loops
    assert spec.watchable == ["U", "V"]         # not U', which holds U's value
    program = parse_source(FACTORS)
    inputs = sample_inputs(program, {}, n=4, batch=2, seed=5)
    rule = ("V", 1e-6)
    out = prog.run(until=rule, max_steps=2000, **inputs)
    assert out["converged"].all()
    for i in range(2):
        U, V = _factors_numpy(inputs["M"][i], inputs["U0"][i], inputs["V0"][i], 0.1,
                              int(out["steps"][i]))
        np.testing.assert_allclose(out["V"][i], V, rtol=1e-10, atol=1e-11)
        _, V_before = _factors_numpy(inputs["M"][i], inputs["U0"][i], inputs["V0"][i], 0.1,
                                     int(out["steps"][i]) - 1)
        assert np.abs(V - V_before).max() <= 1e-6


@pytest.mark.parametrize("loops", ["unrolled", "shared"])
def test_a_def_returning_two_values_matches_numpy(loops):
    program = parse_source(INVERSE_AND_RESIDUAL)
    inputs = sample_inputs(program, {}, n=4, batch=2, seed=7)
    prog = tcompile.compile_source(INVERSE_AND_RESIDUAL, loops=loops)
    for k in ((6, 9) if loops == "shared" else (6,)):
        out = prog.run(k=k, **inputs) if k != 6 else prog.run(**inputs)
        for i in range(2):
            S, c = inputs["A"][i], inputs["b"][i]
            X = 0.5 * np.eye(3)
            for _ in range(k):
                X = 2 * X - X @ S @ X
            np.testing.assert_allclose(out["X"][i], X, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(out["r"][i], S @ (X @ c) - c, rtol=1e-12, atol=1e-13)


def test_a_def_of_two_values_builds_its_body_once():
    """Each value is a call of its own, but the graph is hash-consed: the model is the one
    the same program written inline compiles to."""
    with_def = """program kalman
dim d = 2
param steps = 4
input F : [d, d] in [-1, 1]
input Q : [d, d] in [0, 0.1]
input x0 : [d] in [-1, 1]
output x, P

def predict(x, P, F, Q) {
  return F @ x, F @ P @ F.T + Q
}

x = x0
P = 0.5 * I
repeat steps {
  x, P = predict(x, P, F, Q)
}
"""
    inline = with_def.replace("  x, P = predict(x, P, F, Q)", "  x = F @ x\n  P = F @ P @ F.T + Q")
    a, b = (tcompile.compile_source(s) for s in (with_def, inline))
    assert (a.n_layers, a.width) == (b.n_layers, b.width)
    wa, wb = a.module.state_dict(), b.module.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    inputs = sample_inputs(parse_source(inline), {}, n=4, batch=2, seed=1)
    oa, ob = a.run(**inputs), b.run(**inputs)
    for k in ("x", "P"):
        np.testing.assert_array_equal(oa[k], ob[k])


@pytest.mark.parametrize("body, message, where", [
    ("a, b = 1, 2, 3", "2 names on the left, 3 value(s) on the right", (6, 1)),
    ("a, a = 1, 2", "'a' is assigned twice in one statement", (6, 4)),
    ("a, b = one(u)", "2 names on the left, 1 value(s) on the right ('one' returns one value)",
     (6, 1)),
    ("a, b, c = two(u)", "3 names on the left, but 'two' returns 2 values", (6, 1)),
    ("a = two(u)", "'two' returns 2 values, so a call of it is the whole right side of an "
                   "assignment", (6, 5)),
    ("a, b = two(u) + 1, 2", "'two' returns 2 values", (6, 8)),
])
def test_errors_name_the_place_and_the_fix(body, message, where):
    src = ("program p\ninput u : [] in [0, 1]\noutput a\n"
           "def one(x) { return x }\ndef two(x) { return x, 2 * x }\n" + body + "\n")
    with pytest.raises(ProgramError) as e:
        tcompile.compile_source(src)
    assert message in str(e.value)
    assert (e.value.line, e.value.column) == where
    assert e.value.expected and "^" in str(e.value)


def test_returns_of_one_def_give_the_same_number_of_values():
    src = ("program p\ninput u : [] in [0, 1]\noutput a\n"
           "def f(x) {\n  repeat 2 {\n    return x, x\n  }\n  return x\n}\na = f(u)\n")
    with pytest.raises(ProgramError, match=r"this return gives 1 value\(s\), the one at line 6 "
                                           r"gives 2") as e:
        tcompile.compile_source(src)
    assert (e.value.line, e.value.column) == (8, 3)


def test_a_tol_at_the_end_is_every_values_budget():
    """`x, y = e1, (e2) on [lo, hi] tol eps`: the grammar hands the tol to the last bound, as in
    a plain assignment; it is the statement's, so both values are built as they would be
    assigned one by one with it."""
    head = "program t\ninput u : [3] in [0, 1]\noutput a, b\n"
    together = tcompile.compile_source(head + "a, b = sqrt(u + 1), (exp(u)) on [1, 3] tol 1e-3\n")
    apart = tcompile.compile_source(head + "a = sqrt(u + 1) tol 1e-3\n"
                                           "b = (exp(u)) on [1, 3] tol 1e-3\n")
    wa, wb = together.module.state_dict(), apart.module.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert together.n_layers == apart.n_layers


@pytest.mark.parametrize("stmt, column", [("x[0], y = 1, 2", 1), ("y, x[1] = 1, 2", 4)])
def test_a_part_of_a_variable_among_the_names_is_refused_as_alone(stmt, column):
    """`x[0], y = ...` said only "unexpected '['"; it gets the message `x[0] = ...` gets."""
    src = "program t\ninput u : [3] in [0, 1]\noutput x\nx = u\ny = u\n" + stmt + "\n"
    with pytest.raises(ProgramSyntaxError) as e:
        tcompile.compile_source(src)
    assert "cannot assign to part of 'x': a variable is assigned whole" in str(e.value)
    assert (e.value.line, e.value.column) == (6, column)
