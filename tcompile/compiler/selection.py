"""Indexing, slicing and assembling as products with constant 0/1 matrices (dataflow nodes).

What a subscript keeps is known at compile time (language/indexing.py), so every form here is
a product with constant *patterns*: 0/1 matrices with at most one 1 per row (op `pattern`,
nodes.py), which the lowering makes constant atoms and the heads read as rows of the identity
block (heads.Operand kind 'select': W_K, W_Q, W_V pick those rows), so they take no width.
Products are what heads compute exactly, so none of these forms is approximated:

    x[picks]               S x, with S = I[picks, :] (a selector: one 1 per row)
    M[rows, cols]          S_r M S_cᵀ (a dropped row axis: the transpose, numpy's [c] vector)
    A[i, :], x[a:b] on n   the same with a token selector (1 × n: a 1 in token i's column);
                           the compiled model then needs more than i tokens (backend.py)
    stack(s_0, ..)         Σ_i e_i s_i  (scalars → [k]),  Σ_i e_i v_iᵀ  (vectors → [k, d])
    tril(M, k), triu(M, k) Σ_i D_i M P_i: D_i = e_i e_iᵀ keeps row i, P_i the diagonal 0/1
                           pattern of the columns row i keeps (rows kept whole need no P_i);
                           triu(M, k) = tril(Mᵀ, −k)ᵀ, sharing tril's patterns
    M * I                  Σ_i D_i M D_i, the diagonal of M (times the scale of c·I)
    outer(u, v)            u vᵀ
"""
from __future__ import annotations

from ..language.types import TOKEN


def pattern(b, cshape: tuple, entries) -> int:
    """The constant 0/1 matrix of `cshape` with ones at `entries` ((row, col) pairs); the
    identity of a small square shape is the `eye` node instead (never stored)."""
    entries = tuple(sorted(set(entries)))
    r, c = cshape
    if r == c and r != TOKEN and entries == tuple((i, i) for i in range(r)):
        return b.node("eye", (), (r, r), k=r)
    symmetric = r == c and all((j, i) in set(entries) for i, j in entries)
    return b.node("pattern", (), (r, c), entries=entries, symmetric=symmetric)


def selector(b, size, picks) -> int | None:
    """I[picks, :] of an axis of length `size` (TOKEN for the token axis); None when it keeps
    the whole axis in order (nothing to multiply by)."""
    if picks is None:
        return None
    return pattern(b, (len(picks), size), ((row, p) for row, p in enumerate(picks)))


def index(b, x: int, tx, picks, ty, loc) -> int:
    """value[subscripts]: row and column selectors around the value, then numpy's shape."""
    shape = tx.shape
    left = selector(b, shape[0], picks[0].picks)
    out = x if left is None else b.matmul(left, x, loc)
    if len(shape) == 2:
        right = selector(b, shape[1], picks[1].picks)
        if right is not None:
            out = b.matmul(out, b.transpose(right, loc), loc)
        if picks[0].drop and not picks[1].drop and b.cshape(out)[1] != 1:
            out = b.transpose(out, loc)          # M[i, :] is numpy's [c]: a column
    return out


def stack(b, xs, tys, loc) -> int:
    """Σ_i e_i s_i for scalars, Σ_i e_i v_iᵀ for vectors (a [k, d] or [k, n] result)."""
    k = len(xs)
    terms = []
    for i, (x, t) in enumerate(zip(xs, tys)):
        e_i = b.transpose(selector(b, k, (i,)), loc)           # k × 1
        row = x if t.shape == () else b.transpose(x, loc)        # 1 × 1, or 1 × d
        terms.append(b.matmul(e_i, row, loc))
    return _sum(b, terms, loc)


def triangle(b, m: int, shape: tuple, lower: bool, k: int, loc) -> int:
    """tril(M, k) / triu(M, k) as Σ_i D_i M P_i (D_i keeps row i, P_i its kept columns);
    triu(M, k) is tril(Mᵀ, −k)ᵀ, so a program using both (L and U of one matrix) stores one
    set of patterns."""
    if not lower:
        mt = b.transpose(m, loc)
        return b.transpose(triangle(b, mt, (shape[1], shape[0]), True, -k, loc), loc)
    rows, cols = shape
    if _keeps_all(rows, cols, lower, k):
        return m
    terms = []
    for i in range(rows):
        keep = [j for j in range(cols) if (j - i <= k if lower else j - i >= k)]
        if not keep:
            continue
        row = b.matmul(pattern(b, (rows, rows), ((i, i),)), m, loc)
        if len(keep) < cols:
            row = b.matmul(row, pattern(b, (cols, cols), ((j, j) for j in keep)), loc)
        terms.append(row)
    if not terms:
        return b.fill((rows, cols), 0.0, loc)
    return _sum(b, terms, loc)


def _keeps_all(rows, cols, lower, k) -> bool:
    return all((j - i <= k if lower else j - i >= k) for i in range(rows) for j in range(cols))


def diagonal_part(b, m: int, size: int, loc) -> int:
    """M ⊙ I = Σ_i D_i M D_i."""
    terms = []
    for i in range(size):
        d = pattern(b, (size, size), ((i, i),))
        terms.append(b.matmul(b.matmul(d, m, loc), d, loc))
    return _sum(b, terms, loc)


def outer(b, u: int, v: int, loc) -> int:
    return b.matmul(u, b.transpose(v, loc), loc)


def _sum(b, terms, loc) -> int:
    out = terms[0]
    for t in terms[1:]:
        out = b.node("add", tuple(sorted((out, t))), b.cshape(out), loc)
    return out
