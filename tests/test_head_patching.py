"""Interpretability-library style interventions on the compiled module, with torch hooks alone:
patching one head's output (`blocks.L.attn.hook_result`, TransformerLens's name) is the same
as editing that head's weights (the oracle: a copy of the module with the head's W_V zeroed,
or with the head's contribution from another input added back), and patching a head with its
own output changes nothing. tests/test_nnsight.py makes the same interventions through nnsight."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

import tcompile
from tcompile.inspection.sampling import sample_inputs

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"d": 3, "steps": 2}


def _setup():
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params=PARAMS)
    inputs = sample_inputs(prog.program, PARAMS, n=8, batch=2, seed=0)
    other = sample_inputs(prog.program, PARAMS, n=8, batch=2, seed=1)
    L = 1
    h = next(i for i in range(prog.layers[L].heads) if np.any(prog.layers[L].W_V[i]))
    return prog, prog.encode(**inputs), prog.encode(**other), L, h


def _patched(module, L, h, x, replace):
    def hook(_m, _i, out):
        out = out.clone()
        out[:, h] = replace(out[:, h])
        return out
    handle = module.blocks[L].attn.hook_result.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return module(x)
    finally:
        handle.remove()


def test_zeroing_one_heads_output_is_zeroing_its_weights():
    prog, x, _, L, h = _setup()
    module = prog.module
    with torch.no_grad():
        clean = module(x)
    got = _patched(module, L, h, x, torch.zeros_like)
    ablated = copy.deepcopy(module)
    with torch.no_grad():
        ablated.blocks[L].attn.W_V[h].zero_()
        want = ablated(x)
    assert torch.equal(got, want)
    assert not torch.equal(got, clean)                  # the head mattered
    # patching a head with its own output changes nothing
    assert torch.equal(_patched(module, L, h, x, lambda v: v), clean)


def test_activation_patching_from_another_input():
    """Run on x with head h of layer L taking its output from a run on x2: the residual after
    layer L differs from the clean one by exactly the difference of the head's two outputs."""
    prog, x, x2, L, h = _setup()
    module = prog.module
    _, cache2 = module.run_with_cache(x2, names={f"blocks.{L}.attn.hook_result"})
    _, cache = module.run_with_cache(x, names={f"blocks.{L}.attn.hook_result",
                                               f"blocks.{L}.hook_resid_mid"})
    donor = cache2[f"blocks.{L}.attn.hook_result"][:, h]
    seen = {}
    handle = module.blocks[L].hook_resid_mid.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("mid", out.detach().clone()))
    try:
        _patched(module, L, h, x, lambda v: donor)
    finally:
        handle.remove()
    delta = donor - cache[f"blocks.{L}.attn.hook_result"][:, h]
    torch.testing.assert_close(seen["mid"], cache[f"blocks.{L}.hook_resid_mid"] + delta,
                               rtol=1e-13, atol=1e-13)
