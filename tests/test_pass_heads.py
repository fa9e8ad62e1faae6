"""Monomials as attention heads (tcompile/compiler/heads.py) on small hand-built atoms: the exact
realizations of X Yᵀ Z, identities padding two- and one-factor monomials, runtime scalars at
1-wide dimensions, 1/n as an I/n block, row-split heads for s·M, and the rule that the token
axis is never a stored block's rows. Every head found is also computed: X Yᵀ Z of the chosen
stored blocks (random matrices for the atoms) must equal the monomial's value.
"""
from __future__ import annotations

import numpy as np

from tcompile.compiler.heads import Operand, Realization, realizable, realizations
from tcompile.compiler.poly import Atom, AtomTable, Mono, head_operands
from tcompile.language.checker import TOKEN

N, D, K = 5, 3, 2
# M, P, Q, S (symmetric): D×D; R: D×K; A, B: token data N×K; y: token vector N×1;
# v: D×1; s, t: runtime scalars; inv_n: the 1/n constant; ones: the column of ones
M, P, Q, S, R, A, B, y, v, s, t, INV_N, ONES = range(1, 14)


def table() -> AtomTable:
    atoms = [Atom(M, "input", (D, D)), Atom(P, "input", (D, D)), Atom(Q, "input", (D, D)),
             Atom(S, "input", (D, D), symmetric=True), Atom(R, "input", (D, K)),
             Atom(A, "input", (TOKEN, K)), Atom(B, "input", (TOKEN, K)),
             Atom(y, "input", (TOKEN, 1)), Atom(v, "input", (D, 1)),
             Atom(s, "input", (1, 1), symmetric=True), Atom(t, "input", (1, 1), symmetric=True),
             Atom(INV_N, "const", (1, 1), symmetric=True),
             Atom(ONES, "const", (TOKEN, 1), node={"op": "ones"})]
    return AtomTable(((a.id, a) for a in atoms), inv_n=INV_N)


def values(seed=0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal
    sym = g((D, D))
    return {M: g((D, D)), P: g((D, D)), Q: g((D, D)), S: sym + sym.T, R: g((D, K)),
            A: g((N, K)), B: g((N, K)), y: g((N, 1)), v: g((D, 1)), s: g((1, 1)),
            t: g((1, 1)), INV_N: np.array([[1.0 / N]]), ONES: np.ones((N, 1))}


def mono(*chain, scalars=()) -> Mono:
    return Mono(tuple(chain), tuple(sorted(scalars)))


def atom(a, transposed=False, row=None) -> Operand:
    return Operand("atom", a, transposed, row=row)


def eye(k, row=None) -> Operand:
    return Operand("eye", k=k, row=row)


def eye_inv_n(k) -> Operand:
    return Operand("eye_inv_n", k=k)


# ---- numerical check -----------------------------------------------------------------------------

def mono_value(vals, m: Mono, size: int) -> np.ndarray:
    out = np.eye(size)
    for a, tr in m.chain:
        out = out @ (vals[a].T if tr else vals[a])
    for x in m.scalars:
        out = out * vals[x][0, 0]
    return out


def block(atoms, vals, op: Operand) -> np.ndarray:
    """What a head reads: the stored block (the token axis is its columns), an identity, I/n."""
    if op.kind == "atom":
        assert atoms[op.atom].storable(op.transposed), f"atom {op.atom} stored with n as rows"
        b = vals[op.atom].T if op.transposed else vals[op.atom]
    elif op.kind == "ones_inv_n":
        b = np.full((1, N), 1.0 / N)
    else:
        b = np.eye(op.k) / (N if op.kind == "eye_inv_n" else 1)
    return b if op.row is None else b[op.row:op.row + 1]


def head_value(atoms, vals, r: Realization, rows: int) -> np.ndarray:
    if r.split:
        parts = {row: head_value(atoms, vals, part, 1) for part, row in r.split}
        assert sorted(parts) == list(range(rows))
        return np.vstack([parts[row] for row in range(rows)])
    X, Y, Z = (block(atoms, vals, o) for o in (r.x, r.y, r.z))
    return X @ Y.T @ Z


def check(m: Mono, shape: tuple, transposed_out: bool) -> list[Realization]:
    """realizations(), each verified: X Yᵀ Z equals the monomial (its transpose if stored so)."""
    atoms, vals = table(), values()
    found = realizations(atoms, m, shape, transposed_out)
    assert len(set(found)) == len(found), "a realization listed twice"
    size = N if shape[0] == TOKEN else shape[0]
    want = mono_value(vals, m, size)
    want = want.T if transposed_out else want
    for r in found:
        np.testing.assert_allclose(head_value(atoms, vals, r, want.shape[0]), want,
                                   rtol=1e-12, atol=1e-14, err_msg=repr(r))
    return found


# ---- three factors ---------------------------------------------------------------------------------

def test_three_factors_are_one_head():
    assert check(mono((M, False), (P, False), (Q, True)), (D, D), False) == [
        Realization(atom(M), atom(P, True), atom(Q, True))]


def test_three_factors_stored_transposed():
    # (M P Q)ᵀ = Qᵀ Pᵀ Mᵀ: X = Qᵀ, Y = (Pᵀ)ᵀ = P, Z = Mᵀ
    assert check(mono((M, False), (P, False), (Q, False)), (D, D), True) == [
        Realization(atom(Q, True), atom(P), atom(M, True))]


def test_symmetric_atoms_are_read_untransposed():
    found = check(mono((M, False), (S, False), (Q, False)), (D, D), False)
    assert found == [Realization(atom(M), atom(S), atom(Q))]          # Y = Sᵀ = S


def test_more_than_three_factors_have_no_head():
    assert realizations(table(), mono((M, False), (P, False), (Q, False), (M, False)),
                        (D, D), False) == []


# ---- identities pad short chains -------------------------------------------------------------------

def test_two_factors_padded_by_an_identity_at_every_small_boundary():
    found = check(mono((M, False), (P, False)), (D, D), False)
    assert set(found) == {Realization(eye(D), atom(M, True), atom(P)),       # I (Mᵀ)ᵀ P
                          Realization(atom(M), eye(D), atom(P)),             # M Iᵀ P
                          Realization(atom(M), atom(P, True), eye(D))}       # M (Pᵀ)ᵀ I


def test_one_factor_padded_by_two_identities():
    found = check(mono((R, False)), (D, K), False)
    assert set(found) == {Realization(eye(D), eye(D), atom(R)),
                          Realization(eye(D), atom(R, True), eye(K)),
                          Realization(atom(R), eye(K), eye(K))}


def test_token_contraction_pads_only_where_the_dimension_is_small():
    # Aᵀ B (K×K), contracting the tokens: I Aᵀ B would put the tokens between Y and Z
    # (rows of Z), so the identity can only go last: X = Aᵀ, Y = Bᵀ, Z = I
    assert check(mono((A, True), (B, False)), (K, K), False) == [
        Realization(atom(A, True), atom(B, True), eye(K))]


# ---- the token axis is never a stored block's rows -------------------------------------------------

def test_token_data_is_copied_only_into_transposed_storage():
    assert check(mono((A, False)), (TOKEN, K), False) == []            # n rows: not storable
    assert check(mono((A, False)), (TOKEN, K), True) == [
        Realization(eye(K), eye(K), atom(A, True))]                    # Aᵀ = I Iᵀ Aᵀ


def test_token_data_times_a_small_matrix():
    # A Rᵀ is N×D, stored transposed: (A Rᵀ)ᵀ = R Aᵀ = R Iᵀ Aᵀ = I (Rᵀ)ᵀ Aᵀ
    found = check(mono((A, False), (R, True)), (TOKEN, D), True)
    assert set(found) == {Realization(atom(R), eye(K), atom(A, True)),
                          Realization(eye(D), atom(R, True), atom(A, True))}
    assert check(mono((A, False), (R, True)), (TOKEN, D), False) == []


def test_realizable_needs_one_orientation_for_every_monomial():
    atoms = table()
    assert realizable(atoms, {mono((A, False)): 1.0, mono((B, False)): -1.0}, (TOKEN, K))
    assert realizable(atoms, {mono((A, True), (B, False)): 1.0}, (K, K))
    assert not realizable(atoms, {mono((M, False)): 1.0,
                                  mono((M, False), (P, False), (Q, False), (M, False)): 1.0},
                          (D, D))
    assert not realizable(atoms, {mono((A, True), (B, False)): 1.0,
                                  mono((A, True), (B, False), scalars=(s,)): 1.0}, (K, K))
    assert realizable(atoms, {}, (D, D))
    assert realizable(atoms, {mono(): 2.0}, None)          # an unsized c·I


# ---- runtime scalars -------------------------------------------------------------------------------

def test_scalar_sits_at_a_one_wide_dimension():
    # s v (D×1): s goes right of v (width 1), an identity pads the rest
    found = check(mono((v, False), scalars=(s,)), (D, 1), False)
    assert set(found) == {Realization(eye(D), atom(v, True), atom(s)),
                          Realization(atom(v), eye(1), atom(s)),
                          Realization(atom(v), atom(s), eye(1))}


def test_scalar_times_token_data_is_split_by_rows_of_its_storage():
    # s A is stored transposed (K×N, no side of length 1): row r of s Aᵀ is s · (row r of Aᵀ)
    assert check(mono((A, False), scalars=(s,)), (TOKEN, K), False) == []
    found = check(mono((A, False), scalars=(s,)), (TOKEN, K), True)
    assert found == [Realization(None, None, None, split=tuple(
        (Realization(atom(s), eye(1), atom(A, True, row=r)), r) for r in range(K)))]


def test_two_scalars_and_a_token_vector():
    # s t y stored transposed (1×N): s, t at the two 1-wide gaps, then yᵀ
    found = check(mono((y, False), scalars=(s, t)), (TOKEN, 1), True)
    assert set(found) == {Realization(atom(s), atom(t), atom(y, True)),
                          Realization(atom(t), atom(s), atom(y, True))}


def test_scalar_times_a_matrix_is_split_by_rows():
    # s M: no side of length 1, so one head per row r: s · (row r of M)
    found = check(mono((M, False), scalars=(s,)), (D, D), False)
    assert found == [Realization(None, None, None, split=tuple(
        (Realization(atom(s), eye(1), atom(M, row=r)), r) for r in range(D)))]


def test_two_scalars_times_the_identity_are_split_by_rows():
    found = check(mono(scalars=(s, t)), (D, D), False)
    assert found == [Realization(None, None, None, split=tuple(
        (Realization(atom(s), atom(t), eye(D, row=r)), r) for r in range(D)))]


def test_scalar_times_a_product_has_no_head():
    assert realizations(table(), mono((M, False), (P, False), scalars=(s,)), (D, D), False) == []
    assert realizations(table(), mono((A, True), (B, False), scalars=(s,)), (K, K), False) == []


# ---- 1/n -----------------------------------------------------------------------------------------

def test_inv_n_becomes_an_identity_over_n_block():
    # Aᵀ B / n: 1/n has no 1-wide gap to sit at, but I/n fits at the small end
    assert check(mono((A, True), (B, False), scalars=(INV_N,)), (K, K), False) == [
        Realization(atom(A, True), atom(B, True), eye_inv_n(K))]


def test_inv_n_at_a_one_wide_gap_is_a_scalar():
    # Aᵀ y / n (K×1): 1/n sits at the 1-wide end like any scalar (I_K/n in front would put
    # the tokens between Y and Z)
    assert check(mono((A, True), (y, False), scalars=(INV_N,)), (K, 1), False) == [
        Realization(atom(A, True), atom(y, True), atom(INV_N))]


def test_inv_n_times_a_small_matrix():
    found = check(mono((M, False), scalars=(INV_N,)), (D, D), False)
    assert set(found) == {Realization(eye_inv_n(D), atom(M, True), eye(D)),
                          Realization(eye_inv_n(D), eye(D), atom(M)),
                          Realization(atom(M), eye_inv_n(D), eye(D)),
                          Realization(atom(M), eye(D), eye_inv_n(D)),
                          Realization(eye(D), eye_inv_n(D), atom(M)),
                          Realization(eye(D), atom(M, True), eye_inv_n(D))}


def test_inv_n_joins_a_ones_factor_as_the_row_of_one_over_n():
    # Aᵀ 1 1ᵀ / n, a token mean broadcast back to the tokens (stored K × n): four operands
    # with 1/n as a scalar, three with 1·(1/n) read from the encoder's row of 1/n
    m = mono((A, True), (ONES, False), (ONES, True), scalars=(INV_N,))
    row = Operand("ones_inv_n", k=1)
    assert set(check(m, (K, TOKEN), False)) == {
        Realization(atom(A, True), row, atom(ONES, True)),
        Realization(atom(A, True), atom(ONES, True), row)}
    assert head_operands(table(), m) == 3
    # another scalar there has no row to join: still four operands, no head
    other = mono((A, True), (ONES, False), (ONES, True), scalars=(s,))
    assert realizations(table(), other, (K, TOKEN), False) == []
    assert head_operands(table(), other) == 4
    # the mean itself, Aᵀ 1 / n, keeps its heads and gains the row: both compute it
    assert Realization(atom(A, True), row, eye(1)) in check(
        mono((A, True), (ONES, False), scalars=(INV_N,)), (K, 1), False)


def test_realizations_from_templates_are_the_direct_ones():
    """heads.realizations serves monomials of one structure from one computed template: on
    every monomial of programs with repeated factors (X H X), 1/n, selections and scalars,
    in both orientations, it gives exactly what _realizations computes for those atoms."""
    from pathlib import Path
    from passes import atoms
    from tcompile.compiler import heads
    root = Path(__file__).resolve().parents[1]
    paths = [root / "programs" / p for p in ("newton_inverse.tp", "least_squares.tp",
                                              "newton_logistic.tp", "lanczos.tp")]
    checked = 0
    for path in paths:
        src = path.read_text()
        _df, table = atoms(src, {"steps": 3} if "param steps" in src else None)
        for atom in table.values():
            if atom.kind != "attn":
                continue
            for m in atom.poly:
                for t in (False, True):
                    assert heads.realizations(table, m, atom.cshape, t) == \
                        heads._realizations(table, m, atom.cshape, t)
                    checked += 1
    assert checked > 200
