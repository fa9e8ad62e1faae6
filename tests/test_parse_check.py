"""The front end: parsing and checking. Good programs pass; each bad program gets the right error
class, a message that says what is wrong, and the line and column of the offending text."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tcompile.language.checker import check_program
from tcompile.errors import ParamError, ProgramError, ProgramSyntaxError, TcompileError
from tcompile.language.parser import parse_file, parse_source

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "programs"


def check_source(source: str, params=None):
    return check_program(parse_source(source, "t.tp"), params)


def error_of(source: str, params=None) -> TcompileError:
    with pytest.raises(TcompileError) as info:
        check_source(source, params)
    return info.value


# ---- good programs -------------------------------------------------------------------------

@pytest.mark.parametrize("name, params", [
    ("newton_inverse", {"d": 4, "steps": 30, "norm_bound": 1.0}),
    ("least_squares", {"d": 4, "steps": 24}),
    ("newton_logistic", {"d": 5, "mu": 0.1, "steps": 8, "inv_steps": 6, "grad_tol": 1e-7,
                         "hess_tol": 1e-4}),
])
def test_shipped_programs_check(name, params):
    program = parse_file(PROGRAMS / f"{name}.tp")
    assert program.name == name
    assert check_program(program) == params


def test_shipped_program_structure():
    program = parse_file(PROGRAMS / "newton_logistic.tp")
    assert [i.name for i in program.inputs] == ["A", "y", "x0"]
    assert [o.name for o in program.outputs] == ["x"]
    assert list(program.functions) == ["inverse_newton"]
    assert program.functions["inverse_newton"].params == ("M", "k", "lo", "hi")
    kinds = {i.name: [q.kind for q in i.qualifiers] for i in program.inputs}
    assert kinds == {"A": ["row_norm"], "y": ["sign"], "x0": ["norm"]}
    line = program.source.splitlines().index("input A : [n, d] assume row_norm <= 1") + 1
    assert (program.inputs[0].loc.line, program.inputs[0].loc.column) == (line, 7)


def test_overrides_accept_numbers_and_numeric_strings():
    program = parse_file(PROGRAMS / "least_squares.tp")
    assert check_program(program, {"d": "10", "steps": 5}) == {"d": 10.0, "steps": 5.0}


def test_params_are_evaluated_in_order_and_may_use_earlier_ones():
    src = "program t\nparam a = 2\nparam b = a ** 2 + 1\ndim d = b - 3\ninput A : [n, d]\noutput x\nx = A * b\n"
    assert check_source(src) == {"a": 2.0, "b": 5.0, "d": 2.0}
    # an override of `a` flows into the later declarations
    assert check_source(src, {"a": 3}) == {"a": 3.0, "b": 10.0, "d": 7.0}


GOOD = {
    "separators_and_comments": "program t; input A : [n, 2]; output x  # trailing comment\n"
                               "x = A; x = x + 1\n\n# a comment line\n",
    "crlf_line_ends": "program t\r\ninput A : [n, 2]\r\noutput x\r\nx = A\r\n",
    "token_scaling": "program t\ninput A : [n, 3]\ninput u : [n]\noutput B\nB = u * A\n",
    "vector_broadcast_over_tokens": "program t\ninput A : [n, 3]\ninput b : [3]\noutput B\nB = A - b\n",
    "identity_sized_by_square": "program t\ninput M : [3, 3]\noutput X\nX = 2 * I - M @ I + I / 4\n",
    "domain_from_assumptions": "program t\ninput A : [n, 3] row_norm <= 1\ninput x : [3] norm <= 2\n"
                               "output p, q\np = sigmoid(2 * A - 1)\nq = sqrt(x + 2)\n",
    "sign_times_bounded": "program t\ninput A : [n, 3] assume in [-1, 1]\ninput y : [n] sign\n"
                          "output p\np = log(1 + exp(-y * A)) tol 1e-6\n",
    "explicit_domain_and_tol": "program t\ninput z : [n]\noutput p\np = sigmoid(z) on [-8, 8] tol 1e-6\n",
    "statement_tolerance": "program t\nparam t = 1e-4\ninput z : [n] in [-1, 1]\noutput p\n"
                           "p = 2 * sigmoid(z) - 1 tol t\n",
    "exact_pl_needs_no_domain": "program t\ninput z : [n]\noutput p\np = relu(z) + abs(z) + clip(z, -1, 1)\n",
    "function_inlined": "program t\ndef sq(a) {\n  b = a @ a\n  return b\n}\ninput M : [2, 2]\noutput X\nX = sq(sq(M))\n",
    "function_sees_params": "program t\nparam c = 3\ndim d = 2\ndef f(a) {\n  return c * a + d\n}\n"
                            "input M : [d, d]\noutput X\nX = f(M)\n",
    "repeat_zero_still_checked": "program t\ninput M : [2, 2]\noutput X\nX = M\nrepeat 0 {\n  X = X @ X\n}\n",
    "transpose_of_token_data": "program t\ninput A : [n, 3]\ninput y : [n]\noutput b\nb = A.T @ y / n\n",
    "scalar_input": "program t\ninput c : []\ninput v : [2]\noutput w\nw = c * v + v @ v\n",
    "keywords_usable_as_names": "program t\ninput sign : [2] sign\noutput norm\nnorm = sign * 2\n",
}


@pytest.mark.parametrize("source", list(GOOD.values()), ids=list(GOOD))
def test_good_programs(source):
    check_source(source)


def test_tol_binds_to_the_call_that_ends_a_statement():
    """`tol` after a call belongs to the call; after any other expression, to the statement."""
    program = parse_source("program t\ninput z : [n]\noutput x, y\n"
                           "x = 1 + sigmoid(z) on [-1, 1] tol 1e-3\n"
                           "y = sigmoid(z) on [-1, 1] + 1 tol 1e-4\n")
    x, y = program.body
    assert x.tol is None and x.value.right.tol.value == 1e-3
    assert y.tol.value == 1e-4 and y.value.left.tol is None


def test_constant_folding_gives_domains():
    # 2 * mu + 1 folds to a number, so it can bound a domain and a repeat count
    src = ("program t\nparam mu = 0.5\ninput z : [n]\noutput p\np = z\n"
           "repeat 2 * mu + 1 {\n  p = sqrt(p) on [0, 2 * mu + 3]\n}\n")
    check_source(src)
    # ... and a folded constant argument is evaluated at compile time (no domain needed)
    check_source("program t\ninput z : [n]\noutput p\np = z * sigmoid(2) + log(exp(1))\n")


# ---- bad programs --------------------------------------------------------------------------

H = "program t\n"
IN = "input A : [n, 2]\noutput x\n"

BAD = [
    # syntax errors
    ("syntax_missing_rhs", H + IN + "x = \n", ProgramSyntaxError, "unexpected end of line", 4, 5),
    ("syntax_bad_character", H + IN + "x = A $ 2\n", ProgramSyntaxError, "unexpected character '$'", 4, 7),
    ("syntax_unclosed_paren", H + IN + "x = (A + 1\n", ProgramSyntaxError, "this '(' is never closed", 4, 5),
    ("syntax_missing_brace", H + IN + "x = A\nrepeat 3 {\n  x = x + 1\n", ProgramSyntaxError,
     "unexpected end of file", 6, 12),
    ("syntax_no_header", IN + "x = A\n", ProgramSyntaxError, "unexpected 'input'", 1, 1),
    ("syntax_two_operators", H + IN + "x = A + * 2\n", ProgramSyntaxError, "unexpected '*'", 4, 9),
    # a def's body does not see the program's inputs or variables: say so, and to pass them
    ("def_reads_an_input", H + IN + "def f(k) {\n  return A * k\n}\nx = f(2)\n", ProgramError,
     "'A' is an input of the program, which the body of 'f' does not see", 5, 10),
    ("def_reads_a_variable", H + IN + "B = 2 * A\ndef f(k) {\n  return B * k\n}\nx = f(2)\n",
     ProgramError, "'B' is a variable of the program, which the body of 'f' does not see", 6, 10),
    # `on` after what it cannot bound, and after `tol`: say where it belongs
    ("syntax_on_after_product", H + IN + "x = 2 * A on [-2, 2]\n", ProgramSyntaxError,
     "'on [lo, hi]' cannot follow this expression", 4, 11),
    ("syntax_on_inside_call", H + IN + "x = exp(2 * A on [-2, 2])\n", ProgramSyntaxError,
     "it bounds a call, a parenthesized expression or a division", 4, 15),
    ("syntax_on_after_tol", H + IN + "x = exp(A) tol rel 1e-3 on [-2, 2]\n", ProgramSyntaxError,
     "'on [lo, hi]' comes before 'tol'", 4, 25),
    # a second qualifier without its comma: say that commas separate them
    ("syntax_qualifiers_without_comma", H + "input S : [2, 2] symmetric assume norm <= 1\noutput x\n"
     "x = S\n", ProgramSyntaxError, "qualifiers are separated by commas", 2, 28),
    ("syntax_qualifiers_without_comma_2", H + "input S : [2, 2] symmetric spectrum in [0.2, 1]\n"
     "output x\nx = S\n", ProgramSyntaxError, "'spectrum' after a qualifier", 2, 28),
    ("syntax_unknown_qualifier", H + "input A : [n, 2] positive\noutput x\nx = A\n", ProgramSyntaxError,
     "unexpected 'positive'", 2, 18),
    ("syntax_missing_colon", H + "input A [n, 2]\noutput x\nx = A\n", ProgramSyntaxError,
     "unexpected '['", 2, 9),
    ("syntax_repeat_without_count", H + IN + "x = A\nrepeat {\n  x = x\n}\n", ProgramSyntaxError,
     "unexpected '{'", 5, 8),
    ("syntax_empty_file", "", ProgramSyntaxError, "unexpected end of file", 1, 1),
    # names
    ("undefined_name", H + IN + "x = A + B\n", ProgramError, "undefined name 'B'", 4, 9),
    ("unknown_function", H + IN + "x = foo(A)\n", ProgramError, "unknown function 'foo'", 4, 5),
    # functions users reach for that the language writes otherwise: say how
    ("function_written_otherwise", H + IN + "x = A - mean(A)\n", ProgramError,
     "there is no function 'mean'; the language writes it otherwise", 4, 9),
    ("param_twice", H + "param k = 1\nparam k = 2\n" + IN + "x = A * k\n", ProgramError,
     "'k' is declared twice (first at line 2)", 3, 7),
    ("input_twice", H + "input A : [n, 2]\n" + IN + "x = A\n", ProgramError,
     "input 'A' is declared twice (first at line 2)", 3, 7),
    ("function_twice", H + "def f(a) {\n  return a\n}\ndef f(b) {\n  return b\n}\n" + IN + "x = f(A)\n",
     ProgramError, "function 'f' is defined twice (first at line 2)", 5, 5),
    ("reserved_dim_name", H + "dim n = 3\n" + IN + "x = A\n", ProgramError, "'n' is reserved", 2, 5),
    ("function_scope_hides_inputs", H + IN + "def f(a) {\n  return a + A\n}\nx = f(A)\n", ProgramError,
     "'A' is an input of the program, which the body of 'f' does not see", 5, 14),
    ("function_used_as_value", H + "def f(a) {\n  return a\n}\n" + IN + "x = f\n", ProgramError,
     "'f' is a function; call it with arguments", 7, 5),
    # arity
    ("builtin_arity", H + IN + "x = sigmoid(A, 2) on [-1, 1]\n", ProgramError,
     "sigmoid() takes 1 argument, got 2", 4, 5),
    ("clip_arity", H + IN + "x = clip(A, 1)\n", ProgramError, "clip() takes 3 arguments, got 2", 4, 5),
    ("user_function_arity", H + "def f(a, b) {\n  return a + b\n}\n" + IN + "x = f(A)\n", ProgramError,
     "f() takes 2 arguments, got 1", 7, 5),
    # shapes and what the target can hold
    ("matmul_inner_dims", H + "input A : [n, 2]\ninput B : [3, 3]\noutput x\nx = A @ B\n", ProgramError,
     "inner dimensions of [n, 2] @ [3, 3] differ (2 vs 3)", 5, 5),
    ("matmul_scalar", H + IN + "x = A @ 2\n", ProgramError, "'@' needs vectors or matrices", 4, 5),
    ("add_shapes", H + "input A : [2, 2]\ninput B : [3, 3]\noutput x\nx = A + B\n", ProgramError,
     "shapes [2, 2] and [3, 3] do not match for '+'", 5, 5),
    ("divide_by_vector", H + "input A : [n, 2]\ninput b : [3]\noutput x\nx = A / b\n", ProgramError,
     "cannot divide [n, 2] by [3]", 5, 5),
    ("identity_plus_vector", H + "input b : [2]\noutput x\nx = b + I\n", ProgramError,
     "cannot combine I with a value of shape [2] using '+'", 4, 5),
    ("n_by_n_product", H + IN + "x = A @ A.T\n", ProgramError, "cannot hold an [n, n] value", 4, 5),
    ("n_by_n_input", H + "input K : [n, n]\noutput x\nx = K\n", ProgramError,
     "cannot hold an [n, n] value", 2, 7),
    ("unknown_dim_in_shape", H + "input A : [n, k]\noutput x\nx = A\n", ProgramError,
     "unknown dimension 'k'", 2, 15),
    ("output_of_unknown_size", H + IN + "x = 2 * I\n", ProgramError,
     "the size of output 'x' cannot be inferred", 3, 8),
    ("runtime_power", H + IN + "x = A ** 2.5\n", ProgramError, "unsupported exponent 2.5 on a runtime value", 4, 10),
    # domains
    ("no_domain_for_sigmoid", H + IN + "input w : [2]\nx = sigmoid(A @ w)\n", ProgramError,
     "cannot tell which values reach sigmoid()", 5, 5),
    ("log_domain_includes_zero", H + "input A : [n, 2] assume in [0, 1]\noutput x\nx = log(A)\n", ProgramError,
     "log() is undefined on part of [0, 1]", 4, 5),
    ("log_declared_domain_includes_zero", H + IN + "x = log(A) on [0, 1]\n", ProgramError,
     "log() is undefined on part of [0, 1]", 4, 15),
    ("sqrt_of_negative_range", H + "input A : [n, 2] in [-1, 1]\noutput x\nx = sqrt(A)\n", ProgramError,
     "sqrt() is undefined on part of [-1, 1]", 4, 5),
    ("sin_beyond_its_range", H + IN + "x = sin(A) on [-2e9, 1]\n", ProgramError,
     "the compiler evaluates sin for |x| <= 2^30 only", 4, 15),
    ("empty_domain", H + IN + "x = sigmoid(A) on [1, -1]\n", ProgramError, "empty domain [1, -1]", 4, 19),
    ("runtime_domain_bound", H + IN + "input c : []\nx = sigmoid(A) on [c, 1]\n", ProgramError,
     "a domain bound must be a compile-time number", 5, 20),
    ("negative_tolerance", H + "input A : [n, 2] in [-1, 1]\noutput x\nx = sigmoid(A) tol -1\n",
     ProgramError, "a tolerance must be positive, got -1", 4, 20),
    ("negative_statement_tolerance", H + IN + "x = A + 1 tol -1\n", ProgramError,
     "a tolerance must be positive, got -1", 4, 15),
    ("runtime_statement_tolerance", H + IN + "x = A tol n\n", ProgramError,
     "a tolerance must be a compile-time number", 4, 11),
    ("constant_log_zero", H + IN + "x = A * log(0)\n", ProgramError, "log(0) has no finite value", 4, 9),
    ("constant_division_by_zero", H + IN + "x = A * (1 / 0)\n", ProgramError, "division by zero", 4, 14),
    # statements
    ("assign_to_input", H + "input A : [n, 2]\noutput A\nA = A + 1\n", ProgramError,
     "cannot assign to input 'A'", 4, 1),
    ("assign_to_param", H + "param k = 1\n" + IN + "x = A\nk = 2\n", ProgramError,
     "cannot assign to 'k': it is a param", 6, 1),
    ("repeat_fractional", H + IN + "x = A\nrepeat 2.5 {\n  x = x + 1\n}\n", ProgramError,
     "a repeat count must be a non-negative integer, got 2.5", 5, 8),
    ("repeat_negative", H + "param k = -1\n" + IN + "x = A\nrepeat k {\n  x = x + 1\n}\n", ProgramError,
     "a repeat count must be a non-negative integer, got -1", 6, 8),
    ("repeat_runtime_count", H + IN + "x = A\nrepeat n {\n  x = x + 1\n}\n", ProgramError,
     "a repeat count must be a compile-time number", 5, 8),
    ("function_parameter_shadows_param", H + "param k = 2\ndef f(a, k) {\n  return a\n}\n" + IN
     + "x = f(A, A)\n", ProgramError, "parameter 'k' of 'f' shadows a reserved name or a param",
     3, 10),
    ("function_parameter_twice", H + "def f(a, a) {\n  return a\n}\n" + IN + "x = f(A, A)\n",
     ProgramError, "'f' has two parameters named 'a'", 2, 10),
    ("recursion", H + "def f(a) {\n  return f(a)\n}\n" + IN + "x = f(A)\n", ProgramError,
     "'f' calls itself", 3, 10),
    ("mutual_recursion", H + "def f(a) {\n  return g(a)\n}\ndef g(a) {\n  return f(a)\n}\n" + IN + "x = f(A)\n",
     ProgramError, "'f' calls itself", 6, 10),
    ("return_outside_function", H + IN + "x = A\nreturn x\n", ProgramError, "'return' outside a function", 5, 1),
    ("return_inside_top_level_repeat", H + IN + "x = A\nrepeat 2 {\n  return x\n}\n", ProgramError,
     "'return' outside a function", 6, 3),
    ("function_without_return", H + "def f(a) {\n  b = a\n}\n" + IN + "x = f(A)\n", ProgramError,
     "function 'f' does not end with 'return'", 2, 5),
    ("statement_after_return", H + "def f(a) {\n  return a\n  b = a\n}\n" + IN + "x = f(A)\n", ProgramError,
     "statements after 'return' are never run", 4, 3),
    ("domain_on_user_function", H + "def f(a) {\n  return a\n}\n" + IN + "x = f(A) on [0, 1]\n", ProgramError,
     "'on'/'tol' apply to builtin functions", 7, 5),
    # outputs and the token count
    ("output_never_assigned", H + "input A : [n, 2]\noutput x, y\nx = A\n", ProgramError,
     "output 'y' is never assigned", 3, 11),
    ("no_output", H + "input A : [n, 2]\nx = A\n", ProgramError, "the program declares no output", 1, 1),
    ("n_without_token_input", H + "input A : [2, 2]\noutput x\nx = A / n\n", ProgramError,
     "'n' (the token count) is used but no input has the token axis", 4, 9),
    # qualifiers
    ("spectrum_on_rectangle", H + "input A : [2, 3] spectrum in [0, 1]\noutput x\nx = A\n", ProgramError,
     "'spectrum' needs a square matrix, not [2, 3]", 2, 18),
    ("row_norm_on_vector", H + "input A : [2] row_norm <= 1\noutput x\nx = A\n", ProgramError,
     "'row_norm' bounds the rows of token data", 2, 15),
    # params
    ("dim_not_integer", H + "dim d = 2.5\ninput A : [n, d]\noutput x\nx = A\n", ParamError,
     "dim 'd' must be a positive integer, got 2.5", 2, 5),
    ("param_not_constant", H + "param k = A\n" + IN + "x = A\n", ProgramError,
     "undefined name 'A'", 2, 11),
]


QUIET = {"constant_log_zero": pytest.mark.filterwarnings("ignore::RuntimeWarning")}  # see below


@pytest.mark.parametrize("source, cls, fragment, line, column",
                         [pytest.param(*case[1:], id=case[0], marks=QUIET.get(case[0], ()))
                          for case in BAD])
def test_bad_programs(source, cls, fragment, line, column):
    err = error_of(source)
    assert type(err) is cls, err.format()
    assert fragment in err.message, err.format()
    assert (err.line, err.column) == (line, column), err.format()
    assert err.file == "t.tp"
    text = err.format()
    assert text.startswith(f"t.tp:{line}:{column}: error: ")
    if source:   # the source line follows, then a caret under the column
        shown, caret = text.splitlines()[1:3]
        assert shown == "    " + source.split("\n")[line - 1]
        assert caret == "    " + " " * (column - 1) + "^"


def test_syntax_error_lists_what_was_expected():
    err = error_of(H + IN + "x = \n")
    assert err.expected is not None
    for word in ("a name", "a number", "'('"):
        assert word in err.expected
    assert "  expected: " in err.format()


@pytest.mark.parametrize("overrides, fragment", [
    ({"zz": 1}, "unknown parameter 'zz'; this program has: d, steps"),
    ({"steps": "many"}, "parameter 'steps' must be a number, got 'many'"),
    ({"steps": float("nan")}, "parameter 'steps' must be a finite number"),
    ({"steps": True}, "parameter 'steps' must be a finite number"),
    ({"d": 2.5}, "dim 'd' must be a positive integer, got 2.5"),
    ({"d": 0}, "dim 'd' must be a positive integer, got 0"),
])
def test_bad_overrides(overrides, fragment):
    program = parse_file(PROGRAMS / "least_squares.tp")
    with pytest.raises(ParamError) as info:
        check_program(program, overrides)
    assert fragment in info.value.message
    if "unknown" in fragment or "number" in fragment:
        # an override comes from the command line / the API, not from the program text
        assert info.value.line is None and info.value.column is None
        assert info.value.format().startswith("error: ")


def test_negative_repeat_from_override():
    program = parse_file(PROGRAMS / "newton_inverse.tp")
    with pytest.raises(ProgramError) as info:
        check_program(program, {"steps": -3})
    assert "non-negative integer, got -3" in info.value.message
    assert (info.value.line, info.value.column) == (15, 8)


def test_parse_file_missing(tmp_path):
    with pytest.raises(TcompileError) as info:
        parse_file(tmp_path / "nope.tp")
    assert "cannot read program file" in info.value.message


def test_errors_are_tcompile_errors():
    for cls in (ProgramSyntaxError, ProgramError, ParamError):
        assert issubclass(cls, TcompileError)


# ---- front-end bugs found while writing these tests (tcompile/ is the lead's to fix) -------

@pytest.mark.parametrize("odd", ["\x0c", "\u2028", "\r"], ids=["formfeed", "u2028", "lone_cr"])
def test_odd_line_breaks(odd):
    # a form feed is whitespace to the grammar; a \u2028 or lone \r can sit in a comment
    source = f"program t\ninput A : [n, 2] # c{odd}x\noutput x\nx = A + B\n"
    err = error_of(source)
    assert (err.line, err.column) == (4, 9)
    assert err.format().splitlines()[1] == "    x = A + B"


def test_eof_location_with_odd_line_break():
    err = error_of("#\x850")
    assert err.line == 1


@pytest.mark.parametrize("call", ["log(0)", "sqrt(-1)"])
def test_constant_folding_emits_no_numpy_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = error_of(H + IN + f"x = A * {call}\n")
    assert "has no finite value" in err.message


def test_runtime_value_divided_by_constant_zero():
    err = error_of(H + IN + "x = A / (1 - 1)\n")
    assert isinstance(err, ProgramError) and "division by zero" in err.message


def test_infinite_param_declaration():
    err = error_of(H + "param k = 1e400\n" + IN + "x = A * k\n")
    assert "finite" in err.message and (err.line, err.column) == (2, 7)


@pytest.mark.parametrize("fname", ["sigmoid", "n"])
def test_def_with_reserved_name(fname):
    err = error_of(H + f"def {fname}(a) {{\n  return a\n}}\n" + IN + f"x = {fname}(A)\n")
    assert isinstance(err, ProgramError) and "reserved" in err.message
    assert (err.line, err.column) == (2, 5)


def test_a_missing_qualifier_comma_gives_the_line_that_parses():
    """The expected text is the declaration with its comma (and no second `assume`), and that
    line parses, with both qualifiers."""
    src = H + "input S : [2, 2] symmetric assume norm <= 1\noutput x\nx = S\n"
    with pytest.raises(ProgramSyntaxError) as err:
        parse_source(src, "q.tp")
    assert err.value.expected == "input S : [2, 2] symmetric, norm <= 1"
    fixed = parse_source(H + err.value.expected + "\noutput x\nx = S\n", "q.tp")
    assert [q.kind for q in fixed.inputs[0].qualifiers] == ["symmetric", "norm"]


@pytest.mark.parametrize("func", ["sign", "mean", "norm", "softmax", "dot", "transpose", "inv",
                                  "eye"])
def test_a_function_written_otherwise_says_what_to_write(func):
    """The error names what to write instead (the table beside BUILTINS), not the list of
    builtins an unknown name gets."""
    from tcompile.language.checker import WRITTEN_OTHERWISE
    src = H + "input A : [n, 2]\noutput x\nx = " + func + "(A)\n"
    with pytest.raises(ProgramError) as err:
        check_program(parse_source(src, "w.tp"))
    assert err.value.expected == WRITTEN_OTHERWISE[func]


def test_an_error_in_a_later_iteration_names_the_loop_variable_whose_shape_changed():
    """Orthogonal iteration with `Q = stack(q1, q2)` ([2, 5]; `.T` was meant) for Q : [5, 2]:
    the second iteration's `M @ Q` was refused for its inner dimensions alone, though the
    line looks right. The error now says which loop variable the body reshaped, and where;
    an error in the first iteration, or with no shape changed, is as before."""
    src = ("program orth\ndim d = 5\ninput M : [d, d] spectrum in [0.1, 1]\n"
           "input Q0 : [d, 2] assume norm <= 1\noutput Q\nQ = Q0\nrepeat 3 {\n"
           "  Z = M @ Q\n  Q = stack(Z[:, 0], Z[:, 1])\n}\n")
    with pytest.raises(ProgramError) as err:
        check_program(parse_source(src, "o.tp"))
    assert (err.value.line, err.value.column) == (8, 7)
    assert err.value.message == (
        "inner dimensions of [5, 5] @ [2, 5] differ (5 vs 2) (in a later iteration: 'Q' "
        "entered the loop as [5, 2] and the body makes it [2, 5] (line 9))")
    check_program(parse_source(src.replace("Z[:, 1])", "Z[:, 1]).T"), "o.tp"))
    with pytest.raises(ProgramError) as err:
        check_program(parse_source(src.replace("M @ Q", "Q @ M"), "o.tp"))
    assert "later iteration" not in err.value.message


def test_a_runtime_repeat_count_says_how_counts_are_chosen_at_run_time():
    """`repeat k` with k an input: the count must be a compile-time number, and the fix says
    how a count is chosen when the model runs (a param given to a shared build) or how a loop
    stops by itself (until)."""
    src = H + "input A : [n, 2]\ninput k : [] in [1, 5]\noutput x\nx = A\nrepeat k {\n  x = 0.5 * x\n}\n"
    with pytest.raises(ProgramError) as err:
        check_program(parse_source(src, "k.tp"))
    assert "a repeat count must be a compile-time number" in err.value.message
    assert "`param k = 10`" in err.value.expected and "-p k=N" in err.value.expected
    assert "until=" in err.value.expected


@pytest.mark.parametrize("call, words", [("log(x)", "log(...) on [lo, hi] with lo > 0"),
                                          ("sqrt(x - 1)", "sqrt(...) on [lo, hi] with lo >= 0")])
def test_a_function_undefined_on_its_arguments_bounds_says_which_domain(call, words):
    src = H + "input x : [n] in [0, 1]\noutput z\nz = " + call + "\n"
    with pytest.raises(ProgramError) as err:
        check_program(parse_source(src, "u.tp"))
    assert "is undefined on part of" in err.value.message and words in err.value.expected
