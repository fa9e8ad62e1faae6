"""Weights as their nonzeros: a dense array ↔ (flat index, values), exactly and canonically.

Compiled weights are almost all zeros: W_V^h is D×D with one block of coefficients, W_K^h and
W_Q^h select a few rows, each MLP neuron reads one or two rows. Artifacts therefore store each
weight matrix as the C-order flat positions of its nonzeros (strictly increasing) and their
values (float64). `pack` puts all the model's matrices in three arrays (positions, values,
and how many nonzeros each matrix has), so that a file holds three tensors however many
layers there are: 12 bytes per nonzero (int32 positions) or 16 (int64, for matrices of 2³¹
entries or more), whatever D is. An artifact grows with the program, not with D². The dense
arrays users see (`prog.layers`, `prog.module`) are rebuilt from these on load.

The form is canonical (sorted, no zeros, no duplicates), so the same weights always give the
same bytes, and `to_dense` refuses anything else: a hand-made file cannot smuggle in duplicate
positions (which would silently overwrite each other) or positions out of range. Negative
zeros are stored as absent: -0.0 and 0.0 act the same in every product.
"""
from __future__ import annotations

import math

import numpy as np


_INT32_LIMIT = 2 ** 31


class SparseMatrix:
    """A float64 array held as its nonzeros in the canonical form (`to_sparse`'s): what the
    emitter makes of an MLP's weights, which are almost all zeros (sinkhorn's W_1 and W_2
    would be 1.1 GB dense and hold 3.3 M nonzeros). `dense()` builds the array."""

    def __init__(self, shape: tuple[int, ...], index: np.ndarray, values: np.ndarray):
        self.shape = tuple(int(d) for d in shape)
        self.index, self.values = index, values

    @classmethod
    def from_entries(cls, shape, positions: np.ndarray, values: np.ndarray) -> "SparseMatrix":
        """The array a zero array becomes when `values` are added at the flat `positions`
        one by one, in order (np.add.at: a repeated position sums its values left to
        right), in canonical form: the same bits as building it densely and calling
        `to_sparse`, without the dense array."""
        positions = np.asarray(positions, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if len(positions) > 1 and np.all(positions[1:] > positions[:-1]):
            pos, vals = positions, values                  # already canonical order (W_1)
        else:
            order = np.argsort(positions, kind="stable")  # equal positions keep their order
            pos, vals = positions[order], values[order]
        first = np.ones(len(pos), dtype=bool)
        first[1:] = pos[1:] != pos[:-1]
        if first.all():
            # no position repeats (an MLP's units read and write their own entries, almost
            # always): each sum is 0.0 + v, which is v except for -0.0, dropped below anyway
            index, acc = pos, vals
        else:
            index = pos[first]
            acc = np.zeros(len(index))
            np.add.at(acc, np.cumsum(first) - 1, vals)    # 0.0 + v1 + v2 ..., in order
        keep = acc != 0                                   # as flatnonzero: -0.0 is zero too
        return cls(shape, index[keep], acc[keep])

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nnz(self) -> int:
        return len(self.index)

    def dense(self) -> np.ndarray:
        out = np.zeros(self.size, dtype=np.float64)
        out[self.index] = self.values
        return out.reshape(self.shape)


def to_sparse(a, index_dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """(flat C-order positions of the nonzeros; their values, float64)."""
    if isinstance(a, SparseMatrix):
        return a.index.astype(index_dtype), a.values.copy()
    flat = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)
    index = np.flatnonzero(flat)
    return index.astype(index_dtype), flat[index].copy()


def to_dense(shape: tuple[int, ...], index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The dense float64 array of `shape` holding `values` at `index` (ValueError if the pair
    is not the canonical form `to_sparse` writes)."""
    size = math.prod(shape)
    if index.dtype not in (np.int32, np.int64) or values.dtype != np.float64:
        raise ValueError(f"sparse weights must be int32/int64 positions and float64 values, got "
                         f"{index.dtype} and {values.dtype}")
    if index.ndim != 1 or values.ndim != 1 or index.shape != values.shape:
        raise ValueError(f"positions {list(index.shape)} and values {list(values.shape)} "
                         "must be 1-D of equal length")
    if index.size:
        if index[0] < 0 or index[-1] >= size:
            raise ValueError(f"a position lies outside the {list(shape)} array")
        if index.size > 1 and not np.all(index[1:] > index[:-1]):
            raise ValueError("positions are not strictly increasing")
    if not np.all(np.isfinite(values)) or np.any(values == 0):
        raise ValueError("values must be finite and nonzero")
    out = np.zeros(size, dtype=np.float64)
    out[index] = values
    return out.reshape(shape)


def pack(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several arrays → (positions, values, nonzeros per array): the positions of array k are
    index[counts[:k].sum() : counts[:k+1].sum()], each relative to its own array."""
    big = any(a.size >= _INT32_LIMIT for a in arrays)
    parts = [to_sparse(a, np.int64 if big else np.int32) for a in arrays]
    counts = np.array([len(i) for i, _ in parts], dtype=np.int64)
    index = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, np.int32)
    values = np.concatenate([v for _, v in parts]) if parts else np.zeros(0)
    return index, values, counts


def unpack(shapes: list[tuple[int, ...]], index: np.ndarray, values: np.ndarray,
           counts: np.ndarray) -> list[np.ndarray]:
    """The dense arrays `pack` was given, from their shapes (ValueError if the three arrays do
    not describe exactly that many arrays of those shapes, canonically)."""
    if counts.dtype != np.int64 or counts.shape != (len(shapes),) or np.any(counts < 0):
        raise ValueError(f"the nonzero counts must be {len(shapes)} non-negative int64 values")
    if int(counts.sum()) != len(index):
        raise ValueError(f"the counts add up to {int(counts.sum())} nonzeros, the file holds "
                         f"{len(index)}")
    ends = np.cumsum(counts)
    starts = ends - counts
    return [to_dense(shape, index[a:b], values[a:b]) for shape, a, b in zip(shapes, starts, ends)]


def nonzero_bytes(arrays) -> int:
    """Bytes of the nonzero float64 entries of the arrays (the floor an artifact is held to)."""
    return 8 * sum(int(np.count_nonzero(a)) for a in arrays)


__all__ = ["SparseMatrix", "to_sparse", "to_dense", "pack", "unpack", "nonzero_bytes"]
