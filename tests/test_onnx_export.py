"""ONNX export (tcompile/runtime/onnx_export.py): every program in programs/ exported and run
in onnxruntime gives prog.run's outputs (float64, ≤ 1e-12 relative) and the module's final
residual stream; shared builds at a run-time count other than the built one; float32; the CLI.

Small sizes (d = 2, 2 steps) keep the whole file a few seconds: the export itself is generic
over the module's layers, so size does not change what is checked. Skipped without the
`export` extra (onnx, onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tcompile
from arrays import rel
from cli_in_process import run_in_process
from tcompile.errors import InputError
from tcompile.inspection.sampling import sample_inputs
from test_hostile_cases import TINY

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = sorted((ROOT / "programs").glob("*.tp"))
RTOL = 1e-12


# Programs whose structure fixes a size: gram_schmidt_qr reads columns 0-3 of A (d >= 4) and
# lanczos runs its fixed number of steps, which break down on a d = 2 Krylov space.
AT_DEFAULTS = {"gram_schmidt_qr", "lanczos"}


def small_params(path: Path) -> dict:
    """d = 2 (K = 2 classes, k = 2 targets), 2 steps (2 inner steps, 2 iterations) where the
    program has them."""
    if path.stem in AT_DEFAULTS:
        return {}
    src = path.read_text()
    return {k: 2 for k in ("steps", "d", "inv_steps", "K", "k", "iters")
            if f"param {k} " in src or f"dim {k} " in src}


def run_onnx(path, x: np.ndarray) -> dict:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"x": x})))


def check_export(prog, params, tmp_path, n=None, **counts):
    inputs = sample_inputs(prog.program, params, n=max(n or 6, prog.layout.min_tokens), batch=3,
                           seed=2)
    path = prog.export_onnx(tmp_path / f"{prog.name}.onnx", **counts)
    x = prog.encode(**inputs)
    got = run_onnx(path, x.numpy())
    want = prog.run(domains="off", **counts, **inputs)    # the same function, in or out of domain
    assert set(got) == {"residual_stream"} | {f"output.{k}" for k in want}
    for k, v in want.items():
        assert got[f"output.{k}"].shape == v.shape
        assert rel(got[f"output.{k}"], v) <= RTOL, k
    with torch.no_grad():
        h = prog.module(x, **counts) if counts else prog.module(x)
    assert rel(got["residual_stream"], h.numpy()) <= RTOL
    return path


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_every_program_exports_and_matches_in_onnxruntime(path, tmp_path):
    params = small_params(path)
    prog = tcompile.compile_file(path, params=params)
    out = check_export(prog, params, tmp_path)
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["tcompile.program"] == prog.name
    assert json.loads(meta["tcompile.manifest"])["width"] == prog.width
    assert int(meta["tcompile.layers_run"]) == prog.n_layers


@pytest.mark.parametrize("name", ["least_squares", "newton_inverse"])
def test_shared_build_exports_at_a_given_count(name, tmp_path):
    path = ROOT / "programs" / f"{name}.tp"
    params = {"d": 3, "steps": 4}
    prog = tcompile.compile_file(path, params=params, loops="shared")
    out = check_export(prog, params, tmp_path, n=8, steps=7)
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["tcompile.counts"]) == {"steps": 7}
    assert int(meta["tcompile.layers_run"]) == prog.module.n_layers(steps=7)
    # a stored layer is one initializer however often it runs
    n_weights = sum(1 for i in model.graph.initializer if ".W_" in i.name)
    assert n_weights <= 5 * len(prog.layers)


def test_a_kernel_whose_output_ends_transposed_at_one_residue_exports_at_both(tmp_path):
    """tiny (test_hostile_cases.TINY) runs a kernel of 2 that reads ahead: its w is a column
    at even counts and a row at odd ones (LoopItem.outputs). The export decodes it from the
    rows and orientation of the count's residue, as the run does."""
    prog = tcompile.compile_source(TINY, loops="shared")
    outputs = prog.loops.residue_loop().outputs
    assert {res[0][2] for res in outputs} == {False, True}
    for steps in (6, 7):
        check_export(prog, {}, tmp_path, steps=steps)


def test_float32_export_runs_in_float32(tmp_path):
    params = {"d": 3, "steps": 3}
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params=params)
    inputs = sample_inputs(prog.program, params, n=8, batch=2, seed=0)
    path = prog.export_onnx(tmp_path / "ls32.onnx", dtype="float32")
    got = run_onnx(path, prog.encode(dtype="float32", **inputs).numpy())
    assert got["output.w"].dtype == np.float32
    assert rel(got["output.w"], prog.run(**inputs)["w"]) <= 1e-5


def test_bad_counts_are_clear_errors(tmp_path):
    prog = tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp", params={"d": 2, "steps": 2})
    with pytest.raises(InputError, match="shared build"):
        prog.export_onnx(tmp_path / "a.onnx", steps=5)
    assert not (tmp_path / "a.onnx").exists()


def test_cli_export(tmp_path):
    params = {"d": 2, "steps": 3}
    prog = tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp", params=params,
                                 loops="shared")
    prog.save(tmp_path / "ni")
    r = run_in_process(["export", tmp_path / "ni", "--onnx", tmp_path / "ni.onnx", "-p", "steps=5"])
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    inputs = sample_inputs(prog.program, params, batch=2, seed=1)
    got = run_onnx(tmp_path / "ni.onnx", prog.encode(**inputs).numpy())
    assert rel(got["output.X"], prog.run(steps=5, **inputs)["X"]) <= RTOL
    bad = run_in_process(["export", tmp_path / "ni", "--onnx", tmp_path / "b.onnx", "-p", "steps=x"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    missing = run_in_process(["export", tmp_path / "ni"])
    assert missing.returncode == 2
