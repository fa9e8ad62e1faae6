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
from ..runtime.sparse import SparseMatrix
from ..runtime.weights import LayerWeights
from ..runtime.codec import NUMBER, pattern_name
from ..runtime.layout import LIVE_TO_END
from .heads import HeadTerm, Operand
from .nodes import ARGS, CLAMP, CSHAPE, ENTRIES, FARGS, LOC, OP, VALUE, VARS
from .pieces import piece_unit_count, piece_unit_entries, piece_units
from .plan import Plan
from .rows import AFTER_LAST_SUBLAYER, IDENTITY_BLOCK, PSEUDO_BLOCK
from .schedule import attention_time, mlp_time


def block_key(plan: Plan, pair) -> str:
    """The block's name in the layout: the variable it holds (X@3: the fourth assignment to
    X), an input or constant by name, or tmpID for a compiler temporary; .T if transposed."""
    atom = plan.atoms[pair[0]]
    if atom.kind == "input":
        base = f"input:{atom.name}"
    elif atom.kind == "const":
        base = f"const:{const_name(atom.node)}"
    else:
        vs = atom.node.get(VARS) or []
        base = vs[-1] if vs else f"tmp{atom.id}"
    return base + (".T" if pair[1] and atom.kind not in ("input", "const") else "")


def const_name(node: dict) -> str:
    """Which constant the encoder writes: `ones`, `n`, `inv_n`, a 0/1 pattern by value, or a
    number by value (`number:0.45`: a loop's number carried as a runtime value)."""
    if node[OP] == "pattern":
        return pattern_name(node[CSHAPE], node[ENTRIES])
    if node[OP] == "number":
        return f"{NUMBER}{node[VALUE]!r}"
    return node[OP]


def emit(plan: Plan, outputs: dict[str, int], progress=None,
         source: str | None = None) -> tuple[list[LayerWeights], list[Block], dict]:
    """(weights per layer, the stored blocks in write order, block key per stored pair);
    `progress(layer, n_layers)`, if given, is called as each layer is emitted."""
    keys = _block_keys(plan)
    blocks = _blocks(plan, outputs, keys, source)
    writers = writers_by_time(plan)
    layers = []
    for layer in range(1, plan.n_layers + 1):
        if progress is not None:
            progress(layer, plan.n_layers)
        t_att, t_mlp = attention_time(layer), mlp_time(layer)
        W_K, W_Q, W_V, labels = _attention_weights(plan, writers.get(t_att, []), keys)
        W_1, W_2 = _mlp_weights(plan, writers.get(t_mlp, []), t_mlp)
        layers.append(LayerWeights.with_sparse(W_K, W_Q, W_V, {"W_1": W_1, "W_2": W_2}, labels))
    return layers, blocks, keys


def writers_by_time(plan: Plan) -> dict[int, list]:
    """Sublayer → what it writes: (pair, head terms) in sorted pair order for attention,
    MLP atoms in dependency order — grouped once, so emission is linear in the program."""
    by_time: dict[int, list] = {}
    for pair, terms in sorted(plan.terms.items()):
        by_time.setdefault(plan.write_time[pair], []).append((pair, terms))
    for a, atom in plan.atoms.items():
        pair = (a, plan.orient.get(a))
        if atom.kind == "mlp" and pair in plan.write_time:
            by_time.setdefault(plan.write_time[pair], []).append(atom)
    return by_time


def _in_write_order(plan: Plan):
    return sorted(plan.slots.items(), key=lambda kv: (kv[1].write, kv[1].rows))


def _block_keys(plan: Plan) -> dict:
    """Unique keys: a name taken by an earlier block gets primes (X@3, X@3')."""
    keys: dict = {}
    for pair, _slot in _in_write_order(plan):
        key = block_key(plan, pair)
        while key in keys.values():
            key += "'"
        keys[pair] = key
    return keys


def _blocks(plan: Plan, outputs: dict[str, int], keys: dict,
            source: str | None = None) -> list[Block]:
    out_pairs = {(o, plan.orient[o]): name for name, o in outputs.items()}
    blocks = []
    for pair, slot in _in_write_order(plan):
        atom = plan.atoms[pair[0]]
        blocks.append(Block(
            key=keys[pair], kind=atom.kind, rows=list(slot.rows), transposed=bool(pair[1]),
            cshape=list(atom.cshape), written=slot.write,
            last_read=LIVE_TO_END if slot.last_read >= AFTER_LAST_SUBLAYER else slot.last_read,
            vars=list(atom.node.get(VARS) or []),
            name=atom.name if atom.kind == "input" else out_pairs.get(pair),
            const=const_name(atom.node) if atom.kind == "const" else None,
            **_written_as(plan, atom, source)))
    return blocks


def _written_as(plan: Plan, atom, source: str | None) -> dict:
    """A compiler temporary's text as the program writes it (`X @ w`, from the node's source
    location) and its line: what a researcher probing the stream reads instead of `tmp37`.
    A clamp the lowering adds (nodes.CLAMP) is written as the clip it computes of its leaf."""
    node = atom.node
    if atom.kind in ("input", "const") or node.get(VARS) or node.get(LOC) is None:
        return {}
    loc = node[LOC]
    if node.get(CLAMP):
        leaf = plan.atoms[node[ARGS][0]].node if node[ARGS][0] in plan.atoms else None
        inner = leaf[LOC].source_text(source) if leaf is not None and leaf.get(LOC) else None
        lo, hi = node[FARGS]
        return {"expr": f"clip({inner or '…'}, {lo:g}, {hi:g})", "line": loc.line}
    return {"expr": loc.source_text(source), "line": loc.line}


def _operand_rows(plan: Plan, op: Operand) -> list:
    """The rows a head operand reads: an atom's block, or the first k identity rows; for a
    selection, the identity row of each of its rows (None: a zero row, which reads nothing)."""
    if op.kind == "atom":
        rows = plan.slots[(op.atom, op.transposed)].rows
    elif op.kind == "select":
        eye = plan.slots[(IDENTITY_BLOCK, False)].rows
        rows = [None if r is None else eye[r] for r in op.rows]
    else:
        rows = plan.slots[(PSEUDO_BLOCK[op.kind], False)].rows[:op.k]
    return rows if op.row is None else [rows[op.row]]


def heads_of(written: list) -> list:
    """The terms written at one attention sublayer, grouped into heads by their (K, Q)
    operands; a row-split term contributes one part per output row."""
    groups: dict = {}
    for _pair, terms in written:
        for term in terms:
            if term.real.split:          # one head per row: (part, output row)
                for part, r in term.real.split:
                    groups.setdefault((part.y, part.z), []).append(
                        HeadTerm(part, term.coef, term.dest, (r,)))
                continue
            groups.setdefault((term.real.y, term.real.z), []).append(term)
    return list(groups.items())


def head_width(plan: Plan, heads: list) -> int:
    """dk of one attention sublayer: the most rows a head's K operand reads (1 if none)."""
    return max((len(_operand_rows(plan, y)) for (y, _), _ in heads), default=1)


def _attention_weights(plan: Plan, written: list, keys: dict):
    heads = heads_of(written)
    D = plan.width
    dk = head_width(plan, heads)
    W_K, W_Q, W_V = np.zeros((len(heads), dk, D)), np.zeros((len(heads), dk, D)), \
        np.zeros((len(heads), D, D))
    labels = []
    for h, ((y, z), terms) in enumerate(heads):
        for i, r in enumerate(_operand_rows(plan, y)):
            if r is not None:
                W_K[h, i, r] = 1.0
        for i, r in enumerate(_operand_rows(plan, z)):
            if r is not None:
                W_Q[h, i, r] = 1.0
        for term in terms:
            _add_value_term(plan, W_V[h], term)
        labels.append(_head_label(terms, y, z, keys))
    return W_K, W_Q, W_V, labels


def _add_value_term(plan: Plan, W_V: np.ndarray, term: HeadTerm) -> None:
    """coef · (rows of X) into the destination's rows; `x_rows` restricts to some of them
    (a subtraction of part of a dead block, or one row of a row-split head)."""
    xr = _operand_rows(plan, term.real.x)
    dest = plan.slots[term.dest].rows
    if len(xr) == 1 and term.x_rows is not None and term.real.z.row is not None:
        if xr[0] is not None:
            W_V[dest[term.x_rows[0]], xr[0]] += term.coef      # a row-split head
        return
    for i in (term.x_rows if term.x_rows is not None else range(len(xr))):
        if xr[i] is not None:
            W_V[dest[i], xr[i]] += term.coef


def _operand_label(op: Operand, keys) -> str:
    if op.kind == "atom":
        return keys[(op.atom, op.transposed)]
    if op.kind == "select":
        return f"I{op.k}[" + ",".join("-" if r is None else str(r) for r in op.rows) + "]"
    if op.kind == "ones_inv_n":
        return "const:ones_inv_n"
    return f"I{op.k}" if op.kind == "eye" else f"I{op.k}/n"


def _head_label(terms, y, z, keys) -> str:
    xs = sorted({_operand_label(t.real.x, keys) + "→" + keys[t.dest] for t in terms})
    return f"K={_operand_label(y, keys)} Q={_operand_label(z, keys)} V: " + ", ".join(xs)


def _gate_rows(plan: Plan, atom, pair) -> list[int]:
    """Where a piece takes its constants from: the ones row for token values, else one
    identity row per column of the value."""
    if atom.is_token:
        return plan.slots[(atom.gate, True)].rows
    other = (atom.id, not pair[1])
    cols = len(plan.slots[other].rows) if other in plan.slots else \
        (atom.cshape[0] if pair[1] else atom.cshape[1])
    return plan.slots[(IDENTITY_BLOCK, False)].rows[:cols]


def _mlp_weights(plan: Plan, written: list, t_mlp: int) -> tuple[SparseMatrix, SparseMatrix]:
    """W_1, W_2 of one MLP sublayer, as their nonzeros: mlp_units' numbers, built from
    piece_unit_entries' arrays (the same additions into zeros, in the same order per entry,
    SparseMatrix.from_entries), so `.dense()` is the array the per-unit dicts give bit for bit."""
    hidden, (u1, r1, v1), (u2, r2, v2) = mlp_unit_entries(plan, written, t_mlp)
    D = plan.width
    return (SparseMatrix.from_entries((hidden, D), u1.astype(np.int64) * D + r1, v1),
            SparseMatrix.from_entries((D, hidden), r2.astype(np.int64) * hidden + u2, v2))


def _mlp_pieces(plan: Plan, written: list):
    """(piece, rows_of, out rows, gate rows) of each MLP atom written at one sublayer."""
    for atom in written:
        a, pair = atom.id, (atom.id, plan.orient[atom.id])

        def rows_of(arg, a=a):
            return plan.slots[plan.mlp_input(arg, a)].rows
        yield atom.piece, rows_of, plan.slots[pair].rows, _gate_rows(plan, atom, pair)


def mlp_hidden(plan: Plan, written: list, t_mlp: int) -> int:
    """How many hidden units mlp_units gives (without building them)."""
    return sum(piece_unit_count(p, len(out)) for p, _, out, _g in _mlp_pieces(plan, written)) + \
        2 * sum(len(idx) for _q, idx, _p in plan.clear_terms.get(t_mlp, []))


def mlp_unit_entries(plan: Plan, written: list, t_mlp: int):
    """mlp_units as arrays: (hidden units, W_1 entries (unit, row, value), W_2 entries (unit,
    row, value)), entries of one position in the order mlp_units' dicts add them."""
    e1, e2, base = [], [], 0
    for piece, rows_of, out, gates in _mlp_pieces(plan, written):
        w1, w2 = piece_unit_entries(piece, rows_of, out, gates, base)
        e1.append(w1), e2.append(w2)
        base += piece_unit_count(piece, len(out))
    clears = [plan.slots[q].rows[i] for q, idx, _p in plan.clear_terms.get(t_mlp, []) for i in idx]
    if clears:
        r = np.repeat(np.asarray(clears, dtype=np.intp), 2)
        u = base + np.arange(len(r))
        v = np.tile([1.0, -1.0], len(clears))
        e1.append((u, r, v)), e2.append((u, r, -v))
        base += len(r)
    cat = (lambda parts, k, dt: np.concatenate([p[k] for p in parts]).astype(dt, copy=False)
           if parts else np.zeros(0, dt))
    return (base, tuple(cat(e1, k, dt) for k, dt in enumerate((np.intp, np.intp, float))),
            tuple(cat(e2, k, dt) for k, dt in enumerate((np.intp, np.intp, float))))


def mlp_units(plan: Plan, written: list, t_mlp: int) -> list:
    """The hidden units of one MLP sublayer as (W_1 entries {row: w}, W_2 entries {row: c}):
    the pieces written there, plus clears of dead values under their rows
    (ReLU(u) − ReLU(−u) = u, subtracted). The readable reference for mlp_unit_entries."""
    units = []
    for piece, rows_of, out, gates in _mlp_pieces(plan, written):
        units += piece_units(piece, rows_of, out, gates)
    for q, idx, _p in plan.clear_terms.get(t_mlp, []):
        for i in idx:
            r = plan.slots[q].rows[i]
            units.append(({r: 1.0}, {r: -1.0}))
            units.append(({r: -1.0}, {r: 1.0}))
    return units
