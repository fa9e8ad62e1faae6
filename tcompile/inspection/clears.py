"""Where the compiler zeroes a row: the clears the labels (labels.py) call `cleared`.

The residual stream only adds, so a row changes only where a sublayer writes into it: a head's
value map (W_V) or the MLP's output map (W_2) has a nonzero there. A sublayer writes into the
rows of the blocks it writes (the layout's `written` times), and into one other kind of row:
one whose dead value it clears (rows.py), so that a later writer finds it at zero —

- an MLP sublayer between a value's last read and the write of the next occupant of its rows
  (`_clearing_mlp`: the rows of a scalar refinement's values change hands only through such an
  exact clear, ReLU(u) − ReLU(−u) = u subtracted, which leaves 0, not ulp(old)). Its clear
  pairs (`clear_terms` at that sublayer) write into rows no block written there holds. The
  cleared value may be read last by that very MLP (it reads the stream before adding).

The other clears — an attention writer's subtraction head, an MLP writer's clear pairs at its
own sublayer — land in the rows of the block that sublayer writes, which then holds the new
value. So the clears are exactly the rows a sublayer writes that no block written there
holds; they are read off the weights and the layout, which every build has (a loaded
artifact's too), and need nothing new in the artifact. tests/test_labels_states.py holds
every such row to be 0 in the stream after its sublayer, for every shipped program.

A shared build runs each stored layer wherever its loop puts it; the layer writes the same
rows every time, and the layout of the run (run_layout.py) puts the blocks of the base
unrolling's matching layer there, so the same rule applied to the run's layers gives the
run's clears.
"""
from __future__ import annotations

import numpy as np

from ..runtime import clock
from ..runtime.layout import Layout
from ..runtime.sparse import SparseMatrix


def _rows_written(layer) -> tuple[frozenset, frozenset]:
    """(rows its attention writes into, rows its MLP writes into): the rows where W_V, W_2
    have a nonzero (W_2 read from its nonzeros while it is held so: no dense array built)."""
    attn = np.flatnonzero(np.any(np.asarray(layer.W_V) != 0, axis=(0, 2)))
    W_2 = layer.matrix("W_2")
    if isinstance(W_2, SparseMatrix):
        mlp = np.unique(np.asarray(W_2.index) // max(W_2.shape[1], 1))
    else:
        mlp = np.flatnonzero(np.any(np.asarray(W_2) != 0, axis=1))
    return frozenset(int(r) for r in attn), frozenset(int(r) for r in mlp)


def cleared_rows(layout: Layout, layers) -> dict[int, tuple[int, ...]]:
    """Sublayer t → the rows t clears (zeroes, holding no block it writes), for every sublayer
    of `layout` that clears any. `layers`: the LayerWeights of the layout's layers in the
    order they run (a shared build's run: its stored layers as `loops.expand` runs them)."""
    layers = list(layers)
    if len(layers) != layout.n_layers:
        raise ValueError(f"{len(layers)} layers of weights for a layout of {layout.n_layers}")
    seen: dict[int, tuple[frozenset, frozenset]] = {}
    out: dict[int, tuple[int, ...]] = {}
    for i, layer in enumerate(layers):
        if id(layer) not in seen:                # a shared build's layer runs many times
            seen[id(layer)] = _rows_written(layer)
        for t, rows in zip((clock.attention_time(i), clock.mlp_time(i)), seen[id(layer)]):
            held = {r for b in layout.written_at(t) for r in b.rows}
            cleared = sorted(rows - held)
            if cleared:
                out[t] = tuple(cleared)
    return out


__all__ = ["cleared_rows"]
