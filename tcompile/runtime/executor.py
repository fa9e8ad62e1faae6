"""The structured executor: the compiled model's numbers, reorganised to do the algorithm's work.

The paper-form module (model.py) multiplies the whole (B, n, D) stream by every head's D×D
W_V and runs every MLP over every row and token: exact, and mostly zeros. This executor is
derived from the same LayerWeights and the Layout (exec_plan.py, exec_sublayers.py):

* every stored value is its own contiguous (B, rows, tokens) tensor, over the token columns
  it occupies only ([n]-shaped values span n tokens, [d, d], [d] and scalars d or 1);
* a head reads only the rows its W_K, W_Q, W_V read and writes only W_V's nonzero rows; its
  products run over the operands' extents, the chain W_V·V·Kᵀ·G·Q bracketed for the fewest
  flops with its constants multiplied out; two heads of a sublayer whose V and K are each
  other's K and V (the symmetric halves of AᵀDA) share one V Kᵀ, and a V Kᵀ an earlier
  sublayer made (or rows of it) is taken, not made again (_share_grams);
* input slots are the caller's arrays, read in place through their strides; a slot read as
  Kᵀ by many products is held column by column (_read_transposed);
* heads whose K and V are encoder constants are one matrix (or scalar) applied to Q;
* empty sublayers and heads or units that write nothing are skipped; a row that a linear term
  clears (adds −old) is neither read nor cleared;
* an MLP reads only its input rows; univariate PL pieces are tables (pl_tables.py), looked up
  in passes of bounded size; the two squares of a product piece are one op;
* a written slot is summed in place, into an op's output made for it where there is one; a
  head that adds its query scaled (s·X) onto the same X adds to that term's coefficient, and
  a head that is one product L @ R is added by one baddbmm (2X − X A X: bmm, then
  baddbmm(X, X·A, X, beta=2, alpha=−1)); products are torch.bmm, not `@`;
* the plan runs as generated straight-line code (exec_codegen.py): per input shapes, the
  first run records its tensor calls and writes them out as one Python function, so a
  forward pass is that list of calls and none of the plan's Python.

It computes the same function as the module (tests/test_executor.py: ≤ 1e-13 relative in
float64); the module stays the reference for hooks, run_with_cache, trace and fine-tuning.
Per (n, dtype, device) the plan is resolved once into tensors (exec_ops.py) and kept.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError
from . import clock
from .codec import ValidatedInputs, constant_storage, in_shape, storage_at_input
from .exec_codegen import NotTraceable, trace
from .exec_ops import HeadOp, MlpOp, ReadOp, baddbmm, fit, host, read_outputs, template
from .exec_plan import concrete, initial_occupancy, sub_read
from .exec_sublayers import HeadSpec, SublayerPlan, plan_program
from .domain_guard import guarded, observe, pack, settle
from .layout import Block, Layout
from .model import exact_float32
from .weights import LayerWeights


class _Piece(NamedTuple):
    """One term of a written slot's residual sum: alpha · (rows `src` of what `get` gives,
    over `have` token columns, fitted to the slot's), added into rows `dst` of the slot."""
    get: object          # an op's index in _Sublayer.ops, or a ReadOp (the slot's old value)
    src: object          # rows of the op's output (a slice or a list), None: all of them
    have: int            # token columns the op's output spans
    dst: object          # rows of the slot it adds to (an index tensor), None: all of them
    alpha: float
    spare: bool          # the op's output was made for this term alone (may be added into)


class _Write(NamedTuple):
    """A slot a sublayer writes: its terms, and the head added by one baddbmm, if any."""
    key: str
    rows: int
    e: int               # token columns
    pieces: list         # [_Piece]
    fused: tuple | None  # (op index, alpha): + alpha · L @ R, the head's factors


class _Sublayer:
    """One sublayer resolved: contributions, then each written slot = residual + terms.

    Exact simplifications of the residual sum: where a linear term (a head linear in Q, or
    ReLU units that pair up into a linear map) adds −(old value) onto a row that held
    something — the compiler's clearing of rows it reuses — both are dropped, row by row
    (x + (−x) = 0), and the old value is read only on the rows still held; a linear op then
    computes only the rows some term still adds; and the sum is accumulated in place, into an
    op's output made for that one term where there is one, so that a written slot costs one
    tensor of its size."""

    by_columns: frozenset = frozenset()     # slots held column by column (_read_transposed)

    def __init__(self, plan: SublayerPlan, slots: dict, consts: dict, n, dtype, device):
        make = lambda c: (HeadOp if isinstance(c, HeadSpec) else MlpOp)(  # noqa: E731
            c, slots, consts, n, dtype, device)
        ops = [make(c) for c in plan.contribs]
        # constant contributions that are zero (an MLP's units whose gated bias is off on
        # every token): x + 0 = x, their terms are dropped. Plan-time tests of constants are
        # numpy's: torch ops the forward never runs would page in libtorch code for them
        # (~0.5 MiB of resident set each, bench/README.md's peak memory)
        zero = {i for i, op in enumerate(ops)
                if getattr(op, "const", None) is not None and not host(op.const).any()}
        writes = []
        for slot, old, terms in zip(plan.slots, plan.olds, plan.terms):
            e = concrete(slot.ext, n)
            ts = [(tm.index, tm.src, tm.dst) for tm in terms if tm.index not in zero]
            held = {d for d in range(len(old.rows)) if old.owner_of(d) is not None}
            cleared, gone = set(), set()
            for i, src, dst in ts:
                for s, d in zip(src, dst):
                    # one −old per row cancels the old value: a second term that also adds
                    # −(that row) is part of the new value (X0 − X1 written over X1 adds
                    # X0 − X1 and −X1) and stays
                    if d in held and d not in gone and _clears_row(ops[i], s, slot.rows[d]) \
                            and concrete(plan.contribs[i].ext, n) >= \
                            concrete(slots[old.owner_of(d)].ext, n):
                        cleared.add((i, s, d))
                        gone.add(d)
            ts = [(i, tuple(s for s, d in zip(src, dst) if (i, s, d) not in cleared),
                   tuple(d for s, d in zip(src, dst) if (i, s, d) not in cleared))
                  for i, src, dst in ts]
            ts = [tm for tm in ts if tm[1]]
            keep = sorted(held - gone)
            old_read = None
            if keep:
                whole = keep == list(range(len(old.rows)))
                old_read = (ReadOp(old if whole else sub_read(old, keep, slots), slots, e, n),
                            None if whole else _dst(keep, device))
            writes.append((slot, old_read, ts))
        ops, writes = _prune_linear(ops, writes)
        ops, writes = _merge_tables(ops, writes)
        writes = _fold_constants(ops, writes, n)
        for i, op in enumerate(ops):            # heads whose W_V is a column of s_b I
            if isinstance(op, HeadOp) and op.stack is not None:
                w = op.stack[0]
                srcs = [src for _, _, ts in writes for j, src, _ in ts if j == i]
                if srcs and all(len({r // w for r in src}) == 1 for src in srcs):
                    op.unstack()
        self.ops, self._pending = ops, (plan, writes, slots, n, device)

    def finish(self) -> None:
        """The residual sums, once the heads know which V Kᵀ they share (_share_grams, over
        all sublayers: whether a head's output is its own decides what may be added into)."""
        plan, writes, slots, n, device = self._pending
        del self._pending
        ops = self.ops
        self.heads = [isinstance(op, HeadOp) for op in ops]
        uses = [0] * len(ops)
        for _, _, ts in writes:
            for i, _, _ in ts:
                uses[i] += 1
        self.writes = []
        for slot, old_read, ts in writes:
            e = concrete(slot.ext, n)
            pieces = []
            for i, src, dst in ts:
                M = ops[i].linear_map()         # rows pruned: fewer than the contribution's
                width = len(M) if M is not None else len(plan.contribs[i].out_rows)
                alpha = ops[i].alpha
                stacked = getattr(ops[i], "stacked", None)
                if stacked is not None:         # block b of the old output: s_b · the output
                    width, b = stacked[0], src[0] // stacked[0]
                    src, alpha = tuple(r - b * width for r in src), alpha * stacked[1][b]
                whole = src == tuple(range(width))
                have = concrete(plan.contribs[i].ext, n)
                pieces.append(_Piece(i, None if whole else _rows(src), have,
                                     None if dst == tuple(range(len(slot.rows)))
                                     else _dst(dst, device), alpha,
                                     ops[i].fresh and uses[i] == 1 and whole and have == e))
            if old_read is not None:
                rd, have = old_read[0], e
                if len(rd.parts) == 1 and rd.parts[0][0] is not None and rd.parts[0][2] < e:
                    have = rd.parts[0][2]           # held over fewer columns: read as it is
                    rd = ReadOp(rd.read, slots, have, n)
                pieces.insert(0, _Piece(rd, None, have, old_read[1], 1.0, False))
            pieces = self._merge_same_reads(pieces, e, uses)
            fused = self._fusable(pieces, e, uses)
            if fused is not None:
                pieces.remove(fused)
                fused = (fused.get, fused.alpha)
            base = [k for k, pc in enumerate(pieces) if pc.spare and pc.dst is None][:1]
            pieces = [pieces[k] for k in base] + [pc for k, pc in enumerate(pieces) if k not in base]
            # terms over fewer token columns last: added into the sum's columns they cover
            # (_Sum.add_cols), not padded with zeros first, once another term made the sum
            narrow = [pc for pc in pieces if pc.have < e and pc.dst is None]
            if narrow and len(narrow) < len(pieces):
                pieces = [pc for pc in pieces if not (pc.have < e and pc.dst is None)] + narrow
            self.writes.append(_Write(slot.key, len(slot.rows), e, pieces, fused))
        self.skip = {w.fused[0] for w in self.writes if w.fused is not None}

    def _merge_same_reads(self, pieces: list, e: int, uses: list) -> list:
        """A head that returns its query scaled (s·Q) where Q is the residual's old value
        (the same rows, the same columns) adds to that term's coefficient: 2X, not X + X."""
        old = [pc for pc in pieces if not isinstance(pc.get, int) and pc.dst is None]
        if not old:
            return pieces
        old = old[0]
        alpha, out = old.alpha, []
        for pc in pieces:
            get, src, have, dst, a, _ = pc
            op = self.ops[get] if isinstance(get, int) else None
            if isinstance(op, HeadOp) and op.scale is not None and op.M is None and \
                    op.const is None and src is None and dst is None and have == e and \
                    uses[get] == 1 and _same_read(op.q, old[0]):
                alpha += a
                self.ops[get] = None
                continue
            out.append(pc)
        if alpha == 0.0:                    # x − x: the clearing of a reused row, dropped
            return [pc for pc in out if pc is not old]
        return [pc._replace(alpha=alpha) if pc is old else pc for pc in out]

    def _fusable(self, pieces: list, e: int, uses: list):
        """The term a baddbmm adds: a head that is one product L @ R over the whole slot,
        used only here (beside at least one other term: else a plain product)."""
        if len(pieces) < 2:
            return None
        for pc in pieces:
            get, src, have, dst = pc.get, pc.src, pc.have, pc.dst
            if isinstance(get, int) and isinstance(self.ops[get], HeadOp) and \
                    self.ops[get].fusable and src is None and dst is None and have == e and \
                    uses[get] == 1:
                return pc
        return None

    def __call__(self, state: dict, like: torch.Tensor, grams: dict | None = None) -> None:
        """Run the sublayer on `state`. grams: the V Kᵀ products shared so far in this
        forward (by _share_grams' keys; None: none, only this sublayer's heads share)."""
        grams = {} if grams is None else grams
        skip = self.skip
        outs = [None if op is None or i in skip else op(state, like, grams) if head
                else op(state, like) for i, (op, head) in enumerate(zip(self.ops, self.heads))]
        new = {}
        for key, rows, e, pieces, fused in self.writes:
            if fused is None and len(pieces) == 1 and pieces[0].dst is None and \
                    isinstance(pieces[0].get, int):
                # one term, no residual
                get, src, have, _, alpha, spare = pieces[0]
                part = fit(outs[get] if src is None else outs[get][:, src], have, e)
                new[key] = part if alpha == 1.0 else part.mul_(alpha) if spare else part * alpha
                continue
            acc = _Sum()
            for get, src, have, dst, alpha, spare in pieces:
                if isinstance(get, int):
                    part = outs[get] if src is None else outs[get][:, src]
                    if spare:
                        outs[get] = None            # its one use: it lives on in acc only
                else:
                    part = get(state, like)         # the old value
                if have < e and dst is None and acc.t is not None:
                    acc.add_cols(part, alpha, have)
                    continue
                part = fit(part, have, e)
                if dst is None:
                    acc.add(part, alpha, spare)
                else:
                    acc.index_add(part, alpha, dst, rows, e, like)
            if fused is not None:                   # + alpha · L @ R, one call
                i, alpha = fused
                L, R = self.ops[i].factors(state, like, grams)
                new[key] = baddbmm(acc.t, acc.scale, L, R, alpha, acc.own)
                continue
            new[key] = acc.value() if acc.t is not None else like.new_zeros((1, rows, e))
        for key in self.by_columns.intersection(new):
            t = new[key]
            if t.dim() == 3 and t.shape[-2] > 1 and t.shape[-1] > 1:
                new[key] = t.mT.contiguous().mT
        state.update(new)


class _Sum:
    """scale · t, accumulated term by term: in place where t or the term is a tensor of this
    sum's own of the full (broadcast) shape — t once an addition made it, a term when its op
    made it for this term alone (`spare`) — so that a written slot costs one tensor of its
    size; a term's alpha rides in the addition (one pass per term, none for a first term)."""

    __slots__ = ("t", "scale", "own")

    def __init__(self):
        self.t, self.scale, self.own = None, 1.0, False

    def add(self, part, alpha: float, spare: bool) -> None:
        t = self.t
        if t is None:
            self.t, self.scale, self.own = part, alpha, spare
            return
        full = t.shape if t.shape == part.shape else \
            tuple(max(a, b) for a, b in zip(t.shape, part.shape))
        mine = self.own and t.shape == full
        theirs = spare and part.shape == full
        if self.scale == 1.0:                   # t + alpha·part
            out = t if mine else part if theirs else None
            self.t = torch.add(t, part, alpha=alpha, out=out) if out is not None else \
                torch.add(t, part, alpha=alpha)
        elif alpha == 1.0:                      # part + scale·t
            out = t if mine else part if theirs else None
            self.t = torch.add(part, t, alpha=self.scale, out=out) if out is not None else \
                torch.add(part, t, alpha=self.scale)
            self.scale = 1.0
        else:
            self.settle()
            return self.add(part, alpha, spare)
        self.own = True

    def add_cols(self, part, alpha: float, have: int) -> None:
        """t[..., :have] += alpha·part: a term over the first `have` token columns only (no
        zero padding), into a tensor of the sum's own of the full (broadcast) shape."""
        shape = (max(self.t.shape[0], part.shape[0]),) + tuple(self.t.shape[1:])
        if self.scale != 1.0:
            self.t, self.scale = torch.mul(self.t.expand(shape), self.scale), 1.0
        elif not self.own or self.t.shape != shape:
            self.t = self.t.expand(shape).clone(memory_format=torch.contiguous_format)
        self.own = True
        self.t[..., :have].add_(part, alpha=alpha)

    def index_add(self, part, alpha: float, dst, rows: int, e: int, like) -> None:
        """Rows dst of t += alpha·part."""
        if self.t is None:
            self.t, self.own = like.new_zeros((part.shape[0], rows, e)), True
        self.settle()
        B = max(self.t.shape[0], part.shape[0])
        if isinstance(dst, slice):              # consecutive rows: a view, added in place
            if not self.own or self.t.shape[0] != B:
                self.t = self.t.expand(B, -1, -1).clone(memory_format=torch.contiguous_format)
                self.own = True
            self.t[:, dst].add_(part.expand(B, -1, -1), alpha=alpha)
        elif self.own and self.t.shape[0] == B:
            self.t.index_add_(1, dst, part.expand(B, -1, -1), alpha=alpha)
        else:
            self.t = self.t.expand(B, -1, -1).index_add(1, dst, part.expand(B, -1, -1),
                                                        alpha=alpha)
            self.own = True

    def settle(self) -> None:
        if self.scale != 1.0:
            self.t = self.t.mul_(self.scale) if self.own else self.t * self.scale
            self.scale, self.own = 1.0, True

    def value(self):
        self.settle()
        return self.t


def _dst(rows, device):
    """Rows of a slot a term adds into: a slice where they are consecutive (a view added
    in place; index_add_ is slower, and its kernel's first use alone pages in ~2 MiB of
    libtorch), else an index tensor."""
    rows = list(rows)
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, device=device)


def _same_read(a: ReadOp, b: ReadOp) -> bool:
    """Do two reads give the same tensor (the same rows of the same slots, same columns)?"""
    return a.parts == b.parts and a.e == b.e


def _rows(src):
    """An index for rows src of an op's output: a slice (a view) where they are consecutive."""
    if list(src) == list(range(src[0], src[0] + len(src))):
        return slice(src[0], src[0] + len(src))
    return list(src)


def _clears_row(op, s: int, r: int) -> bool:
    """Does row s of this op add exactly −(old value of row r), read when it runs?"""
    M = op.linear_map()
    if M is None or r not in op.q_rows:
        return False
    want = np.zeros(M.shape[1])
    want[list(op.q_rows).index(r)] = -1.0
    return np.array_equal(M[s], want)


def _prune_linear(ops, writes):
    """Linear heads compute only the rows a term adds; ops no term uses are dropped (None)."""
    used = [set() for _ in ops]
    for _, _, ts in writes:
        for i, src, _ in ts:
            used[i] |= set(src)
    remap = [None] * len(ops)
    for i, op in enumerate(ops):
        if not used[i]:
            ops[i] = None
            continue
        M = op.linear_map()
        if M is not None and len(used[i]) < len(M):
            keep = sorted(used[i])
            op.set_linear(M[keep])
            remap[i] = {s: k for k, s in enumerate(keep)}
    writes = [(slot, old, [(i, tuple(remap[i][s] for s in src) if remap[i] else src, dst)
                           for i, src, dst in ts]) for slot, old, ts in writes]
    return ops, writes


def _share_grams(sublayers: list) -> list[list]:
    """V Kᵀ computed once per forward where heads share it:
    * in one sublayer, heads whose V Kᵀ is another's or its transpose (V and K swapped: the
      two symmetric halves of AᵀDA) take it, or its transpose, from the first that runs;
    * across sublayers (slot keys name values, so a V Kᵀ over the same keys is the same
      product), a head takes it in its own orientation from an earlier sublayer's head;
    * a head whose K is an earlier sublayer's head's and whose V rows are some of that head's
      V rows takes those rows of its V Kᵀ (least_squares: S = AᵀA/n and b = Aᵀy/n read
      [A; y] in one product; the first Newton step's 2I − AᵀA/n, a sublayer later, reads A).
    Returns, per sublayer, the keys of the products no later sublayer reads (dropped after
    it)."""
    canon_of: dict = {}                     # (sublayer, canon) → heads there
    by_key: dict = {}                       # gram_key → [(sublayer, head)]
    heads = []
    for k, sub in enumerate(sublayers):
        for op in sub.ops:
            if isinstance(op, HeadOp) and op.gram_key is not None:
                key = op.gram_key
                canon_of.setdefault((k, min(key, key[::-1])), []).append(op)
                by_key.setdefault(key, []).append(k)
                heads.append((k, op))
    last: dict = {}
    glob_of = {}
    for key, ks in by_key.items():          # the same product in several sublayers
        if len(set(ks)) > 1:
            glob_of[key] = (("glob", key), None)
    for k, op in heads:                     # rows of an earlier sublayer's product
        if op.gram_key in glob_of or len(canon_of[(k, min(op.gram_key, op.gram_key[::-1]))]) > 1:
            continue
        best = None
        for k2, g in heads:
            if k2 < k:
                rows = _rows_within(op, g)
                if rows is not None and (best is None or len(_gram_rows(g)) > len(_gram_rows(best[0]))):
                    best = (g, rows)
        if best is not None:
            g, rows = best
            glob_of.setdefault(g.gram_key, (("glob", g.gram_key), None))
            glob_of[op.gram_key] = (("glob", g.gram_key), _rows(rows))
    for k, op in heads:
        canon = min(op.gram_key, op.gram_key[::-1])
        local = (k, canon) if len(canon_of[(k, canon)]) > 1 else None
        glob, rows = glob_of.get(op.gram_key, (None, None))
        if local is None and glob is None:
            continue
        op.share_gram(local, op.gram_key != canon, glob, rows)
        for key in (local, glob):
            if key is not None:
                last[key] = max(last.get(key, k), k)
    drop = [[] for _ in sublayers]
    for key, k in last.items():
        drop[k].append(key)
    return drop


# a slot read as Kᵀ this many times is worth one transposing copy (newton_logistic's H, read
# by 5 Newton–Schulz steps at d = 10, B = 64: the copies cost more than they saved)
READ_TRANSPOSED_MIN = 8


def _read_transposed(sublayers: list) -> set:
    """Written slots that heads read mostly as Kᵀ (the whole slot, READ_TRANSPOSED_MIN
    times or more): held
    column by column (a transposed contiguous copy, same values and shape), so that their
    products take contiguous operands (least_squares' S, read as Sᵀ by both products of all
    T Newton steps: a batched product by a transposed 10 × 10 operand costs ~30% more on
    this CPU; one copy per write)."""
    as_k: dict = {}
    other: dict = {}
    for sub in sublayers:
        for op in sub.ops:
            if not isinstance(op, HeadOp) or getattr(op, "_leaves", None) is None:
                continue
            for name, rd in (("K", op.k), ("V", op.v), ("Q", op.q)):
                if rd.whole is not None and any(isinstance(f, str) and f == name
                                                for f in op._leaves):
                    d = as_k if name == "K" else other
                    d[rd.whole] = d.get(rd.whole, 0) + 1
    written = {w.key for sub in sublayers for w in sub.writes}
    return {key for key, c in as_k.items()
            if c >= READ_TRANSPOSED_MIN and c > other.get(key, 0) and key in written}


def _gram_rows(op):
    """The (slot, position) of each V row of a head's V Kᵀ, None where one is zero."""
    (segs, _), _ = op.gram_key
    out = tuple((key, p) for key, pos in segs for p in pos)
    return None if any(key is None for key, _ in out) else out


def _rows_within(op, other):
    """Where op's V rows sit among other's, when op's V Kᵀ is rows of other's (the same K
    over the same tokens, op's V rows all read by other's V); else None."""
    (_, m), kkey = op.gram_key
    (_, m2), kkey2 = other.gram_key
    mine, theirs = _gram_rows(op), _gram_rows(other)
    if kkey != kkey2 or m != m2 or mine is None or theirs is None or \
            not set(mine) <= set(theirs) or len(mine) >= len(theirs):
        return None
    return tuple(theirs.index(r) for r in mine)


def _merge_tables(ops, writes):
    """A table op whose reads and terms another, earlier one repeats (the two squares of a
    product piece) is evaluated by that one (MlpOp.absorb) and dropped with its terms."""
    terms_of = {}
    for w, (_, _, ts) in enumerate(writes):
        for i, src, dst in ts:
            terms_of.setdefault(i, []).append((w, src, dst))
    for j, op in enumerate(ops):
        if not isinstance(op, MlpOp) or op.kind != "table":
            continue
        for i in range(j):
            if ops[i] is not None and ops[i].absorbable(op) and \
                    sorted(terms_of.get(i, [])) == sorted(terms_of.get(j, [])):
                ops[i].absorb(op)
                ops[j] = None
                break
    writes = [(slot, old, [tm for tm in ts if ops[tm[0]] is not None]) for slot, old, ts in writes]
    return ops, writes


def _fold_constants(ops, writes, n):
    """A constant term (an MLP's units on constants only) that adds the same number on every
    token column of a row into which a one-instance table's output row is added too, that
    row used by no other term, goes into that output's intercepts (f(s) + c is a table
    too): one pass fewer per row (newton_logistic's sigmoid and lambda pieces)."""
    uses: dict = {}
    for _, _, ts in writes:
        for i, src, _ in ts:
            for r in src:
                uses[(i, r)] = uses.get((i, r), 0) + 1
    out = []
    for slot, old, ts in writes:
        e = concrete(slot.ext, n)
        table_at = {}                           # slot row → (table op, its output row)
        for i, src, dst in ts:
            op = ops[i]
            if isinstance(op, MlpOp) and op.kind == "table" and op.inst == 1 and op.e == e:
                for r, d in zip(src, dst):
                    if uses[(i, r)] == 1:
                        table_at[d] = (i, r)
        new_ts = []
        for i, src, dst in ts:
            op = ops[i]
            C = op.const if isinstance(op, MlpOp) else None
            if C is None or C.shape[-1] != e or not table_at:
                new_ts.append((i, src, dst))
                continue
            keep, C = [], host(C[0])
            for r, d in zip(src, dst):
                row, at = C[r], table_at.get(d)
                if at is not None and (row == row[0]).all():
                    ops[at[0]].add_intercept(at[1], float(row[0]))
                    del table_at[d]
                else:
                    keep.append((r, d))
            if keep:
                new_ts.append((i, tuple(r for r, _ in keep), tuple(d for _, d in keep)))
        out.append((slot, old, new_ts))
    return out


class _Resolved:
    """The plan for one (n, dtype, device): constant slots and resolved sublayers."""

    def __init__(self, ex: "StructuredExecutor", n: int, dtype, device):
        self.n = n
        self.like = template(dtype, device)
        slots = dict(ex.all_slots)
        self.consts = {}
        for s in ex.initial.slots.values():
            if s.const is not None:
                st = constant_storage(ex.layout.block(s.key), n)
                self.consts[s.key] = torch.as_tensor(
                    np.ascontiguousarray(st), dtype=dtype, device=device)[None]
        self.sublayers = [_Sublayer(p, slots, self.consts, n, dtype, device) for p in ex.plans]
        self.gram_drop = _share_grams(self.sublayers)
        for sub in self.sublayers:
            sub.finish()
        by_columns = _read_transposed(self.sublayers)
        for sub in self.sublayers:
            sub.by_columns = by_columns
        self.watches = [[(i, ReadOp(read, slots, blk.storage_cols(n), n)) for i, read, blk in at]
                        for at in ex._watch_reads]


@dataclass(frozen=True)
class Watch:
    """Domain check `check` reads `block`'s rows after sublayer `time` (2·layer + 1: after
    that layer's attention, where the MLP piece reads its input)."""
    check: int
    time: int
    block: Block


class _Planned:
    """A layer as plan_program reads it, each matrix it holds as nonzeros (W_1, W_2:
    weights.py) made dense for that one read. Read from the layer itself, the dense arrays
    would stay on it (it keeps what it builds) as long as the program lives, for a plan that
    keeps only the rows it uses: newton_logistic's at d = 10 are 32 MiB."""

    def __init__(self, layer: LayerWeights):
        self._layer = layer

    def __getattr__(self, name):
        held = self._layer._held(name)
        return held.dense() if held is not None else getattr(self._layer, name)


def _watch(reads: list, state: dict, like, seen: list, done: dict) -> None:
    """Each watched block's (min, max), one reduction per check and tensor read (`done`: the
    run's reductions so far), kept as tensors (no sync)."""
    observe(((i, rd(state, like)) for i, rd in reads), seen, done)


TRACES_KEPT = 8     # generated forward functions kept per executor (one per input shapes)


class StructuredExecutor:
    """Runs a compiled program from its LayerWeights and Layout (see the module docstring)."""

    codegen = True      # run the generated straight-line code (exec_codegen.py); False: body

    def __init__(self, layers: list[LayerWeights], layout: Layout, domains=(),
                 watches: list[Watch] | None = None):
        """domains: the manifest's DomainChecks, whose ranges `run_watched` records (watches:
        where each is read, when the caller knows better: ExpandedExecutor)."""
        self.layout = layout
        occ = initial_occupancy(layout)
        self.initial = occ.copy()
        self.plans = plan_program(layout, [_Planned(w) for w in layers], occ)
        self.final = occ                          # which slot holds each row at the end
        self.all_slots = dict(self.initial.slots)
        for p in self.plans:
            self.all_slots.update({s.key: s for s in p.slots})
        self.inputs = [s for s in self.initial.slots.values() if s.const is None]
        if watches is None:
            watches = [Watch(i, clock.attention_time(chk.layer), layout.block(chk.block))
                       for i, chk in guarded(domains)]
        self._watch_reads = self._place_watches(watches)
        self._drop = self._lifetimes()
        self._resolved: dict = {}
        self._traces: dict = {}                   # generated code per input shapes (LRU)

    def _place_watches(self, watches: list["Watch"]) -> list[list[tuple]]:
        """Per point of the run (0: the input state; k: after the k-th planned sublayer), the
        watches read there: (check index, Read of the block's rows, block), the Read as of
        the last planned sublayer at or before the watch's time."""
        occ = self.initial.copy()
        out: list[list[tuple]] = [[] for _ in range(len(self.plans) + 1)]
        k = 0
        for w in sorted(watches, key=lambda w: w.time):
            while k < len(self.plans) and self.plans[k].t <= w.time:
                for slot in self.plans[k].slots:
                    occ.place(slot)
                k += 1
            out[k].append((w.check, occ.read(w.block.rows), w.block))
        return out

    def _lifetimes(self) -> list[list[str]]:
        """Slot keys no later sublayer reads (and no output or watch needs), dropped after
        each one."""
        last = {}
        for i, p in enumerate(self.plans):
            reads = [r for c in p.contribs for r in _reads(c)] + list(p.olds)
            reads += [r for _, r, _ in self._watch_reads[i + 1]]
            for r in reads:
                for seg in r.segments:
                    if seg.key is not None:
                        last[seg.key] = i
        keep = {o.block for o in self.layout.outputs}
        drop = [[] for _ in self.plans]
        for key, i in last.items():
            if key not in keep and self.all_slots[key].const is None:
                drop[i].append(key)
        return drop

    def resolved(self, n: int, dtype=torch.float64, device="cpu") -> _Resolved:
        key = (n, dtype, str(device))
        if key not in self._resolved:
            self._resolved[key] = _Resolved(self, n, dtype, device)
        return self._resolved[key]

    # ---- entry points ------------------------------------------------------------------
    def input_state(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu") -> dict:
        """The input slots' tensors, straight from prepared inputs (no (B, n, D) embedding)."""
        state = {}
        for s in self.inputs:
            st = storage_at_input(self.layout.block(s.key), inputs)
            # the caller's array as it is, a transposed block (least_squares' and
            # newton_logistic's A, stored (d, n)) included: a view, not a copy of the largest
            # input (the plan reads slots through any strides; none is written into). Where
            # a copy is made anyway (another dtype or device), a contiguous one
            if not st.flags.writeable or torch.device(device).type != "cpu" or \
                    torch.from_numpy(st[:0]).dtype != dtype:
                st = np.ascontiguousarray(st)
            state[s.key] = torch.as_tensor(st, dtype=dtype, device=device)
        return state

    def run_inputs(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu") -> dict:
        """Prepared inputs → outputs (tensors, batch axis first, the program's shapes)."""
        return self.run_state(self.input_state(inputs, dtype, device), inputs.n, dtype, device)

    def forward(self, x: torch.Tensor) -> dict:
        """The encoded embedding x (B, n, D) → outputs, like decode(module(x)) but tensors."""
        return self.run_state(self.state_from_embedding(x), x.shape[1], x.dtype, x.device)

    def state_from_embedding(self, x: torch.Tensor) -> dict:
        n = x.shape[1]
        return {s.key: x[:, :concrete(s.ext, n), list(s.rows)].transpose(1, 2)
                for s in self.inputs}

    def run_watched(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu"):
        """run_inputs, and the range each domain check's block took: (outputs, {check index:
        (min, max)}), for domain_guard.enforce."""
        return self.run_state_watched(self.input_state(inputs, dtype, device), inputs.n, dtype,
                                      device)

    def run_state_watched(self, state: dict, n: int, dtype, device):
        res = self.resolved(n, dtype, device)
        with torch.no_grad(), exact_float32():
            out, seen = self.forward_pass(res, state, True)
        return out, settle(seen)

    def run_state(self, state: dict, n: int, dtype, device) -> dict:
        res = self.resolved(n, dtype, device)
        with torch.no_grad(), exact_float32():
            return self.forward_pass(res, state, False)[0]

    def forward_pass(self, res: _Resolved, state: dict, watch: bool) -> tuple[dict, list]:
        """body's result, by the straight-line code generated for these input shapes
        (exec_codegen.py; the first call of a shape traces body and returns what it computed),
        or by body itself when `codegen` is off or the plan cannot be traced."""
        if not self.codegen:
            return self.body(res, state, watch)
        keys = tuple(sorted(state))
        args = [state[k] for k in keys]
        key = (id(res), keys, tuple((a.shape, a.stride(), a.dtype, a.device) for a in args),
               watch)
        fn = self._traces.get(key)
        if fn is None:
            def flat(*ts):
                return self.body(res, dict(zip(keys, ts)), watch)
            try:
                fn, result = trace(flat, args)
            except NotTraceable:
                fn, result = False, None
            self._traces[key] = fn
            while len(self._traces) > TRACES_KEPT:
                self._traces.pop(next(iter(self._traces)))
            if result is not None:
                return result
        else:
            self._traces[key] = self._traces.pop(key)            # most recent last
        if fn is False:
            return self.body(res, state, watch)
        return fn(*args)

    def body(self, res: _Resolved, state: dict, watch: bool = False) -> tuple[dict, list]:
        """The sublayers on a state of input slots; what `executor="compiled"` captures.
        Returns the outputs and, with `watch`, each domain check's (index, aminmax) as read
        right after the sublayer that writes its block (else [])."""
        state = dict(state)
        B = _batch(state)
        state.update(res.consts)
        seen: list = []
        done: dict = {}
        if watch:
            _watch(res.watches[0], state, res.like, seen, done)
        grams: dict = {}                    # V Kᵀ products shared across sublayers
        for k, (sub, drop, gdrop) in enumerate(zip(res.sublayers, self._drop, res.gram_drop), 1):
            sub(state, res.like, grams)
            for key in gdrop:
                grams.pop(key, None)
            if watch and res.watches[k]:
                _watch(res.watches[k], state, res.like, seen, done)
            for key in drop:
                state.pop(key, None)
        return self._decode(state, B, res.n), pack(seen)

    def _decode(self, state: dict, B: int, n: int) -> dict:
        out = {}
        for spec in self.layout.outputs:
            blk = self.layout.block(spec.block)
            S = state[spec.block]
            S = fit(S, S.shape[-1], blk.storage_cols(n)).expand(B, -1, -1)
            out[spec.name] = in_shape(S.mT if blk.transposed else S, spec.shape)
        return out


class ExpandedExecutor(StructuredExecutor):
    """A shared build at given counts: the structured executor over the stored layers in the
    order its loops run them (loops.py `expand`). The layout's blocks carry the times of the
    build's base unrolling; every stored layer writes the same blocks wherever it runs (its
    rows are pinned), so each run of a stored layer takes the blocks its first run in the base
    unrolling writes, re-timed and renamed per run (`X@3#17`). Outputs are read from the rows
    the layout names, wherever they are at the end."""

    def __init__(self, sequence: list[int], layers: list[LayerWeights], layout: Layout,
                 base_sequence: list[int], domains=(), where: dict | None = None):
        # a check names a stored layer and a block of the base unrolling; its rows are pinned,
        # so every run of that layer is watched at those rows
        watches = [Watch(c, clock.attention_time(pos), layout.block(chk.block))
                   for pos, i in enumerate(sequence)
                   for c, chk in guarded(domains) if chk.layer == i]
        blocks = layout.output_blocks(where)        # `where`: the counts' residue's rows
        self.outputs = {o.name: (blocks[o.name], o.shape) for o in layout.outputs}
        by_time: dict[int, list] = {}
        for b in layout.blocks:
            by_time.setdefault(b.written, []).append(b)
        template = _block_templates(base_sequence, by_time)
        blocks = list(by_time.get(clock.ENCODER, []))
        for pos, i in enumerate(sequence):
            for sub, t in _sublayer_times(pos):
                blocks += [replace(b, key=f"{b.key}#{pos}", written=t, last_read=-1)
                           for b in template.get(i, {}).get(sub, [])]
        super().__init__([layers[i] for i in sequence],
                         replace(layout, blocks=tuple(blocks), n_layers=len(sequence)),
                         watches=watches)

    def _lifetimes(self) -> list[list[str]]:
        keep = {seg.key for blk, _ in self.outputs.values()
                for seg in self.final.read(blk.rows).segments if seg.key is not None}
        return [[k for k in drop if k not in keep] for drop in super()._lifetimes()]

    def _decode(self, state: dict, B: int, n: int) -> dict:
        return read_outputs(self.outputs, self.final, state, B, n)


class CompiledExecutor:
    """torch.compile of StructuredExecutor.body, one graph per (n, batch, dtype, device),
    shapes static. Whether it pays is in bench/README.md (on CPU it does not)."""

    def __init__(self, base: StructuredExecutor):
        self.base = base
        self._fns: dict = {}

    def run_inputs(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu") -> dict:
        return self.run_state(self.base.input_state(inputs, dtype, device), inputs.n, dtype, device)

    def forward(self, x: torch.Tensor) -> dict:
        return self.run_state(self.base.state_from_embedding(x), x.shape[1], x.dtype, x.device)

    def run_watched(self, inputs: ValidatedInputs, dtype=torch.float64, device="cpu"):
        out, seen = self._call(self.base.input_state(inputs, dtype, device), inputs.n, dtype,
                               device, True)
        return out, settle(seen)

    def run_state(self, state: dict, n: int, dtype, device) -> dict:
        return self._call(state, n, dtype, device, False)[0]

    def _call(self, state: dict, n: int, dtype, device, watch: bool):
        key = (n, _batch(state), dtype, str(device), watch)
        if key not in self._fns:
            # every graph is a recompile of the one code object StructuredExecutor.body:
            # past dynamo's limit (8) it would silently run eager, so raise it (process-wide)
            import torch._dynamo.config as dynamo_config
            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 256)
            res = self.base.resolved(n, dtype, device)
            self._fns[key] = torch.compile(functools.partial(self.base.body, res, watch=watch),
                                           dynamic=False)
        with torch.no_grad(), exact_float32():
            return self._fns[key](state)


EXECUTORS = ("structured", "compiled", "module")


def executor_for(prog, kind: str):
    """The program's structured (or compiled) executor, built on first use and kept."""
    if kind not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if kind == "module":
        raise ValueError("executor 'module' is the nn.Module: use prog.module_for(dtype, device)")
    cache = prog._executors
    if prog.loops is not None:
        raise ValueError("a shared build's executor depends on its counts: expanded_executor_for")
    if "structured" not in cache:
        cache["structured"] = StructuredExecutor(prog.layers, prog.layout,
                                                 prog.typed_manifest.domains)
    if kind == "compiled" and kind not in cache:
        cache["compiled"] = CompiledExecutor(cache["structured"])
    return cache[kind]


def _block_templates(base_sequence: list[int], by_time: dict) -> dict[int, dict[int, list]]:
    """Stored layer → {1: blocks its attention writes, 2: its MLP's}, from its first run in
    the base unrolling — only where every run there writes the same rows in the same shapes;
    a layer that does not is left without blocks (its rows become anonymous slots: slower,
    still exact)."""
    runs: dict[int, list[int]] = {}
    for pos, i in enumerate(base_sequence):
        runs.setdefault(i, []).append(pos)

    def writes(pos: int):
        return [sorted((b.rows, b.transposed, tuple(b.cshape)) for b in by_time.get(t, []))
                for _, t in _sublayer_times(pos)]
    out = {}
    for i, positions in runs.items():
        if all(writes(p) == writes(positions[0]) for p in positions):
            out[i] = {sub: by_time.get(t, []) for sub, t in _sublayer_times(positions[0])}
    return out


def _sublayer_times(pos: int) -> tuple[tuple[int, int], ...]:
    """(1, attention time), (2, MLP time) of the layer at position `pos` of a run."""
    return (1, clock.attention_time(pos)), (2, clock.mlp_time(pos))


EXPANDED_KEPT = 4      # a shared build keeps the executors of its last few counts


def expanded_executor_for(prog, counts: dict[str, int]) -> ExpandedExecutor:
    """A shared build's structured executor at these (resolved) loop counts. The last
    EXPANDED_KEPT counts' executors are kept (a plan grows with the layers a count runs, so a
    sweep over many counts must not keep them all)."""
    key = tuple(sorted(counts.items()))
    kept = prog._executors.setdefault("expanded", {})
    if key in kept:
        kept[key] = kept.pop(key)                         # most recent last
    else:
        kept[key] = ExpandedExecutor(prog.loops.expand(counts), prog.layers, prog.layout,
                                     prog.loops.expand(dict(prog.loops.base_counts)),
                                     prog.typed_manifest.domains, prog.loops.output_rows(counts))
        while len(kept) > EXPANDED_KEPT:
            kept.pop(next(iter(kept)))
    return kept[key]


def _batch(state: dict) -> int:
    """The batch size of a state of input slots (1 for a program without inputs)."""
    return next(iter(state.values())).shape[0] if state else 1


def _reads(c):
    if isinstance(c, HeadSpec):
        return [c.k, c.q, c.v]
    return [c.var, c.gate]


__all__ = ["StructuredExecutor", "CompiledExecutor", "EXECUTORS", "executor_for"]
