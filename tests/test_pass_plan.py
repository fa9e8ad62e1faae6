"""The planner's passes on small programs: timing rules, orientation, schedule, rows."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import tcompile
from passes import plan
from tcompile.compiler.rows import AFTER_LAST_SUBLAYER, IDENTITY_BLOCK
from tcompile.compiler.schedule import (attention_layer, attention_time, latest_write_layer,
                                        mlp_layer, mlp_time, written_by_mlp)
from tcompile.language.parser import parse_source

NEWTON = """program t
dim d = 3
param steps = 3
input A : [d, d] assume norm <= 1
output X
X = A.T
repeat steps {
  X = 2 * X - X @ A @ X
}
"""


# ---- the timing rules ------------------------------------------------------------------------

def test_sublayer_times():
    assert [attention_time(L) for L in (1, 2, 3)] == [1, 3, 5]
    assert [mlp_time(L) for L in (1, 2, 3)] == [2, 4, 6]
    assert [written_by_mlp(t) for t in range(5)] == [False, False, True, False, True]


def test_attention_reads_the_previous_layer():
    assert attention_layer([]) == 1                 # only encoder values
    assert attention_layer([0, 0]) == 1
    assert attention_layer([0, 2, 1]) == 3


def test_mlp_rides_in_its_inputs_layer_but_waits_for_another_mlp():
    assert mlp_layer([]) == 1
    assert mlp_layer([(0, False)]) == 1             # an input: the first layer's MLP
    assert mlp_layer([(2, False)]) == 2             # attention of layer 2 wrote it
    assert mlp_layer([(2, True)]) == 3              # the MLP of layer 2 wrote it
    assert mlp_layer([(2, False), (1, True)]) == 2


def test_latest_write_layer_is_the_inverse_of_the_rules():
    for reader_layer in range(1, 5):
        # an attention reader at layer L needs its input ready by L − 1 ...
        w = latest_write_layer(reader_layer, attention_time(reader_layer))
        assert attention_layer([w]) == reader_layer
        # ... an MLP reader can take what attention wrote in its own layer
        w = latest_write_layer(reader_layer, mlp_time(reader_layer))
        assert mlp_layer([(w, False)]) == reader_layer


# ---- orientation and schedule ----------------------------------------------------------------

def test_newton_needs_no_second_orientation_and_one_layer_per_step():
    df, p = plan(NEWTON)
    stored = {a for a, _ in p.pairs if a >= 0}
    assert len([q for q in p.pairs if q[0] >= 0]) == len(stored)    # one orientation each
    A = df.inputs["A"]
    for k in (1, 2, 3):
        (X,) = [a for a in stored if f"X@{k}" in (p.atoms[a].node.get("vars") or [])]
        assert p.orient[X] != p.orient[A]                          # X (Aᵀ)ᵀ X reads A as stored
        assert p.write_time[(X, p.orient[X])] == attention_time(k)
    assert p.n_layers == 3 and p.width == 3 * 3


def test_mlp_piece_rides_in_the_layer_of_its_input():
    src = """program t
dim d = 2
input A : [n, d] assume row_norm <= 1
input v : [d] assume norm <= 1
output r
r = relu(A @ v)
"""
    df, p = plan(src)
    r = df.outputs["r"]
    assert p.atoms[r].kind == "mlp"
    (leaf,) = p.atoms[r].piece.inputs
    assert p.write_time[p.mlp_input(leaf, r)] == attention_time(1)
    assert p.write_time[(r, p.orient[r])] == mlp_time(1)
    assert p.n_layers == 1


# ---- rows ------------------------------------------------------------------------------------

def test_newton_updates_in_place_with_the_subtraction_merged():
    df, p = plan(NEWTON)
    xs = sorted((pair for pair in p.slots if pair[0] >= 0 and p.atoms[pair[0]].kind == "attn"),
                key=lambda q: p.write_time[q])
    assert len({tuple(p.slots[q].rows) for q in xs}) == 1           # the same rows every step
    for q in xs[1:]:
        coefs = sorted(t.coef for t in p.terms[q])
        assert coefs == [-1.0, 1.0]          # 2X − X is one term; X A X the other; no clearing head
        assert all(t.dest == q for t in p.terms[q])


def test_identity_block_is_allocated_once_and_kept():
    df, p = plan(NEWTON)
    slot = p.slots[(IDENTITY_BLOCK, False)]
    assert slot.write == 0 and slot.last_read == AFTER_LAST_SUBLAYER
    assert len(slot.rows) == p.identity_size == 3


STENCIL = """program stencil
param steps = 2
input u0 : [6] in [-1, 1]
output u
u = u0
repeat steps {
  u = stack(u[0], (u[0] + u[2]) / 2, (u[1] + u[3]) / 2, (u[2] + u[4]) / 2, (u[3] + u[5]) / 2, u[5])
}
"""


def test_a_dead_block_wider_than_the_identity_is_cleared_by_the_mlp_before_its_rows_return():
    """The stencil's u is 6 rows and the identity block 1, so no head can subtract it (I Iᵀ
    old): the MLP of the layer before its new writer clears it with ReLU pairs. Before, its
    rows were never reused and the width grew by 6 per step (13, 19, ..., 67 at 10 steps)."""
    df, p = plan(STENCIL)
    assert p.identity_size == 1
    assert p.clear_terms and all(len(idx) == 6 for ts in p.clear_terms.values()
                                 for _q, idx, _p in ts)
    u0 = np.random.default_rng(0).uniform(-1, 1, 6)
    for steps in (2, 5, 12):
        prog = tcompile.compile_source(STENCIL, params={"steps": steps})
        assert (prog.n_layers, prog.layout.width) == (steps, 13)
        want = tcompile.interpret_program(parse_source(STENCIL), {"steps": steps}, u0=u0)
        assert np.array_equal(prog.run(u0=u0)["u"], want["u"])      # the clear is exact


def _lifetimes_overlap(a, b) -> bool:
    """Two blocks sharing rows must not both be live: one is written at or after the other's
    last read (the writer subtracts it in that very sublayer)."""
    first, second = sorted((a, b), key=lambda s: s.write)
    return not (second.write >= first.last_read and second.write > first.write)


CORPUS = Path(__file__).resolve().parent / "corpus"


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.tp"))[::3])
def test_no_two_live_blocks_share_a_row(name):
    df, p = plan((CORPUS / name).read_text())
    for s1, s2 in itertools.combinations(p.slots.values(), 2):
        if set(s1.rows) & set(s2.rows):
            assert not _lifetimes_overlap(s1, s2), (s1, s2)
    assert p.width == 1 + max(r for s in p.slots.values() for r in s.rows)
