"""examples/train_from_compiled.py: the compiled least-squares model is trainable, starts far
better than a random one, and the example writes valid outputs (few steps, tiny data: fast).

Oracles: numpy's lstsq prediction (the error of the compiled start), prog.decode (the
differentiable readout reads the same entry), and the autograd graph itself (a gradient on
every parameter the program uses, in the shared build's tied body and in the unrolled build).
"""
from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("train_from_compiled",
                                                  ROOT / "examples" / "train_from_compiled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _load_example()
D, N, DEPTH = 4, 24, 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def shared():
    return ex.compile_program(D, DEPTH)


@pytest.fixture(scope="module")
def tasks():
    return ex.make_tasks(np.random.default_rng(0), 16, N, D, 0.1)


def test_tasks_respect_the_programs_assumption(tasks):
    assert np.linalg.norm(tasks["A"], axis=-1).max() <= 1 + 1e-12
    assert np.linalg.norm(tasks["a_test"], axis=-1).max() <= 1 + 1e-12
    assert tasks["A"].shape == (16, N, D) and tasks["y_test"].shape == (16,)


def _grad_check(prog, model, tasks, blocks):
    """Backpropagate the readout's MSE; every block in `blocks` gets a nonzero gradient on its
    attention weights, and the readout equals prog.decode's y_hat."""
    x = ex.encode(prog, tasks)
    h = model(x)
    y_hat = ex.readout(prog, h)
    np.testing.assert_allclose(y_hat.detach().numpy(), prog.decode(h)["y_hat"], rtol=0, atol=0)
    loss = torch.mean((y_hat - torch.as_tensor(tasks["y_test"])) ** 2)
    loss.backward()
    for name, block in blocks:
        for pname in ("W_K", "W_Q", "W_V"):
            g = getattr(block.attn, pname).grad
            assert g is not None and float(g.abs().sum()) > 0, (name, pname)


def test_gradients_reach_the_tied_body_of_the_shared_build(shared, tasks):
    model = ex.trainable_copy(shared)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in shared.module.parameters())   # the original as built
    body = list(model.body.layers)
    assert len(body) == 1                     # least_squares: one stored block per Newton step
    blocks = [(f"prologue.{i}", b) for i, b in enumerate(model.prologue)]
    blocks += [(f"body.layers.{i}", b) for i, b in enumerate(body)]
    blocks += [(f"epilogue.{i}", b) for i, b in enumerate(model.epilogue)]
    _grad_check(shared, model, tasks, blocks)


def test_gradients_reach_every_layer_of_the_unrolled_build(tasks):
    unrolled = ex.compile_program(D, DEPTH, loops=None)
    assert unrolled.loops is None
    model = ex.trainable_copy(unrolled)
    _grad_check(unrolled, model, tasks, [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)])


def test_the_compiled_start_is_far_better_than_a_random_one(shared, tasks):
    y_oracle = ex.oracle(tasks)
    compiled = ex.trainable_copy(shared)
    x = ex.encode(shared, tasks)
    err_compiled = ex.evaluate(compiled, shared, x, tasks, y_oracle)["mse_oracle"]
    for masks in (None, ex.sparsity_masks(compiled)):
        random = ex.randomised(compiled, 0.02, seed=1, masks=masks)
        err_random = ex.evaluate(random, shared, x, tasks, y_oracle)["mse_oracle"]
        assert err_compiled < 0.05 * err_random, (err_compiled, err_random)
    # with enough iterations the compiled model is the lstsq solution itself
    assert ex.evaluate(compiled, shared, x, tasks, y_oracle, steps=12)["mse_oracle"] < 1e-24


def test_masked_training_keeps_the_sparsity_pattern(shared):
    rng = np.random.default_rng(1)
    train_set, test = ex.make_tasks(rng, 32, N, D, 0.1), ex.make_tasks(rng, 8, N, D, 0.1)
    model = ex.trainable_copy(shared)
    masks = ex.sparsity_masks(model)
    ex.train(model, shared, ex.encode(shared, train_set), train_set["y_test"],
             ex.encode(shared, test), test, ex.oracle(test), steps=3, lr=1e-3, batch=8, seed=0,
             eval_every=1, masks=masks)
    moved = False
    for p, m, p0 in zip(model.parameters(), masks, shared.module.parameters()):
        assert torch.all(p[m == 0] == 0)
        moved |= bool(torch.any(p != p0))
    assert moved


def test_the_example_writes_its_outputs(tmp_path):
    pytest.importorskip("matplotlib")
    result = ex.run(steps=3, n=N, n_train=32, n_test=16, batch=8, eval_every=1, max_k=6)
    png, js = ex.write_outputs(result, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    data = json.loads(js.read_text())
    assert {"config", "model", "baselines", "history", "depth_sweep", "train_seconds"} <= set(data)
    assert set(data["history"]) == set(ex.MODELS)
    assert set(data["depth_sweep"]) == {"compiled_untrained"} | {m + "_trained" for m in ex.MODELS}
    for hist in data["history"].values():
        assert [h["step"] for h in hist] == [0, 1, 2, 3]
        assert all({"mse_target", "mse_oracle"} <= set(h) for h in hist)
    sweep = data["depth_sweep"]["compiled_untrained"]
    assert [r["K"] for r in sweep] == list(range(data["model"]["min_K"], 7))
    assert all(r["body_applications"] == r["K"] - data["model"]["body_offset"] for r in sweep)
    errs = [r["mse_oracle"] for r in sweep]
    assert all(b < a for a, b in itertools.pairwise(errs))     # Newton keeps converging
    # every model at step 0 matches its init's error; the compiled ones share a start
    h = data["history"]
    assert h["compiled"][0] == h["compiled_sparse"][0]
    assert h["compiled"][0]["mse_oracle"] < 0.05 * h["random"][0]["mse_oracle"]
    assert data["baselines"]["oracle_lstsq_mse_target"] > 0
