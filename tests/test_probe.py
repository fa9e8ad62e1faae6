"""Probing (tcompile/inspection/probe.py): held-out ridge probes from layers to iterates.

Oracles: scikit-learn's Ridge and r2_score (the closed form, primal and dual), and the compiled
model itself: probed the same way, least_squares' own iterates are a linear read-out of the
layer that writes them (held-out R² ≥ 0.999 on that layer: the diagonal)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tcompile
from tcompile.errors import InputError
from tcompile.inspection.probe import compiled_activations, probe, ridge_r2, written_layer
from tcompile.inspection.sampling import sample_inputs

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"d": 3, "steps": 4}


@pytest.fixture(scope="module")
def least_squares():
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params=PARAMS)
    inputs = sample_inputs(prog.program, PARAMS, n=10, batch=160, seed=0)
    return prog, inputs, compiled_activations(prog, inputs)


def test_probing_the_compiled_model_finds_its_own_iterates_on_the_diagonal(least_squares):
    prog, inputs, acts = least_squares
    res = tcompile.probe(acts, prog, inputs, variables=["w", "X"])     # the public name
    assert res.layers == ["embed"] + [str(L) for L in range(prog.n_layers)]
    assert res.points["w"] == [f"w@{k}" for k in range(PARAMS["steps"] + 1)]
    where = written_layer(prog)
    checked = 0
    for var, points in res.points.items():
        for j, point in enumerate(points):
            if point in where:                     # stored (X@4 is never needed: not stored)
                assert res.r2[var][res.layers.index(where[point]), j] >= 0.999, point
                checked += 1
    assert checked >= 2 * PARAMS["steps"]
    # the iterates are not in the input embedding: Newton's w@k is not linear in (A, y)
    assert np.all(res.r2["w"][0] < 0.5)
    text = res.table("w")
    assert "w@0" in text and "embed" in text


@pytest.mark.parametrize("features", [5, 40])          # primal (p < m) and dual (p > m)
def test_ridge_r2_is_sklearns(features):
    sk = pytest.importorskip("sklearn.linear_model")
    from sklearn.metrics import r2_score
    rng = np.random.default_rng(features)
    X = rng.standard_normal((30, features)) * rng.uniform(0.1, 10, features)
    Y = X[:, :3] @ rng.standard_normal((3, 2)) + 0.3 * rng.standard_normal((30, 2))
    alpha = 1e-2
    got = ridge_r2(X[:20], Y[:20], X[20:], Y[20:], alpha)
    Xc = X[:20] - X[:20].mean(0)
    lam = alpha * (np.trace(Xc.T @ Xc) / features)
    model = sk.Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(X[:20], Y[:20])
    pred = model.predict(X[20:])
    want = 1 - np.sum((Y[20:] - pred) ** 2) / np.sum((Y[20:] - Y[:20].mean(0)) ** 2)
    assert abs(got - want) < 1e-10
    # pooled over the entries, with the training mean: close to sklearn's own score
    assert abs(got - r2_score(Y[20:], pred, multioutput="variance_weighted")) < 0.1


def test_probe_takes_lists_tokens_and_writes_a_heatmap(least_squares, tmp_path):
    pytest.importorskip("matplotlib")
    prog, inputs, acts = least_squares
    layers = list(acts.values())
    res = probe(layers, prog, inputs, variables=["w"], tokens=range(PARAMS["d"]))
    assert res.layers == [str(i) for i in range(len(layers))]
    # small values live in the first d tokens of the compiled model: they suffice
    where = written_layer(prog)
    for j, point in enumerate(res.points["w"]):
        assert res.r2["w"][int(where[point]) + 1, j] >= 0.999
    png = res.heatmap(tmp_path / "probe.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(res.as_dict()) >= {"layers", "points", "r2", "best_layer"}


def test_probe_errors_are_clear(least_squares):
    prog, inputs, acts = least_squares
    with pytest.raises(InputError, match="not assigned"):
        probe(acts, prog, inputs, variables=["nope"])
    with pytest.raises(InputError, match="problems"):
        probe({"a": acts["0"][:10]}, prog, inputs)
    with pytest.raises(InputError, match="shape"):
        probe([np.zeros(160)], prog, inputs)
    with pytest.raises(InputError, match="batch"):
        probe(acts, prog, {k: v[0] for k, v in inputs.items()})
    with pytest.raises(InputError, match="alpha"):
        probe(acts, prog, inputs, alpha=0)


def test_the_probe_trained_example_runs_end_to_end(tmp_path):
    """examples/probe_trained.py with a tiny model and a few steps: it trains, probes the
    trained and the untrained model for both programs' iterates, and writes its outputs."""
    pytest.importorskip("matplotlib")
    import importlib.util
    import sys
    sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location("probe_trained", ROOT / "examples" / "probe_trained.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    result = ex.run(steps=3, layers=1, width=8, heads=2, n=8, n_train=64, n_probe=40,
                    newton_steps=2, gd_steps=3, log_every=1)
    newton, gd, *control = result.pop("_results")
    assert newton.layers == ["embed", "0"] and newton.points["w"] == ["w@0", "w@1", "w@2"]
    assert gd.points["w"] == [f"w@{k}" for k in range(4)]
    assert np.isnan(gd.r2["w"][:, 0]).all()              # GD's w@0 = 0: nothing to explain
    assert len(control) == 2 and result["untrained"]["newton"]["layers"] == newton.layers
    assert [r["step"] for r in result["train_log"]] == [1, 2, 3]
    ex.plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
