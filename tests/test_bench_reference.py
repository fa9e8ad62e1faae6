"""bench/direct_reference.py, the direct-torch loops bench_backend.py divides by, against the float64
interpreter: a fast reference that computed something else would make every ratio a lie."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tcompile.inspection.sampling import sample_inputs
from tcompile.language.checker import resolve_params
from tcompile.language.parser import parse_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from direct_reference import check_against_interpreter  # noqa: E402

CASES = [
    ("newton_inverse", {"d": 4, "steps": 8}, 16),
    ("least_squares", {"d": 3, "steps": 6}, 12),
    ("newton_logistic", {"d": 3, "steps": 3, "inv_steps": 4}, 10),
]


@pytest.mark.parametrize("name,params,n", CASES, ids=[c[0] for c in CASES])
def test_reference_reproduces_the_interpreter(name, params, n):
    path = ROOT / "programs" / f"{name}.tp"
    program = parse_file(path)
    full = resolve_params(program, params)
    inputs = sample_inputs(program, params, n=n, batch=3, seed=2)
    assert check_against_interpreter(name, path, full, inputs, problems=range(3)) <= 1e-12

