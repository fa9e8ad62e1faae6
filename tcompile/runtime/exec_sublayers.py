"""Per-sublayer plans of the structured executor: the heads and MLP pieces that do something,
what each reads, and how their outputs add onto the slots the sublayer writes.

A head adds W_V H (W_K H)ᵀ (W_Q H). Only the rows where W_K, W_Q, W_V have nonzero columns
are read, only W_V's nonzero rows are written, and W_K, W_Q fold into one small matrix
G = W_Kᵀ W_Q over the rows they read: the head is V Kᵀ G Q with V = W_V[out, rv] H[rv],
K = H[rk], Q = H[rq]. Kᵀ·V sums over the tokens where both are nonzero (the narrower extent),
and the output is needed only on the query's extent, clipped to its destination slot's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import clock
from .exec_plan import (Occupancy, Read, Slot, common, emax, emin, new_slots, nonzero_cols,
                        nonzero_rows)
from .layout import Layout
from .pl_tables import MlpGroup, plan_mlp
from .weights import LayerWeights


@dataclass
class HeadSpec:
    label: str
    k: Read
    q: Read
    v: Read
    G: np.ndarray              # (|rk|, |rq|) = W_Kᵀ W_Q on the rows read
    Wv: np.ndarray             # (|out|, |rv|)
    out_rows: tuple[int, ...]
    m: object                  # tokens Kᵀ V sums over
    ext: object = 0            # output extent (set once destinations are known)


@dataclass
class Term:
    """Contribution `index` adds its rows `src` (positions) onto rows `dst` of a new slot."""
    index: int
    src: tuple[int, ...]
    dst: tuple[int, ...]


@dataclass
class SublayerPlan:
    t: int
    contribs: list             # HeadSpec | MlpGroup
    slots: list[Slot]          # the slots its written rows belong to afterwards
    olds: list[Read]           # each new slot's rows before the sublayer (the residual)
    terms: list[list[Term]]    # per new slot


def plan_heads(w: LayerWeights, occ: Occupancy) -> list[HeadSpec]:
    """The heads of one layer that can write something nonzero."""
    specs = []
    for h in range(w.heads):
        Wk, Wq, Wv = w.W_K[h], w.W_Q[h], w.W_V[h]
        keep = common(nonzero_rows(Wk), nonzero_rows(Wq))    # rows of Kᵀ Q that count
        rk, rq = nonzero_cols(Wk[keep]), nonzero_cols(Wq[keep])
        out, rv = nonzero_rows(Wv), nonzero_cols(Wv)
        if not (len(keep) and len(out)):
            continue
        k, q, v = occ.read(rk), occ.read(rq), occ.read(rv)
        m = emin(k.ext, v.ext)
        if k.zero or q.zero or v.zero or m == 0:
            continue
        G = Wk[np.ix_(keep, rk)].T @ Wq[np.ix_(keep, rq)]
        label = w.head_labels[h] if h < len(w.head_labels) else f"head {h}"
        specs.append(HeadSpec(label, k, q, v, G, Wv[np.ix_(out, rv)],
                              tuple(int(r) for r in out), m, q.ext))
    return specs


def plan_sublayer(layout: Layout, t: int, contribs: list, occ: Occupancy) -> SublayerPlan:
    """Destinations, residual reads and output extents for the contributions of sublayer t;
    `occ` is updated to the occupancy after it."""
    written: dict[int, object] = {}
    for c in contribs:
        for r in c.out_rows:
            written[r] = emax(written.get(r, 0), c.ext)
    slots = new_slots(layout, t, occ, written)
    dest = {r: s.ext for s in slots for r in s.rows}
    for c in contribs:              # nothing is computed beyond the widest destination
        widest = 0
        for r in c.out_rows:
            widest = emax(widest, dest[r])
        c.ext = emin(c.ext, widest)
    olds = [occ.read(s.rows) for s in slots]
    terms = []
    for s in slots:
        pos = {r: i for i, r in enumerate(s.rows)}
        ts = []
        for i, c in enumerate(contribs):
            pairs = [(j, pos[r]) for j, r in enumerate(c.out_rows) if r in pos]
            if pairs and c.ext != 0:
                ts.append(Term(i, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)))
        terms.append(ts)
    for s in slots:
        occ.place(s)
    return SublayerPlan(t, contribs, slots, olds, terms)


def plan_program(layout: Layout, layers: list[LayerWeights], occ: Occupancy) -> list[SublayerPlan]:
    """Every sublayer that writes something, in order (empty sublayers are skipped)."""
    plans = []
    blocks_at = {b.written for b in layout.blocks}
    for i, w in enumerate(layers):
        heads = plan_heads(w, occ)
        if heads or clock.attention_time(i) in blocks_at:
            plans.append(plan_sublayer(layout, clock.attention_time(i), heads, occ))
        groups: list[MlpGroup] = plan_mlp(w.W_1, w.W_2, occ)
        if groups or clock.mlp_time(i) in blocks_at:
            plans.append(plan_sublayer(layout, clock.mlp_time(i), groups, occ))
    return plans


__all__ = ["HeadSpec", "Term", "SublayerPlan", "plan_heads", "plan_sublayer", "plan_program"]
