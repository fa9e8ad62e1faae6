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
in extended precision), so finding the interval (`cell_index`: a uniform grid of cells, each
holding the few breakpoints near it, an exact searchsorted in a dozen elementwise passes) and
one gather per coefficient evaluate the same function in O(1) instead of O(units) per entry
(the sigmoid piece of newton_logistic is 1,794 units). Units over several directions
(products: ((u+v)² − (u−v)²)/4 reads u and v along two) form one table per direction; the
executor evaluates the two tables of a product together (exec_ops.MlpOp.absorb). Anything else (few units along a direction, or a gate that is not
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
    instances: int = 1         # a table applied to this many stacked row groups

    @property
    def label(self) -> str:
        return f"mlp {self.kind} ({self.W2.shape[1]} units × {self.instances})"


def _direction_key(row: np.ndarray):
    return tuple(float(x) for x in row / row[0])


def plan_mlp(W1: np.ndarray, W2: np.ndarray, occ: Occupancy) -> list[MlpGroup]:
    """Partition the units of one MLP that can write something nonzero into groups."""
    units = np.intersect1d(nonzero_rows(W1), nonzero_cols(W2))     # read and written
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
    return _stack_tables(groups, occ)


def _stack_tables(groups: list[MlpGroup], occ: Occupancy) -> list[MlpGroup]:
    """Tables of the same function (same weights unit for unit, gates, one output row each),
    applied to different rows, become one table over stacked rows: `instances` > 1, `var`
    reads instances × k rows, output row i is instance i's. Only with the ones row as gate
    (the same number on every token, so the table holds on every instance's tokens)."""
    out, sets = [], {}
    for g in groups:
        gates = {occ.slots[seg.key].const for seg in g.gate.segments if seg.key is not None}
        if g.kind != "table" or len(g.out_rows) != 1 or not gates <= {"ones"}:
            out.append(g)
            continue
        sig = (g.W1v.tobytes(), g.W1v.shape, g.W1c.tobytes(), g.gate.rows, g.W2.tobytes())
        sets.setdefault(sig, []).append(g)
    for gs in sets.values():
        rows = [r for g in gs for r in g.out_rows]
        if len(gs) == 1 or len(set(rows)) != len(rows):
            out += gs
            continue
        g0 = gs[0]
        var = occ.read(tuple(r for g in gs for r in g.var.rows))
        out.append(MlpGroup("table", var, g0.W1v, g0.gate, g0.W1c, g0.W2, tuple(rows),
                            emax(var.ext, g0.gate.ext), instances=len(gs)))
    return out


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
    accumulated in extended precision and rounded once. Only units that are on are summed:
    a unit on above its breakpoint enters a prefix sum, one on below it a suffix sum, so no
    interval subtracts units that are off (a seed of 1/a on [1e-120, 1e6] has coefficients
    from 1e-12 to 1e240, and subtracting the big ones left nothing of the small)."""
    t = -b / a
    bp, rank = np.unique(t, return_inverse=True)
    K = len(bp)
    ld = np.longdouble
    ca = (C * a).T.astype(ld)                       # (U, O): slope of each unit when on
    cb = (C * b).T.astype(ld)
    up = a > 0                 # on for s > t: intervals rank+1 .. K; else 0 .. rank
    sums = []
    for v in (ca, cb):
        d_up = np.zeros((K + 1, C.shape[0]), dtype=ld)
        d_down = np.zeros_like(d_up)
        np.add.at(d_up, rank[up] + 1, v[up])
        np.add.at(d_down, rank[~up], v[~up])
        sums.append((np.cumsum(d_up, axis=0) + np.cumsum(d_down[::-1], axis=0)[::-1])
                    .astype(np.float64))
    return bp.astype(np.float64), sums[0], sums[1]


def cell_index(bp: np.ndarray, eps: float, max_probe: int = 3, max_cells: int = 1 << 14):
    """A uniform grid of G cells over the breakpoints for an exact searchsorted in a few
    elementwise passes: with the computed cell j = clamp(floor((s − bp[0]) · inv_h), 0, G − 1),

        #{bp < s} = base[j] + Σ_{i < m} (t[i, j] < s)

    for every s. Rounding may compute a cell one off near its edges, so each cell c answers for
    every s within `delta` cells of it ([c − delta, c + 1 + delta] in units of h, the end cells
    unbounded outwards): base[c] counts the breakpoints below that widened cell and t[:, c]
    holds the (at most m) breakpoints inside it, padded with +inf. delta covers the rounding of
    (s − bp[0]) · inv_h and of the breakpoints themselves in a dtype of machine epsilon `eps`.
    G is a power of two (at least the number of breakpoints) that minimises m. Returns
    (origin, inv_h, base (G,), t (m, G), m), or None when no G <= max_cells keeps
    m <= max_probe (breakpoints too uneven: searchsorted is used)."""
    K = len(bp)
    span = float(bp[-1] - bp[0]) if K else 0.0
    if K < 2 or not span > 0 or not np.all(np.isfinite(bp)):
        return None
    reach = float(np.max(np.abs(bp)))
    best = None
    G = 4
    while G < K:
        G *= 2
    while G <= max_cells:
        h = span / G
        delta = 8 * eps * (G + 2 + reach / h)
        c = np.arange(G, dtype=np.float64)
        lo = bp[0] + (c - delta) * h
        hi = bp[0] + (c + 1 + delta) * h
        lo[0], hi[-1] = -np.inf, np.inf
        base = np.searchsorted(bp, lo, side="left")            # #bp < lo
        top = np.searchsorted(bp, hi, side="right")            # #bp <= hi
        m = int(np.max(top - base))
        if m <= max_probe and (best is None or m < best[-1]):
            best = (h, base, top, m)
        if m <= 1:
            break
        G *= 2
    if best is None:
        return None
    h, base, top, m = best
    t = np.full((m, len(base)), np.inf)
    for i in range(m):
        inside = base + i < top
        t[i, inside] = bp[(base + i)[inside]]
    return float(bp[0]), 1.0 / h, base.astype(np.int64), t, m


__all__ = ["MIN_TABLE_UNITS", "MlpGroup", "plan_mlp", "build_table", "cell_index"]
