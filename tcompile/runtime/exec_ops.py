"""The structured executor's operations for one n, dtype and device: reads of slot rows, heads,
MLP groups and the residual sums, as small callables over the state (slot key → tensor).

Tensors are (batch, rows, tokens): a slot holds its rows over the token columns it occupies;
encoder constants are held once with batch 1 and broadcast. Constant operands (encoder
constants, which depend on n only) are multiplied out here, once per n: a head whose K and V
are constants (an identity, I/n, ones) is one matrix applied to Q, or one scalar when that
matrix is a multiple of the identity; otherwise the head's chain Wv · V · Kᵀ · G · Q, its
adjacent constants multiplied out, is evaluated in the order of fewest flops.

Tables (pl_tables.py) are looked up by a uniform grid of cells (`grid_table`: the cell
straight from s, then the cell's few kinks compared) in chunks of entries, each pass one torch
call over all of an op's tables and outputs; the two tables of a product piece, which read the
same rows, are one op (`MlpOp.absorb`); on a CPU with a C compiler an op's passes are one
call of fused_lookup's kernel (the same operations, bit for bit). ReLU units that pair up as (w, c), (−w, −c)
are the linear map Σ c wᵀ (relu(t) − relu(−t) = t): the compiler's MLP clearing of rows it
reuses, which the executor then drops with the value it clears (executor.py).
"""
from __future__ import annotations

import hashlib
import weakref

import numpy as np
import torch

from . import fused_lookup
from .codec import in_shape
from .exec_plan import Read, concrete, sub_read
from .exec_sublayers import HeadSpec
from .pl_tables import MlpGroup, build_table, clamped_grid_table, grid_table

# Table entries looked up per pass: a pass's temporaries (a dozen arrays of this many entries)
# stay in cache on a CPU, and on any device their memory does not grow with the batch (on a GPU
# a pass is large enough that launching its kernels costs little).
CHUNK = {"cpu": 1 << 16}
CHUNK_OTHER = 1 << 22
# Below this many entries a table pass finds intervals by one searchsorted (one call) rather
# than by the grid (3 + 3m calls, each far cheaper per entry: searchsorted costs 25-60 ns per
# entry for 58-1,792 breakpoints on this CPU, the grid's passes 1-2 ns each).
SEARCH_BELOW = 256
# a pass's paths (_Tables.path; the fused kernel's `mode` argument)
SEARCH, GRID, CLAMPED = 0, 1, 2
# kinks per grid cell tried, fewest first (each costs a gather, a compare and an add per entry)
GRID_KINKS = (0, 1, 2, 3)


def scalar_of(W: np.ndarray):
    """s when W = s·I (square), else None."""
    if W.shape[0] != W.shape[1] or not W.size:
        return None
    s = W[0, 0]
    return float(s) if np.array_equal(W, s * np.eye(W.shape[0])) else None


class ReadOp:
    """Materialise rows of the state over `e` token columns (slices where it can, no copy
    when the rows are a whole slot)."""

    def __init__(self, read: Read, slots: dict, e: int, n: int):
        self.e, self.parts, self.read = e, [], read
        start = 0
        for seg in read.segments:
            L = len(seg.positions)
            if seg.key is None:
                self.parts.append((None, L, 0))
            else:
                p = seg.positions
                full = len(slots[seg.key].rows)
                if p == tuple(range(p[0], p[0] + L)):
                    idx = slice(None) if (p[0] == 0 and L == full) else slice(p[0], p[0] + L)
                else:
                    idx = list(p)
                self.parts.append((seg.key, idx, concrete(slots[seg.key].ext, n)))
            start += L
        self.rows = start
        one = self.parts[0] if len(self.parts) == 1 else None
        # the common read, a whole slot over its own extent: the slot's tensor itself
        self.whole = one[0] if one and one[0] and one[1] == slice(None) and one[2] == e else None

    def __call__(self, state: dict, like: torch.Tensor) -> torch.Tensor:
        if self.whole is not None:
            return state[self.whole]
        out = self.pieces(state, like)
        if len(out) == 1:
            return out[0]
        B = max(t.shape[0] for t in out)
        return torch.cat([t.expand(B, -1, -1) for t in out], dim=1)

    def pieces(self, state: dict, like: torch.Tensor) -> list:
        """The parts the read concatenates (batch 1 where a part is a constant's)."""
        out = []
        for key, idx, src_e in self.parts:
            if key is None:
                out.append(like.new_zeros((1, idx, self.e)))
                continue
            T = state[key]
            if idx != slice(None):
                T = T[:, idx]
            out.append(fit(T, src_e, self.e))
        return out


def fit(T: torch.Tensor, have: int, want: int) -> torch.Tensor:
    """T over `want` token columns: cut, or padded with zeros."""
    if have == want:
        return T
    if have > want:
        return T[..., :want]
    return torch.nn.functional.pad(T, (0, want - have))


def read_outputs(outputs: dict, final, state: dict, B: int, n: int) -> dict:
    """The outputs ({name: (block, shape)}) read from the rows the layout names, wherever the
    final occupancy (exec_plan.Occupancy) says they are at the end: a slot's positions, or
    zeros where no slot holds them. How the expanded and the looping executor both end."""
    like = next(iter(state.values()))
    out = {}
    for name, (blk, shape) in outputs.items():
        cols = blk.storage_cols(n)
        parts = [like.new_zeros((B, len(seg.positions), cols)) if seg.key is None else
                 fit(state[seg.key][:, list(seg.positions)], state[seg.key].shape[-1],
                     cols).expand(B, -1, -1)
                 for seg in final.read(blk.rows).segments]
        S = torch.cat(parts, dim=1)
        out[name] = in_shape(S.mT if blk.transposed else S, shape)
    return out


def host(t: torch.Tensor) -> np.ndarray:
    """A plan-time tensor as float64 numpy, to be tested or multiplied out there. A CPU float64
    tensor is viewed, not converted: every distinct torch op a plan calls pages in its code
    (about 0.5 MiB resident each), and the forward never runs these."""
    if t.device.type == "cpu" and t.dtype == torch.float64:
        return t.detach().numpy()
    return t.detach().to("cpu", torch.float64).numpy()      # constants may live on a GPU


def const_array(op: ReadOp, consts: dict, like: torch.Tensor) -> np.ndarray:
    """A read of constant rows, evaluated once at plan time: (rows, e) in float64 numpy, for
    multiplying constant operands out before any input is seen."""
    return host(op(consts, like))[0]


def template(dtype, device) -> torch.Tensor:
    """A 0-d tensor whose dtype and device new tensors take (its value is never read)."""
    return torch.empty((), dtype=dtype, device=device)


def _converters(dtype, device):
    """(numpy array → contiguous tensor of this dtype on this device, a 0-d tensor like it)."""
    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)
    return t, template(dtype, device)


def _read_key(read: Read, e: int):
    """What a read reads: (slot, positions) per segment, over e tokens."""
    return tuple((seg.key, seg.positions) for seg in read.segments), e


class HeadOp:
    """V Kᵀ G Q for one head (times W_V), in the cheapest multiplication order for this n."""

    fresh = True        # __call__ returns a new tensor (the residual sum may add into it)
    stack = stacked = None      # a first factor [s_1 I; s_2 I; ...] (found, left out)
    shared_out = False          # the output is a V Kᵀ another head shares

    def __init__(self, spec: HeadSpec, slots, consts, n, dtype, device):
        t, like = _converters(dtype, device)
        m, e = concrete(spec.m, n), concrete(spec.ext, n)
        self.k, self.v = ReadOp(spec.k, slots, m, n), ReadOp(spec.v, slots, m, n)
        self.q = ReadOp(spec.q, slots, e, n)
        self.M = self.M_np = self.scale = self.const = None
        self.alpha, self.q_rows, self._t = 1.0, spec.q.rows, t
        self.chunk = CHUNK.get(torch.device(device).type, CHUNK_OTHER)
        self.gram_key = self.gram_node = None
        Wv = spec.Wv
        if spec.k.const and spec.v.const:       # fold: one matrix (or scalar) applied to Q
            K = const_array(self.k, consts, like)
            V = const_array(self.v, consts, like)
            M = (Wv @ V) @ K.T @ spec.G
            if spec.q.const:
                Q = const_array(self.q, consts, like)
                self.const = t(M @ Q)[None]
                self.fresh = False
            else:
                self.set_linear(M)
            return
        self._chain(spec, consts, like, m, t)

    def _chain(self, spec, consts, like, m, t):
        """Wv · V · Kᵀ · G · Q as a list of factors: scalar multiples of the identity leave as
        alpha, adjacent constants are multiplied out (float64), and the product is bracketed
        for the fewest flops (every product left involves a batched operand, so the batch
        size scales every cost alike)."""
        alpha = 1.0
        factors = []
        for f in (spec.Wv, "V", "K", spec.G, "Q"):
            if isinstance(f, str):
                read = {"V": spec.v, "K": spec.k, "Q": spec.q}[f]
                if read.const:
                    op = {"V": self.v, "K": self.k, "Q": self.q}[f]
                    a = const_array(op, consts, like)
                    f = a.T if f == "K" else a
            if not isinstance(f, str):
                sc = scalar_of(f)
                if sc is not None:
                    alpha *= sc
                    continue
                if factors and not isinstance(factors[-1], str):
                    f = factors.pop() @ f
            factors.append(f)
        dims = {"V": (len(spec.v.rows), m), "K": (m, len(spec.k.rows)),
                "Q": (len(spec.q.rows), self.q.e)}
        consts_at = [i for i, f in enumerate(factors) if not isinstance(f, str)]
        if alpha != 1.0 and consts_at:          # into a constant factor: no pass at run time
            i = consts_at[0]
            factors[i] = factors[i] * alpha
            alpha = 1.0
        self.alpha = alpha
        # a first constant factor that is a column of scaled identities [s_1 I; s_2 I; ...]
        # (W_V writing s·(V Kᵀ) into several slots: newton_logistic's Hessian halves) can be
        # left to the residual sums, block b of the output being s_b times the rest's product
        # (unstack, when every term reads rows of one block)
        f0 = factors[0]
        if not isinstance(f0, str) and len(factors) > 1 and f0.shape[0] % f0.shape[1] == 0 and \
                f0.shape[0] > f0.shape[1]:
            w = f0.shape[1]
            sc = [scalar_of(f0[b * w:(b + 1) * w]) for b in range(f0.shape[0] // w)]
            if all(x is not None for x in sc):
                self.stack = (w, sc)
        self._plan_args = (spec, m, dims, t)
        self._plan(factors)

    def _plan(self, factors) -> None:
        """Bracket the factors; find the V Kᵀ they hold (shared by symmetric heads)."""
        spec, m, dims, t = self._plan_args
        self._all_factors = factors
        p = [dims[f][0] if isinstance(f, str) else f.shape[0] for f in factors[:1]]
        p += [dims[f][1] if isinstance(f, str) else f.shape[1] for f in factors]
        self.tree = _bracket(p)
        self.fresh = not isinstance(self.tree, int)     # one factor: a read, returned as is
        self.shared_out = False
        names = [f if isinstance(f, str) else None for f in factors]
        if "V" in names and "K" in names:
            iv = names.index("V")
            if names.index("K") == iv + 1 and _has_node(self.tree, (iv, iv + 1)):
                self.gram_node = (iv, iv + 1)
                self.gram_key = (_read_key(spec.v, m), _read_key(spec.k, m))
        self._leaves = [f if isinstance(f, str) else t(f) for f in factors]
        self.share_gram(None)

    def unstack(self) -> None:
        """Drop the first factor, a column of scaled identities (`stack`): the output is the
        rest's product, block b of the old output that times stack[1][b] (the residual sums
        take the scale: `stacked`)."""
        self.stacked = self.stack
        self._plan(self._all_factors[1:])

    def share_gram(self, key, transposed: bool = False, glob=None, rows=None) -> None:
        """Take V Kᵀ from grams[key] (its transpose if `transposed`) where another head of
        the sublayer left it, else compute it and leave it there; key None: not shared in the
        sublayer. glob: the key under which heads of other sublayers find V Kᵀ in the
        orientation of the head that computed it (a transpose taken instead of a product
        might round otherwise): this head takes it from there where it is (with `rows`: those
        rows of another head's V Kᵀ, whose V reads these rows and more), else leaves its own
        there (not with `rows`)."""
        # the output itself, when shared, is another head's too: never added into
        self.shared_out = (key is not None or glob is not None) and \
            self.tree[:2] == self.gram_node
        self.fresh = not isinstance(self.tree, int) and not self.shared_out
        self._share = (key, transposed, glob, rows)
        self._product = self._compile(self.tree)
        if isinstance(self.tree, int):
            self._factors = None
        else:
            _, _, left, right = self.tree
            self._factors = (self._compile(left), self._compile(right))

    def _compile(self, node):
        """The bracketed product as nested closures of (state, like, grams)."""
        if isinstance(node, int):
            f = self._leaves[node]
            if not isinstance(f, str):
                return lambda state, like, grams: f
            if f == "K":
                k = self.k
                return lambda state, like, grams: k(state, like).mT
            rd = self.v if f == "V" else self.q
            return lambda state, like, grams: rd(state, like)
        i, j, left, right = node
        a, b = self._compile(left), self._compile(right)
        prod = self._product_of(left, right, a, b)
        key, transposed, glob, rows = self._share
        if (key is None and glob is None) or (i, j) != self.gram_node:
            return prod

        def gram(state, like, grams):           # V Kᵀ: two reads
            g = grams.get(key)
            if g is not None:
                return g.mT if transposed else g
            g = grams.get(glob)
            if g is not None:
                g = g if rows is None else g[:, rows]
            else:
                g = prod(state, like, grams)
                if glob is not None and rows is None:
                    grams[glob] = g
            if key is not None:
                grams[key] = g.mT if transposed else g
            return g
        return gram

    def _product_of(self, left, right, a, b):
        """left @ right (closures a, b); where one factor is a read of rows from several
        slots (a concatenation: least_squares' [A; y], whose S and b are one product) and
        the concatenation would exceed `chunk` entries, the product is made in slices of the
        batch, so that only a slice of the concatenation exists at a time (each problem's
        product is the same call on the same numbers: the results are the same)."""
        cat = [self._cat_read(left), self._cat_read(right)]
        if (cat[0] is None) == (cat[1] is None):
            return lambda state, like, grams: mm(a(state, like, grams), b(state, like, grams))
        side = 0 if cat[0] is not None else 1
        rd, transposed = cat[side]
        other, chunk = (b, a)[side], self.chunk

        def product(state, like, grams):
            parts, R = rd.pieces(state, like), other(state, like, grams)
            B = max([p.shape[0] for p in parts] + [R.shape[0] if R.dim() == 3 else 1])
            rows = sum(p.shape[1] for p in parts)
            cr, cc = (rd.e, rows) if transposed else (rows, rd.e)     # the factor's shape
            inner = cc if side == 0 else cr
            step = max(1, chunk // max(1, rows * rd.e))
            if step >= B or R.dim() != 3 or inner == 1:
                C = torch.cat([p.expand(B, -1, -1) for p in parts], dim=1)
                C = C.mT if transposed else C
                return mm(C, R) if side == 0 else mm(R, C)
            shape = (B, cr, R.shape[-1]) if side == 0 else (B, R.shape[-2], cc)
            out = R.new_empty(shape)
            R = R.expand(B, -1, -1)
            for b0 in range(0, B, step):
                b1 = min(B, b0 + step)
                C = torch.cat([p[b0:b1] if p.shape[0] > 1 else p.expand(b1 - b0, -1, -1)
                               for p in parts], dim=1)
                C = C.mT if transposed else C
                L_, R_ = (C, R[b0:b1]) if side == 0 else (R[b0:b1], C)
                torch.bmm(L_, R_, out=out[b0:b1])
            return out
        return product

    def _cat_read(self, node):
        """(the read, transposed) when leaf `node` reads rows of several slots, else None."""
        if not isinstance(node, int) or not isinstance(self._leaves[node], str):
            return None
        f = self._leaves[node]
        rd = {"V": self.v, "K": self.k, "Q": self.q}[f]
        if rd.whole is not None or len(rd.parts) < 2:
            return None
        return rd, f == "K"

    @property
    def fusable(self) -> bool:
        """Is the head one product L @ R, whose two factors `factors` gives (so that the
        residual sum can add it with one baddbmm)?"""
        return self.const is None and self.M is None and self.scale is None and \
            self._factors is not None and not self.shared_out

    def factors(self, state: dict, like, grams: dict):
        """(L, R) with L @ R the head's output divided by alpha (fusable heads only)."""
        a, b = self._factors
        return a(state, like, grams), b(state, like, grams)

    def set_linear(self, M: np.ndarray) -> None:
        """The head is M @ Q: a scalar (returned as Q with alpha = s) or a matrix."""
        self.M_np = M
        s = scalar_of(M)
        self.scale, self.alpha = (s, s) if s is not None else (None, 1.0)
        self.M = None if s is not None else self._t(M)
        self.fresh = s is None

    def linear_map(self):
        """M (rows out × q rows) when the head is linear in Q, else None."""
        return None if self.const is not None else self.M_np

    def __call__(self, state: dict, like, grams: dict | None = None) -> torch.Tensor:
        """The head's output divided by `alpha` (the residual sum multiplies it in). `grams`:
        the V Kᵀ products heads of this sublayer share (share_gram), by slot."""
        if self.const is not None:
            return self.const
        if self.M is not None or self.scale is not None:
            Q = self.q(state, like)
            return Q if self.M is None else mm(self.M, Q)
        return self._product(state, like, {} if grams is None else grams)


def _batched(a: torch.Tensor, b: torch.Tensor):
    """a, b as 3-D operands of one batch size (a 2-D constant or a batch-1 operand expanded:
    views, no copies)."""
    if a.dim() == 2:
        a = a.unsqueeze(0)
    if b.dim() == 2:
        b = b.unsqueeze(0)
    if a.shape[0] != b.shape[0]:
        B = max(a.shape[0], b.shape[0])
        a, b = a.expand(B, -1, -1), b.expand(B, -1, -1)
    return a, b


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b by torch.bmm, which on a CPU costs a third of `@` on small matrices; an outer
    product (inner size 1: a scalar times a row, newton_logistic's η·(A v)) by one broadcast
    multiply, a tenth of a batched product's cost at B = 64."""
    if a.dim() == 2 and b.dim() == 2:
        return torch.mm(a, b)
    if a.shape[-1] == 1 and a.dim() == b.dim() == 3:
        return torch.mul(a, b)
    return torch.bmm(*_batched(a, b))


def baddbmm(base: torch.Tensor, beta: float, L: torch.Tensor, R: torch.Tensor, alpha: float,
            inplace: bool) -> torch.Tensor:
    """beta · base + alpha · L @ R in one call; into base when `inplace` (a tensor of the
    residual sum's own) and it has the product's shape. An outer product (inner size 1) with
    beta = 1 is one broadcast addcmul."""
    L, R = _batched(L, R)
    shape = (L.shape[0], L.shape[1], R.shape[2])
    if L.shape[2] == 1 and beta == 1.0 and base.dim() == 3:
        if inplace and base.shape == shape:
            return base.addcmul_(L, R, value=alpha)
        return torch.addcmul(base, L, R, value=alpha)
    if inplace and base.shape == shape:
        return base.baddbmm_(L, R, beta=beta, alpha=alpha)
    return torch.baddbmm(base, L, R, beta=beta, alpha=alpha)


def _bracket(p: list[int]):
    """The matrix-chain bracketing of factors with dims p[i] × p[i+1] of fewest flops (of
    equal ones, the most left to right: (V Kᵀ) Q, the module's order and rounding): a leaf is
    its index, a product (i, j, left, right) covers factors i..j."""
    L = len(p) - 1
    cost = [[0] * L for _ in range(L)]
    split = [[0] * L for _ in range(L)]
    for length in range(2, L + 1):
        for i in range(L - length + 1):
            j = i + length - 1
            cost[i][j] = None
            for k in range(i, j):
                c = cost[i][k] + cost[k + 1][j] + p[i] * p[k + 1] * p[j + 1]
                if cost[i][j] is None or c <= cost[i][j]:     # ties: left to right, as the module
                    cost[i][j], split[i][j] = c, k

    def build(i, j):
        if i == j:
            return i
        k = split[i][j]
        return (i, j, build(i, k), build(k + 1, j))
    return build(0, L - 1)


def _has_node(tree, span) -> bool:
    if isinstance(tree, int):
        return False
    return tree[:2] == span or _has_node(tree[2], span) or _has_node(tree[3], span)


def relu_pairs_linear(W1: np.ndarray, W2: np.ndarray):
    """M with W2 @ relu(W1 x) = M x for every x, when the units pair up as (w, c) and (−w, −c)
    (c·relu(w·x) − c·relu(−w·x) = c·(w·x)); else None."""
    U = W1.shape[0]
    if U % 2:
        return None
    key = lambda w, c: ((w + 0.0).tobytes(), (c + 0.0).tobytes())      # noqa: E731  (−0 = 0)
    free: dict = {}
    for u in range(U):
        free.setdefault(key(W1[u], W2[:, u]), []).append(u)
    M = np.zeros((W2.shape[0], W1.shape[1]))
    done = set()
    for u in range(U):
        if u in done:
            continue
        mates = [v for v in free.get(key(-W1[u], -W2[:, u]), []) if v not in done and v != u]
        if not mates:
            return None
        done |= {u, mates[0]}
        M += np.outer(W2[:, u], W1[u])
    return M


class _Tables:
    """The PL tables of one MLP op (one table, or the squares of a product piece: T tables of
    one output each, reading the same rows) in one dtype on one device. Table i computes
    s_i = Σ_c coef[i][c] x_c and f_i(s_i) = slope[k] s_i + icpt[k] with k its interval (the
    op's output: the tables' sum). Each pass over entries is one torch call over all T tables
    (s stacked (T, N)) and all O outputs (coefficients gathered (O, T·N)):

    * by a uniform grid (pl_tables.grid_table, all tables with the same m): the cell
      j = clamp(s · inv_h + shift) (one add, one clamp, one cast; the tables' cells are
      numbered one after another, so shift and the clamp's bounds place each table's own),
      then m kink comparisons (a gather, a compare, an add each) — k = (m + 1) j + #kinks
      below s — and one gather per coefficient column; tables constant beyond their ends
      with uniform kinks inside (pl_tables.clamped_grid_table: newton_logistic's squares)
      clamp s to their ends first (one pass per table, in place of the cell's clamp) and
      compare no kink (m = 0);
    * by one searchsorted (tables that have no grid, and passes of fewer than SEARCH_BELOW
      entries, where a call costs more than the work): the breakpoints padded to (T, K).

    A NaN s has no cell: a grid pass sends it to cell 0 (the first table's first cell: any
    valid cell will do; one nan_to_num pass over all tables' cells, before the cast;
    searchsorted sends it to the end), and slope · NaN + intercept is NaN — NaN in, NaN out,
    as through the dense module's ReLUs, never an index out of range.

    Coefficients are 1-D columns (a gather of a 2-D table's rows and the strided passes over
    its columns cost 2-8x a contiguous gather on a CPU)."""

    def __init__(self, tables: list, dtype, device):
        def t(a, dt=dtype):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)
        self.coef = [[float(c) for c in coef] for _, _, _, coef in tables]
        self.T, self.O = len(tables), tables[0][1].shape[1]
        assert self.T == 1 or self.O == 1, "several tables: one output each"
        T, O = self.T, self.O
        # searchsorted: breakpoints (T, K) padded with +inf, coefficients (O, T, K + 1)
        K = max(len(bp) for bp, _, _, _ in tables)
        bps = np.full((T, K), np.inf)
        sl = np.zeros((O, T, K + 1))
        ic = np.zeros((O, T, K + 1))
        for i, (bp, slope, icpt, _) in enumerate(tables):
            bps[i, :len(bp)] = bp
            sl[:, i, :len(bp) + 1], ic[:, i, :len(bp) + 1] = slope.T, icpt.T
            sl[:, i, len(bp) + 1:], ic[:, i, len(bp) + 1:] = slope[-1:].T, icpt[-1:].T
        self.bp = t(bps[0] if T == 1 else bps)
        self.s_slope, self.s_icpt = t(sl.reshape(-1)), t(ic.reshape(-1))
        off = (np.arange(O)[:, None, None] * T + np.arange(T)[None, :, None]) * (K + 1)
        self.s_off = t(off[:, 0] if T == 1 else off[0], torch.int32) if O * T > 1 else None
        # the grid, where every table has one with the same (fewest) kinks per cell: no kink
        # at all when every table is constant beyond its ends with uniform kinks inside, s
        # clamped first (clamped_grid_table); else the coarsest grid of m kinks per cell
        self.grid, self.clamp = None, None
        grids = [clamped_grid_table(bp, slope, icpt) for bp, slope, icpt, _ in tables]
        if all(g is not None for g in grids):
            self._grid(grids, 0, t)
            self.clamp = [g.clamp for g in grids]
            return
        for m in GRID_KINKS:
            grids = [grid_table(bp, slope, icpt, m) for bp, slope, icpt, _ in tables]
            if all(g is not None for g in grids):
                self._grid(grids, m, t)
                break

    def _grid(self, grids, m: int, t) -> None:
        O = self.O
        first = np.cumsum([0] + [g.G for g in grids])[:-1]          # each table's first cell
        shift = [f - g.lo * g.inv_h for f, g in zip(first, grids)]
        lo = [float(f) for f in first]
        hi = [float(f + g.G - 1) for f, g in zip(first, grids)]
        # per table: Python floats (scalar passes; broadcast (T, 1) operands cost 2-3x)
        self.inv_h = [g.inv_h for g in grids]
        self.shift = [t(sh) for sh in shift]      # add(shift, s, alpha=inv_h): one pass
        self.jmin, self.jmax = lo, hi
        self.m = m
        self.kinks = [t(np.concatenate([g.t[i] for g in grids])) for i in range(m)]
        L = sum(g.G for g in grids) * (m + 1)
        self.g_slope = t(np.concatenate([g.slope[:, o] for o in range(O) for g in grids]))
        self.g_icpt = t(np.concatenate([g.icpt[:, o] for o in range(O) for g in grids]))
        self.g_off = t((np.arange(O) * L)[:, None], torch.int32) if O > 1 else None
        self.grid = [(g.G, g.m) for g in grids]

    def s_into(self, xs: list, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        """Each table's s over `shape` entries, flat (T · N,), contiguous."""
        if self.T == 1:
            s = xs[0]
            for c, x in zip(self.coef[0][1:], xs[1:]):
                s = s + x if c == 1.0 else s.add(x, alpha=c)
            return (s if s.shape == shape else s.expand(shape)).reshape(-1)
        S = like.new_empty((self.T,) + shape)
        for coef, St in zip(self.coef, S.unbind(0)):
            if len(xs) == 1:
                St.copy_(xs[0])
                continue
            torch.add(xs[0], xs[1], alpha=coef[1], out=St)
            for c, x in zip(coef[2:], xs[2:]):
                St.add_(x, alpha=c)
        return S.view(-1)

    def path(self, N: int) -> int:
        """How a pass of N entries finds intervals: CLAMPED (s clamped, then its cell), GRID
        (the cell, then its kinks) or SEARCH (one searchsorted). The one rule for it: the fused
        kernel (fused_lookup.py) takes the same path, so that its results are this one's."""
        if self.clamp is not None and N >= SEARCH_BELOW:
            return CLAMPED
        return SEARCH if self.grid is None or N < SEARCH_BELOW else GRID

    def index(self, s: torch.Tensor, N: int, own: bool) -> tuple[torch.Tensor, bool, torch.Tensor]:
        """Each entry's row of the coefficient columns (int32, (O · T · N,)), whether they
        are the grid's, and s as the rows' coefficients take it (clamped to each table's
        ends by a clamped grid: into s itself when `own`)."""
        T = self.T
        path = self.path(N)
        if path == CLAMPED:
            if T == 1:
                (lo, hi), = self.clamp
                s = s.clamp_(lo, hi) if own else torch.clamp(s, lo, hi)
                j = torch.add(self.shift[0], s, alpha=self.inv_h[0])
            else:
                j = s.new_empty((T, N))
                for i, (jt, st) in enumerate(zip(j.unbind(0), s.view(T, N).unbind(0))):
                    st.clamp_(*self.clamp[i])
                    torch.add(self.shift[i], st, alpha=self.inv_h[i], out=jt)
                j = j.view(-1)
            k = j.nan_to_num_(0.0).to(torch.int32)
            if self.g_off is not None:
                k = torch.add(k, self.g_off).view(-1)
            return k, True, s
        if path == SEARCH:
            # searchsorted copies a strided input itself, with a UserWarning: copy it here
            k = torch.searchsorted(self.bp, s.contiguous() if T == 1 else s.view(T, N),
                                   out_int32=True)
            if self.s_off is not None:
                k = torch.add(k, self.s_off)
            return (k if k.dim() == 1 else k.view(-1)), False, s
        if T == 1:
            j = torch.add(self.shift[0], s, alpha=self.inv_h[0]).clamp_(self.jmin[0], self.jmax[0])
        else:
            j = s.new_empty((T, N))
            for i, (jt, st) in enumerate(zip(j.unbind(0), s.view(T, N).unbind(0))):
                torch.add(self.shift[i], st, alpha=self.inv_h[i], out=jt)
                jt.clamp_(self.jmin[i], self.jmax[i])
            j = j.view(-1)
        j = j.nan_to_num_(0.0).to(torch.int32)
        if self.m:
            k = torch.add(torch.lt(self.kinks[0].index_select(0, j), s), j, alpha=self.m + 1)
            for tk in self.kinks[1:]:
                k.add_(torch.lt(tk.index_select(0, j), s))
        else:
            k = j
        if self.g_off is not None:
            k = torch.add(k, self.g_off).view(-1)
        return k, True, s

    def __call__(self, xs: list, shape: tuple, dst: torch.Tensor) -> None:
        """The tables' sum for entries of `shape` (batch, instances, tokens), written into
        dst ((batch, instances · O, tokens), contiguous)."""
        T, O = self.T, self.O
        N = shape[0] * shape[1] * shape[2]
        s = self.s_into(xs, shape, dst)
        k, grid, s = self.index(s, N, T > 1)
        slope, icpt = (self.g_slope, self.g_icpt) if grid else (self.s_slope, self.s_icpt)
        a, b = slope.index_select(0, k), icpt.index_select(0, k)
        if T == 1 and O == 1:
            torch.addcmul(b, a, s, out=dst.view(-1))
        elif T == 1:                             # one instance, O output rows
            B, _, e = shape
            torch.addcmul(b.view(O, B, e), a.view(O, B, e), s.view(B, e),
                          out=dst.transpose(0, 1))
        else:
            parts = torch.addcmul(b, a, s).view(T, N).unbind(0)
            torch.add(parts[0], parts[1], out=dst.view(-1))
            for p in parts[2:]:
                dst.view(-1).add_(p)


class _Lookup:
    """A _Tables and its fused form, shared by the ops whose tables are the same."""
    __slots__ = ("tables", "fused", "__weakref__")

    def __init__(self, tables, fused):
        self.tables, self.fused = tables, fused


_LOOKUPS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def _shared_lookup(tables: list, dtype, device, passes) -> _Lookup:
    """The _Tables and fused form of these tables (held by the op), the same objects for every op whose tables
    are equal (by their bytes) while one of them lives: newton_logistic's sigmoid and λ
    tables, the same in every Newton step, are held once, not once per step (8 copies of a
    4,096-cell grid). `passes` is the first such op's torch path, which any of them may run
    (it depends on the tables and the call's shapes only)."""
    h = hashlib.blake2b(digest_size=20)
    for table in tables:
        for a in table:
            a = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())
    key = (h.digest(), str(dtype), str(torch.device(device)))
    hit = _LOOKUPS.get(key)
    if hit is None:
        hit = _LOOKUPS[key] = _Lookup(_Tables(tables, dtype, device), None)
    # the fused form of the kernel in use now (the environment may have switched it since)
    if hit.fused is None or hit.fused.fn is not fused_lookup.kernel(dtype, _Tables):
        hit = _Lookup(hit.tables, fused_lookup.make(hit.tables, dtype, device, passes))
        if hit.fused is not None:
            _LOOKUPS[key] = hit
    return hit


class MlpOp:
    """One MLP group: a constant, a linear map, ReLUs over the rows it reads, or PL tables."""

    alpha = 1.0
    fresh = True

    def __init__(self, g: MlpGroup, slots, consts, n, dtype, device):
        t, like = _converters(dtype, device)
        e = concrete(g.ext, n)
        bias = np.zeros((g.W2.shape[1], e))
        if g.gate.rows:
            gate = const_array(ReadOp(g.gate, slots, e, n), consts, like)
            bias = g.W1c @ gate                                   # (U, e)
        self.var = ReadOp(g.var, slots, e, n) if g.var.rows else None
        self.kind, self.const, self.M_np, self._t = g.kind, None, None, t
        self.q_rows, self.read, self.e = g.var.rows, g.var, e
        if g.kind == "const":
            self.const = t(g.W2 @ np.maximum(bias, 0.0))[None]
            self.fresh = False
            return
        if g.kind == "table" and np.all(bias == bias[:, :1]):
            self._table(g, bias[:, 0], slots, n, e, dtype, device)
            return
        assert g.instances == 1, "stacked tables are gated by the ones row (pl_tables.py)"
        M = relu_pairs_linear(g.W1v, g.W2) if not np.any(bias) else None
        if M is not None:
            self.kind = "linear"
            self.set_linear(M)
            return
        self.kind = "relu"
        self.W1, self.bias, self.W2 = t(g.W1v), t(bias)[None], t(g.W2)

    # ---- linear ------------------------------------------------------------------------
    def set_linear(self, M: np.ndarray) -> None:
        self.M_np = M
        s = scalar_of(M)
        self.alpha = 1.0 if s is None else s
        self.M = None if s is not None else self._t(M)
        self.fresh = s is None

    def linear_map(self):
        """M (rows out × var rows) when the group is linear in what it reads, else None."""
        return self.M_np if self.kind == "linear" else None

    # ---- tables ------------------------------------------------------------------------
    def _table(self, g: MlpGroup, b, slots, n, e, dtype, device):
        """Coordinate i of instance r is var row r·k + i: one read per coordinate, over all
        instances (one row, broadcast, when every instance reads the same row)."""
        a = g.W1v[:, 0]
        bp, slope, icpt = build_table(a, b, g.W2)
        self.k, self.inst, self.outs = g.W1v.shape[1], g.instances, g.W2.shape[0]
        self.coords = []
        for i in range(self.k):
            rd = sub_read(g.var, [r * self.k + i for r in range(self.inst)], slots)
            if self.inst > 1 and len(rd.segments) == 1 and len(set(rd.segments[0].positions)) == 1:
                rd = sub_read(g.var, [i], slots)
            self.coords.append(ReadOp(rd, slots, e, n))
        self.tables = [(bp, slope, icpt, g.W1v[0] / a[0])]
        self.chunk = CHUNK.get(torch.device(device).type, CHUNK_OTHER)
        self._dtype, self._device = dtype, device
        self._set_lookup()

    def absorbable(self, other) -> bool:
        """Does `other` (a later op of the same sublayer) read the same rows over the same
        tokens, with one output row per instance like this one?"""
        return (isinstance(other, MlpOp) and self.kind == other.kind == "table"
                and self.outs == other.outs == 1 and self.inst == other.inst
                and self.k == other.k and self.e == other.e
                and self.read.rows == other.read.rows
                and self.read.segments == other.read.segments)

    def absorb(self, other) -> None:
        """Evaluate `other`'s tables here too, summed into this op's output (the two squares
        of a product piece: one read of the operands, one output, one term)."""
        self.tables += other.tables
        self._set_lookup()

    def add_intercept(self, row: int, c: float) -> None:
        """Output row `row` (one instance: its output) + c on every entry, by the first
        table's intercepts (executor._fold_constants)."""
        assert self.kind == "table" and self.inst == 1 and self.alpha == 1.0
        bp, slope, icpt, coef = self.tables[0]
        icpt = icpt.copy()
        icpt[:, row] += c
        self.tables[0] = (bp, slope, icpt, coef)
        self._set_lookup()

    def _set_lookup(self) -> None:
        """The tables by torch (_Tables), and fused into one C pass where that kernel is
        available (fused_lookup.py: the same results bit for bit; None: torch only); one
        pair for every op with the same tables (_shared_lookup)."""
        self._shared = _shared_lookup(self.tables, self._dtype, self._device, self._passes)
        self._lookup, self._fused = self._shared.tables, self._shared.fused

    def __call__(self, state: dict, like) -> torch.Tensor:
        if self.const is not None:
            return self.const
        if self.kind != "table":
            X = self.var(state, like)
            if self.kind == "relu":     # bias + W1 X in one baddbmm (the bias broadcast)
                W1, X = _batched(self.W1, X)
                return mm(self.W2, torch.baddbmm(self.bias, W1, X).relu_())
            return X if self.M is None else mm(self.M, X)
        xs = [rd(state, like) for rd in self.coords]
        B, e = max(x.shape[0] for x in xs), self.e
        out = like.new_empty((B, self.inst * self.outs, e))
        if self._fused is not None:
            return fused_lookup.lookup(self._fused, xs, (B, self.inst, e), out)
        self._passes(xs, (B, self.inst, e), out)
        return out

    def _passes(self, xs: list, shape: tuple, out: torch.Tensor) -> None:
        """The tables by torch, in passes of `chunk` entries over the batch."""
        B, _, e = shape
        step = max(1, self.chunk // max(1, self.inst * e * len(self.tables)))
        if step >= B:
            self._lookup(xs, shape, out)
            return
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            part = [x[b0:b1] if x.shape[0] > 1 else x for x in xs]
            self._lookup(part, (b1 - b0, self.inst, e), out[b0:b1])


__all__ = ["scalar_of", "ReadOp", "fit", "read_outputs", "HeadOp", "MlpOp", "relu_pairs_linear", "CHUNK"]
