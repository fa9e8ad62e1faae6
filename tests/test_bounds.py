"""Bounds that flow (issue 18 §1): through clip, abs, max, min, relu, products and sums of
bounded values, and the user's `(expr) on [lo, hi]`; kept by the lowering when it fuses.

Every compiled model is judged against the reference interpreter (float64, exact functions);
where a domain comes from saturation (clip) the piece is exact beyond it and no check fires,
where it comes from a declared domain `check_domains` says when data leaves it.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import tcompile
from tcompile.errors import ProgramError
from tcompile.compiler.elementwise import Call, Leaf, PLFunction, active_interval, pl_of
from tcompile.language.checker import check_program
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

CLIPPED_SQUARE = """program clipped_square
dim d = 3
input A : [n, d] assume row_norm <= 1
input x : [d]
output v
g = clip(A @ x, -2, 2)
v = g * g
"""

FLOORED_RECIPROCAL = """program floored_reciprocal
input y : [n]
input z : [n]
output w
w = 0.1 / (max(abs(y - z), 0.1)) on [0.1, 6]
"""


def assigned_types(prog) -> dict:
    """The type (with its interval) the checker gives each assigned variable, read by walking
    the program with the checker's own Walker (the last assignment of a name wins)."""
    from tcompile.language.checker import Walker, resolve_params
    seen = {}

    class Spy(Walker):
        def _assign(self, stmt, env):
            super()._assign(stmt, env)
            seen[stmt.target] = env[stmt.target].ty
    Spy(prog, resolve_params(prog)).run()
    return seen


def _interpret(src, **inputs):
    return tcompile.interpret_program(parse_source(src), None, **inputs)


def test_a_clipped_value_squared_compiles_exact_beyond_the_clip():
    """clip(A @ x) is unbounded inside (x has no bounds) but constant beyond ±2: the fused
    piece is fitted on [-2, 2], clamps beyond, and matches the interpreter everywhere."""
    prog = tcompile.compile_source(CLIPPED_SQUARE)
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 3))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    x = rng.normal(size=3) * 3                         # |A @ x| well beyond 2 for many rows
    assert np.abs(A @ x).max() > 3
    want = _interpret(CLIPPED_SQUARE, A=A, x=x)["v"]
    got = prog.run(A=A, x=x)["v"]
    assert np.max(np.abs(got - want)) <= 1e-6
    assert not any(row["outside"] for row in tcompile.check_domains(prog, A=A, x=x))


def test_a_reciprocal_of_a_floored_abs_compiles_and_checks_its_declared_domain():
    prog = tcompile.compile_source(FLOORED_RECIPROCAL)
    rng = np.random.default_rng(1)
    y, z = rng.uniform(-3, 3, 50), rng.uniform(-3, 3, 50)
    want = _interpret(FLOORED_RECIPROCAL, y=y, z=z)["w"]
    got = prog.run(y=y, z=z)["w"]
    assert np.max(np.abs(got - want)) <= 1e-6
    (row,) = tcompile.check_domains(prog, y=y, z=z)
    assert (row["lo"], row["hi"]) == (-6.0, 6.0) and not row["outside"]
    far = tcompile.check_domains(prog, y=y + 10, z=z)            # |y - z| > 6: the declared domain is left
    assert far[0]["outside"]


def test_the_users_on_bounds_any_parenthesised_expression():
    src = """program bounded
dim d = 3
input A : [n, d]
input x : [d]
input y : [n]
output v, w, q
g = (A @ x) on [-3, 3]
v = g * g
w = (y) on [-1, 1] * g tol 1e-4
q = sigmoid((2 * y + 1) on [-2, 4])
"""
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(2)
    A, x, y = rng.uniform(-1, 1, (30, 3)), rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 30)
    want = _interpret(src, A=A, x=x, y=y)
    got = prog.run(A=A, x=x, y=y)
    assert np.max(np.abs(got["v"] - want["v"])) <= 1e-6
    assert np.max(np.abs(got["w"] - want["w"])) <= 1e-4
    assert np.max(np.abs(got["q"] - want["q"])) <= 1e-6
    assert not any(r["outside"] for r in tcompile.check_domains(prog, A=A, x=x, y=y))
    rows = tcompile.check_domains(prog, A=A, x=x * 10, y=y)      # A @ x leaves the user's [-3, 3]
    assert any(r["outside"] for r in rows)


def test_a_bound_on_a_divisor_is_the_division_domain_and_a_trailing_tol_the_statements():
    a = parse_source("program p\ninput u : [n]\noutput w\nw = 1 / (u) on [1, 2] tol 1e-9\n")
    b = parse_source("program p\ninput u : [n]\noutput w\nw = 1 / u on [1, 2] tol 1e-9\n")
    div_a, div_b = a.body[0].value, b.body[0].value
    assert (div_a.domain.lo.value, div_a.domain.hi.value) == (1.0, 2.0)
    assert div_a.tol.value == div_b.tol.value == 1e-9
    s = parse_source("program p\ninput u : [n]\noutput w\nw = (u) on [1, 2] tol 1e-3\n")
    assert s.body[0].tol.value == 1e-3


@pytest.mark.parametrize("expr, lo, hi", [
    ("x ** 2", 0.0, 1.0),
    ("(x + 1) ** 3", 0.0, 8.0),
    ("max(abs(x - 1), 0.5) * clip(M, 0, 1) + relu(x)", 0.0, 3.0),
    ("A @ (2 * x)", None, None),            # computed x: not bounded, it would grow in a loop
    ("A @ x", -3.0, 3.0),                   # declared ranges, over 3 features
    ("(A @ x) on [-2, 2] * 2", -4.0, 4.0),
    ("(x) on [0, 3]", 0.0, 1.0),            # the user's bound, met with the input's
])
def test_the_checker_bounds_what_flows_through_exact_functions(expr, lo, hi):
    src = f"""program p
input A : [n, 3] in [-1, 1]
input M : [3] in [-2, 2]
input x : [3] in [-1, 1]
output r
r = {expr}
"""
    prog = parse_source(src)
    seen = assigned_types(prog)
    assert (seen["r"].lo, seen["r"].hi) == (lo, hi)


def test_pl_functions_compose_and_pull_domains_back_exactly():
    u = 7
    floor = Call("relu", (), Call("abs", (), Leaf(u), None, None), None, None)
    f = pl_of(floor, u, {})
    xs = np.linspace(-5, 5, 101)
    assert np.allclose(f(xs), np.maximum(np.abs(xs), 0.0))
    assert f.preimage_hull(1.0, 2.0, (-np.inf, np.inf)) == (-2.0, 2.0)
    assert PLFunction.affine(2.0, 1.0).preimage_hull(-1.0, 3.0, (-np.inf, np.inf)) == (-1.0, 1.0)
    clipped = Call("clip", (-2.0, 2.0), Leaf(u), None, None)
    assert active_interval(clipped, u, {}) == (-2.0, 2.0)
    assert active_interval(clipped, u, {}, declared_only=True) == (-np.inf, np.inf)
    declared = Call("sigmoid", (), clipped, (-1.0, 1.0), None)
    assert active_interval(declared, u, {}, declared_only=True) == (-1.0, 1.0)


@pytest.mark.parametrize("body, message", [
    ("w = (u) on [5, 6]", "misses every value"),
    ("w = 1 + (u) on [0, 1] tol 1e-3 * 2", "belongs to a division"),
    ("w = (2) on [0, 3]", "bounds a runtime value"),
])
def test_a_bound_that_cannot_hold_is_refused_at_the_bound(body, message):
    src = f"program p\ninput u : [n] in [0, 1]\noutput w\n{body}\n"
    with pytest.raises(tcompile.ProgramError, match=message) as err:
        check_program(parse_source(src))
    assert err.value.line == 4


LOOP_FROM_A_NUMBER = """program p
param steps = 4
input a : [] in [1, 4]
output x
x = 1
repeat steps {
  x = ((x + a / x on [0.5, 4]) / 2) on [1, 2.5]
}
"""


def test_a_variable_holding_a_number_in_the_first_iteration_keeps_its_declared_domains():
    """`x = 1` before the loop: the first iteration divides by the number 1 and bounds a
    number; the `on`s are for the later iterations. They were refused ("'on [lo, hi]' is for
    a runtime divisor; this one is a compile-time number"); now they are checked against the
    number (test below) and the program runs as the interpreter does."""
    prog = tcompile.compile_source(LOOP_FROM_A_NUMBER)
    want = tcompile.interpret_program(parse_source(LOOP_FROM_A_NUMBER), None, a=np.array(3.0))
    assert abs(float(prog.run(a=np.array(3.0))["x"]) - float(want["x"])) <= 1e-5
    assert abs(float(want["x"]) - np.sqrt(3.0)) <= 1e-8
    # a bound on an expression that is a number in the first iteration only
    doubled = LOOP_FROM_A_NUMBER.replace("((x + a / x on [0.5, 4]) / 2) on [1, 2.5]",
                                         "(2 * x) on [0, 10]; x = x * a / 4")
    got = tcompile.compile_source(doubled).run(a=np.array(3.0))["x"]
    assert float(got) == float(tcompile.interpret_program(parse_source(doubled), None,
                                                          a=np.array(3.0))["x"])


@pytest.mark.parametrize("old, new, message", [
    ("a / x on [0.5, 4]", "a / x on [2, 4]",
     "the divisor is the number 1 here, outside its declared domain \\[2, 4\\]"),
    ("((x + a / x on [0.5, 4]) / 2) on [1, 2.5]", "(2 * x) on [3, 4]; x = x * a / 4",
     "misses this expression's value here, the number 2"),
    ("a / x on [0.5, 4]", "a / 2 on [0.5, 4]",
     "is for a runtime divisor; this one is a compile-time number"),
])
def test_a_declared_domain_that_misses_the_number_or_bounds_a_written_number_is_refused(
        old, new, message):
    """A domain the first iteration's number lies outside is the user's mistake; so is an
    `on` for a divisor written as a number (it can never be a runtime value)."""
    with pytest.raises(tcompile.ProgramError, match=message) as err:
        check_program(parse_source(LOOP_FROM_A_NUMBER.replace(old, new)))
    assert err.value.line == 7


# ---- errors in the user's terms ----------------------------------------------------------------

def _compile_error(src):
    with pytest.raises(tcompile.TcompileError) as err:
        tcompile.compile_source(src, file="p.tp")
    return err.value


def test_a_scaled_product_inside_a_larger_expression_compiles_as_written():
    """`x + 0.1 * r * g` of three real values was refused ("other than a plain product u *
    v"; a new user split off `g = x * (1 - x)` and met the same error): 0.1 * r * g is now
    one product piece scaled by 0.1, so the program runs as written, as its split form does."""
    src = ("program p\ninput r : [n] in [0.5, 2]\ninput x0 : [n] in [0.01, 0.5]\noutput x\n"
           "x = x0\nrepeat 3 {\n  g = x * (1 - x)\n  x = (x + 0.1 * r * g) on [0, 1]\n}\n")
    split = src.replace("  x = (x + 0.1 * r * g)", "  p = g * r\n  x = (x + 0.1 * p)")
    r, x0 = np.linspace(0.5, 2, 7), np.linspace(0.01, 0.5, 7)
    for program in (src, split):
        got = tcompile.compile_source(program).run(r=r, x0=x0)["x"]
        want = tcompile.interpret_program(parse_source(program), None, r=r, x0=x0)["x"]
        assert np.abs(got - want).max() <= 1e-5


def test_an_unbounded_square_names_the_statement_and_its_variable_not_a_sign():
    err = _compile_error("program p\ninput b : [n]\noutput w\nw = b\nrepeat 3 {\n"
                         "  w = w - 0.1 * w * w\n}\n")
    assert (err.line, err.column) == (6, 7)
    assert "'w = w - 0.1 * w * w'" in err.message and "bound w" in err.message
    assert "sign or flag" not in err.message and not re.search(r"\bb\b", err.message)


def test_a_function_of_an_unbounded_value_shows_the_users_expression():
    err = _compile_error("program p\ninput y : [n]\ninput z : [n]\noutput w\nt = y - z\n"
                         "w = abs(t) * abs(2 * t) + 1\n")
    assert "'w = abs(t) * abs(2 * t) + 1'" in err.message and "which values t takes" in err.message
    assert not re.search(r"\bt\d+\b", err.message)          # no compiler temporaries


def test_a_product_without_bounds_names_the_factor_as_the_statement_does():
    err = _compile_error("program p\ninput y : [n]\ninput z : [n] in [0, 1]\noutput w\n"
                         "t = y - z\nw = t * z\n")
    assert "'w = t * z'" in err.message and "'t' has no known bounds" in err.message
    assert "(t) on [lo, hi]" in err.expected


@pytest.mark.parametrize("body, factor, column", [
    ("w = (A.T @ B) * outer(s, ones(2))", "A.T @ B", 6),
    ("w = (outer(r, ones(2))) * S", "outer(r, ones(2))", 6)])
def test_a_product_without_bounds_quotes_a_factor_no_variable_names(body, factor, column):
    """A factor that is part of the statement, not a variable (a matrix product, a call), is
    quoted as written, with the caret under it, not called 'a value computed in it'."""
    err = _compile_error("program p\ninput A : [n, 2] in [-1, 1]\ninput B : [n, 2] in [-1, 1]\n"
                         "input S : [2, 2] in [-1, 1]\ninput s : [2] in [0.5, 1]\n"
                         "input r : [2]\noutput w\n" + body + "\n")
    assert f"'{factor}' has no known bounds" in err.message, err.format()
    assert f"({factor}) on [lo, hi]" in err.expected and "a value computed in it" not in err.format()
    assert (err.line, err.column) == (8, column)


@pytest.mark.parametrize("body, func", [("w = 1 / sum(sum(S)) on [1, 2]", "sum"),
                                        ("w = 1 / f(S) on [1, 2]", "f")])
def test_a_trailing_on_that_binds_to_an_inner_call_says_to_parenthesise(body, func):
    src = ("program p\ninput S : [3, 3]\noutput w\ndef f(M) {\n  return sum(sum(M))\n}\n"
           + body + "\n")
    with pytest.raises(tcompile.ProgramError) as err:
        check_program(parse_source(src))
    assert "binds to that call" in err.value.message
    assert "parenthes" in err.value.expected and f"({func}(...)) on [lo, hi]" in err.value.expected


# ---- a value times itself is a square ----------------------------------------------------------

@pytest.mark.parametrize("lo, hi", [(-2.0, 2.0), (-3.0, 1.0), (0.5, 2.0), (-4.0, -1.0)])
@pytest.mark.parametrize("body", [
    "g = clip(x, LO, HI)\nr = g * g",                         # one variable read twice
    "r = clip(x, LO, HI) * clip(x, LO, HI)",                  # one expression written twice
    "g = clip(x, LO, HI)\nr = (g + 1) * (g + 1) - 1",
    "g = clip(x, LO, HI)\nr = g * g * g",                     # a cube, (g * g) * g: its hull
    "g = clip(x, LO, HI)\nr = 0.25 * g * g",                  # a chain: (0.25 * g) * g
    "g = clip(x, LO, HI)\nr = g * (1 - 0.5) * g * g * g",     # a chain with a 4th power
    "g = clip(x, LO, HI)\nr = -3 * g * (g + 1) * g",          # a square times another factor
    "g = clip(x, LO, HI)\nh = clip(x, LO, HI)\nr = g * h",    # two variables: not known equal
])
def test_a_product_of_a_value_with_itself_is_bounded_like_its_square(lo, hi, body):
    """The checker's interval of the result against brute force: the interpreter on a dense
    grid of x through [lo - 1, hi + 1] (the clip's ends and the squares' zeros included). The
    interval must hold every value; where factors of a chain of products are one value (a name
    read twice, or the same text) they are bounded as its power, exactly — [0, 4] for g * g
    with g in [-2, 2], not the [-4, 4] of two independent factors — and other factors as
    independent values."""
    src = ("program p\ninput x : [n]\noutput r\n"
           + body.replace("LO", repr(lo)).replace("HI", repr(hi)) + "\n")
    prog = parse_source(src)
    seen = assigned_types(prog)
    grid = np.unique(np.concatenate([np.linspace(lo - 1, hi + 1, 4001), [lo, hi, 0.0, -1.0]]))
    r = tcompile.interpret_program(prog, None, x=grid)["r"]
    got = (seen["r"].lo, seen["r"].hi)
    assert got[0] <= r.min() + 1e-12 and r.max() <= got[1] + 1e-12       # sound
    if "g * h" in body:                                                   # independent factors
        c = [lo * lo, lo * hi, hi * hi]
        assert got == (min(c), max(c))
    elif "(g + 1)" not in body:                                           # a power: exact hull
        assert got == pytest.approx((r.min(), r.max()), abs=1e-12)
    elif "(g + 1) * g" in body:              # g² ∈ [0 or min, max] times g + 1, independent
        sq = sorted([lo * lo, hi * hi]) if lo * hi > 0 else [0.0, max(lo * lo, hi * hi)]
        c = [-3 * s * t for s in sq for t in (lo + 1, hi + 1)]
        assert got == (min(c), max(c))


def test_a_clipped_square_under_sqrt_needs_no_domain_and_matches_the_interpreter():
    """sqrt(g * g + 1) with g = clip(A @ x, -2, 2): the argument is in [1, 5], not [-3, 5]
    (which sqrt is undefined on): it checks, compiles and matches the interpreter."""
    src = CLIPPED_SQUARE.replace("output v", "output v, u") + "u = sqrt(v + 1)\n"
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(3)
    A = rng.normal(size=(20, 3))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    x = rng.normal(size=3) * 3
    want, got = _interpret(src, A=A, x=x), prog.run(A=A, x=x)
    assert np.max(np.abs(got["u"] - want["u"])) <= 1e-6


def test_a_fit_needing_too_many_relus_says_which_range_and_budget_to_change():
    """A bisection's midpoint, its bounds grown by interval analysis over the iterations, was
    cubed on [0, 64] at tol 1e-6 and refused with only "needs more than max_neurons": the
    error now names the value whose range to narrow and how, and the budget."""
    src = ("program wide\ninput a : [n] in [0, 1000]\noutput f\nm = a + 1\n"
           "f = m * m * m + m tol 1e-5\n")
    with pytest.raises(tcompile.errors.ApproxError) as e:
        tcompile.compile_source(src)
    assert "max_neurons" in e.value.message and (e.value.line, e.value.column) == (5, 5)
    assert "a narrower range for m (bound it where it is assigned: m = (...) on [lo, hi]" in e.value.expected
    assert "tol 1e-05 at the end of the statement" in e.value.expected


def test_a_product_fit_needing_too_many_relus_gives_its_factors_ranges_and_the_fix():
    """A multiplicative NMF step, H * P / Q with Q's domain declared wide: its product was
    refused as "the product a value computed in it * a value computed in it of two real
    values", with no fix. A factor no variable names is now told by its range, and the error
    says what to narrow or loosen; doing so builds (within the budget of the interpreter)."""
    head = ("program nmf_step\ndim d = 4\ndim k = 2\ninput X : [n, d] in [0.1, 1]\n"
            "input W : [n, k] in [0.2, 1]\ninput H : [k, d] in [0.2, 1]\noutput G\n"
            "P = (W.T @ X / n) on [0, 10]\n")
    src = head + "G = H * P / (W.T @ W @ H / n) on [1e-3, 1e3]\n"
    with pytest.raises(tcompile.errors.ApproxError) as e:
        tcompile.compile_source(src)
    assert (e.value.line, e.value.column) == (9, 5)
    # H * P lies in [0.2, 1] [0.02, 1] (P, a mean over the tokens of products, in [0.02, 1])
    assert "the product of a value computed in it (on [0.004, 1]) and a value computed in it " \
        "(on [0.000999, 1e+03])" in e.value.message
    assert e.value.expected.startswith("narrower ranges for the factors")
    fixed = head + "G = (H * (P / (W.T @ W @ H / n) on [0.05, 5])) on [0, 50] tol 1e-4\n"
    rng = np.random.default_rng(0)
    inputs = {"X": rng.uniform(0.1, 1, (7, 4)), "W": rng.uniform(0.2, 1, (7, 2)),
              "H": rng.uniform(0.2, 1, (2, 4))}
    got = tcompile.compile_source(fixed).run(**inputs)["G"]
    want = interpret_program(parse_source(fixed), {}, **inputs)["G"]
    # two fits at 1e-4 each: the product's, and the reciprocal's scaled by H * P <= 10
    assert np.abs(got - want).max() <= 1e-4 + 10 * 1e-4


@pytest.mark.parametrize("func, ref", [("sin", np.sin), ("cos", np.cos), ("tanh", np.tanh)])
def test_the_image_of_sin_cos_tanh_holds_every_value_and_no_more(func, ref):
    """The checker's bounds on f(x) for x in [lo, hi] (what later fits and domains use): every
    value on a dense grid lies inside, and the bounds are reached (an extreme of sin and cos
    inside the interval gives ±1, else the ends)."""
    from tcompile.language.checker import _FUNC_RANGE
    rng = np.random.default_rng(3)
    cases = [(0.0, np.pi / 2), (-1.0, 1.0), (2.0, 4.0), (-10.0, -9.5), (3.0, 3.1), (-0.1, 7.0)]
    cases += [tuple(sorted(rng.uniform(-12, 12, 2))) for _ in range(200)]
    for lo, hi in cases:
        got_lo, got_hi = _FUNC_RANGE[func](lo, hi)
        values = ref(np.linspace(lo, hi, 100_001))
        assert got_lo <= values.min() + 1e-15 and values.max() - 1e-15 <= got_hi, (lo, hi)
        assert values.min() - got_lo < 1e-8 and got_hi - values.max() < 1e-8, (lo, hi)


def test_an_unbounded_leaf_from_an_earlier_statement_is_quoted_as_written_there():
    """A squared-hinge gradient step: m = y * (A @ w) is read through `active` in the step;
    the value with no bounds is A @ w, which no variable names: the message quotes it. (The
    plain hinge's clip(1000 * (1 - m), 0, 1) saturates and builds: test_a_hinge_...)"""
    err = _compile_error("program p\ndim d = 2\ninput A : [n, d] assume row_norm <= 1\n"
                         "input y : [n] sign\noutput w\nw = zeros(d)\nrepeat 3 {\n"
                         "  m = y * (A @ w)\n  active = relu(1 - m)\n"
                         "  w = w + 0.1 * A.T @ (y * active) / n\n}\n")
    assert "which values A @ w takes" in err.message and "(A @ w) on [lo, hi]" in err.message
    assert "a value computed in it" not in err.format()


@pytest.mark.parametrize("expr, lo, hi", [
    ("(D * D) @ ones(3)", 0.0, 12.0),          # D in [-2, 2]: each row sum of 3 squares
    ("ones(3) @ M", -3.0, 6.0),
    ("D @ (-0.5 * ones(3, 3))", -3.0, 3.0),
    ("sum(M)", -3.0, 6.0),                    # M : [3, 3] in [-1, 2]
])
def test_sums_over_a_small_axis_carry_bounds(expr, lo, hi):
    """A sum of k bounded entries (sum over a small first axis, a product with a constant
    fill) lies in k [lo, hi]: a sigmoid of a row sum needs no declared domain, the data's
    sums lie inside the bound, and the compiled sigmoid follows the interpreter's."""
    from tcompile.language.checker import Walker
    src = ("program p\ninput D : [n, 3] in [-2, 2]\ninput M : [3, 3] in [-1, 2]\noutput s, y\n"
           f"s = {expr}\ny = sigmoid(s)\n")
    walker = Walker(parse_source(src), {})
    env = walker.run()
    assert (env["s"].ty.lo, env["s"].ty.hi) == (lo, hi)
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(0)
    D, M = rng.choice([-2.0, 2.0], (7, 3)), rng.uniform(-1, 2, (3, 3))
    want = tcompile.interpret_program(parse_source(src), None, D=D, M=M)
    assert lo <= np.min(want["s"]) and np.max(want["s"]) <= hi
    assert np.max(np.abs(prog.run(D=D, M=M)["y"] - want["y"])) <= 1e-6


def test_a_mean_over_the_tokens_lies_in_the_values_bounds():
    """sum(x) / n of a bounded token value is a mean: a softmax-weighted readout's normaliser
    sum(e) / n of e = exp(s) needs no declared domain for its reciprocal."""
    from tcompile.language.checker import Walker
    src = ("program p\ninput X : [n, 3] in [-1, 1]\ninput s : [n] in [-2, 1]\noutput m, Z, o\n"
           "m = sum(X) / n\ne = exp(s)\nZ = sum(e) / n\no = (X.T @ e / n) / Z\n")
    env = Walker(parse_source(src), {}).run()
    assert (env["m"].ty.lo, env["m"].ty.hi) == (-1.0, 1.0)
    assert env["Z"].ty.lo == pytest.approx(np.exp(-2)) and env["Z"].ty.hi == pytest.approx(np.e)
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(1)
    X, sv = rng.uniform(-1, 1, (11, 3)), rng.uniform(-2, 1, 11)
    want = tcompile.interpret_program(parse_source(src), None, X=X, s=sv)
    got = prog.run(X=X, s=sv)
    assert np.max(np.abs(got["o"] - want["o"])) <= 1e-5


@pytest.mark.parametrize("expr, lo, hi", [
    ("A.T @ r / n", -2.0, 5.0),       # each a_i r_i lies in [0.1, 1] [-2, 5]: so does their mean
    ("r @ A / n", -2.0, 5.0),
    ("A.T @ X / n", -1.0, 1.0),       # a [3, 3] matrix of means of products
    ("r @ r / n", 0.0, 25.0),         # a mean of squares
    ("A.T @ ones(n) / n", 0.1, 1.0),
])
def test_a_mean_over_the_tokens_of_products_lies_in_the_products_bounds(expr, lo, hi):
    """`A.T @ r / n` is the mean of the products a_i r_i (Richardson–Lucy's `A.T @ (y / (A @
    x)) / n`, FastICA's `X.T @ g / n`): it lies in the bounds of one product, and a function
    of it needs no declared domain. Without `/ n` it is a sum over the tokens: no bounds."""
    from tcompile.language.checker import Walker
    src = ("program p\ninput A : [n, 3] in [0.1, 1]\ninput X : [n, 3] in [-1, 1]\n"
           f"input r : [n] in [-2, 5]\noutput s, y, t\ns = {expr}\ny = sigmoid(s)\n"
           f"t = {expr.replace(' / n', '')}\n")
    env = Walker(parse_source(src), {}).run()
    assert (env["s"].ty.lo, env["s"].ty.hi) == (lo, hi)
    assert env["t"].ty.lo is None and env["t"].ty.hi is None
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(2)
    for n in (5, 40):
        ins = dict(A=rng.uniform(0.1, 1, (n, 3)), X=rng.choice([-1.0, 1.0], (n, 3)),
                   r=rng.choice([-2.0, 5.0], n))
        want = tcompile.interpret_program(parse_source(src), None, **ins)
        assert lo <= np.min(want["s"]) and np.max(want["s"]) <= hi
        assert np.max(np.abs(prog.run(**ins)["y"] - want["y"])) <= 1e-6


def test_a_product_of_two_bounded_values_and_a_token_sum_still_carry_no_bounds():
    """Bounded, but computed: only declared ranges bound a product (D @ M, 3 x [-4, 4])."""
    from tcompile.language.checker import Walker
    src = ("program p\ninput D : [n, 3] in [-2, 2]\ninput M : [3, 3] in [-1, 2]\noutput a, b, c\n"
           "a = D @ (0.5 * M)\nb = sum(D)\nc = D @ M\n")
    env = Walker(parse_source(src), {}).run()
    assert env["a"].ty.lo is None and env["b"].ty.lo is None
    assert (env["c"].ty.lo, env["c"].ty.hi) == (-12.0, 12.0)


def test_a_divisor_known_to_be_one_number_divides_as_that_number():
    """Softmax policy gradient from th = zeros(k): in the first iteration e = exp(0) is all
    ones and sum(e) is exactly 4, a one-point interval; the reciprocal's piece is fitted on
    a sliver around it (it was refused: 'the domains declared ... leave no room')."""
    src = ("program p\ndim k = 4\nparam steps = 3\ninput r : [k] in [0, 1]\noutput p\n"
           "th = zeros(k)\nrepeat steps {\n  e = exp(clip(th, -5, 5))\n  p = e / sum(e)\n"
           "  th = th + 0.5 * (r - p @ r) * p\n}\n")
    prog = tcompile.compile_source(src)
    r = np.array([0.1, 0.9, 0.5, 0.3])
    want = tcompile.interpret_program(parse_source(src), None, r=r)["p"]
    assert np.max(np.abs(prog.run(r=r)["p"] - want)) <= 1e-5
    # and 1 / sum(e) of that number is computed now, not refined in heads: the first
    # iteration costs what its constant p = ones / 4 needs (5 layers with a refinement)
    assert tcompile.compile_source(src, params={"steps": 1}).n_layers == 3


def test_a_steep_piece_of_a_value_known_to_be_one_number_is_that_value_exactly():
    """A perceptron written with `clip(-1e6 * margin, 0, 1)` never moves w from zeros(d):
    at w = 0 every margin is 0 and nothing counts as misclassified (the program's own slip).
    The checker knows X @ w is the number 0; its piece was fitted on a 1e-9 sliver around 0,
    across which the ramp varies by 1e-3, so the fit's 1e-6 error moved the compiled w and
    the next iteration's domain check fired. On the sliver the piece is now the function's
    value at that number: w stays exactly 0, as in the interpreter."""
    src = PERCEPTRON.replace("clip(1 - 1e6 * (y * (X @ w)), 0, 1)", "clip(-1e6 * (y * (X @ w)), 0, 1)")
    assert src != PERCEPTRON
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(src)
    ins = sample_inputs(parse_source(src), n=12, seed=0)
    assert not np.any(tcompile.interpret_program(parse_source(src), None, **ins)["w"])
    assert not np.any(prog.run(**ins)["w"])
    assert not any(c["outside"] for c in tcompile.check_domains(prog, **ins))


def test_a_saturating_relu_is_not_flagged_for_a_fit_error_below_its_corner():
    """Row norms sqrt(relu((X * X) @ ones(d))): the row sums' bounds start at 0, the fitted
    squares' sums reach -3e-6 on rows of zeros, and relu makes that the 0 the piece gives;
    the domain check watches sqrt's top, and below 0 a width past the fit (saturated)."""
    src = ("program p\ndim d = 3\ninput X : [n, d] in [-1, 1]\noutput r\n"
           "r = sqrt(relu((X * X) @ ones(d)))\n")
    prog = tcompile.compile_source(src)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (50, 3))
    X[:5] = 0.0
    got = prog.run(X=X)["r"]                                  # domains="raise"
    assert np.max(np.abs(got - np.linalg.norm(X, axis=1))) < 1e-3
    (check,) = [c for c in prog.manifest["domains"] if "sqrt" in c["label"]]
    assert (check["lo"], check["hi"]) == (-3.0, 3.0)          # 0 - the width: saturated


@pytest.mark.parametrize("expr", ["log(exp(X) @ ones(k))", "log(exp(X) @ ones(k)) on [1, 9]",
                                  "log((exp(X) @ ones(k)) on [1, 9])", "log(sum(exp(X).T))"])
def test_a_function_of_a_sum_of_fitted_values_allows_their_errors(expr):
    """log-sum-exp over a small axis, on data at its bounds: the fitted exps sum to just
    below the exact bound 3/e, which the checker's bounds (new for row sums) had made the
    log's domain, also where a wider one was declared: a DomainError on valid data. The
    domain is widened to where the compiled sum may be (the pieces' ranges)."""
    src = f"program lse\ndim k = 3\ninput X : [n, k] in [-1, 1]\noutput L\nL = {expr}\n"
    prog = tcompile.compile_source(src)
    for value in (-1.0, 1.0, 0.3):
        X = np.full((4, 3), value)
        got = prog.run(X=X)["L"]                              # domains="raise"
        assert np.max(np.abs(got - np.log(3 * np.exp(value)))) <= 3e-6


@pytest.mark.parametrize("mean", ["A.T @ r / n", "sum(r) / n"])
def test_a_function_of_a_mean_over_the_tokens_of_fitted_values_allows_their_errors(mean):
    """r = sigmoid(z) is fitted; its mean over the tokens (alone or times A) lies in r's exact
    bounds, which sqrt's domain was, and on data at those bounds the compiled mean passed them
    by r's fit error: a DomainError on valid data. The domain now holds the pieces' ranges,
    as for sums over a small axis."""
    src = ("program edge\ndim d = 2\ninput A : [n, d] in [0.1, 1]\ninput z : [n] in [-1, 1]\n"
           f"output s\nr = sigmoid(z)\nm = {mean}\ns = sqrt(m)\n")
    prog = tcompile.compile_source(src)
    for z, a in ((-1.0, 0.1), (1.0, 1.0), (-1.0, 1.0), (0.2, 0.5)):
        inputs = {"A": np.full((6, 2), a), "z": np.full(6, z)}
        want = interpret_program(parse_source(src), None, **inputs)["s"]
        got = prog.run(**inputs)["s"]                          # domains="raise"
        assert np.max(np.abs(got - want)) <= 3e-6


def test_a_root_of_a_mean_of_fitted_squares_allows_their_errors():
    """RMS of a fitted tanh, `sqrt(t @ t / n + 0.01)` and `t / s` (an rsqrt refined by
    Newton steps): with every token at a bound the compiled mean of squares passes the exact
    bound by the fit error. The range of t @ t was taken as t's range times itself,
    [-0.58, 0.58], which crosses 0 where sqrt is undefined, so the domain was not widened;
    it is a sum of squares, >= 0, and the seed's domain is widened as the fitted piece's is."""
    src = "program rms\ninput z : [n] in [-1, 1]\noutput s, u\nt = tanh(z)\n" \
          "s = sqrt(t @ t / n + 0.01)\nu = t / s\n"
    prog = tcompile.compile_source(src)
    for value in (-1.0, 1.0, 0.5):
        z = np.full(7, value)
        want = interpret_program(parse_source(src), None, z=z)
        got = prog.run(z=z)                                    # domains="raise"
        assert max(np.max(np.abs(got[k] - want[k])) for k in want) <= 1e-5


EM_TWO_GAUSSIANS = """program em_two_gaussians
param steps = 10
input x : [n] in [-4, 4]
output mu1, mu2
mu1 = -1
mu2 = 1
repeat steps {
  r = sigmoid(((mu1 - mu2) * x + (mu2 * mu2 - mu1 * mu1) / 2) on [-20, 20])
  s1 = (sum(r) / n) on [0.05, 1]
  s2 = (sum(1 - r) / n) on [0.05, 1]
  mu1 = ((sum(r * x) / n) / s1) on [-4, 4]
  mu2 = ((sum((1 - r) * x) / n) / s2) on [-4, 4]
}
"""


def test_one_minus_a_fitted_value_carries_its_fit_error_into_the_next_domain():
    """EM for two Gaussian means: `(1 - r) * x` with r a fitted sigmoid. The product was
    fitted on 1 - r's exact bounds [sigmoid(-20), 1], while the compiled 1 - r reaches
    -7.7e-7 (r's fit error): a DomainError at every run. Bounds of a sum of fitted pieces and
    ones now hold the pieces' errors; the build runs, unrolled and shared, as EM in numpy."""
    rng = np.random.default_rng(2)
    x = np.clip(np.concatenate([rng.normal(-1.5, 1, 20), rng.normal(2, 1, 20)]), -4, 4)

    def em(steps):
        m1, m2 = -1.0, 1.0
        for _ in range(steps):
            r = 1 / (1 + np.exp(-((m1 - m2) * x + (m2 * m2 - m1 * m1) / 2)))
            m1, m2 = (r * x).sum() / r.sum(), ((1 - r) * x).sum() / (1 - r).sum()
        return m1, m2
    unrolled = tcompile.compile_source(EM_TWO_GAUSSIANS, file="em.tp")
    shared = tcompile.compile_source(EM_TWO_GAUSSIANS, file="em.tp", loops="shared")
    for prog, steps in ((unrolled, 10), (shared, 10), (shared, 17)):
        got = prog.run(x=x, steps=steps) if prog is shared else prog.run(x=x)
        assert np.allclose((got["mu1"], got["mu2"]), em(steps), rtol=0, atol=1e-5)


CLIP_OF_A_FIT = """program clip_fit
dim d = 3
param steps = 5
input X : [n, d] in [-1, 1]
output b
b = X[:, 1]
repeat steps {
  b = clip(0.5 * b + sigmoid(b), -1, 1)
}
"""


def test_a_clip_fused_into_a_fit_passes_its_bound_by_the_fit_error_and_the_next_domain_holds_it():
    """The clip is fused into one fitted function of b, whose fit overshoots 1 by its error
    (the compiled b reached 1 + 3.5e-8 unrolled, 1 + 3e-7 shared), while the next iteration's
    function of b was fitted on the checker's exact bounds, ending at 1: a DomainError on
    valid data (found by a fuzz of random loops). A piece's domain check now allows the error
    of the fit that computes its leaf (its fit, and so the weights, unchanged); both builds
    run and equal the interpreter to the fit budget."""
    rng = np.random.default_rng(25)
    x = rng.uniform(-1, 1, (6, 3))
    want = interpret_program(parse_source(CLIP_OF_A_FIT), X=x)["b"]
    for loops in ("unrolled", "shared"):
        prog = tcompile.compile_source(CLIP_OF_A_FIT, loops=loops)
        assert np.max(np.abs(prog.run(X=x)["b"] - want)) <= 1e-5


NORMS = """program norms
dim d = 4
input K : [n, d] assume row_norm <= 0.5
input q : [d] assume norm <= 2
input M : [d, d] spectrum in [-3, 1]
input P : [d, 3] assume norm <= 1.5
output s, t, u, m, v, r, z, c
s = K @ q
t = q @ K.T
u = M @ (-q)
m = q @ P
v = K @ (2 * q)
x = q
repeat 2 {
  x = 0.5 * M @ x
}
r = K @ x
z = K @ q
repeat 2 {
  z = 0.5 * z
}
w = q
repeat 1 {
  c = K @ w
  w = 0.5 * w
}
"""


@pytest.mark.parametrize("name, bound", [
    ("s", 1.0),     # a token's vector (row_norm 0.5) against q (norm 2): Cauchy–Schwarz
    ("t", 1.0),     # the same product read as q @ K.T: K.T's columns are the tokens
    ("u", 6.0),     # a spectral norm (|spectrum| <= 3) bounds every row; negation keeps q's norm
    ("m", 3.0),     # a row vector times a matrix of spectral norm 1.5
    ("v", None),    # 2 * q is computed: its norm is not declared, so no bound from norms
    ("r", None),    # nor a loop's state, whose norm could grow with every iteration
    ("z", None),    # nor a loop's starting value: its first iteration would get fits of its own
    ("c", None),    # w = q starts a loop: w keeps no declared norm, even in the first iteration
])
def test_declared_norms_bound_products_of_declared_values_and_nothing_else(name, bound):
    """`row_norm`, `norm` and `spectrum` bound every entry of a product of two declared
    values (|a_i . x| <= |a_i| |x|); every entry sampled data gives lies inside."""
    from tcompile.inspection.sampling import sample_inputs
    from tcompile.language.checker import Walker, resolve_params
    prog = parse_source(NORMS)
    ty = Walker(prog, resolve_params(prog)).run()[name].ty
    if bound is None:
        assert ty.lo is None and ty.hi is None
        return
    assert (ty.lo, ty.hi) == (-bound, bound)
    for seed in range(20):
        got = tcompile.interpret_program(prog, None, **sample_inputs(prog, n=13, seed=seed))
        assert np.max(np.abs(got[name])) <= bound * (1 + 1e-12)


def test_norm_product_bound_pairs_rows_of_the_left_with_columns_of_the_right():
    from tcompile.language.types import TOKEN, Ty, norm_product_bound
    tokens, qvec = Ty((TOKEN, 4), token_norm=0.5), Ty((4,), norm=2.0)
    assert norm_product_bound(tokens, qvec) == 1.0
    # the transpose's rows are not tokens: K.T @ y has no bound from K's row norms
    assert norm_product_bound(Ty((4, TOKEN), token_norm=0.5), Ty((TOKEN,), norm=2.0)) is None
    assert norm_product_bound(qvec, Ty((4, TOKEN), token_norm=0.5)) == 1.0
    assert norm_product_bound(qvec, Ty((4,))) is None
    assert norm_product_bound(Ty((4, 4), norm=3.0), Ty((4, 2), norm=0.5)) == 1.5


RANGES = """program ranges
dim d = 3
input a : [d] in [0.5, 1]
input b : [d] in [-1, 2]
input M : [d, 2] in [-1, 1]
input K : [n, d] in [-1, 1]
output s, t, u, k, v, m, x, y, h
s = a @ a
t = a @ b
u = b @ M
k = K @ a
v = (2 * a) @ b
m = -a @ b.T
x = a
repeat 2 {
  x = 0.5 * x
}
x = x @ b
y = a @ b
repeat 1 {
  y = 0.5 * y
}
h = a / sqrt(a @ a)
repeat 1 {
  h = 0.5 * h
}
"""


@pytest.mark.parametrize("name, bounds", [
    ("s", (0.75, 3.0)),     # a square over d = 3 entries: 3 * [0.25, 1], so sqrt(a @ a) builds
    ("t", (-3.0, 6.0)),     # 3 * (a_i b_i in [-1, 2])
    ("u", (-6.0, 6.0)),     # a row vector times a matrix: each entry sums 3 products in [-2, 2]
    ("k", (-3.0, 3.0)),     # token data times a vector, over its 3 features (not the tokens)
    ("m", (-6.0, 3.0)),     # negation and .T keep the declared ranges
    ("v", None),            # 2 * a is computed: its range could grow in a loop
    ("x", None),            # a loop's state is computed
    ("y", None),            # a loop's starting value: its first iteration would be fitted apart
    ("h", (0.25 / 3 ** 0.5, 0.5 / 0.75 ** 0.5)),   # ... but a divisor in one is bounded
])
def test_declared_ranges_bound_products_of_declared_values_over_small_axes(name, bounds):
    """Entries declared `in [lo, hi]` bound a product of two such values summed over a small
    axis of k entries by k times one term's range; every entry sampled data gives lies
    inside. A user's `v = v0 / sqrt(v0 @ v0)` was refused ("no known bounds")."""
    from tcompile.inspection.sampling import sample_inputs
    from tcompile.language.checker import Walker, resolve_params
    prog = parse_source(RANGES)
    ty = Walker(prog, resolve_params(prog)).run()[name].ty
    if bounds is None:
        assert ty.lo is None and ty.hi is None
        return
    assert ty.lo == pytest.approx(bounds[0], rel=1e-15) and ty.hi == pytest.approx(bounds[1], rel=1e-15)
    for seed in range(20):
        got = tcompile.interpret_program(prog, None, **sample_inputs(prog, n=7, seed=seed))[name]
        assert bounds[0] * (1 + 1e-12) - 1e-12 <= np.min(got) and np.max(got) <= bounds[1] * (1 + 1e-12)


MATRIX_SQUARED = """program mm
dim d = 3
input M : [d, d] in [-1, 1]
input v : [d] in [-1, 1]
output r, s
r = M @ M
s = v @ v
"""


def test_a_matrix_times_itself_is_no_square():
    """`v @ v` sums squares (>= 0), but `M @ M` does not: its entries sum products M_ik M_kj
    of different entries. The checker typed M @ M as [0, 3], and sqrt(M @ M) built and met
    negative values at run time (the domain guard caught it); now it is [-3, 3] and the
    sqrt is refused where it is written."""
    from tcompile.inspection.sampling import sample_inputs
    from tcompile.language.checker import Walker, resolve_params
    prog = parse_source(MATRIX_SQUARED)
    got = Walker(prog, resolve_params(prog)).run()
    assert (got["r"].ty.lo, got["r"].ty.hi) == (-3.0, 3.0)
    assert (got["s"].ty.lo, got["s"].ty.hi) == (0.0, 3.0)
    seen = min(np.min(tcompile.interpret_program(prog, None, **sample_inputs(prog, seed=k))["r"])
               for k in range(5))
    assert seen < 0         # the oracle: M @ M does take negative values
    with pytest.raises(ProgramError, match=r"sqrt\(\) is undefined on part of \[-3, 3\]"):
        tcompile.compile_source(MATRIX_SQUARED.replace("r = M @ M", "r = sqrt(M @ M)"))


DIAGONALS = """program diagonals
dim d = 3
input A : [n, d] assume row_norm <= 1
input M : [d, d] in [-1, 1]
input u : [d] in [0.5, 2]
output g, h, j, k, m, p
S = A.T @ A / n + 0.5 * I
g = diag(S)
h = diag(A.T @ A / n)
j = diag(M * I + 2 * I)
k = diag(-diag(u))
m = diag(M @ M)
p = diag(S - I)
"""


@pytest.mark.parametrize("name, bounds", [
    ("g", (0.5, 1.5)),      # a mean Gram matrix's diagonal is a mean of squares, in [0, 1]
    ("h", (0.0, 1.0)),
    ("j", (1.0, 3.0)),      # M's diagonal part, shifted by I's ones
    ("k", (-2.0, -0.5)),    # diag(u) carries u's bounds on its diagonal, negation flips them
    ("m", (-3.0, 3.0)),     # no diagonal bounds of its own: the entries'
    ("p", (-0.5, 0.5)),
])
def test_diagonals_are_bounded_tighter_than_the_entries(name, bounds):
    """`1 / diag(A.T @ A / n + 0.5 * I)`, a Jacobi preconditioner as a user writes it, was
    refused ("no known bounds": I had none, and the entries of the Gram matrix lie in [-1, 1],
    which holds 0). The diagonal's own bounds ride beside the entries' (Ty.diag); every
    diagonal entry sampled data gives lies inside."""
    from tcompile.inspection.sampling import sample_inputs
    from tcompile.language.checker import Walker, resolve_params
    prog = parse_source(DIAGONALS)
    ty = Walker(prog, resolve_params(prog)).run()[name].ty
    assert (ty.lo, ty.hi) == pytest.approx(bounds, rel=1e-15)
    for seed in range(20):
        got = tcompile.interpret_program(prog, None, **sample_inputs(prog, n=7, seed=seed))[name]
        assert bounds[0] - 1e-15 <= np.min(got) and np.max(got) <= bounds[1] + 1e-15


JACOBI_PRECONDITIONED = """program jacobi_preconditioned_gd
dim d = 4
param steps = 20
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w
S = A.T @ A / n + 0.5 * I
b = A.T @ y / n
Dinv = 1 / diag(S)
w = zeros(d)
repeat steps {
  w = w - 0.5 * Dinv * (S @ w - b)
}
"""


@pytest.mark.parametrize("loops", ["unrolled", "shared"])
def test_a_jacobi_preconditioner_needs_no_declared_domain(loops):
    """The preconditioned gradient step against numpy, unrolled and shared (at the built 20
    steps and at 31): 1 / diag(S) is fitted on [1/1.5, 1/0.5] from the diagonal's bounds."""
    rng = np.random.default_rng(3)
    A = rng.uniform(-1, 1, (11, 4))
    A /= np.maximum(1.0, np.linalg.norm(A, axis=1))[:, None]
    y = rng.uniform(-1, 1, 11)
    prog = tcompile.compile_source(JACOBI_PRECONDITIONED, loops=loops)
    S = A.T @ A / 11 + 0.5 * np.eye(4)
    b = A.T @ y / 11
    for steps in ((20, 31) if loops == "shared" else (20,)):
        w = np.zeros(4)
        for _ in range(steps):
            w = w - 0.5 * (S @ w - b) / np.diag(S)
        got = prog.run(A=A, y=y, steps=steps)["w"] if loops == "shared" else \
            prog.run(A=A, y=y)["w"]
        assert np.max(np.abs(got - w)) <= 1e-8


BETWEEN = """program between
dim k = 3
input a : [k] in [-1, 2]
input b : [k] in [0, 5]
input g : [k] in [0, 1]
input s : [] in [0, 1]
output u, v, w, z, q, r
u = g * a + (1 - g) * b
v = (1 - s) * b + a * s
w = a + s * (b - a)
z = a + (b - a) * 0.3
q = g * a + (1 - a) * b
r = a + 2 * s * (b - a)
"""


@pytest.mark.parametrize("name, bounds", [
    ("u", (-1.0, 5.0)),     # g * a + (1 - g) * b, g in [0, 1]: between a and b
    ("v", (-1.0, 5.0)),     # either order, on either side
    ("w", (-1.0, 5.0)),     # a + s * (b - a)
    ("z", (-1.0, 5.0)),     # ... with a number for the step
    ("q", (-6.0, 12.0)),    # 1 - a is no gate's complement: interval arithmetic
    ("r", (-5.0, 14.0)),    # 2 * s * (...) may pass b: interval arithmetic
])
def test_a_sum_between_two_values_lies_in_their_hull(name, bounds):
    from tcompile.inspection.sampling import sample_inputs
    from tcompile.language.checker import Walker, resolve_params
    prog = parse_source(BETWEEN)
    ty = Walker(prog, resolve_params(prog)).run()[name].ty
    assert (ty.lo, ty.hi) == bounds
    for seed in range(20):
        got = tcompile.interpret_program(prog, None, **sample_inputs(prog, seed=seed))[name]
        assert bounds[0] <= np.min(got) and np.max(got) <= bounds[1]


BISECTION = """program bisect
param steps = 20
input a : [n] in [0, 10]
output m
lo = zeros(n)
hi = 2 * ones(n)
repeat steps {
  m = (lo + hi) / 2
  f = m * m * m + m - a
  up = clip(1e6 * f, 0, 1)
  hi = up * m + (1 - up) * hi
  lo = up * lo + (1 - up) * m
}
m = (lo + hi) / 2
"""


def test_a_bisection_keeps_its_bracket_bounds_and_runs_any_count():
    """A user's per-token bisection: interval arithmetic made hi = up * m + (1 - up) * hi
    grow every step (without an `on` on m the cube's fit was refused: [0, 64], over the
    neuron limit), and with one the shared build covered at most the built 20 steps. Between
    m and hi it stays in [0, 2]; the bounds approach it from inside (lo's upper end 2 - 2^-k),
    and the extrapolated hull closes with lo and hi sharing it (steady_state._envelope): any
    count runs. Each run ends within its bracket (2^(1 - steps))
    of the root numpy finds, plus the width of the program's own ramp `clip(1e6 * f, 0, 1)`
    (1e-6 in f, f' >= 1), and the compiled one plus what the fitted cube's budget (1e-6) can
    move a decision by."""
    prog = tcompile.compile_source(BISECTION, loops="shared")
    (spec,) = prog.loops.loops
    assert spec.max_count is None
    a = np.linspace(0.0, 10.0, 9)
    root = np.array([next(r.real for r in np.roots([1, 0, 1, -ai]) if abs(r.imag) < 1e-9)
                     for ai in a])
    for steps in (12, 20, 31):
        want = tcompile.interpret_program(parse_source(BISECTION), {"steps": steps}, a=a)["m"]
        assert np.max(np.abs(want - root)) <= 2.0 ** (1 - steps) + 1e-6
        got = prog.run(a=a, steps=steps)["m"]
        assert np.max(np.abs(got - root)) <= 2.0 ** (1 - steps) + 2e-6


NORMALISED_START = """program top_singular
dim d = 5
param steps = 6
input A : [n, d] assume row_norm <= 1
input v0 : [d] assume in [0.5, 1]
output v
v = v0 / sqrt(v0 @ v0)
C = A.T @ A / n
repeat steps {
  u = C @ v
  v = (u / sqrt(u @ u) on [1e-4, 1]) on [-1, 1]
}
"""


def test_a_loop_started_from_a_normalised_input_builds_and_follows_the_interpreter():
    from tcompile.inspection.sampling import sample_inputs
    prog = parse_source(NORMALISED_START)
    for loops in ("unrolled", "shared"):
        built = tcompile.compile_source(NORMALISED_START, loops=loops)
        for seed in range(3):
            ins = sample_inputs(prog, n=12, seed=seed)
            want = tcompile.interpret_program(prog, None, **ins)["v"]
            assert np.max(np.abs(built.run(**ins)["v"] - want)) <= 1e-6


ATTENTION = """program attention_readout
dim d = 4
param beta = 2
input K : [n, d] assume row_norm <= 1
input V : [n, d] in [-1, 1]
input q : [d] assume norm <= 1
output o
e = exp(beta * (K @ q))
o = (V.T @ e / n) / (sum(e) / n)
"""


def test_a_softmax_readout_of_normed_keys_and_query_needs_no_declared_domain():
    """A user's attention readout: exp of the scores K @ q was refused ("cannot tell which
    values reach exp()") though row_norm and norm bound them by 1. It builds and follows the
    interpreter on data with every norm from 0.3 to 1."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(ATTENTION)
    for seed in range(3):
        ins = sample_inputs(parse_source(ATTENTION), n=9 + seed, seed=seed)
        want = tcompile.interpret_program(parse_source(ATTENTION), None, **ins)
        assert np.max(np.abs(prog.run(**ins)["o"] - want["o"])) <= 1e-6


@pytest.mark.parametrize("written, divisor", [
    ("o = V.T @ e / sum(e)", "sum(e)"),
    ("o = V.T @ e / (e @ e)", "e @ e"),
])
def test_a_sum_over_the_tokens_as_a_divisor_is_refused_with_the_quotient_of_means(written,
                                                                                  divisor):
    """`V.T @ e / sum(e)` (a softmax readout as a user first writes it) said only "no known
    bounds": sum(e) lies in n [lo, hi], and n is known at run time. The message gives the
    same value as a quotient of means, and that program builds (the test above)."""
    src = ATTENTION.replace("o = (V.T @ e / n) / (sum(e) / n)", written)
    with pytest.raises(ProgramError) as err:
        tcompile.compile_source(src)
    assert "sums over the n tokens" in err.value.message
    assert err.value.expected.endswith(f"(V.T @ e / n) / ({divisor} / n)")
    assert err.value.loc.column == written.index(divisor) + 1      # the caret under it


SVM_HINGE = """program svm_hinge
dim d = 4
param steps = 12
param eta = 0.5
param lam = 0.01
input X : [n, d] assume row_norm <= 1
input y : [n] sign
output w
w = zeros(d)
repeat steps {
  m = y * (X @ w)
  act = clip(1e4 * (1 - m), 0, 1)
  w = w - eta * (lam * w - X.T @ (act * y) / n)
}
"""


def _svm_numpy(X, y, steps, eta=0.5, lam=0.01):
    """Subgradient descent on the ridge-regularised hinge loss, written apart from the
    program (the active set as a boolean mask where the margin is clearly on one side)."""
    w = np.zeros(X.shape[1])
    for _ in range(steps):
        margin = y * (X @ w)
        act = np.clip(1e4 * (1 - margin), 0.0, 1.0)
        w = w - eta * (lam * w - X.T @ (act * y) / len(y))
    return w


def test_a_hinge_subgradient_step_on_sign_labels_builds_and_follows_numpy():
    """A user's linear SVM: the labels y are a sign input, and the margins y * (X @ w) of the
    loop's state have no known bounds, so the gated piece for act * y was refused ("cannot
    tell which values X @ w takes here") — also with `clip(X @ w, -2, 2)` written in, as the
    error advised. The hinge is constant outside |X @ w| <= 1 under either label, so the piece
    now reads X @ w clamped there (one exact sublayer more per step): unrolled and shared it
    follows an independent numpy implementation, at the built count and at run-time ones."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 4))
    X /= np.maximum(1.0, np.linalg.norm(X, axis=1))[:, None]
    y = np.where(X @ np.array([1.0, -0.5, 0.25, 0.0]) + 0.1 * rng.normal(size=40) > 0, 1.0, -1.0)
    # the ramp's slope 1e4 turns a margin's last-bit difference into 1e4 times that in act
    tol = 1e-10
    unrolled = tcompile.compile_source(SVM_HINGE)
    assert unrolled.n_layers == 3 * 12 - 1       # X @ w and its clamp, the hinge, the step
    assert np.max(np.abs(unrolled.run(X=X, y=y)["w"] - _svm_numpy(X, y, 12))) <= tol
    shared = tcompile.compile_source(SVM_HINGE, loops="shared")
    for steps in (5, 12, 30):
        got = shared.run(X=X, y=y, steps=steps)["w"]
        assert np.max(np.abs(got - _svm_numpy(X, y, steps))) <= tol
    clipped = SVM_HINGE.replace("y * (X @ w)", "y * clip(X @ w, -2, 2)")
    got = tcompile.compile_source(clipped).run(X=X, y=y)["w"]
    assert np.max(np.abs(got - _svm_numpy(X, y, 12))) <= tol


CLIPPED_STEP = """program clipped_step
dim d = 4
param steps = 8
param c = 0.1
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w
w = zeros(d)
repeat steps {
  g = A.T @ (A @ w - y) / n
  s = min(1, c / DIVISOR)
  w = w - 0.5 * s * g
}
"""


@pytest.mark.parametrize("written, meant", [
    ("(sqrt(g @ g + 1e-12)) on [1e-6, 10]", "sqrt(g @ g + 1e-12) on [1e-12, 100]"),
    ("((sqrt(g @ g + 1e-12)) on [1e-6, 10])", "(sqrt(g @ g + 1e-12) on [1e-12, 100])"),
])
def test_a_bound_on_a_calls_value_is_its_arguments_domain_read_through_it(written, meant):
    """A user clipping a gradient by its norm bounded the norm, `c / (sqrt(g @ g)) on [1e-6,
    10]`, and was told sqrt's argument has no known bounds: g @ g of a computed g has none.
    A bound on the value of a monotone call, as a divisor's domain or `(f(x)) on [lo, hi]`,
    is now the call's domain read back through f: the same build, weight for weight, as with
    the argument's domain written out, and the same results as the interpreter."""
    from tcompile.inspection.sampling import sample_inputs
    built = tcompile.compile_source(CLIPPED_STEP.replace("DIVISOR", written))
    plain = tcompile.compile_source(CLIPPED_STEP.replace("DIVISOR", meant))
    assert built.n_layers == plain.n_layers
    for a, b in zip(built.layers, plain.layers):
        theirs = b.arrays()
        for name, tensor in a.arrays().items():
            assert np.array_equal(tensor, theirs[name]), name
    ins = sample_inputs(parse_source(CLIPPED_STEP.replace("DIVISOR", written)), n=12, seed=1)
    want = tcompile.interpret_program(parse_source(CLIPPED_STEP.replace("DIVISOR", written)),
                                      None, **ins)["w"]
    assert np.max(np.abs(built.run(**ins)["w"] - want)) <= 1e-12


@pytest.mark.parametrize("written", [
    "(exp(g @ g)) on [0, 5]",               # exp's value down to 0: its argument down to -inf
    "(sigmoid(g @ g)) on [0, 0.9]",          # sigmoid reaches 0 only at -inf
])
def test_a_bound_that_leaves_the_argument_unbounded_still_asks_for_a_domain(written):
    err = _compile_error(CLIPPED_STEP.replace("DIVISOR", written))
    assert "no known bounds" in err.message or "cannot tell" in err.message


PERCEPTRON = """program perceptron
dim d = 3
param epochs = 10
input X : [n, d] assume row_norm <= 1
input y : [n] sign
output w
w = zeros(d)
repeat epochs {
  wrong = clip(1 - 1e6 * (y * (X @ w)), 0, 1)
  w = w + X.T @ (wrong * y) / n
}
"""


def test_a_steep_exact_ramp_widens_the_predicted_gap(tmp_path):
    """A perceptron's misclassification ramp has slope 1e6: exact in real arithmetic, but its
    ReLUs cancel terms of size 1e6 |m|, so `tcompile check` found w 8e-10 (relative) from the
    interpreter against a predicted 1e-10 and printed NO. The steepest exact ramp is recorded
    (ApproxRecord.steepest, kept by save/load) and the prediction is at least 10 ulps times
    it; the measured gap lies within it. Programs without such ramps keep 1e-10."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(PERCEPTRON)
    assert prog.predicted_rtol() == 10 * 2.0 ** -52 * 1e6
    parsed = parse_source(PERCEPTRON)
    for seed in range(4):
        ins = sample_inputs(parsed, n=16, seed=seed)
        want = tcompile.interpret_program(parsed, None, **ins)["w"]
        got = prog.run(**ins)["w"]
        assert np.max(np.abs(got - want)) <= prog.predicted_rtol() * np.max(np.abs(want))
    prog.save(tmp_path / "p")
    assert tcompile.load(tmp_path / "p").predicted_rtol() == prog.predicted_rtol()
    gentle = tcompile.compile_source(PERCEPTRON.replace("1e6", "1e2"))
    assert gentle.predicted_rtol() == 1e-10


NMF = """program nmf_mult
dim r = 4
dim c = 3
dim k = 2
param steps = 4
input V : [r, c] in [0.1, 1]
input W0 : [r, k] in [0.5, 1]
input H0 : [k, c] in [0.5, 1]
output W, H
W = W0
H = H0
repeat steps {
  H = (H * (W.T @ V) / (W.T @ W @ H) on [0.01, 20]) on [0.01, 5] tol 1e-3
  W = (W * (V @ H.T) / (W @ H @ H.T) on [0.01, 20]) on [0.01, 5] tol 1e-3
}
"""


def test_values_bounded_by_on_in_every_assignment_bound_their_products():
    """Lee–Seung multiplicative updates: H * (W.T @ V) is a fitted product, and W.T @ V had
    no known bounds although every value of W is declared by the user's `on` and V by its
    input range: a user's bound did not count as a declared range, and W's start `W = W0`
    lost its range as a loop start. Both count now (W.T @ V lies in 4 x [0.001, 5]): the
    program builds, unrolled and shared, and follows the interpreter within its budgets; a
    state the loop also assigns without an `on` still gets no product bounds."""
    from tcompile.inspection.sampling import sample_inputs
    parsed = parse_source(NMF)
    for loops in ("unrolled", "shared"):
        prog = tcompile.compile_source(NMF, loops=loops)
        for seed in range(2):
            ins = sample_inputs(parsed, n=4, seed=seed)
            want = tcompile.interpret_program(parsed, None, **ins)
            got = prog.run(**ins)
            for name in ("W", "H"):
                # 4 steps of two fitted products and two quotients, each within 1e-3
                assert np.max(np.abs(got[name] - want[name])) <= 2e-2, (loops, name)
    err = _compile_error(NMF.replace("  W = (W * (V @ H.T)", "  W = W + 0\n  W = (W * (V @ H.T)"))
    assert "W.T @ V" in err.message and "no known bounds" in err.message
