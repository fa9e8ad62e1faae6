"""MLP pieces for the structured executor: which ReLU units are a univariate piecewise-linear
function (evaluated as a table), which stay ReLUs, which are constants.

W_1 has no bias: a constant enters a unit through a *gate* row (the ones row, rows of the
identity block), i.e. an encoder constant. A unit reading variable rows v and constant rows c
is ReLU(a·(dir·H[v]) + b(token)) with b(token) = W_1[u, c]·H[c](token). Units that read the same
variable rows along the same direction, with a gate part b that is the same number on every
token the piece is computed on, form one function of s = dir·H[v]:

    f(s) = Σ_u W_2[:, u] ReLU(a_u s + b_u)

which is linear between the sorted breakpoints −b_u/a_u. `build_table` derives, from the same
weights, the breakpoints and each interval's slope and intercept (the exact PL sum, accumulated
in extended precision), so `searchsorted` + one gather evaluates the same function in
O(log units) instead of O(units) per entry (the sigmoid piece of newton_logistic is 1,794 units).
Units over several directions (products: ((u+v)² − (u−v)²)/4 reads u and v along two) form
one table per direction. Anything else (few units along a direction, or a gate that is not
constant across the tokens) stays ReLUs; units reading only constants are constants.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exec_plan import Occupancy, Read, emax, nonzero_cols, nonzero_rows

MIN_TABLE_UNITS = 8     # below this a direction's units are cheaper as ReLUs


@dataclass
class MlpGroup:
    """Units of one MLP evaluated together. kind: 'table' (one direction), 'relu' or 'const'."""
    kind: str
    var: Read                  # variable rows read (empty for 'const')
    W1v: np.ndarray            # (U, |var|); for 'table' the direction is W1v[u] / W1v[u, 0]
    gate: Read                 # constant rows read
    W1c: np.ndarray            # (U, |gate|)
    W2: np.ndarray             # (|out|, U)
    out_rows: tuple[int, ...]
    ext: object                # tokens it is computed on (clipped to its destinations later)

    @property
    def label(self) -> str:
        return f"mlp {self.kind} ({self.W2.shape[1]} units)"


def _direction_key(row: np.ndarray):
    return tuple(float(x) for x in row / row[0])


def plan_mlp(W1: np.ndarray, W2: np.ndarray, occ: Occupancy) -> list[MlpGroup]:
    """Partition the units of one MLP that can write something nonzero into groups."""
    units = np.flatnonzero(np.any(W1 != 0, axis=1) & np.any(W2 != 0, axis=0))
    if not len(units):
        return []
    rows = nonzero_cols(W1[units])
    reads = {int(r): occ.read((r,)) for r in rows}
    var_rows = [r for r in rows if not reads[r].const]
    const_rows = [r for r in rows if reads[r].const and not reads[r].zero]
    by_key: dict = {}
    for u in units:
        v = tuple(r for r in var_rows if W1[u, r] != 0)
        key = ("const",) if not v else (v, _direction_key(W1[u, list(v)]))
        by_key.setdefault(key, []).append(int(u))
    groups, relu_units = [], []
    for key, us in by_key.items():
        if key == ("const",):
            groups.append(_group("const", us, (), const_rows, W1, W2, occ))
        elif len(us) >= MIN_TABLE_UNITS:
            groups.append(_group("table", us, key[0], const_rows, W1, W2, occ))
        else:
            relu_units += us
    if relu_units:
        v = tuple(r for r in var_rows if np.any(W1[relu_units, r] != 0))
        groups.append(_group("relu", sorted(relu_units), v, const_rows, W1, W2, occ))
    return groups


def _group(kind, units, var_rows, const_rows, W1, W2, occ) -> MlpGroup:
    c = [r for r in const_rows if np.any(W1[units, r] != 0)]
    W2g = W2[:, units]
    out = nonzero_rows(W2g)
    var, gate = occ.read(var_rows), occ.read(c)
    return MlpGroup(kind, var, W1[np.ix_(units, list(var_rows))], gate, W1[np.ix_(units, c)],
                    W2g[out], tuple(int(r) for r in out), emax(var.ext, gate.ext))


def build_table(a: np.ndarray, b: np.ndarray, C: np.ndarray):
    """f(s) = C @ ReLU(a s + b) (a: (U,) all nonzero, b: (U,), C: (O, U)) as a table:
    sorted breakpoints (K,), and slope, intercept (K + 1, O): on the interval i (the s with i
    breakpoints below them) f(s) = slope[i] s + intercept[i]. Each interval's sums are
    accumulated in extended precision and rounded once."""
    t = -b / a
    bp, rank = np.unique(t, return_inverse=True)
    K = len(bp)
    ld = np.longdouble
    ca = (C * a).T.astype(ld)                       # (U, O): slope of each unit when on
    cb = (C * b).T.astype(ld)
    d_slope = np.zeros((K + 2, C.shape[0]), dtype=ld)
    d_icpt = np.zeros_like(d_slope)
    up = a > 0                 # on for s > t: intervals rank+1 .. K; else 0 .. rank
    start = np.where(up, rank + 1, 0)
    stop = np.where(up, K + 1, rank + 1)
    np.add.at(d_slope, start, ca)
    np.add.at(d_slope, stop, -ca)
    np.add.at(d_icpt, start, cb)
    np.add.at(d_icpt, stop, -cb)
    slope = np.cumsum(d_slope, axis=0)[:K + 1].astype(np.float64)
    icpt = np.cumsum(d_icpt, axis=0)[:K + 1].astype(np.float64)
    return bp.astype(np.float64), slope, icpt


__all__ = ["MIN_TABLE_UNITS", "MlpGroup", "plan_mlp", "build_table"]
