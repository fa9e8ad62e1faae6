"""Artifacts on disk (save -> load -> run round trips, and every way a file can be broken must
be an ArtifactError with a clear message, never another exception) and the command line end to
end in subprocesses: build, run, check, report, their exit codes and what they write.

Starting Python and importing torch takes seconds, so the subprocesses run at once from one
module-scoped fixture (those that need the built artifact start as soon as `build` is done);
the tests read their results. Extra error paths call `cli.main` in-process.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tcompile
from tcompile import ArtifactError
from tcompile.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
NEWTON_INVERSE = ROOT / "programs" / "newton_inverse.tp"
LEAST_SQUARES = ROOT / "programs" / "least_squares.tp"
CUDA = torch.cuda.is_available()


def rel(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


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
    assert manifest["weights_file"] == "ls.safetensors"
    assert manifest["weights_sha256"] == hashlib.sha256(base.with_name("ls.safetensors").read_bytes()).hexdigest()


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
    np.testing.assert_array_equal(out["w"], before["w"])


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


def write_manifest(base: Path, manifest) -> None:
    base.with_name(base.name + ".json").write_text(json.dumps(manifest))


def write_weights(base: Path, blob: bytes, manifest: dict | None = None) -> None:
    """Replace the weights; with `manifest`, also make its checksum match the new bytes."""
    base.with_name(base.name + ".safetensors").write_bytes(blob)
    if manifest is not None:
        write_manifest(base, dict(manifest, weights_sha256=hashlib.sha256(blob).hexdigest()))


def flip(blob: bytes, where: int) -> bytes:
    b = bytearray(blob)
    b[where] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("case", ["flip_data", "flip_header", "flip_last", "truncated", "empty",
                                  "appended"])
def test_corrupt_weights_are_artifact_errors(saved, case):
    base, _, blob = saved
    new = {"flip_data": lambda: flip(blob, len(blob) // 2), "flip_header": lambda: flip(blob, 12),
           "flip_last": lambda: flip(blob, len(blob) - 1), "truncated": lambda: blob[:len(blob) // 3],
           "empty": lambda: b"", "appended": lambda: blob + b"\0" * 8}[case]()
    write_weights(base, new)
    with pytest.raises(ArtifactError, match=r"ls\.safetensors.*checksum"):
        tcompile.load(base)


@pytest.mark.parametrize("case", ["truncated", "empty", "garbage", "flip_header"])
def test_unreadable_weights_with_matching_checksum_are_artifact_errors(saved, case):
    base, manifest, blob = saved
    new = {"truncated": blob[:len(blob) // 2], "empty": b"", "garbage": b"\xff" * 64,
           "flip_header": flip(blob, 10)}[case]
    write_weights(base, new, manifest)
    with pytest.raises(ArtifactError, match=r"ls\.safetensors.*cannot be read"):
        tcompile.load(base)


def test_weights_missing_a_tensor_are_an_artifact_error(saved):
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save
    base, manifest, blob = saved
    tensors = st_load(blob)
    del tensors["layers.1.attn.W_Q"]
    write_weights(base, st_save(tensors), manifest)
    with pytest.raises(ArtifactError, match=r"inconsistent.*layers\.1\.attn\.W_Q"):
        tcompile.load(base)


def test_weights_with_an_extra_tensor_are_an_artifact_error(saved):
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save
    base, manifest, blob = saved
    tensors = st_load(blob)
    tensors["layers.99.attn.W_K"] = np.zeros((1, 1, 1))
    write_weights(base, st_save(tensors), manifest)
    with pytest.raises(ArtifactError, match=r"inconsistent.*unexpected tensors"):
        tcompile.load(base)


def test_manifest_checksum_mismatch_is_an_artifact_error(saved):
    base, manifest, _ = saved
    write_manifest(base, dict(manifest, weights_sha256="0" * 64))
    with pytest.raises(ArtifactError, match="checksum"):
        tcompile.load(base)
    del manifest["weights_sha256"]
    write_manifest(base, manifest)
    with pytest.raises(ArtifactError, match="checksum"):
        tcompile.load(base)


def test_weights_of_another_build_are_an_artifact_error(saved, tmp_path):
    base, _, _ = saved
    other = tcompile.compile_file(LEAST_SQUARES, params={"steps": 5})
    other.save(tmp_path / "other" / "ls")
    shutil.copy(tmp_path / "other" / "ls.safetensors", base.with_name("ls.safetensors"))
    with pytest.raises(ArtifactError, match="checksum"):
        tcompile.load(base)


def _heads(m):
    m["layers"][0]["heads"] += 1


def _dk(m):
    m["layers"][1]["dk"] += 1


def _hidden(m):
    m["layers"][0]["mlp_hidden"] = 5


def _width(m):
    m["width"] += 1


def _n_layers(m):
    m["n_layers"] -= 1


def _drop_layer(m):
    m["layers"].pop()


def _layers_none(m):
    m["layers"] = None


def _layers_ints(m):
    m["layers"] = [1, 2]


def _no_width(m):
    del m["width"]


def _width_text(m):
    m["width"] = "wide"


@pytest.mark.parametrize("mutate, message", [
    (_heads, r"layers\.0\.attn\.W_K has shape"), (_dk, r"layers\.1\.attn\.W_K has shape"),
    (_hidden, r"layers\.0\.mlp\.W_1 has shape"), (_width, "has shape"),
    (_n_layers, "layers of weights, the manifest says"), (_drop_layer, "unexpected tensors"),
    (_layers_none, "inconsistent"), (_layers_ints, "inconsistent"), (_no_width, "inconsistent"),
    (_width_text, "inconsistent"),
])
def test_manifest_layer_shapes_must_match_the_weights(saved, mutate, message):
    base, manifest, _ = saved
    mutate(manifest)
    write_manifest(base, manifest)
    with pytest.raises(ArtifactError, match=message):
        tcompile.load(base)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"), ("", "not valid JSON"), ('{"a": 1', "not valid JSON"),
    ("[1, 2, 3]", "not a tcompile artifact manifest"), ('"hello"', "not a tcompile artifact"),
    ('{"format": "other"}', "not a tcompile artifact manifest"),
])
def test_manifest_that_is_not_an_artifact_manifest(saved, text, message):
    base, _, _ = saved
    base.with_name("ls.json").write_text(text)
    with pytest.raises(ArtifactError, match=message):
        tcompile.load(base)


def test_manifest_that_is_not_utf8(saved):
    base, _, _ = saved
    base.with_name("ls.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(ArtifactError, match="ls.json"):
        tcompile.load(base)


def test_manifest_of_a_newer_format_version(saved):
    base, manifest, _ = saved
    write_manifest(base, dict(manifest, format_version=2))
    with pytest.raises(ArtifactError, match="format version 2"):
        tcompile.load(base)


def test_missing_files_are_artifact_errors(saved, tmp_path):
    base, _, _ = saved
    with pytest.raises(ArtifactError, match=r"no artifact manifest at .*nothing\.json"):
        tcompile.load(tmp_path / "nothing")
    base.with_name("ls.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"cannot read weights .*ls\.safetensors"):
        tcompile.load(base)
    base.with_name("ls.json").unlink()
    with pytest.raises(ArtifactError, match="no artifact manifest"):
        tcompile.load(str(base) + ".safetensors")


def test_a_directory_is_not_an_artifact(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ArtifactError):
        tcompile.load(tmp_path / "d")


def _no_blocks(m):
    del m["blocks"]


def _block_rows_out_of_range(m):
    m["blocks"][0]["rows"] = [m["width"] + 5]


def _unknown_output_block(m):
    m["outputs"][0]["block"] = "nope"


def _edited_source(m):
    m["source"] = m["source"].replace("input a_test : [d]", "input a_test : [d, d]")


def _min_tokens_none(m):
    m["min_tokens"] = None


@pytest.mark.parametrize("mutate", [_no_blocks, _block_rows_out_of_range, _unknown_output_block,
                                    _edited_source, _min_tokens_none])
def test_inconsistent_manifest_layout_is_an_artifact_error(saved, mutate):
    base, manifest, _ = saved
    mutate(manifest)
    write_manifest(base, manifest)
    inputs = ls_inputs(seed=3)
    with pytest.raises(ArtifactError):       # at load, or at the latest when it is used
        tcompile.load(base).run(**inputs)


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
    first = {
        "build": _spawn(["build", LEAST_SQUARES, "-o", paths["build"], "-p", "steps=5"]),
        # a different hash seed: the artifact must not depend on set/dict iteration order
        "build_again": _spawn(["build", LEAST_SQUARES, "-o", paths["build_again"], "-p", "steps=5"],
                              env={"PYTHONHASHSEED": "12345"}),
        "check": _spawn(["check", NEWTON_INVERSE]),
        "check_impossible": _spawn(["check", NEWTON_INVERSE, "--rtol", "1e-30"]),
        "build_undefined": _spawn(["build", paths["bad_src"], "-o", paths["undefined"]]),
        "usage": _spawn(["frobnicate"]),
    }
    results = _collect({"build": first.pop("build")})   # the others go on meanwhile
    artifact = paths["build"] / "least_squares"
    second = {
        "run": _spawn(["run", artifact, "--inputs", paths["inputs"], "-o", paths["out"]]),
        "report": _spawn(["report", artifact]),
        "run_missing": _spawn(["run", artifact, "--inputs", paths["missing"]]),
    }
    if not CUDA:
        second["run_cuda"] = _spawn(["run", artifact, "--inputs", paths["inputs"], "--device", "cuda"])
    results.update(_collect({**first, **second}))
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
    write_weights(base, flip(blob, len(blob) // 2))
    assert main(["run", str(base), "--inputs", str(tmp_path / "X.npz")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "checksum" in err
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "no artifact manifest" in capsys.readouterr().err


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
