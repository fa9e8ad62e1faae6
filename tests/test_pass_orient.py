"""The orientation search: the incremental cost (orient_search.py) is the full greedy cost
(orient.OrientationCost) after any sequence of flips — checked flip by flip."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from passes import atoms
from tcompile.compiler.orient import HeadOptions, OrientationCost
from tcompile.compiler.orient_search import IncrementalCost, choose_orientations

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ([ROOT / "programs" / "newton_inverse.tp", ROOT / "programs" / "least_squares.tp"] +
            sorted((ROOT / "tests" / "corpus").glob("linear_*.tp"))[::4])


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.name for p in PROGRAMS])
def test_incremental_cost_equals_the_full_evaluation(path):
    df, table = atoms(path.read_text(), {"steps": 4} if "steps" in path.read_text() else None)
    options = HeadOptions(table)
    full = OrientationCost(table, options)
    orient = choose_orientations(table, options)
    search = IncrementalCost(table, options, orient)
    assert search.cost == full(orient)[0]
    free = [a for a, atom in table.items() if atom.kind != "mlp" and not atom.is_token
            and atom.cshape != (1, 1)]
    rng = random.Random(path.name)
    for _ in range(40 if free else 0):
        a = rng.choice(free)
        orient[a] = not orient[a]
        assert search.flip(a) == full(orient)[0], a
    assert search.orient == orient


def test_newton_orientations_put_A_and_X_opposite_at_any_length():
    src = (ROOT / "programs" / "newton_inverse.tp").read_text()
    for steps in (3, 40):
        df, table = atoms(src, {"steps": steps})
        orient = choose_orientations(table, HeadOptions(table))
        A = df.inputs["A"]
        assert all(orient[a] != orient[A] for a, atom in table.items() if atom.kind == "attn")


TWO_PRODUCTS = """program two_products
param steps = 12
dim d = 4
input G : [d, d] assume norm <= 1
input H : [d, d] assume norm <= 0.5
input lam : [] in [0, 0.5]
input b : [d] in [-1, 1]
output w
w = b
repeat steps {
  w = w - lam * G @ w - H @ w
}
"""

PRECONDITIONED = """program preconditioned_gd
param steps = 12
dim d = 4
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
input G : [d, d] assume norm <= 1
input lam : [] in [0, 0.5]
output w
w = zeros(d)
repeat steps {
  w = w - G @ (A.T @ (A @ w - y) / n + lam * w)
}
"""


def test_an_inputs_second_orientation_costs_its_rows_only():
    """The encoder writes an input both ways with the data (no layer); a computed value's
    transposed copy may cost a layer, priced at SECOND_ORIENTATION_COST."""
    from tcompile.compiler.orient import SECOND_ORIENTATION_COST, missing_block_cost
    df, table = atoms(TWO_PRODUCTS, None)
    G = df.inputs["G"]
    computed = next(a for a, atom in table.items() if atom.kind == "attn")
    assert missing_block_cost(table, (G, True)) == 4
    assert missing_block_cost(table, (computed, True)) == SECOND_ORIENTATION_COST + 1


@pytest.mark.parametrize("src, layers", [(TWO_PRODUCTS, 12), (PRECONDITIONED, 13)],
                         ids=["lam_G_plus_H", "preconditioned_gd"])
def test_a_runtime_scalar_step_alternates_the_iterate_one_layer_per_step(src, layers):
    """A head that multiplies by a runtime scalar reads the iterate at a side of length 1, in
    the other orientation from its output: w alternates between iterations, with the inputs
    (G, H) stored both ways or a transposed copy of the hoisted G·AᵀA made once. Before, each
    step made a transposed copy of w: 23 and 18 layers at 12 steps. Outputs against the
    interpreter; the shared build runs as deep at other counts."""
    import numpy as np
    import tcompile
    prog = tcompile.compile_source(src, file="p.tp")
    assert prog.n_layers == layers
    rng = np.random.default_rng(2)
    data = {"G": rng.uniform(-0.25, 0.25, (4, 4)), "lam": 0.3, "b": rng.uniform(-1, 1, 4),
            "H": rng.uniform(-0.1, 0.1, (4, 4)), "A": rng.uniform(-0.5, 0.5, (9, 4)),
            "y": rng.uniform(-1, 1, 9)}
    data = {k: v for k, v in data.items() if f"input {k} " in src}
    from tcompile.language.parser import parse_source
    want = tcompile.interpret_program(parse_source(src, "p.tp"), None, **data)["w"]
    assert np.max(np.abs(prog.run(**data)["w"] - want)) <= 1e-14
    shared = tcompile.compile_source(src, file="p.tp", loops="shared")
    for k in (5, 20):
        unrolled = tcompile.compile_source(src, file="p.tp", params={"steps": k})
        assert shared.loops.n_layers(shared.loops.counts({"steps": k})) == unrolled.n_layers
        assert unrolled.n_layers == layers + k - 12
