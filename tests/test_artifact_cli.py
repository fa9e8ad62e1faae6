"""Artifacts on disk (save -> load -> run round trips, and every way a file can be broken must
be an ArtifactError with a clear message, never another exception) and the command line end to
end: build, run, check, report, their exit codes and what they write.

`build` runs as a real `python -m tcompile` process, twice (the second under another hash seed:
the artifact must not depend on set/dict iteration order, which only a new process changes).
Starting Python and importing torch costs seconds per process, so the commands whose
process-ness is not the point (run, report, check, the error exits) call `cli.main`
in-process (tests/cli_in_process.py, the code `python -m tcompile` runs) while the builds go
on; test_cli_errors keeps a usage error's real-process exit. One module-scoped fixture runs
them all; the tests read their results.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tcompile
from arrays import rel
from cli_in_process import run_in_process
from tcompile import ArtifactError
from tcompile.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
NEWTON_INVERSE = ROOT / "programs" / "newton_inverse.tp"
LEAST_SQUARES = ROOT / "programs" / "least_squares.tp"
CUDA = torch.cuda.is_available()


def ls_inputs(seed=0, n=10, d=4, batch=3):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((batch, n, d))
    A = A / np.linalg.norm(A, axis=2, keepdims=True) * rng.uniform(0.3, 1.0, (batch, n, 1))
    return dict(A=A, y=rng.standard_normal((batch, n)), a_test=rng.standard_normal((batch, d)))


# ---- artifacts in-process ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ls_prog():
    return tcompile.compile_file(LEAST_SQUARES, params={"steps": 4})


@pytest.fixture()
def saved(ls_prog, tmp_path):
    """A fresh artifact: (base path, manifest dict, weights bytes)."""
    base = tmp_path / "art" / "ls"
    paths = ls_prog.save(base)
    assert paths == [base.with_name("ls.safetensors"), base.with_name("ls.json")]
    return base, json.loads(base.with_name("ls.json").read_text()), base.with_name("ls.safetensors").read_bytes()


def test_save_writes_exactly_two_files(saved):
    base, manifest, _ = saved
    assert sorted(p.name for p in base.parent.iterdir()) == ["ls.json", "ls.safetensors"]
    assert manifest["artifact_file"] == "ls.safetensors"        # the JSON is a readable copy
    assert manifest["artifact_sha256"] == hashlib.sha256(base.with_name("ls.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", ["", ".json", ".safetensors"])
def test_save_load_run_round_trip(ls_prog, saved, suffix):
    base, _, _ = saved
    loaded = tcompile.load(str(base) + suffix)
    inputs = ls_inputs(seed=1)
    before, after = ls_prog.run(**inputs), loaded.run(**inputs)
    assert set(before) == set(after) == {"w", "y_hat"}
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    assert loaded.report == ls_prog.report
    assert loaded.n_layers == ls_prog.n_layers and loaded.width == ls_prog.width
    assert loaded.name == "least_squares"
    for key, value in ls_prog.manifest.items():
        assert loaded.manifest[key] == value, key
    for la, lb in zip(loaded.layers, ls_prog.layers):
        for w in ("W_K", "W_Q", "W_V", "W_1", "W_2"):
            np.testing.assert_array_equal(getattr(la, w), getattr(lb, w))
    # the loaded model runs the same in float32 and through encode/decode
    f32 = loaded.run(dtype="float32", **inputs)
    assert rel(f32["w"], before["w"]) <= 1e-3
    with torch.no_grad():
        out = loaded.decode(loaded.module(loaded.encode(**inputs)))
    np.testing.assert_array_equal(out["w"], loaded.run(executor="module", **inputs)["w"])


def test_save_accepts_a_suffixed_path(ls_prog, tmp_path):
    paths = ls_prog.save(tmp_path / "m.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    assert [p.name for p in paths] == ["m.safetensors", "m.json"]
    assert tcompile.load(tmp_path / "m").n_layers == ls_prog.n_layers


def test_loaded_artifact_matches_interpreter(saved):
    base, _, _ = saved
    loaded = tcompile.load(base)
    inputs = ls_inputs(seed=2)
    got = loaded.run(**inputs)
    want = tcompile.interpret(LEAST_SQUARES, params={"steps": 4}, **inputs)
    for name in want:
        assert rel(got[name], want[name]) <= 1e-12


def write_weights(base: Path, blob: bytes) -> None:
    """Replace the artifact file's bytes."""
    base.with_name(base.name + ".safetensors").write_bytes(blob)


def flip(blob: bytes, where: int) -> bytes:
    b = bytearray(blob)
    b[where] ^= 0xFF
    return bytes(b)


def test_missing_files_are_artifact_errors(saved, tmp_path):
    base, _, _ = saved
    with pytest.raises(ArtifactError, match=r"no artifact at .*nothing\.safetensors"):
        tcompile.load(tmp_path / "nothing")
    base.with_name("ls.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"no artifact at .*ls\.safetensors.*only .*ls\.json"):
        tcompile.load(base)
    base.with_name("ls.json").unlink()
    with pytest.raises(ArtifactError, match="no artifact at"):
        tcompile.load(str(base) + ".safetensors")


def test_a_directory_is_not_an_artifact(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ArtifactError):
        tcompile.load(tmp_path / "d")


# ---- the command line, end to end ----------------------------------------------------------

def _spawn(args, env=None):
    env = dict(os.environ, **(env or {}))
    env.setdefault("OMP_NUM_THREADS", "1")       # several processes share the cores
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "tcompile", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(procs):
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return out


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """name -> CompletedProcess for every CLI run, plus the paths they used under 'paths'."""
    tmp = tmp_path_factory.mktemp("cli")
    paths = {"build": tmp / "build", "build_again": tmp / "build_again", "undefined": tmp / "undef_out",
             "inputs": tmp / "X.npz", "missing": tmp / "missing.npz", "out": tmp / "res" / "OUT.npz",
             "bad_src": tmp / "undefined.tp"}
    paths["bad_src"].write_text("program bad\ninput A : [n, 2]\noutput x\nx = A + B\n")
    inputs = ls_inputs(seed=4, n=12)
    np.savez(paths["inputs"], **inputs)
    np.savez(paths["missing"], A=inputs["A"], y=inputs["y"])
    builds = {
        "build": _spawn(["build", LEAST_SQUARES, "-o", paths["build"], "-p", "steps=5"]),
        "build_again": _spawn(["build", LEAST_SQUARES, "-o", paths["build_again"], "-p", "steps=5"],
                              env={"PYTHONHASHSEED": "12345"}),
    }
    results = {   # in this process while the builds go on
        "check": run_in_process(["check", NEWTON_INVERSE]),
        "check_impossible": run_in_process(["check", NEWTON_INVERSE, "--rtol", "1e-30"]),
        "build_undefined": run_in_process(["build", paths["bad_src"], "-o", paths["undefined"]]),
        "usage": run_in_process(["frobnicate"]),
    }
    results.update(_collect(builds))
    artifact = paths["build"] / "least_squares"
    results["run"] = run_in_process(["run", artifact, "--inputs", paths["inputs"], "-o", paths["out"]])
    results["report"] = run_in_process(["report", artifact])
    results["run_missing"] = run_in_process(["run", artifact, "--inputs", paths["missing"]])
    if not CUDA:
        results["run_cuda"] = run_in_process(["run", artifact, "--inputs", paths["inputs"],
                                              "--device", "cuda"])
    results["paths"] = paths
    results["inputs"] = inputs
    return results


def no_traceback(r):
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


def test_cli_build(cli):
    r = cli["build"]
    assert r.returncode == 0, r.stderr
    out = cli["paths"]["build"]
    assert sorted(p.name for p in out.iterdir()) == ["least_squares.json", "least_squares.safetensors"]
    prog = tcompile.load(out / "least_squares")
    assert prog.n_layers == 7 and prog.manifest["params"]["steps"] == 5
    # the report: layers and width, as numbers
    assert "least_squares" in r.stdout
    assert f"layers {prog.n_layers}" in " ".join(r.stdout.split())
    assert "width" in r.stdout and str(prog.width) in r.stdout
    assert "least_squares.safetensors" in r.stdout and "least_squares.json" in r.stdout
    no_traceback(r)


def test_cli_build_is_deterministic_across_processes(cli):
    assert cli["build_again"].returncode == 0, cli["build_again"].stderr
    for suffix in (".safetensors", ".json"):
        a = (cli["paths"]["build"] / f"least_squares{suffix}").read_bytes()
        b = (cli["paths"]["build_again"] / f"least_squares{suffix}").read_bytes()
        assert a == b, suffix


def test_cli_build_matches_in_process_compile(cli):
    built = tcompile.load(cli["paths"]["build"] / "least_squares")
    fresh = tcompile.compile_file(LEAST_SQUARES, params={"steps": 5})
    assert built.report == fresh.report
    for key, value in fresh.manifest.items():
        if key != "file":
            assert built.manifest[key] == value, key


def test_cli_run(cli):
    r = cli["run"]
    assert r.returncode == 0, r.stderr
    assert "w = " in r.stdout and "y_hat = " in r.stdout
    with np.load(cli["paths"]["out"]) as data:
        got = {k: data[k] for k in data.files}
    assert set(got) == {"w", "y_hat"}
    want = tcompile.interpret(LEAST_SQUARES, params={"steps": 5}, **cli["inputs"])
    for name in want:
        assert got[name].shape == want[name].shape
        assert rel(got[name], want[name]) <= 1e-12
    assert sorted(p.name for p in cli["paths"]["out"].parent.iterdir()) == ["OUT.npz"]


def test_cli_check_passes(cli):
    r = cli["check"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "newton_inverse" in r.stdout and "yes" in r.stdout


def test_cli_check_points_to_the_card_of_the_build_it_checked(cli):
    """The summary's last line gives the build command of what was checked: its -p overrides,
    --tol and --loops (a shared check pointed to the unrolled build's card)."""
    assert cli["check"].stdout.rstrip().splitlines()[-1] == (
        f"the full card: tcompile build {NEWTON_INVERSE}, then tcompile report build/newton_inverse")
    r = run_in_process(["check", NEWTON_INVERSE, "-p", "steps=6", "--tol", "1e-7", "--loops",
                        "shared"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().splitlines()[-1] == (
        f"the full card: tcompile build {NEWTON_INVERSE} -p steps=6 --tol 1e-07 --loops shared, "
        "then tcompile report build/newton_inverse")


def test_cli_check_impossible_tolerance_exits_3(cli):
    r = cli["check_impossible"]
    assert r.returncode == 3, r.stdout + r.stderr
    assert "NO" in r.stdout
    no_traceback(r)


def test_cli_report(cli):
    r = cli["report"]
    assert r.returncode == 0, r.stderr
    assert "least_squares" in r.stdout and "layers 7" in " ".join(r.stdout.split())
    assert r.stdout in cli["build"].stdout                 # build printed the same model card


def test_cli_build_undefined_name_exits_1_and_writes_nothing(cli):
    r = cli["build_undefined"]
    assert r.returncode == 1
    assert "undefined name 'B'" in r.stderr
    assert "undefined.tp:4:" in r.stderr
    out = cli["paths"]["undefined"]
    assert not out.exists() or not any(out.iterdir())
    no_traceback(r)


def test_cli_run_missing_input_exits_1_naming_it(cli):
    r = cli["run_missing"]
    assert r.returncode == 1
    assert "a_test" in r.stderr and "missing" in r.stderr
    assert r.stdout == ""
    no_traceback(r)


def test_cli_bad_usage_exits_2(cli):
    r = cli["usage"]
    assert r.returncode == 2
    assert "usage:" in r.stderr and "frobnicate" in r.stderr


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cli_run_on_cuda_without_cuda_exits_1(cli):
    r = cli["run_cuda"]
    assert r.returncode == 1
    assert "cuda" in r.stderr.lower() and "no CUDA device" in r.stderr
    assert r.stdout == ""
    no_traceback(r)


# cheaper error paths, in-process

@pytest.mark.parametrize("argv", [
    [], ["build"], ["run", "x"], ["run", "x", "--inputs", "i.npz", "--dtype", "float16"],
    ["run", "x", "--inputs", "i.npz", "--device", "tpu"], ["check", str(NEWTON_INVERSE), "--rtol", "abc"],
])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_bad_param_syntax_exits_2(tmp_path, capsys):
    assert main(["build", str(LEAST_SQUARES), "-o", str(tmp_path / "o"), "-p", "steps"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_run_on_corrupt_artifact_exits_1(saved, tmp_path, capsys):
    base, _, blob = saved
    np.savez(tmp_path / "X.npz", **ls_inputs(seed=5))
    write_weights(base, flip(blob, len(blob) - 1))          # a weight value: the checksum fails
    assert main(["run", str(base), "--inputs", str(tmp_path / "X.npz")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "checksum" in err
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "no artifact at" in capsys.readouterr().err


def test_cli_run_with_bad_inputs_file_exits_1(saved, tmp_path, capsys):
    base, _, _ = saved
    assert main(["run", str(base), "--inputs", str(tmp_path / "none.npz")]) == 1
    assert "none.npz" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    assert main(["run", str(base), "--inputs", str(tmp_path / "bad.npz")]) == 1
    assert "bad.npz" in capsys.readouterr().err
    np.savez(tmp_path / "shape.npz", **dict(ls_inputs(seed=6), a_test=np.zeros((3, 7))))
    assert main(["run", str(base), "--inputs", str(tmp_path / "shape.npz")]) == 1
    assert "'a_test'" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()
