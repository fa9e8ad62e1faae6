"""The lowering (compiler/lower.py), its elementwise algebra (compiler/elementwise.py) and the
graph it reads (every node attribute documented in compiler/nodes.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from passes import atoms, dataflow
from tcompile.compiler import nodes
from tcompile.compiler.elementwise import (Call, Const, Leaf, Product, Sum, affine, evaluate,
                                           leaves, pulled_back_domains, shape_key, to_text)
from tcompile.compiler.poly import MAX_FACTORS, Mono

U, G = 7, 8                                      # two leaf atom ids
SIG = Call("sigmoid", (), Product(Const(-1.0), Leaf(U)), (-6.0, 6.0), 1e-7)


# ---- the elementwise algebra ---------------------------------------------------------------

def test_evaluate_against_numpy():
    u, g = np.linspace(-3, 3, 7), np.array([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    e = Sum(Product(Leaf(G), SIG), Product(Const(2.0), Call("clip", (-1.0, 1.0), Leaf(U), None, None)))
    np.testing.assert_allclose(evaluate(e, {U: u, G: g}), g * expit(-u) + 2 * np.clip(u, -1, 1),
                               rtol=1e-15)
    assert leaves(e) == {U, G}


def test_affine_in_the_leaf_with_signs_fixed():
    e = Sum(Product(Leaf(G), Product(Const(3.0), Leaf(U))), Const(0.5))      # g·3u + 0.5
    assert affine(e, U, {G: -1.0}) == (-3.0, 0.5)
    assert affine(Product(Leaf(U), Leaf(U)), U, {}) is None                  # u² is not affine
    assert affine(SIG, U, {}) is None


def test_declared_domains_pull_back_through_affine_steps():
    e = Call("sqrt", (), Sum(Product(Const(2.0), Leaf(U)), Const(1.0)), (0.0, 9.0), None)
    assert pulled_back_domains(e, U, {}) == [(-0.5, 4.0)]                     # 2u + 1 ∈ [0, 9]
    assert pulled_back_domains(SIG, U, {}) == [(-6.0, 6.0)]


def test_text_reads_like_the_source():
    names = {U: "z", G: "y"}
    assert to_text(Sum(Leaf(U), Product(Const(-1.0), Leaf(G))), names) == "z - y"
    assert to_text(SIG, names) == "sigmoid(-z)"


def test_shape_key_ignores_which_atoms_and_the_order_of_commuting_terms():
    a = Sum(Product(Leaf(G), Leaf(U)), Const(1.0))
    b = Sum(Const(1.0), Product(Leaf(U + 10), Leaf(G + 10)))
    assert shape_key(a, U, [(G, "sign")]) == shape_key(b, U + 10, [(G + 10, "sign")])
    assert shape_key(a, U, [(G, "sign")]) != shape_key(Sum(Leaf(U), Const(1.0)), U, [])


# ---- lowering ------------------------------------------------------------------------------

def test_a_newton_step_is_one_polynomial_of_three_factor_monomials():
    src = """program t
dim d = 3
input A : [d, d] assume norm <= 1
input X : [d, d] assume norm <= 1
output Y
Y = 2 * X - X @ A @ X
"""
    df, table = atoms(src)
    A, X, Y = df.inputs["A"], df.inputs["X"], df.outputs["Y"]
    assert table[Y].kind == "attn"
    assert table[Y].poly == {Mono(((X, False),)): 2.0,
                             Mono(((X, False), (A, False), (X, False))): -1.0}


def test_a_product_of_more_than_three_factors_stores_an_operand():
    src = """program t
dim d = 2
input A : [d, d] assume norm <= 1
output Y
Y = A @ A @ A @ A @ A
"""
    df, table = atoms(src)
    assert len([a for a in table.values() if a.kind == "attn"]) >= 2
    assert all(m.degree <= MAX_FACTORS for a in table.values() if a.poly for m in a.poly)


def test_elementwise_work_becomes_an_mlp_atom_gated_by_the_ones_row():
    src = """program t
dim d = 2
input A : [n, d] assume row_norm <= 1
input y : [n] sign
input x : [d] assume norm <= 1
output p
p = y * sigmoid(-y * (A @ x)) on [-3, 3]
"""
    df, table = atoms(src)
    p = table[df.outputs["p"]]
    assert p.kind == "mlp" and p.piece.kind == "unary"
    assert table.ones is not None and p.gate == table.ones
    assert table[table.ones].node["op"] == "ones"
    assert p.inputs[-1] == table.ones and set(p.piece.inputs) <= set(p.inputs)


CONSTANT_CALLS = """program t
dim d = 3
dim k = 2
input A : [n, d] assume row_norm <= 1
input y : [n] in [0, 4]
input Y : [n, k] in [0, 4]
output g, mu, m, s
z = zeros(n)
mu = exp(z) on [-1, 1] tol rel 1e-6     # the first step of a Poisson loop from w = 0
g = A.T @ (mu - y) / n                  # was refused: exp(0) - y fitted relative to itself
m = (sigmoid(zeros(d)) tol rel 1e-6) + ones(d)
s = A.T @ ((exp(zeros(n, k)) tol rel 1e-6) * Y) / n
"""


def test_a_smooth_function_of_a_constant_is_that_constant_not_a_fit():
    """exp(z) with z = zeros(n) is ones(n), computed while lowering (no piece, no budget, no
    relative tol handed to the `- y` it is fused with); a [k] or [n, k] constant is a
    leaf-free tree. Compiled = interpreter in float64."""
    import tcompile
    from tcompile.language.parser import parse_source
    prog = tcompile.compile_source(CONSTANT_CALLS)
    assert not any("exp" in a["name"] or "sigmoid" in a["name"]
                   for a in prog.report["approximations"])
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 3))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    data = dict(A=A, y=rng.uniform(0, 4, 7), Y=rng.uniform(0, 4, (7, 2)))
    got = prog.run(**data)
    want = tcompile.interpret_program(parse_source(CONSTANT_CALLS), None, **data)
    for name in ("g", "mu", "m", "s"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-14, atol=1e-15, err_msg=name)


def test_the_one_over_n_atom_has_a_named_place():
    src = """program t
dim d = 2
input A : [n, d] assume row_norm <= 1
output S
S = A.T @ A / n
"""
    df, table = atoms(src)
    assert table.inv_n is not None and df.graph.nodes[table.inv_n]["op"] == "inv_n"


# ---- the graph's attributes are all documented ----------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = sorted((ROOT / "programs").glob("*.tp")) + sorted((ROOT / "tests" / "corpus").glob("*.tp"))[::4]


@pytest.mark.parametrize("path", GRAPHS, ids=[p.name for p in GRAPHS])
def test_every_node_attribute_is_documented(path):
    df = dataflow(path.read_text())
    for nid, attrs in df.graph.nodes(data=True):
        assert not nodes.undocumented(attrs), (nid, attrs)
        assert set(df.graph.predecessors(nid)) == set(attrs["args"])      # args are the in-edges
