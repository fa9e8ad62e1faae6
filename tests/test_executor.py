"""The structured executor (tcompile/runtime/executor.py) against its oracles: the dense
paper-form module (the same function: ≤ 1e-13 relative in float64) and the float64
interpreter (as close as the module is), on the shipped programs and the random-program corpus;
the PL tables against the ReLU sums they replace, in numpy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tcompile
from arrays import rel
from tcompile.errors import InputError
from tcompile.inspection.sampling import sample_inputs
from tcompile.runtime.executor import StructuredExecutor, executor_for
from tcompile.runtime.pl_tables import bucket_index, build_table

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "programs"
CORPUS = ROOT / "tests" / "corpus"
RTOL = 1e-13

SHIPPED = [
    ("newton_inverse", {"d": 4, "steps": 6}, None),
    ("least_squares", {"d": 4, "steps": 6}, 20),
    ("newton_logistic", {"d": 3, "steps": 2, "inv_steps": 3}, 12),
]


def rel_gap(got: dict, want: dict) -> float:
    """Worst over outputs of arrays.rel: max|got − want| / max|want| (shapes must agree)."""
    return max((rel(got[k], w) for k, w in want.items()), default=0.0)


def module_outputs(prog, inputs: dict, dtype=torch.float64) -> dict:
    x = prog.encode(dtype=dtype, **inputs)
    with torch.no_grad():
        return prog.decode(prog.module_for(dtype)(x))


@pytest.mark.parametrize("name,params,n", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_structured_equals_module_and_interpreter(name, params, n):
    prog = tcompile.compile_file(PROGRAMS / f"{name}.tp", params=params)
    batch = sample_inputs(prog.program, params, n=n or 16, batch=5, seed=1)
    got = prog.run(**batch)                                    # the default executor
    ref = module_outputs(prog, batch)
    assert rel_gap(got, ref) <= RTOL
    assert rel_gap(prog.run(executor="module", **batch), ref) == 0.0
    # single problem (no batch axis): same shapes as the module's, same numbers
    one = {k: v[2] for k, v in batch.items()}
    single = prog.run(**one)
    assert rel_gap(single, {k: v[2] for k, v in ref.items()}) <= RTOL
    # against the interpreter: as close as the module is (plus rounding)
    want = tcompile.interpret(PROGRAMS / f"{name}.tp", params, **one)
    gap_module = rel_gap({k: v[2] for k, v in ref.items()}, want)
    assert rel_gap(single, want) <= gap_module + RTOL


def test_logistic_runs_its_sigmoid_as_a_table_and_its_products_as_tables():
    """The agreement above covers the table path: the sigmoid piece and the product pieces of
    newton_logistic are evaluated as tables, not ReLUs."""
    name, params, n = SHIPPED[2]
    prog = tcompile.compile_file(PROGRAMS / f"{name}.tp", params=params)
    ex = StructuredExecutor(prog.layers, prog.layout)
    kinds = [op.kind for sub in ex.resolved(n).sublayers for op in sub.ops if hasattr(op, "kind")]
    assert kinds.count("table") >= 3 * params["steps"]
    units_in_tables = sum(g.W2.shape[1] * g.instances for p in ex.plans for g in p.contribs
                          if getattr(g, "kind", None) == "table")
    units = sum(int(np.count_nonzero(np.any(w.W_1 != 0, axis=1))) for w in prog.layers)
    assert units_in_tables >= 0.9 * units


def corpus_programs():
    sums = json.loads((CORPUS / "checksums.json").read_text())
    return sorted(p.name for p in CORPUS.glob("*.tp") if p.name in sums)


@pytest.mark.parametrize("fname", corpus_programs())
def test_corpus_structured_equals_module(fname):
    prog = tcompile.compile_file(CORPUS / fname)
    inputs = sample_inputs(prog.program, None, n=max(prog.layout.min_tokens, 7), batch=3, seed=3)
    assert rel_gap(prog.run(**inputs), module_outputs(prog, inputs)) <= RTOL


def test_float32_path_runs_and_is_float32_accurate():
    name, params, n = SHIPPED[1]
    prog = tcompile.compile_file(PROGRAMS / f"{name}.tp", params=params)
    inputs = sample_inputs(prog.program, params, n=n, batch=4, seed=2)
    got = prog.run(dtype="float32", **inputs)
    assert rel_gap(got, module_outputs(prog, inputs)) <= 1e-4
    assert rel_gap(got, module_outputs(prog, inputs, torch.float32)) <= 1e-4
    assert rel_gap(got, prog.run(**inputs)) > 0          # really computed in float32


def test_compiled_executor_equals_structured():
    prog = tcompile.compile_file(PROGRAMS / "least_squares.tp", params={"d": 2, "steps": 2})
    inputs = sample_inputs(prog.program, {"d": 2, "steps": 2}, n=6, batch=2, seed=4)
    assert rel_gap(prog.run(executor="compiled", **inputs), module_outputs(prog, inputs)) <= RTOL


def test_unknown_executor_is_an_input_error():
    prog = tcompile.compile_file(PROGRAMS / "newton_inverse.tp", params={"d": 2, "steps": 1})
    with pytest.raises(InputError, match="executor must be one of"):
        prog.run(A=np.eye(2) / 2, executor="fast")
    with pytest.raises(InputError):
        executor_for(prog, "dense")


@pytest.mark.parametrize("seed", range(4))
def test_pl_table_is_the_relu_sum(seed):
    """build_table against Σ_u C[:, u] ReLU(a_u s + b_u) evaluated directly, on and between
    the breakpoints and beyond both ends; repeated breakpoints and both unit directions."""
    rng = np.random.default_rng(seed)
    U, O = 40, 2
    a = rng.choice([-1, 1], U) * rng.uniform(0.2, 3, U)
    b = rng.uniform(-2, 2, U)
    b[:5] = -a[:5] * 0.5                                  # five units share a breakpoint
    C = rng.normal(size=(O, U))
    bp, slope, icpt = build_table(a, b, C)
    assert np.all(np.diff(bp) > 0) and slope.shape == (len(bp) + 1, O)
    s = np.concatenate([bp, rng.uniform(bp[0] - 3, bp[-1] + 3, 500)])
    want = np.maximum(np.outer(s, a) + b, 0) @ C.T
    i = np.searchsorted(bp, s)
    got = slope[i] * s[:, None] + icpt[i]
    assert np.max(np.abs(got - want)) <= 1e-13 * np.max(np.abs(C).sum(1) * 5)


@pytest.mark.parametrize("spread", ["uniform", "clustered"])
def test_bucket_index_counts_like_searchsorted(spread):
    """The grid lookup gives #{breakpoints < s} exactly: on the breakpoints, one ulp either
    side, between them and beyond both ends (or declines: None, and searchsorted is used)."""
    rng = np.random.default_rng(7)
    bp = np.sort(rng.uniform(-6, 6, 300) if spread == "uniform" else
                 np.concatenate([rng.uniform(-6, 6, 100), rng.uniform(0, 0.05, 6)]))
    grid = bucket_index(bp)
    assert grid is not None
    origin, inv_h, base, padded, m = grid
    s = np.concatenate([bp, np.nextafter(bp, np.inf), np.nextafter(bp, -np.inf),
                        rng.uniform(-9, 9, 5000), [-np.inf, np.inf]])
    j = np.clip(np.floor((s - origin) * inv_h), 0, len(base) - 1).astype(np.int64)
    idx = base[j] + sum((padded[base[j] + i] < s).astype(np.int64) for i in range(m))
    assert np.array_equal(idx, np.searchsorted(bp, s))
    assert bucket_index(np.array([0.0, 1e-12, 1.0]), max_probe=1, max_cells=64) is None
