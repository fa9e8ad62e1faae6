"""The structured executor on a device: TCOMPILE_TEST_DEVICE=cuda (bench/gpu.sh sets it) runs
these on the GPU; unset, on the CPU, through the same device-abstracted paths (tensors made
on `device`, the table passes sized for it, the generated code, the domain guard). Oracles:
the float64 module on the CPU (≤ 1e-13 in float64, float32 accuracy in float32)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import builds
import tcompile
from arrays import rel
from tcompile.errors import DomainError
from tcompile.inspection.sampling import sample_inputs
from tcompile.runtime import exec_ops, fused_lookup

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("TCOMPILE_TEST_DEVICE", "cpu")
CASES = [
    ("newton_inverse", {"d": 4, "steps": 6}, None),
    ("least_squares", {"d": 4, "steps": 6}, 20),
    ("newton_logistic", {"d": 3, "steps": 2, "inv_steps": 3}, 12),
]

if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("TCOMPILE_TEST_DEVICE=cuda but no CUDA device", allow_module_level=True)


def compiled(name: str, params: tuple):
    return builds.build(name, dict(params))


def module_cpu(prog, inputs: dict) -> dict:
    x = prog.encode(**inputs)
    with torch.no_grad():
        return prog.decode(prog.module_for("float64", "cpu")(x))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,params,n", CASES, ids=[c[0] for c in CASES])
def test_structured_on_device_equals_module(monkeypatch, name, params, n, dtype):
    if DEVICE == "cpu":      # the table passes a GPU takes (CHUNK_OTHER, by torch), on the CPU
        monkeypatch.setitem(exec_ops.CHUNK, "cpu", exec_ops.CHUNK_OTHER)
        monkeypatch.setenv(fused_lookup.ENV_SWITCH, "0")
    prog = compiled(name, tuple(sorted(params.items())))
    batch = sample_inputs(prog.program, params, n=n or 16, batch=4, seed=7)
    want = module_cpu(prog, batch)
    for _ in range(2):                              # traced, then the generated code
        got = prog.run(dtype=dtype, device=DEVICE, **batch)
        gap = max(rel(got[k], w) for k, w in want.items())
        assert gap <= (1e-13 if dtype == "float64" else 1e-4), gap


def test_domain_guard_on_device():
    prog = tcompile.compile_file(ROOT / "programs" / "conjugate_gradient.tp", {"d": 3, "lo": 1e-3})
    rng = np.random.default_rng(0)
    A = rng.normal(size=(12, 3))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    y = rng.uniform(-1, 1, 12)
    with pytest.raises(DomainError, match="fitted on"):
        prog.run(device=DEVICE, A=0.01 * A, y=y)
    w = prog.run(device=DEVICE, A=A, y=y)["w"]                  # in its domain: no error
    assert rel(w, prog.run(executor="module", A=A, y=y)["w"]) <= 1e-13
