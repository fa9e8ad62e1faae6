"""The compiled module under nnsight (issue 20 §6), judged against the module itself: nnsight
wraps any torch.nn.Module, so its trace must see exactly what `run_with_cache` sees, and its
interventions must equal the torch-level edits that mean the same thing (zeroing a head's
output = zeroing its W_V; patching a head from another input = the forward hook of
tests/test_head_patching.py). nnsight is the optional `interp` extra; without it these skip."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import tcompile
from tcompile.inspection.sampling import sample_inputs

nnsight = pytest.importorskip("nnsight")

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"d": 3, "steps": 2}


@pytest.fixture(scope="module")
def setup():
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params=PARAMS)
    x = prog.encode(**sample_inputs(prog.program, PARAMS, n=8, batch=2, seed=0))
    x2 = prog.encode(**sample_inputs(prog.program, PARAMS, n=8, batch=2, seed=1))
    L = 1
    h = next(i for i in range(prog.layers[L].heads) if np.any(prog.layers[L].W_V[i]))
    return prog, x, x2, L, h


def test_trace_sees_what_run_with_cache_sees(setup):
    prog, x, _, L, _ = setup
    model = nnsight.NNsight(prog.module)
    names = {f"blocks.{L}.attn.hook_result", f"blocks.{L}.hook_resid_mid",
             f"blocks.{L}.mlp.hook_post"}
    with model.trace(x):
        head_out = model.blocks[L].attn.hook_result.output.save()
        mid = model.blocks[L].hook_resid_mid.output.save()
        post = model.blocks[L].mlp.hook_post.output.save()
        out = model.output.save()
    final, cache = prog.module.run_with_cache(x, names=names)
    assert torch.equal(head_out, cache[f"blocks.{L}.attn.hook_result"])
    assert torch.equal(mid, cache[f"blocks.{L}.hook_resid_mid"])
    assert torch.equal(post, cache[f"blocks.{L}.mlp.hook_post"])
    assert torch.equal(out, final)


def test_zeroing_one_head_in_a_trace_is_zeroing_its_weights(setup):
    prog, x, _, L, h = setup
    model = nnsight.NNsight(prog.module)
    with model.trace(x):
        model.blocks[L].attn.hook_result.output[:, h] = 0
        got = model.output.save()
    ablated = copy.deepcopy(prog.module)
    with torch.no_grad():
        ablated.blocks[L].attn.W_V[h].zero_()
        want = ablated(x)
        clean = prog.module(x)
    assert torch.equal(got, want)
    assert not torch.equal(got, clean)                  # the head mattered


def test_patching_a_head_from_another_input_equals_a_torch_hook(setup):
    prog, x, x2, L, h = setup
    model = nnsight.NNsight(prog.module)
    with model.trace(x2):
        donor = model.blocks[L].attn.hook_result.output[:, h].save()
    with model.trace(x):
        model.blocks[L].attn.hook_result.output[:, h] = donor
        got = model.output.save()

    def hook(_m, _i, out):
        out = out.clone()
        out[:, h] = donor
        return out
    handle = prog.module.blocks[L].attn.hook_result.register_forward_hook(hook)
    try:
        with torch.no_grad():
            want = prog.module(x)
    finally:
        handle.remove()
    assert torch.equal(got, want)
    with torch.no_grad():
        assert not torch.equal(got, prog.module(x))
