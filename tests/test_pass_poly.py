"""The lowering's algebra (tcompile/compiler/poly.py) on small hand-built atoms: monomials and
their transposes, sums and products with zero elimination, structural symmetry, the weighted-Gram
symmetrisation, storage orientation. Every rewrite is also checked numerically: a Poly is
evaluated on random matrices for its atoms, before and after.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tcompile.compiler.poly import (Atom, AtomTable, Mono, add_polys, dims, max_degree,
                                    mul_polys, norm_factor, poly_is_symmetric,
                                    symmetrize_weighted_grams, transpose_mono, transpose_poly)
from tcompile.language.checker import TOKEN

N, D, K = 5, 3, 2
# atom ids: small matrices M, P (D×D), S symmetric (D×D), R (D×K); token data A, V (N×K);
# W = u ⊙ V (an MLP product, N×K); runtime scalars s, t (1×1)
M, P, S, R, A, V, W, s, t = range(1, 10)


def table(**extra) -> AtomTable:
    atoms = [Atom(M, "input", (D, D)), Atom(P, "input", (D, D)),
             Atom(S, "input", (D, D), symmetric=True), Atom(R, "input", (D, K)),
             Atom(A, "input", (TOKEN, K)), Atom(V, "input", (TOKEN, K)),
             Atom(W, "mlp", (TOKEN, K), diag_of=V),
             Atom(s, "input", (1, 1), symmetric=True), Atom(t, "input", (1, 1), symmetric=True)]
    return AtomTable(((a.id, a) for a in atoms), **extra)


def values(seed=0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal
    sym = g((D, D))
    v, u = g((N, K)), g(N)
    return {M: g((D, D)), P: g((D, D)), S: sym + sym.T, R: g((D, K)), A: g((N, K)), V: v,
            W: u[:, None] * v, s: g((1, 1)), t: g((1, 1))}


def mono_value(vals, m: Mono) -> np.ndarray:
    out = None
    for a, tr in m.chain:
        f = vals[a].T if tr else vals[a]
        out = f if out is None else out @ f
    out = np.eye(D) if out is None else out        # an empty chain: a multiple of I
    for x in m.scalars:
        out = out * vals[x][0, 0]
    return out


def poly_value(vals, p, shape=(D, D)) -> np.ndarray:
    return sum((c * mono_value(vals, m) for m, c in p.items()), np.zeros(shape))


def mono(*chain, scalars=()) -> Mono:
    """mono((M, False), (P, True), scalars=(s,)) = s · M Pᵀ."""
    return Mono(tuple(chain), tuple(scalars))


# ---- monomials -----------------------------------------------------------------------------------

def test_degree_counts_factors_and_scalars():
    assert mono().degree == 0
    assert mono((M, False), (P, True), scalars=(s, t)).degree == 4
    assert max_degree({}) == 0
    assert max_degree({mono((M, False)): 1.0, mono((M, False), (P, False), scalars=(s,)): 2.0}) == 3


def test_dims_of_a_factor():
    atoms = table()
    assert dims(atoms, (R, False)) == (D, K) and dims(atoms, (R, True)) == (K, D)
    assert dims(atoms, (A, False)) == (TOKEN, K) and dims(atoms, (A, True)) == (K, TOKEN)


def test_transpose_reverses_the_chain_and_flips_each_factor():
    atoms = table()
    m = mono((M, False), (P, True), (R, False), scalars=(s,))
    assert transpose_mono(atoms, m) == mono((R, True), (P, False), (M, True), scalars=(s,))
    assert transpose_mono(atoms, mono((A, True), (V, False))) == mono((V, True), (A, False))


def test_symmetric_factors_are_never_transposed():
    atoms = table()
    assert norm_factor(atoms, (S, True)) == (S, False)
    assert norm_factor(atoms, (M, True)) == (M, True)
    assert transpose_mono(atoms, mono((M, False), (S, False))) == mono((S, False), (M, True))
    # Mᵀ S M is its own transpose
    own = mono((M, True), (S, False), (M, False))
    assert transpose_mono(atoms, own) == own


def test_transpose_is_an_involution_and_transposes_the_value():
    atoms, vals = table(), values()
    factors = [(M, False), (M, True), (P, False), (P, True), (S, False), (R, True)]
    for chain in itertools.product(factors, repeat=2):
        if dims(atoms, chain[0])[1] != dims(atoms, chain[1])[0]:
            continue
        m = mono(*chain, scalars=(t,))
        mt = transpose_mono(atoms, m)
        assert transpose_mono(atoms, mt) == m
        np.testing.assert_allclose(mono_value(vals, mt), mono_value(vals, m).T, rtol=1e-12)


# ---- sums and products ---------------------------------------------------------------------------

def test_add_combines_coefficients_and_drops_zeros():
    a, b, c = mono((M, False)), mono((P, False)), mono((M, False), (P, False))
    p, q = {a: 1.0, b: 2.0}, {b: -1.0, c: 3.0}
    assert add_polys((1.0, p), (2.0, q)) == {a: 1.0, c: 6.0}            # b: 2 - 2 = 0, dropped
    assert add_polys((1.0, p), (-1.0, p)) == {}
    assert add_polys() == {}
    vals = values()
    np.testing.assert_allclose(poly_value(vals, add_polys((0.5, p), (-3.0, q))),
                               0.5 * poly_value(vals, p) - 3.0 * poly_value(vals, q), rtol=1e-12)


def test_mul_concatenates_chains_and_merges_sorted_scalars():
    atoms = table()
    got = mul_polys(atoms, {mono((M, False), scalars=(t,)): 2.0},
                    {mono((P, True), scalars=(s,)): 3.0})
    assert got == {mono((M, False), (P, True), scalars=(s, t)): 6.0}


def test_mul_distributes_and_drops_cancelled_terms():
    atoms, vals = table(), values(1)
    mm, pp = mono((M, False)), mono((P, False))
    # (M + P)(M - P) = MM - MP + PM - PP: four monomials (matrices do not commute)
    got = mul_polys(atoms, {mm: 1.0, pp: 1.0}, {mm: 1.0, pp: -1.0})
    assert got == {mono((M, False), (M, False)): 1.0, mono((M, False), (P, False)): -1.0,
                   mono((P, False), (M, False)): 1.0, mono((P, False), (P, False)): -1.0}
    # (M - sM)(1 + s) = M - s²M: the two sM terms cancel and vanish
    got = mul_polys(atoms, {mm: 1.0, mono((M, False), scalars=(s,)): -1.0},
                    {mono(): 1.0, mono(scalars=(s,)): 1.0})
    assert got == {mm: 1.0, mono((M, False), scalars=(s, s)): -1.0}
    sv = vals[s][0, 0]
    np.testing.assert_allclose(poly_value(vals, got), vals[M] - sv * sv * vals[M], rtol=1e-12)
    assert mul_polys(atoms, {}, {mm: 1.0}) == {}


# ---- symmetry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("poly, symmetric", [
    ({mono((M, False)): 1.0, mono((M, True)): 1.0}, True),                         # M + Mᵀ
    ({mono((M, False)): 1.0, mono((M, True)): -1.0}, False),                       # M - Mᵀ
    ({mono((M, False), (P, False)): 1.0, mono((P, True), (M, True)): 1.0}, True),  # MP + (MP)ᵀ
    ({mono((M, False), (P, False)): 2.0}, False),
    ({mono((M, True), (S, False), (M, False)): 1.0, mono((S, False)): 3.0}, True),  # MᵀSM + 3S
    ({mono((M, False), (S, False)): 1.0, mono((S, False), (M, True)): 0.5}, False),  # coefficients
    ({mono(scalars=(s, t)): 1.0}, True),                                           # st·I
    ({}, True),
])
def test_symmetry_is_structural(poly, symmetric):
    atoms, vals = table(), values(2)
    assert poly_is_symmetric(atoms, poly) is symmetric
    value = poly_value(vals, poly)
    assert np.allclose(value, value.T, rtol=1e-12, atol=1e-12) is symmetric
    np.testing.assert_allclose(poly_value(vals, transpose_poly(atoms, poly)), value.T, rtol=1e-12)


def test_define_sets_symmetry_from_the_definition():
    atoms = table()
    x = Atom(20, "attn", (D, D))
    x.define(atoms, {mono((M, False)): 1.0, mono((M, True)): 1.0})
    assert x.symmetric and x.poly == {mono((M, False)): 1.0, mono((M, True)): 1.0}
    x.define(atoms, {mono((M, False)): 1.0})
    assert not x.symmetric
    # a 1×1 value is its own transpose, whatever its definition: xᵀ M y (x, y : [D])
    atoms.update({23: Atom(23, "input", (D, 1)), 24: Atom(24, "input", (D, 1))})
    xmy = {mono((23, True), (M, False), (24, False)): 1.0}
    assert not poly_is_symmetric(atoms, xmy)
    scalar = Atom(21, "attn", (1, 1))
    scalar.define(atoms, xmy)
    assert scalar.symmetric
    wide = Atom(22, "attn", (D, K))
    wide.define(atoms, {mono((R, False)): 1.0})
    assert not wide.symmetric


def test_weighted_gram_is_symmetrized():
    """Vᵀ(u⊙V) → ½Vᵀ(u⊙V) + ½(u⊙V)ᵀV: equal in exact arithmetic, structurally symmetric."""
    atoms, vals = table(), values(3)
    gram = mono((V, True), (W, False))
    swapped = mono((W, True), (V, False))
    got = symmetrize_weighted_grams(atoms, {gram: 4.0})
    assert got == {gram: 2.0, swapped: 2.0}
    assert poly_is_symmetric(atoms, got) and not poly_is_symmetric(atoms, {gram: 4.0})
    before = poly_value(vals, {gram: 4.0}, (K, K))
    np.testing.assert_allclose(poly_value(vals, got, (K, K)), before, rtol=1e-12)
    np.testing.assert_allclose(before, before.T, rtol=1e-12)          # the fact it rests on


def test_weighted_gram_inside_a_chain_and_zero_elimination():
    atoms = table()
    inner = mono((R, False), (V, True), (W, False))                # R Vᵀ(u⊙V)
    assert symmetrize_weighted_grams(atoms, {inner: 1.0}) == {
        inner: 0.5, mono((R, False), (W, True), (V, False)): 0.5}
    gram, swapped = mono((V, True), (W, False)), mono((W, True), (V, False))
    # 2 Vᵀ(u⊙V) - (u⊙V)ᵀV: the swapped halves cancel
    assert symmetrize_weighted_grams(atoms, {gram: 2.0, swapped: -1.0}) == {gram: 1.0}
    # (u⊙V)ᵀV itself and products of unrelated factors are left alone
    plain = {swapped: 1.0, mono((A, True), (V, False)): 2.0, mono((V, True), (A, False)): 1.0}
    assert symmetrize_weighted_grams(atoms, plain) == plain


# ---- storage ---------------------------------------------------------------------------------------

def test_token_axis_is_always_the_stored_columns():
    atoms = table()
    assert atoms[A].is_token and not atoms[M].is_token
    assert not atoms[A].storable(False) and atoms[A].storable(True)     # [n, k]: stored k × n
    kn = Atom(30, "attn", (K, TOKEN))
    assert kn.storable(False) and not kn.storable(True)
    assert atoms[R].storable(False) and atoms[R].storable(True)


def test_atom_table_keeps_its_constants_when_restricted():
    atoms = table(inv_n=s, ones=t)
    assert (atoms.inv_n, atoms.ones) == (s, t)
    kept = atoms.restricted({R, M, s})
    assert list(kept) == [M, R, s]                                    # the table's order
    assert (kept.inv_n, kept.ones) == (s, t)
