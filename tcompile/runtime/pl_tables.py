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
in extended precision), so finding the interval (`grid_table`: a uniform grid of cells, the
cell computed from s and at most m kinks per cell compared, no rounding margins since f is
continuous) and one gather per coefficient evaluate the same function in O(1) instead of
O(units) per entry
(the sigmoid piece of newton_logistic is 1,794 units). Units over several directions
(products: ((u+v)² − (u−v)²)/4 reads u and v along two) form one table per direction; the
executor evaluates the two tables of a product together (exec_ops.MlpOp.absorb). Anything else (few units along a direction, or a gate that is not
constant across the tokens) stays ReLUs; units reading only constants are constants.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exec_plan import Occupancy, Read, common, emax, nonzero_cols, nonzero_rows, sorted_distinct

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
    units = common(nonzero_rows(W1), nonzero_cols(W2))     # read and written
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
    bp, rank = sorted_distinct(t)
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


def kinks_of(slope: np.ndarray, icpt: np.ndarray) -> np.ndarray:
    """Indices k of the breakpoints where some output's piece changes (interval k to k + 1):
    a breakpoint whose units' contributions cancel exactly is no kink."""
    return np.nonzero(np.any(slope[1:] != slope[:-1], axis=1) |
                      np.any(icpt[1:] != icpt[:-1], axis=1))[0]


@dataclass
class GridTable:
    """A PL table by a uniform grid of G cells over [lo, hi] (the end cells unbounded
    outwards), each holding at most m kinks: with the cell j = clamp(floor((s − lo) · inv_h),
    0, G − 1) and r = #{i < m: t[i, j] < s} (t padded with +inf), the interval's coefficients
    are slope[(m + 1) j + r], icpt[(m + 1) j + r] (rows of (G · (m + 1), O) arrays)."""
    lo: float
    inv_h: float
    G: int
    m: int
    t: np.ndarray          # (m, G): each cell's kinks in order, +inf beyond its own
    slope: np.ndarray      # (G · (m + 1), O)
    icpt: np.ndarray
    clamp: tuple | None = None     # (lo, hi): s is clamped to it first (clamped_grid_table)


def grid_table(bp: np.ndarray, slope: np.ndarray, icpt: np.ndarray, m: int,
               max_cells: int = 1 << 14, min_cells: int = 16) -> GridTable | None:
    """The table (build_table's bp, slope, icpt) on the coarsest power-of-two grid (or, for
    m = 0, the grid of the kinks themselves when they are uniform) whose cells hold at most m
    kinks each, or None when no grid of at most max_cells does.

    No rounding margins are needed: f is continuous, so where the computed cell is one off
    near a cell edge (s within rounding of it) the neighbouring cell's pieces, extended
    linearly past its edge by that rounding, differ from f by |slope jump| × the rounding.
    For the same reason a kink within 4 ulp of a cell edge counts for neither cell (breakpoints
    on a uniform grid give m = 0). On its cell, the lookup uses exactly build_table's
    coefficients of the interval containing s."""
    k = kinks_of(slope, icpt)
    K = len(bp)
    if K < 2 or not np.all(np.isfinite(bp)) or not bp[-1] > bp[0]:
        return None
    lo, hi = float(bp[0]), float(bp[-1])
    kinks = bp[k]
    tol = 4 * np.finfo(np.float64).eps * max(abs(lo), abs(hi))
    G = min_cells
    while G < (len(k) + 1) // (m + 1) and G < max_cells:
        G *= 2
    grids = [(lo, (hi - lo) / (G << i), G << i) for i in range(max_cells.bit_length())
             if G << i <= max_cells]
    nk = len(k)
    if m == 0 and 1 < nk <= max_cells - 2:       # kinks on a uniform grid, a cell each side
        h = float(kinks[-1] - kinks[0]) / (nk - 1)
        grids.insert(0, (float(kinks[0]) - h, h, nk + 1))
    for lo, h, G in grids:
        e = lo + np.arange(G + 1) * h
        left = np.searchsorted(kinks, e[:-1] + tol, side="right")      # first kink inside
        right = np.searchsorted(kinks, e[1:] - tol, side="left")       # past the last one
        left[0], right[-1] = 0, len(kinks)                             # end cells: unbounded
        if np.max(right - left) <= m:
            break
    else:
        return None
    count = np.maximum(right - left, 0)
    kk = np.append(k, 0)                             # kk[left + i] valid for i < count
    t = np.full((m, G), np.inf)
    rows = np.empty((G, m + 1), dtype=np.int64)      # each entry's interval of build_table
    mid = np.searchsorted(bp, (e[:-1] + e[1:]) / 2, side="left")
    for i in range(m + 1):
        if i < m:
            t[i] = np.where(i < count, bp[kk[np.minimum(left + i, len(k))]], np.inf)
        passed = np.minimum(i, count)                # kinks below entry i of the cell
        rows[:, i] = np.where(passed > 0, kk[np.maximum(left + passed - 1, 0)] + 1,
                              np.where(count > 0, kk[left], mid))
    rows = rows.reshape(-1)
    return GridTable(lo, 1.0 / h, G, m, t, slope[rows], icpt[rows])


def clamped_grid_table(bp: np.ndarray, slope: np.ndarray, icpt: np.ndarray,
                       max_cells: int = 1 << 14) -> GridTable | None:
    """A table that is constant beyond its first and last kinks (its end slopes 0, or within
    64 ulp of its largest slope: the ReLU sums of a fit clamped to its domain [lo, hi], such
    as newton_logistic's squares) is f(clamp(s, lo, hi)), and inside (lo, hi) its kinks are
    often uniform from lo but for the last one, hi, a domain end that cuts the last interval
    short. Then with s clamped first, a grid of spacing h from lo holds no kink inside any
    cell (m = 0): the cell is j = floor((clamp(s) − lo) · inv_h) + 1, with one padding cell at
    either end (a copy of its neighbour) for s·inv_h rounded across a cell edge near lo or hi
    (so j needs no clamp), and f(s) = slope[j] clamp(s) + icpt[j] (within rounding of the
    exact interval's value, beyond the ends |end slope| × |s − end| more: rounding residue).
    None when the table is not of this kind."""
    k = kinks_of(slope, icpt)
    if len(k) < 2 or not np.all(np.isfinite(bp)):
        return None
    big = max(float(np.max(np.abs(slope))), np.finfo(np.float64).tiny)
    flat = 64 * np.finfo(np.float64).eps * big
    if np.max(np.abs(slope[0])) > flat or np.max(np.abs(slope[-1])) > flat:
        return None
    lo, hi = float(bp[k[0]]), float(bp[k[-1]])
    inner = bp[k[1:-1]]
    tol = 4 * np.finfo(np.float64).eps * max(abs(lo), abs(hi))
    if len(inner):
        h = float(inner[-1] - lo) / len(inner)
        if not h > 0 or np.max(np.abs(inner - (lo + h * np.arange(1, len(inner) + 1)))) > \
                tol + 4 * np.finfo(np.float64).eps * abs(h) * len(inner) or hi - inner[-1] > h + tol:
            return None
    else:
        h = hi - lo
    if not h > 0:
        return None
    G = int(np.floor((hi - lo) / h)) + 1            # cells over [lo, hi] (the last may overhang)
    if G + 2 > max_cells:
        return None
    mid = lo + (np.arange(G) + 0.5) * h
    mid = np.minimum(mid, (lo + np.arange(G) * h + hi) / 2)     # a point of the cell in [lo, hi]
    rows = np.searchsorted(bp, mid, side="left")
    rows = np.concatenate([rows[:1], rows, rows[-1:]])          # padding cells either side
    return GridTable(lo - h, 1.0 / h, G + 2, 0, np.zeros((0, G + 2)), slope[rows], icpt[rows],
                     clamp=(lo, hi))


__all__ = ["MIN_TABLE_UNITS", "MlpGroup", "plan_mlp", "build_table", "kinks_of", "GridTable", "grid_table",
           "clamped_grid_table"]
