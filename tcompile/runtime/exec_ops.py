"""The structured executor's operations for one n, dtype and device: reads of slot rows, heads,
MLP groups and the residual sums, as small callables over the state (slot key → tensor).

Tensors are (batch, rows, tokens): a slot holds its rows over the token columns it occupies;
encoder constants are held once with batch 1 and broadcast. Constant operands (encoder
constants, which depend on n only) are multiplied out here, once per n: a head whose K and V
are constants (an identity, I/n, ones) is one matrix applied to Q, or one scalar when that
matrix is a multiple of the identity.
"""
from __future__ import annotations

import numpy as np
import torch

from .exec_plan import Read, concrete
from .exec_sublayers import HeadSpec
from .pl_tables import MlpGroup, bucket_index, build_table


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
        self.e, self.parts = e, []
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

    def __call__(self, state: dict, like: torch.Tensor) -> torch.Tensor:
        out = []
        for key, idx, src_e in self.parts:
            if key is None:
                out.append(like.new_zeros((1, idx, self.e)))
                continue
            T = state[key]
            if idx != slice(None):
                T = T[:, idx]
            out.append(fit(T, src_e, self.e))
        if len(out) == 1:
            return out[0]
        B = max(t.shape[0] for t in out)
        return torch.cat([t.expand(B, -1, -1) for t in out], dim=1)


def fit(T: torch.Tensor, have: int, want: int) -> torch.Tensor:
    """T over `want` token columns: cut, or padded with zeros."""
    if have == want:
        return T
    if have > want:
        return T[..., :want]
    return torch.nn.functional.pad(T, (0, want - have))


def const_array(op: ReadOp, consts: dict, like: torch.Tensor) -> np.ndarray:
    """A read of constant rows, evaluated once at plan time: (rows, e) in float64 numpy, for
    multiplying constant operands out before any input is seen."""
    return op(consts, like).double().cpu().numpy()[0]      # constants may live on a GPU


def _converters(dtype, device):
    """(numpy array → contiguous tensor of this dtype on this device, a 0-d tensor like it)."""
    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)
    return t, torch.zeros((), dtype=dtype, device=device)


class HeadOp:
    """V Kᵀ G Q for one head, the cheaper multiplication order for this n."""

    def __init__(self, spec: HeadSpec, slots, consts, n, dtype, device):
        t, like = _converters(dtype, device)
        m, e = concrete(spec.m, n), concrete(spec.ext, n)
        self.k, self.v = ReadOp(spec.k, slots, m, n), ReadOp(spec.v, slots, m, n)
        self.q = ReadOp(spec.q, slots, e, n)
        self.M = self.M_np = self.scale = self.const = None
        self.alpha, self.q_rows, self._t = 1.0, spec.q.rows, t
        Wv = spec.Wv
        if spec.k.const and spec.v.const:       # fold: one matrix (or scalar) applied to Q
            K = const_array(self.k, consts, like)
            V = const_array(self.v, consts, like)
            M = (Wv @ V) @ K.T @ spec.G
            if spec.q.const:
                Q = const_array(self.q, consts, like)
                self.const = t(M @ Q)[None]
            else:
                self.set_linear(M)
            return
        self._general(spec, Wv, m, e, t)

    def _general(self, spec, Wv, m, e, t):
        sG, sV = scalar_of(spec.G), scalar_of(Wv)
        scale = (1.0 if sG is None else sG) * (1.0 if sV is None else sV)
        G = None if sG is not None else spec.G * scale
        if G is None and sV is None:
            Wv, scale = Wv * scale, 1.0
        elif G is not None:
            scale = 1.0
        self.G = None if G is None else t(G)
        self.G_on_q = G is None or e <= m
        self.Wv = None if sV is not None else t(Wv)
        self.alpha = scale
        vo, c = len(spec.out_rows), (spec.G.shape[0] if self.G_on_q else spec.G.shape[1])
        self.kv_first = vo * m * c + vo * c * e <= m * c * e + vo * m * e

    def set_linear(self, M: np.ndarray) -> None:
        """The head is M @ Q: a scalar (returned as Q with alpha = s) or a matrix."""
        self.M_np = M
        s = scalar_of(M)
        self.scale, self.alpha = (s, s) if s is not None else (None, 1.0)
        self.M = None if s is not None else self._t(M)

    def linear_map(self):
        """M (rows out × q rows) when the head is linear in Q, else None."""
        return None if self.const is not None else self.M_np

    def __call__(self, state: dict, like) -> torch.Tensor:
        """The head's output divided by `alpha` (the residual sum multiplies it in)."""
        if self.const is not None:
            return self.const
        Q = self.q(state, like)
        if self.scale is not None:
            return Q
        if self.M is not None:
            return self.M @ Q
        K, V = self.k(state, like), self.v(state, like)
        if self.G is not None:
            if self.G_on_q:
                Q = self.G @ Q
            else:
                K = self.G.T @ K
        if self.Wv is not None:
            V = self.Wv @ V
        return (V @ K.mT) @ Q if self.kv_first else V @ (K.mT @ Q)


class MlpOp:
    """One MLP group: a constant, ReLUs over the rows it reads, or a PL table."""

    alpha = 1.0

    def linear_map(self):
        return None

    def __init__(self, g: MlpGroup, slots, consts, n, dtype, device):
        t, like = _converters(dtype, device)
        e = concrete(g.ext, n)
        bias = np.zeros((g.W2.shape[1], e))
        if g.gate.rows:
            gate = const_array(ReadOp(g.gate, slots, e, n), consts, like)
            bias = g.W1c @ gate                                   # (U, e)
        self.var = ReadOp(g.var, slots, e, n) if g.var.rows else None
        self.kind, self.const = g.kind, None
        if g.kind == "const":
            self.const = t(g.W2 @ np.maximum(bias, 0.0))[None]
            return
        if g.kind == "table" and np.all(bias == bias[:, :1]):
            a = g.W1v[:, 0]
            bp, slope, icpt = build_table(a, bias[:, 0], g.W2)
            self.k, self.inst = g.W1v.shape[1], g.instances
            self.dir = None if self.k == 1 else t(g.W1v[:1] / a[0])
            self.dir_coef = [float(c) for c in g.W1v[0] / a[0]]
            self.bp, self.slope, self.icpt = t(bp), t(slope), t(icpt)
            grid = bucket_index(bp)
            self.grid = None if grid is None else (
                grid[0], grid[1], torch.as_tensor(grid[2], device=device), t(grid[3]), grid[4])
            self.single = g.W2.shape[0] == 1
            if self.single:
                self.slope, self.icpt = self.slope[:, 0].contiguous(), self.icpt[:, 0].contiguous()
            return
        assert g.instances == 1, "stacked tables are gated by the ones row (pl_tables.py)"
        self.kind = "relu"
        self.W1, self.bias, self.W2 = t(g.W1v), t(bias)[None], t(g.W2)

    def index(self, s: torch.Tensor) -> torch.Tensor:
        """#{breakpoints < s}: torch.searchsorted, or the same count from the uniform grid
        (pl_tables.bucket_index) in a few elementwise ops."""
        if self.grid is None:
            return torch.searchsorted(self.bp, s.contiguous())
        origin, inv_h, base, padded, m = self.grid
        j = ((s - origin) * inv_h).clamp(0, base.shape[0] - 1).long()
        b = base[j]
        idx = b
        for i in range(m):
            idx = idx + (padded[b + i] < s)
        return idx

    def __call__(self, state: dict, like) -> torch.Tensor:
        if self.const is not None:
            return self.const
        X = self.var(state, like)
        if self.kind == "relu":
            return self.W2 @ torch.relu(self.W1 @ X + self.bias)
        if self.single:                       # (B, instances, e): one row per instance
            if self.dir is None:
                s = X
            else:
                B, _, e = X.shape
                X = X.reshape(B, self.inst, self.k, e)
                s = X[:, :, 0]
                for i in range(1, self.k):       # s = dir · x, elementwise (k is 2 or 3)
                    s = s.add(X[:, :, i], alpha=self.dir_coef[i])
            idx = self.index(s)
            return self.slope[idx] * s + self.icpt[idx]
        s = (X if self.dir is None else self.dir @ X)[:, 0]          # (B, e)
        idx = self.index(s)
        return (self.slope[idx] * s.unsqueeze(-1) + self.icpt[idx]).transpose(1, 2)


__all__ = ["scalar_of", "ReadOp", "fit", "HeadOp", "MlpOp"]
