"""The sublayer clock (runtime/clock.py) against what a compiled model does: the block a time
writes is written by that sublayer's weights (heads' W_V columns at an attention time, W_2's
columns at an MLP time), and states[t] holds every block written up to t. Oracle: the
weights and the forward states themselves, read without the clock."""
from __future__ import annotations

import numpy as np

from tcompile.compiler import schedule
from tcompile.runtime import clock

import builds


def test_the_clock_numbers_sublayers_from_the_encoder():
    assert [clock.attention_time(i) for i in range(3)] == [1, 3, 5]
    assert [clock.mlp_time(i) for i in range(3)] == [2, 4, 6]
    assert [clock.before_layer(i) for i in range(3)] == [0, 2, 4]
    assert [clock.layer_of(t) for t in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert [clock.sublayer_of(t) for t in range(4)] == ["embed", "attn", "mlp", "attn"]
    assert [clock.is_mlp(t) for t in range(4)] == [False, False, True, False]
    assert clock.n_times(5) == 10
    # the scheduler's layers count from 1: its layer L is the clock's L - 1
    assert [schedule.attention_time(L) for L in (1, 2)] == [clock.attention_time(0), clock.attention_time(1)]
    assert [schedule.mlp_time(L) for L in (1, 2)] == [clock.mlp_time(0), clock.mlp_time(1)]


def _written_columns(layer, t: int) -> set[int]:
    """Residual rows the sublayer at time t writes: the rows of its heads' W_V, or of W_2."""
    mats = list(layer.W_V) if clock.sublayer_of(t) == "attn" else [np.asarray(layer.W_2)]
    return {int(r) for m in mats for r in np.flatnonzero(np.any(m != 0, axis=1))}


def test_every_block_is_written_by_the_sublayer_its_time_names():
    prog = builds.build("least_squares")
    written = 0
    for blk in prog.layout.blocks:
        if blk.written == clock.ENCODER:
            continue
        layer = prog.layers[clock.layer_of(blk.written)]
        rows = set(np.asarray(blk.rows).ravel().tolist())
        assert rows <= _written_columns(layer, blk.written), blk.key
        written += 1
    assert written > 0


def test_states_are_indexed_by_the_clock():
    prog = builds.build("least_squares")
    rng = np.random.default_rng(0)
    A = rng.standard_normal((12, 4))
    A /= np.linalg.norm(A, axis=1).max()
    y = rng.standard_normal(12)
    inputs = {"A": A, "y": y / (2 * np.linalg.norm(y)), "a_test": rng.standard_normal(4)}
    states = prog.sublayer_states(prog.prepare_inputs(inputs))
    assert len(states) == clock.n_times(prog.n_layers) + 1
    for i in range(prog.n_layers):                       # a sublayer changes only what it writes
        for t in (clock.attention_time(i), clock.mlp_time(i)):
            changed = np.nonzero(np.any(states[t] != states[t - 1], axis=tuple(
                a for a in range(states[t].ndim) if a != states[t].ndim - 1)))[0]
            assert set(changed.tolist()) <= _written_columns(prog.layers[i], t), (i, t)
