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
