"""The emitter (compiler/emit.py): its weights, run through the paper's equations written
out here in numpy (not the torch model), reproduce the program's values."""
from __future__ import annotations

import numpy as np
import pytest

from passes import emitted, plan
from tcompile.inspection.sampling import sample_inputs
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_source

PROGRAMS = {
    "newton": """program t
dim d = 3
input A : [d, d] assume norm <= 1
output X
X = A.T
repeat 3 {
  X = 2 * X - X @ A @ X
}
""",
    "centred": """program t
input X : [n, 3] in [-1, 1]
output Y, m
m = sum(X) / n
Y = X - 0.5 * (X - m)
""",
    "tokens": """program t
dim d = 2
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output w, r
w = A.T @ y / n
r = relu(A @ w) - y
""",
}


def encode(blocks, inputs: dict, n: int) -> np.ndarray:
    """H (D × n): each input block holds the value C (or Cᵀ) in its rows' first columns."""
    D = 1 + max(r for b in blocks for r in b.rows)
    H = np.zeros((D, n))
    for b in blocks:
        if b.written != 0:
            continue
        if b.kind == "input":
            C = np.asarray(inputs[b.name], dtype=float).reshape(
                [n if d == "n" else d for d in b.cshape])
        else:
            k = len(b.rows)
            C = {"eye": np.eye(k), "eye_inv_n": np.eye(k) / n, "ones": np.ones((n, 1)),
                 "ones_inv_n": np.full((1, n), 1 / n),
                 "inv_n": np.full((1, 1), 1 / n), "n": np.full((1, 1), float(n))}[b.const]
        S = C.T if b.transposed else C
        H[list(b.rows), :S.shape[1]] = S
    return H


def paper_forward(layers, H: np.ndarray) -> list[np.ndarray]:
    """Eq. (3.1): Att(H) = H + Σ_h W_V H (W_K H)ᵀ (W_Q H); TF(H) = Att + W_2 ReLU(W_1 Att).
    The states after every sublayer."""
    states = [H]
    for w in layers:
        H = H + sum(w.W_V[h] @ H @ (w.W_K[h] @ H).T @ (w.W_Q[h] @ H) for h in range(len(w.W_V)))
        states.append(H)
        H = H + w.W_2 @ np.maximum(w.W_1 @ H, 0.0)
        states.append(H)
    return states


def read(H, b, n):
    r, c = (n if d == "n" else d for d in b.cshape)
    S = H[list(b.rows), :(r if b.transposed else c)]
    return S.T if b.transposed else S


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_emitted_weights_compute_the_program(name):
    src, n = PROGRAMS[name], 5
    inputs = sample_inputs(parse_source(src, "t.tp"), n=n, seed=3)
    want = interpret_program(parse_source(src, "t.tp"), None, **inputs)
    df, plan, layers, blocks, keys = emitted(src)
    states = paper_forward(layers, encode(blocks, inputs, n))
    by_key = {b.key: b for b in blocks}
    for out, nid in df.outputs.items():
        b = by_key[keys[(nid, plan.orient[nid])]]
        got = read(states[-1], b, n).reshape(np.shape(want[out]))
        np.testing.assert_allclose(got, want[out], rtol=1e-12, atol=1e-13)


def test_a_token_mean_broadcast_to_the_tokens_is_one_layer():
    """X − 0.5 (X − 1 mᵀ), m = Xᵀ1/n: the head reads 1·1ᵀ/n as the ones row and the
    encoder's row of 1/n (heads.py), in the same layer as m."""
    df, plan, layers, blocks, keys = emitted(PROGRAMS["centred"])
    assert len(layers) == 1
    assert [b.key for b in blocks if b.const == "ones_inv_n"] == ["const:ones_inv_n"]
    assert any("const:ones_inv_n" in lab for w in layers for lab in w.head_labels)


def test_heads_select_rows_and_write_only_their_destination():
    df, plan, layers, blocks, keys = emitted(PROGRAMS["newton"])
    assert len(layers) == 3
    for w in layers:
        # W_K and W_Q are row selectors: 0/1 entries, at most one 1 per selector row
        for M in (w.W_K, w.W_Q):
            assert set(np.unique(M)) <= {0.0, 1.0}
            assert (M.sum(axis=2) <= 1).all()
        assert w.W_1.shape[0] == 0             # a polynomial program has no MLP units
        written = {r for h in range(len(w.W_V)) for r in np.nonzero(w.W_V[h].any(axis=1))[0]}
        X_rows = {r for b in blocks if b.kind == "attn" for r in b.rows}
        assert written <= X_rows


def test_head_labels_name_the_blocks():
    df, plan, layers, blocks, keys = emitted(PROGRAMS["newton"])
    labels = [lab for w in layers for lab in w.head_labels]
    assert any("input:A" in lab for lab in labels)
    assert all(lab.startswith("K=") and " V: " in lab for lab in labels)
    assert [b.key for b in blocks if b.kind == "attn"] == ["X@1", "X@2", "X@3"]


def _dict_mlp_weights(plan, written, t):
    """W_1, W_2 from emit.mlp_units' readable dicts, one unit at a time (the reference)."""
    from tcompile.compiler.emit import mlp_units
    units = mlp_units(plan, written, t)
    W_1, W_2 = np.zeros((len(units), plan.width)), np.zeros((plan.width, len(units)))
    for j, (w1, w2) in enumerate(units):
        for r, w in w1.items():
            W_1[j, r] += w
        for r, c in w2.items():
            W_2[r, j] += c
    return W_1, W_2


GATED = """program t
dim d = 2
input A : [n, d] assume row_norm <= 1
input y : [n] sign
input x : [d] assume norm <= 1
input w : [d] assume norm <= 1
output g, h, q
z = A @ x
p = sigmoid(-y * z) on [-2, 2] tol 1e-2
g = A.T @ (y * p) / n
h = A.T @ ((p * (1 - p)) * A) / n  tol 1e-2
q = A.T @ (sigmoid(y * z) on [-2, 2] tol 1e-2) + A.T @ (clip(A @ x, -1, 1) * clip(A @ w, -1, 1)) tol 1e-2
"""


@pytest.mark.parametrize("name,params", [("gated", {}), ("kaczmarz", {"sweeps": 2})])
def test_array_emission_is_the_dict_emission_bit_for_bit(name, params):
    """The MLP weights are built from arrays (pieces.piece_unit_entries); they must be the
    bytes the readable per-unit dicts (pieces.piece_units) give, layer by layer."""
    from pathlib import Path
    from tcompile.compiler import emit as em
    from tcompile.compiler.schedule import mlp_time
    # gated: sign-gated branches, gated constants, products (one and two output rows), clears
    src = GATED if name == "gated" else \
        (Path(__file__).resolve().parents[1] / "programs" / f"{name}.tp").read_text()
    _, p = plan(src, params)
    writers = em.writers_by_time(p)
    hidden = 0
    for layer in range(1, p.n_layers + 1):
        t = mlp_time(layer)
        got = [m.dense() for m in em._mlp_weights(p, writers.get(t, []), t)]
        want = _dict_mlp_weights(p, writers.get(t, []), t)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.tobytes() == w.tobytes(), (name, layer)
        assert em.mlp_hidden(p, writers.get(t, []), t) == got[0].shape[0]
        hidden += got[0].shape[0]
    assert hidden > 0
