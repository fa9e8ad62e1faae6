"""Emission: the plan → weight matrices of the paper's machine, plus the layout that says
which rows hold what (the manifest's core, and what the encoder and decoder follow).

Per layer ℓ, heads h: W_K^h, W_Q^h are dk×D row selectors, W_V^h is D×D; the layer adds
Σ_h W_V^h H (W_K^h H)ᵀ (W_Q^h H). Terms that share their K and Q operands share a head: W_V
sums their X blocks into their destinations. The MLP is W_2 ReLU(W_1 h), no biases (constants
enter through the gate rows: ones for token values, the identity rows for small ones).
"""
from __future__ import annotations

import numpy as np

from ..runtime.layout import Block
from ..runtime.weights import LayerWeights
from .heads import Operand
from .plan import HeadTerm
from .pieces import piece_units
from .plan import EYE, EYE_INV_N, Plan, mlp_input_pair


def block_key(plan: Plan, pair) -> str:
    atom = plan.atoms[pair[0]]
    if atom.kind == "input":
        base = f"input:{atom.name}"
    elif atom.kind == "const" or pair[0] < 0:
        base = f"const:{atom.node['op']}"
    else:
        vs = atom.node.get("vars") or []
        base = vs[-1] if vs else f"tmp{atom.id}"
    return base + (".T" if pair[1] and atom.kind not in ("input", "const") else "")


def emit(plan: Plan, outputs: dict[str, int]) -> tuple[list[LayerWeights], list[Block], dict]:
    D = plan.width
    keys: dict = {}
    out_pairs = {(o, plan.orient[o]): name for name, o in outputs.items()}
    for pair, slot in sorted(plan.slots.items(), key=lambda kv: (kv[1].write, kv[1].rows)):
        key = block_key(plan, pair)
        while key in keys.values():
            key += "'"
        keys[pair] = key
    block_list = []
    for pair, slot in sorted(plan.slots.items(), key=lambda kv: (kv[1].write, kv[1].rows)):
        atom = plan.atoms[pair[0]]
        block_list.append(Block(
            key=keys[pair], kind=atom.kind, rows=list(slot.rows), transposed=bool(pair[1]),
            cshape=list(atom.cshape), written=slot.write,
            last_read=-1 if slot.last_read >= 10**9 else slot.last_read,
            vars=list(atom.node.get("vars") or []),
            name=atom.name if atom.kind == "input" else out_pairs.get(pair),
            const=atom.node["op"] if atom.kind == "const" else None))

    def rows_of(op: Operand) -> list[int]:
        if op.kind == "atom":
            rows = plan.slots[(op.atom, op.transposed)].rows
            return rows if op.row is None else [rows[op.row]]
        pseudo = EYE if op.kind == "eye" else EYE_INV_N
        rows = plan.slots[(pseudo, False)].rows[:op.k]
        return rows if op.row is None else [rows[op.row]]

    layers = []
    for layer in range(1, plan.n_layers + 1):
        t_att, t_mlp = 2 * layer - 1, 2 * layer
        groups: dict = {}
        for pair, terms in sorted(plan.terms.items()):
            if plan.write_time[pair] != t_att:
                continue
            for term in terms:
                if term.real.split:          # one head per row: (part, output row)
                    for part, r in term.real.split:
                        groups.setdefault((part.y, part.z), []).append(
                            HeadTerm(part, term.coef, term.dest, (r,)))
                    continue
                groups.setdefault((term.real.y, term.real.z), []).append(term)
        heads = list(groups.items())
        dk = max((len(rows_of(y)) for (y, _), _ in heads), default=1)
        H = len(heads)
        W_K = np.zeros((H, dk, D))
        W_Q = np.zeros((H, dk, D))
        W_V = np.zeros((H, D, D))
        labels = []
        for h, ((y, z), terms) in enumerate(heads):
            for i, r in enumerate(rows_of(y)):
                W_K[h, i, r] = 1.0
            for i, r in enumerate(rows_of(z)):
                W_Q[h, i, r] = 1.0
            for term in terms:
                xr = rows_of(term.real.x)
                dest = plan.slots[term.dest].rows
                if len(xr) == 1 and term.x_rows is not None and term.real.z.row is not None:
                    W_V[h, dest[term.x_rows[0]], xr[0]] += term.coef      # a row-split head
                    continue
                idx = term.x_rows if term.x_rows is not None else range(len(xr))
                for i in idx:
                    W_V[h, dest[i], xr[i]] += term.coef
            labels.append(_head_label(terms, y, z, keys))
        W_1, W_2 = _mlp_weights(plan, t_mlp, D)
        layers.append(LayerWeights(W_K, W_Q, W_V, W_1, W_2, labels))
    return layers, block_list, keys


def _operand_label(op: Operand, keys) -> str:
    if op.kind == "atom":
        k = keys[(op.atom, op.transposed)]
        return k
    return f"I{op.k}" if op.kind == "eye" else f"I{op.k}/n"


def _head_label(terms, y, z, keys) -> str:
    xs = sorted({_operand_label(t.real.x, keys) + "→" + keys[t.dest] for t in terms})
    return f"K={_operand_label(y, keys)} Q={_operand_label(z, keys)} V: " + ", ".join(xs)


def _mlp_weights(plan: Plan, t_mlp: int, D: int):
    """The pieces written in this MLP sublayer, plus clears of dead values under their rows
    (ReLU(u) − ReLU(−u) = u, subtracted)."""
    units = []       # (W_1 entries {row: w}, W_2 entries {row: c})
    for a, atom in plan.atoms.items():
        pair = (a, plan.orient.get(a))
        if atom.kind != "mlp" or plan.write_time.get(pair) != t_mlp:
            continue
        out_rows = plan.slots[pair].rows
        if atom.is_token:
            gate = plan.slots[(atom.inputs[-1], True)].rows
        else:
            cols = len(plan.slots[(a, not pair[1])].rows) if (a, not pair[1]) in plan.slots else \
                (atom.cshape[0] if pair[1] else atom.cshape[1])
            gate = plan.slots[(EYE, False)].rows[:cols]

        def rows_of(arg, a=a):
            return plan.slots[mlp_input_pair(plan.atoms, arg, a, plan.orient)].rows
        units += piece_units(atom.piece, rows_of, out_rows, gate)
    for q, idx, _p in plan.clear_terms.get(t_mlp, []):
        for i in idx:
            r = plan.slots[q].rows[i]
            units.append(({r: 1.0}, {r: -1.0}))
            units.append(({r: -1.0}, {r: 1.0}))
    W_1 = np.zeros((len(units), D))
    W_2 = np.zeros((D, len(units)))
    for j, (w1, w2) in enumerate(units):
        for r, w in w1.items():
            W_1[j, r] += w
        for r, c in w2.items():
            W_2[r, j] += c
    return W_1, W_2

