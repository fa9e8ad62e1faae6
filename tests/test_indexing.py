"""Indexing, slicing and assembling (`x[i]`, `x[a:b]`, `M[i, :]`, `A[:, j]`, `stack`, `tril`,
`triu`, `outer`, `M * I`, [1] broadcasting): the interpreter against numpy, the compiled model
against the interpreter in float64, and the refusals at file:line:column with a caret."""
from __future__ import annotations

import numpy as np
import pytest

import tcompile
from tcompile.errors import InputError, ProgramError, TcompileError
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

FORMS = """program forms
dim d = 4
param j = 2
input A: [n, d]
input M: [d, d]
input x: [d]
input s: []
col = A[:, j]
cols = A[:, 1:3]
row = A[1, :]
head = A[0:3, j - 1]
down = A[3::-2, 0]
xi = x[j + 1]
neg = x[-1]
part = x[1:3]
rev = x[::-1]
Mi = M[1, :]
Mj = M[:, j]
Mij = M[1, 3]
Mblock = M[1:3, 0:4:2]
Mt = M.T[0, 1:]
sv = stack(x[0], s, M[2, 3])
sm = stack(x, M[:, 1], M[2, :])
sn = stack(col, A[:, 0])
lo = tril(M)
up = triu(M, 1)
band = tril(M, 1) - tril(M, -2)
D = M * I
Ds = (2 * I) * M
o = outer(x[1:3], x)
on = outer(col, x)
u = stack(s)
w = u * M[:, 0:1]
zt = (A @ x)[2]
Bt = A.T[:, 1]
ns = triu(M[0:3, :], -1)
output col, cols, row, head, xi, neg, part, rev, Mi, Mj, Mij, Mblock, Mt, sv, sm, sn, lo, up, band, D, Ds, o, on, u, w
output zt, Bt, ns, down
"""


def _numpy(A, M, x, s):
    """The same program, written in numpy by hand."""
    j = 2
    col = A[:, j]
    u = np.stack([s])
    return dict(col=col, cols=A[:, 1:3], row=A[1, :], head=A[0:3, j - 1], xi=x[j + 1], neg=x[-1],
                part=x[1:3], rev=x[::-1], Mi=M[1, :], Mj=M[:, j], Mij=M[1, 3],
                Mblock=M[1:3, 0:4:2], Mt=M.T[0, 1:], sv=np.stack([x[0], s, M[2, 3]]),
                sm=np.stack([x, M[:, 1], M[2, :]]), sn=np.stack([col, A[:, 0]]), lo=np.tril(M),
                up=np.triu(M, 1), band=np.tril(M, 1) - np.tril(M, -2), D=M * np.eye(4),
                Ds=(2 * np.eye(4)) * M, o=np.outer(x[1:3], x), on=np.outer(col, x), u=u,
                w=u * M[:, 0:1], zt=(A @ x)[2], Bt=A.T[:, 1],
                ns=np.triu(M[0:3, :], -1), down=A[3::-2, 0])


def _data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return dict(A=rng.normal(size=(n, 4)), M=rng.normal(size=(4, 4)), x=rng.normal(size=4),
                s=np.float64(rng.normal()))


@pytest.fixture(scope="module")
def forms():
    return tcompile.compile_source(FORMS, file="forms.tp")


def test_the_interpreter_indexes_like_numpy():
    data = _data()
    got = interpret_program(parse_source(FORMS, "forms.tp"), **data)
    want = _numpy(**data)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == np.shape(value), name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_the_compiled_model_matches_the_interpreter(forms):
    data = _data(n=7, seed=1)
    ref = interpret_program(parse_source(FORMS, "forms.tp"), **data)
    out = forms.run(**data)
    for name, value in ref.items():
        assert out[name].shape == value.shape, name
        np.testing.assert_allclose(out[name], value, rtol=0, atol=1e-14, err_msg=name)


def test_every_form_is_exact_heads_that_select_identity_rows(forms):
    """No MLP piece: selection, stack, tril/triu, outer and M * I are products with constant
    0/1 patterns, which heads read as rows of the identity block (labels I4[..]): no pattern
    is stored."""
    assert forms.typed_manifest.approximations == ()
    assert sum(layer.mlp_hidden for layer in forms.layers) == 0
    assert not [b for b in forms.layout.blocks if b.kind == "const" and "pattern" in b.const]
    labels = [label for layer in forms.layers for label in layer.head_labels]
    assert any("I4[" in label for label in labels)


def test_a_token_index_raises_the_token_minimum():
    src = "program t\ninput A: [n, 3]\nr = A[5, :]\nv = A[0:2, 1]\noutput r, v\n"
    prog = tcompile.compile_source(src, file="t.tp")
    assert prog.layout.min_tokens == 6
    A = np.arange(21.0).reshape(7, 3)
    out = prog.run(A=A)
    np.testing.assert_array_equal(out["r"], A[5])
    np.testing.assert_array_equal(out["v"], A[0:2, 1])
    why = r"needs at least 6 tokens \(a subscript on the token axis reads token 5\)"
    with pytest.raises(InputError, match=why):
        prog.run(A=A[:4])
    with pytest.raises(InputError, match="reads token 5, but the data has 4 tokens"):
        interpret_program(parse_source(src, "t.tp"), A=A[:4])


def test_unit_shapes_broadcast_like_scalars():
    """The issue's wall: a [1] meeting a [4, 1]."""
    src = ("program t\ninput v: [4, 1]\ninput c: [1]\ny = c * v + c\nz = v / c[0] on [1, 2]\n"
           "output y, z\n")
    prog = tcompile.compile_source(src, file="t.tp")
    v, c = np.arange(4.0).reshape(4, 1), np.array([1.5])
    ref = interpret_program(parse_source(src, "t.tp"), v=v, c=c)
    np.testing.assert_allclose(ref["y"], c * v + c)
    out = prog.run(v=v, c=c)
    np.testing.assert_allclose(out["y"], ref["y"], atol=1e-14)
    np.testing.assert_allclose(out["z"], ref["z"], rtol=2e-6)     # a fitted 1 / c[0]


H = "program t\ndim d = 4\ninput x: [d]\ninput M: [d, d]\ninput A: [n, d]\ninput s: []\n"


@pytest.mark.parametrize("body, fragment, line, column", [
    ("y = x[4]\n", "index 4 is out of range for axis 0, of length 4", 7, 7),
    ("y = x[-5]\n", "index -5 is out of range", 7, 7),
    ("y = M[1, 4]\n", "index 4 is out of range for axis 1", 7, 10),
    ("y = x[1.5]\n", "an index must be an integer, got 1.5", 7, 7),
    ("y = x[s]\n", "an index must be a compile-time number", 7, 7),
    ("y = x[1, 2]\n", "too many subscripts: a [4] value has 1 axis, indexed with 2", 7, 10),
    ("y = s[0]\n", "a scalar cannot be indexed", 7, 5),
    ("y = I[0]\n", "I cannot be indexed", 7, 5),
    ("y = x[3:1]\n", "this slice of axis 0 (length 4) is empty", 7, 7),
    ("y = x[::0]\n", "a slice step cannot be 0", 7, 9),
    ("y = A[-1, :]\n", "counts from the end of the token axis", 7, 7),
    ("y = A[2:, 0]\n", "keeps a number of tokens that depends on n", 7, 7),
    ("y = A[:-1, 0]\n", "keeps a number of tokens that depends on n", 7, 7),
    ("y = A[::-1, 0]\n", "keeps a number of tokens that depends on n", 7, 7),
    ("y = A[3:3, 0]\n", "this slice of the token axis is empty", 7, 7),
    ("y = x[A[0, 0]]\n", "an index must be a compile-time number", 7, 7),
    ("y = stack(x, M)\n", "stack() needs values of one shape", 7, 14),
    ("y = stack(M, M)\n", "would have 3 axes", 7, 11),
    ("y = stack()\n", "stack() needs at least one value", 7, 5),
    ("y = tril(A)\n", "tril() of a [n, 4] value", 7, 10),
    ("y = triu(M, 0.5)\n", "the diagonal of triu() must be an integer", 7, 13),
    ("y = outer(x, M)\n", "outer() takes two vectors", 7, 14),
    ("y = outer(A[:, 0], A[:, 1])\n", "cannot hold an [n, n] value", 7, 5),
    ("y = x * M[:, 0:1]\n", "numpy would broadcast them to [4, 4], an outer product", 7, 5),
])
def test_bad_subscripts_name_the_place(body, fragment, line, column):
    with pytest.raises(ProgramError) as info:
        tcompile.compile_source(H + body + "output y\n", file="t.tp")
    err = info.value
    assert fragment in str(err)
    assert (err.loc.line, err.loc.column) == (line, column), str(err)
    text = str(err)
    assert f"t.tp:{line}:{column}:" in text and "^" in text


def test_a_subscript_takes_params_and_arithmetic():
    src = "program t\nparam k = 3\ninput x: [6]\ny = x[k - 1: 2 * k: 2]\nz = x[k // 1]\noutput y\n"
    with pytest.raises(TcompileError):          # '//' is not in the language: a syntax error
        tcompile.compile_source(src, file="t.tp")
    src = "program t\nparam k = 3\ninput x: [6]\ny = x[k - 1: 2 * k: 2]\noutput y\n"
    x = np.arange(6.0)
    np.testing.assert_array_equal(interpret_program(parse_source(src), x=x)["y"], x[2:6:2])
    np.testing.assert_array_equal(
        interpret_program(parse_source(src), params={"k": 2}, x=x)["y"], x[1:4:2])


def test_a_line_break_inside_brackets_continues_the_expression():
    """As in Python: stack(...) and [..] may span lines; inside { } a line still ends a
    statement."""
    src = ("program t\ninput x: [3]\nM = stack(x,\n          x[::-1])\nrepeat 2 {\n"
           "  M = M + outer(x[0:2],\n x)\n}\noutput M\n")
    x = np.array([1.0, 2.0, 3.0])
    got = interpret_program(parse_source(src, "t.tp"), x=x)["M"]
    np.testing.assert_array_equal(got, np.stack([x, x[::-1]]) + 2 * np.outer(x[0:2], x))


def test_an_unclosed_bracket_is_named_where_it_opens():
    src = "program t\ninput x: [3]\nM = stack(x,\n          x\ny = x\noutput M\n"
    with pytest.raises(TcompileError) as info:
        parse_source(src, "t.tp")
    assert (info.value.loc.line, info.value.loc.column) == (3, 10)
    assert "this '(' is never closed" in str(info.value) and "^" in str(info.value)


def test_assigning_to_an_entry_says_how_to_build_the_value():
    src = "program t\ninput x: [3]\ny = x\n  y[0] = 1\noutput y\n"
    with pytest.raises(TcompileError) as info:
        parse_source(src, "t.tp")
    assert (info.value.loc.line, info.value.loc.column) == (4, 3)
    assert "cannot assign to part of 'y'" in str(info.value) and "stack(" in str(info.value)
