"""Who reads and writes what, per layer: the data behind the weights overview picture.

Read off the weights themselves (a head reads the rows where its W_K, W_Q or W_V have a
nonzero column and writes the rows where W_V has a nonzero row; the MLP reads W_1's nonzero
columns and writes W_2's nonzero rows), then named through the layout: which block occupies
each row at that moment, and what the user calls that block (naming.py). A compiler
temporary is named by the program variable it is computed for, the first named value
downstream of it ("part of v (line 44)"), so the picture speaks in the program's words.

Layers are counted from 0 (layer L is `module.blocks[L]`): its attention is sublayer 2L + 1 of
the layout's clock and its MLP sublayer 2L + 2.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..runtime import clock
from ..runtime.sparse import SparseMatrix
from .naming import assignment_lines, block_name


@dataclass
class Unit:
    """One head or one MLP of a layer: the blocks (keys) whose rows it reads and writes."""
    name: str                              # "head 0" / "MLP"
    reads: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    size: str = ""                         # "dk 5" / "1797 ReLUs"


def _owners(layout, t: int) -> dict[int, str]:
    """Row → key of the block holding it just after sublayer t (newest write wins)."""
    rows: dict[int, str] = {}
    for blk in sorted(layout.blocks, key=lambda b: b.written):
        if blk.written <= t:
            for r in blk.rows:
                rows[r] = blk.key
    return rows


def _keys(rows, owners: dict[int, str]) -> list[str]:
    """The blocks of these rows, each once, in row order (rows no block holds are skipped)."""
    out: list[str] = []
    for r in rows:
        key = owners.get(int(r))
        if key is not None and key not in out:
            out.append(key)
    return out


def _nonzero(mat: np.ndarray, axis: int) -> np.ndarray:
    """Indices along the other axis with any nonzero entry (axis=0: columns, 1: rows)."""
    return np.flatnonzero(np.any(mat != 0, axis=axis))


def _lines(w, name: str, axis: int) -> np.ndarray:
    """_nonzero of the layer's matrix `name`, from its nonzeros where it is held as such (an
    MLP's W_1, W_2: the card need not build sinkhorn's 1.1 GB of dense MLP weights)."""
    held = w.matrix(name) if hasattr(w, "matrix") else getattr(w, name)
    if not isinstance(held, SparseMatrix):
        return _nonzero(held, axis)
    cols = held.shape[1]
    return np.unique(held.index % cols if axis == 0 else held.index // cols)


def layer_units(prog, L: int, owners: dict | None = None) -> list[Unit]:
    """The heads and the MLP of layer L (0-based), with what each reads and writes
    (`owners`: _owners by sublayer, kept across the layers of all_units)."""
    w, lay = prog.layers[L], prog.layout
    owners = {} if owners is None else owners
    times = clock.before_layer(L), clock.attention_time(L), clock.mlp_time(L)
    for t in times:
        if t not in owners:
            owners[t] = _owners(lay, t)
    before, mid, after = (owners[t] for t in times)
    units = []
    for h in range(w.heads):
        read_rows = np.union1d(np.union1d(_nonzero(w.W_K[h], 0), _nonzero(w.W_Q[h], 0)),
                               _nonzero(w.W_V[h], 0))
        units.append(Unit(f"head {h}", _keys(read_rows, before), _keys(_nonzero(w.W_V[h], 1), mid),
                          f"dk {w.dk}"))
    if w.mlp_hidden:
        units.append(Unit("MLP", _keys(_lines(w, "W_1", 0), mid), _keys(_lines(w, "W_2", 1), after),
                          f"{w.mlp_hidden:,} ReLUs"))
    return units


def all_units(prog) -> list[list[Unit]]:
    owners: dict = {}
    return [layer_units(prog, L, owners) for L in range(prog.n_layers)]


def display_names(prog, units: list[list[Unit]] | None = None) -> dict[str, str]:
    """Block key → the name a picture shows: the user's variable and line, an input's or
    constant's name, or for a temporary "part of" the first named value it flows into."""
    lines = assignment_lines(prog.program, prog.info.float_params())
    blocks = {b.key: b for b in prog.layout.blocks}
    names = {k: block_name(b, lines) for k, b in blocks.items()}
    units = units if units is not None else all_units(prog)
    feeds: dict[str, set[str]] = {}
    for layer in units:
        for u in layer:
            for r in u.reads:
                feeds.setdefault(r, set()).update(u.writes)
    for key, blk in blocks.items():
        if blk.kind in ("attn", "mlp") and not blk.vars:
            target = _first_named(key, feeds, blocks)
            if target is not None:
                names[key] = f"part of {names[target].rstrip('ᵀ')}"
    return names


def _first_named(key: str, feeds: dict[str, set[str]], blocks: dict, limit: int = 12) -> str | None:
    """Breadth-first along reads → writes to the first block holding a program variable."""
    frontier, seen = [key], {key}
    for _ in range(limit):
        nxt = []
        for k in frontier:
            for w in sorted(feeds.get(k, ())):
                if w in seen:
                    continue
                if blocks[w].vars:
                    return w
                seen.add(w)
                nxt.append(w)
        frontier = nxt
    return None


__all__ = ["Unit", "layer_units", "all_units", "display_names"]
