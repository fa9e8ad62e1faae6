"""Every elementwise operator on every pair of shapes the language broadcasts, with real, sign
and flag operands, compiled and compared with the interpreter (the oracle) on random data.

A sign or flag [k] vector times token data [n, k] was lowered as a gate of the data's own
shape and came out silently wrong (24 of these combinations on the tree before 71c51a6);
this sweep is what found how far that reached. Refusals are fine (a fitted product needs
bounds, a divisor must exclude 0); a wrong number is not.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import tcompile
from tcompile.errors import TcompileError
from tcompile.language.parser import parse_source

SHAPES = {"[]": (), "[3]": (3,), "[n]": ("n",), "[n, 3]": ("n", 3), "[2, 3]": (2, 3),
          "[3, 3]": (3, 3)}
LEFT = {"real": "in [-1, 1]", "sign": "sign", "flag": "flag"}
RIGHT = {"pos": "in [0.5, 2]", "sign": "sign", "flag": "flag"}      # pos: a divisor too
OPS = ("a + b", "a - b", "a * b", "a / b", "max(a, b)")      # both orders: (left, right) pairs
N = 5


def _sample(rng, shape, kind):
    dims = tuple(N if d == "n" else d for d in shape)
    if kind == "sign":
        return rng.choice([-1.0, 1.0], size=dims)
    if kind == "flag":
        return rng.choice([0.0, 1.0], size=dims)
    return rng.uniform(-1, 1, size=dims) if kind == "real" else rng.uniform(0.5, 2, size=dims)


@pytest.mark.parametrize("left, right", list(itertools.product(SHAPES, repeat=2)))
def test_every_operator_broadcasts_as_the_interpreter_does(left, right):
    rng = np.random.default_rng(len(left) * 7 + len(right))
    checked = 0
    for (ka, qa), (kb, qb), op in itertools.product(LEFT.items(), RIGHT.items(), OPS):
        token = "n" in SHAPES[left] or "n" in SHAPES[right]
        src = (f"program t\n{'' if token else 'input z : [n]' + chr(10)}"
               f"input a : {left} {qa}\ninput b : {right} {qb}\noutput c\nc = {op}\n")
        try:
            prog = tcompile.compile_source(src)
        except TcompileError:
            continue
        ins = {"a": _sample(rng, SHAPES[left], ka), "b": _sample(rng, SHAPES[right], kb)}
        if not token:
            ins["z"] = np.zeros(N)
        want = tcompile.interpret_program(parse_source(src), None, **ins)["c"]
        got = prog.run(**ins)["c"]
        fitted = "/" in op or ("*" in op and ka == "real" and kb == "pos")
        scale = max(1.0, float(np.max(np.abs(want))))
        assert np.max(np.abs(got - want)) <= (1e-5 if fitted else 1e-12) * scale, (src, got, want)
        checked += 1
    # every pair of shapes that broadcasts builds at least its sums (exact, no bounds needed)
    assert checked or not _broadcasts(SHAPES[left], SHAPES[right])


def _broadcasts(a, b) -> bool:
    """numpy's rule restricted to what the language holds: equal, a scalar, [k] along the last
    axis of a matrix, and [n] per token of [n, k]."""
    return (a == b or () in (a, b) or (len(a) == 1 and len(b) == 2 and b[1] == a[0])
            or (len(b) == 1 and len(a) == 2 and a[1] == b[0])
            or ("n",) in (a, b) and ("n", 3) in (a, b))
