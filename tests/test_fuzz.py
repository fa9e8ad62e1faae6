"""Fuzzing the front end: whatever text comes in, parse_source + check_program raise nothing
but tcompile.TcompileError, and every error they raise can be formatted and points into the text.

Inputs: arbitrary text, token soup in the language's vocabulary, and the three shipped programs
after random edits (character insert / delete / replace, token swaps and duplications, line
deletions and duplications). Set TCOMPILE_FUZZ_EXAMPLES to search harder locally; the default
keeps the whole file at a few seconds, and `derandomize` makes it the same run every time.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tcompile
import tcompile.language.checker
from tcompile.language.checker import check_program
from tcompile.language.parser import parse_source

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {p.stem: p.read_text() for p in sorted((ROOT / "programs").glob("*.tp"))}
SCALE = int(os.environ.get("TCOMPILE_FUZZ_EXAMPLES", "0")) or 1

FUZZ = settings(deadline=None, database=None, derandomize=SCALE == 1,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# A mutated `param steps = 30` may become `param steps = 3000000`: the walk would stop at the
# unroll limit, but only after seconds. A lower limit raises the same error, sooner.
FAST_LIMIT = 3_000


# str.splitlines() breaks lines at these too; Lark (and a text editor's line count) only at \n.
ODD_LINE_BREAKS = set("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def front_end(source: str) -> None:
    """Parse and check; fail on anything but a well-formed TcompileError."""
    with mock.patch.object(tcompile.language.checker, "MAX_UNROLLED_STATEMENTS", FAST_LIMIT):
        try:
            program = parse_source(source, "fuzz.tp")
            check_program(program)
        except tcompile.TcompileError as e:
            text = e.format()
            assert isinstance(text, str) and e.message
            if e.line is not None:
                assert e.line >= 1 and e.column >= 1, text
                if not ODD_LINE_BREAKS.intersection(source):   # see test_odd_line_breaks
                    assert e.line <= source.count("\n") + 1, (e.line, text)
                assert text.startswith(f"fuzz.tp:{e.line}:{e.column}: error: "), text


# ---- arbitrary text ------------------------------------------------------------------------

@settings(FUZZ, max_examples=60 * SCALE)
@given(st.text(max_size=200))
def test_random_text(text):
    front_end(text)
    front_end("program t\n" + text)


VOCAB = ["program", "param", "dim", "input", "output", "def", "repeat", "return", "assume",
         "sign", "flag", "symmetric", "in", "row_norm", "norm", "spectrum", "on", "tol", "n",
         "I", "x", "A", "y", "k", "f", "d", "sigmoid", "sqrt", "reciprocal", "exp", "log",
         "softplus", "tanh", "sin", "cos", "abs", "relu", "clip", "sum", "0", "1", "2", "0.5", "-1", "1e3", "1e400",
         "(", ")", "[", "]", "{", "}", ",", ":", ";", "=", "<=", "+", "-", "*", "/", "@", "**",
         ".T", "\n", "\n", "\n", "#c\n"]


@settings(FUZZ, max_examples=60 * SCALE)
@given(st.lists(st.sampled_from(VOCAB), max_size=60))
def test_token_soup(tokens):
    front_end("program t\n" + " ".join(tokens))


# ---- mutations of the shipped programs -----------------------------------------------------

TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9.]+(?:[eE][+-]?[0-9]+)?|\*\*|<=|\.T|\S")
CHARS = "abdnxyzAIT_0123456789.e+-*/@()[]{},:;=<#\n \t\r\x0c\u00e9\u2028"

mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "swap_tokens", "swap_adjacent_tokens",
                     "duplicate_token", "delete_token", "delete_line", "duplicate_line",
                     "swap_lines"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(CHARS),
)


def mutate(source: str, kind: str, i: int, j: int, ch: str) -> str:
    if kind in ("insert", "delete", "replace"):
        p = i % (len(source) + 1)
        if kind == "insert":
            return source[:p] + ch + source[p:]
        return source[:p] + (ch if kind == "replace" else "") + source[p + 1:]
    if kind.endswith("line"):
        lines = source.split("\n")
        a, b = i % len(lines), j % len(lines)
        if kind == "delete_line":
            del lines[a]
        elif kind == "duplicate_line":
            lines.insert(b, lines[a])
        else:
            lines[a], lines[b] = lines[b], lines[a]
        return "\n".join(lines)
    spans = [m.span() for m in TOKEN_RE.finditer(source)]
    if not spans:
        return source
    a = i % len(spans)
    b = (a + 1) % len(spans) if kind == "swap_adjacent_tokens" else j % len(spans)
    (s1, e1), (s2, e2) = sorted([spans[a], spans[b]])
    t1, t2 = source[s1:e1], source[s2:e2]
    if kind == "delete_token":
        return source[:s1] + source[e1:]
    if kind == "duplicate_token":
        return source[:e1] + " " + t1 + source[e1:]
    if s1 == s2:
        return source
    return source[:s1] + t2 + source[e1:s2] + t1 + source[e2:]


@settings(FUZZ, max_examples=180 * SCALE)
@given(st.sampled_from(sorted(PROGRAMS)), st.lists(mutation, min_size=1, max_size=5))
def test_mutated_programs(name, edits):
    source = PROGRAMS[name]
    for edit in edits:
        source = mutate(source, *edit)
    front_end(source)


# ---- crashes the fuzzing found, pinned (see the report; tcompile/ is not ours to edit) -----

H = "program t\ninput A : [n, 2]\noutput x\n"


@pytest.mark.parametrize("source", [
    H + "x = A\n",
    H + "x = A * 2 ** 0.5\n",
    H + "x = A\nrepeat 1e3 {\n  x = x\n}\n",
])
def test_front_end_accepts_or_rejects_cleanly(source):
    front_end(source)


CRASHES = {
    # float((-8) ** 0.5): Python makes a complex number, float() raises TypeError
    "negative_base_fractional_power": H + "x = A * (-8) ** 0.5\n",
    # int(nan) / int(inf) on a repeat count or a dim: ValueError / OverflowError
    "repeat_count_nan": H + "x = A\nrepeat 1e400 - 1e400 {\n  x = x\n}\n",
    "repeat_count_inf": H + "x = A\nrepeat 1e400 {\n  x = x\n}\n",
    "dim_inf": "program t\ndim d = 1e400\ninput A : [n, d]\noutput x\nx = A\n",
    "dim_nan": "program t\ndim d = 1e400 - 1e400\ninput A : [n, d]\noutput x\nx = A\n",
    # the Lark transformer recurses once per tree level: RecursionError at ~500 levels
    "long_sum": H + "x = A" + " + 1" * 600 + "\n",
    "deep_negation": H + "x = A + " + "-" * 600 + "1\n",
}


@pytest.mark.parametrize("source", list(CRASHES.values()), ids=list(CRASHES))
def test_known_crashes(source):
    front_end(source)
