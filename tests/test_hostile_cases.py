"""The hostile cases of issue 16 §6: each is refused cleanly — exit 1 (2 for a usage error),
no traceback, nothing overwritten — and quickly, without reading or allocating without bound.

Everything runs in-process on one tiny program (built unrolled and shared once per module);
a case that used to hang (a FIFO, /dev/zero) runs under an alarm, so a regression fails the
test in seconds instead of stopping the suite. Refusals that depend on the machine's memory
(a batch of 3,000,000 problems) lower the memory the runtime believes it has, so they hold on
any machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save as st_save

import tcompile
from cli_in_process import run_in_process
from tcompile import ArtifactError, InputError
from tcompile.errors import NonFiniteOutputWarning
from tcompile.runtime import resources
from tcompile.runtime.artifact import content_sha256

ROOT = Path(__file__).resolve().parents[1]
TINY = """program tiny
dim d = 2
param steps = 4
input A : [n, d] assume row_norm <= 1
input y : [n]
output w
S = A.T @ A / n
b = A.T @ y / n
w = b
repeat steps {
  w = w - S @ w + b
}
"""
SECONDS = 20          # every case here answers in well under a second; a hang fails at this


@contextlib.contextmanager
def deadline(seconds: int = SECONDS):
    """Fail (instead of hanging the suite) if the block takes longer than `seconds`."""
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s: the read or run is not bounded")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory with tiny.tp, its unrolled (`tiny`) and shared (`tiny_shared`) builds, and
    inputs in.npz (6 problems' worth of tokens, one problem)."""
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "tiny.tp").write_text(TINY)
    tcompile.compile_file(tmp / "tiny.tp").save(tmp / "tiny")
    tcompile.compile_file(tmp / "tiny.tp", loops="shared").save(tmp / "tiny_shared")
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 2))
    np.savez(tmp / "in.npz", A=A / (1.01 * np.linalg.norm(A, axis=1, keepdims=True)),
             y=rng.normal(size=6))
    return tmp


def cli(*argv):
    """Run the CLI in-process under the deadline; the result, checked to hold no traceback."""
    with deadline():
        r = run_in_process(argv)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


def listing(directory: Path) -> dict[str, bytes]:
    """Every regular file under `directory` with its bytes (to prove nothing changed)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


def loaded(work, name="tiny"):
    return tcompile.load(work / name)


def inputs(work, batch=None):
    with np.load(work / "in.npz") as f:
        data = {k: f[k] for k in f.files}
    if batch is not None:
        data = {k: np.broadcast_to(v, (batch, *v.shape)) for k, v in data.items()}
    return data


# ---- bad values that used to escape as tracebacks ------------------------------------------

def test_an_object_array_holding_10_to_the_400_is_an_input_error(work):
    A = inputs(work)["A"].astype(object)
    A[0, 0] = 10 ** 400
    with pytest.raises(InputError, match=r"input 'A' has an entry too large for float64 "
                                         r"\(about 1e400\)"):
        loaded(work).run(A=A, y=inputs(work)["y"])


@pytest.mark.parametrize("device", ["meta", "fpga", 3])
def test_devices_that_hold_no_numbers_are_refused(work, device):
    with pytest.raises(InputError, match="device must be 'cpu', 'cuda' or 'cuda:K'"):
        loaded(work).run(device=device, **inputs(work))


def test_a_dim_of_1e308_is_refused_before_planning(work, tmp_path):
    t = time.perf_counter()
    r = cli("build", work / "tiny.tp", "-p", "d=1e308", "-o", tmp_path / "out")
    assert r.returncode == 1 and "refusing to build" in r.stderr
    assert "width D = ≥ about 1e308" in r.stderr and "about 1e617 B" in r.stderr
    assert not (tmp_path / "out").exists() and time.perf_counter() - t < 10


def test_a_manifest_resealed_with_width_1e400_is_an_artifact_error(work, tmp_path):
    path = tmp_path / "wide.safetensors"
    with safe_open(work / "tiny.safetensors", "np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["manifest"])
    text = meta["manifest"].replace(f'"width":{doc["width"]},', '"width":1e400,')
    assert text != meta["manifest"]
    path.write_bytes(st_save(tensors, metadata=dict(meta, manifest=text,
                                                    sha256=content_sha256(text, tensors))))
    with deadline(), pytest.raises(ArtifactError, match="width must be a whole number, got inf"):
        tcompile.load(path)


def test_a_header_nested_100000_deep_is_an_artifact_error(tmp_path):
    header = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp_path / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with deadline(), pytest.raises(ArtifactError, match="not a safetensors file"):
        tcompile.load(tmp_path / "deep")
    r = cli("report", tmp_path / "deep")
    assert r.returncode == 1 and "not a safetensors file" in r.stderr


# ---- files that are not files: refused before one byte is read -----------------------------

@pytest.fixture()
def specials(tmp_path):
    """A FIFO and a symlink to /dev/zero under each name a command reads."""
    for name in ("art.safetensors", "prog.tp", "in.npz"):
        os.mkfifo(tmp_path / f"fifo_{name}")
        os.symlink("/dev/zero", tmp_path / f"zero_{name}")
    return tmp_path


@pytest.mark.parametrize("kind, words", [("fifo", "it is a FIFO, not a regular file"),
                                         ("zero", "it is a device, not a regular file")])
def test_fifos_and_dev_zero_are_refused_not_read(work, specials, kind, words):
    t = specials
    for argv in (["report", t / f"{kind}_art"], ["run", t / f"{kind}_art", "--inputs", work / "in.npz"],
                 ["build", t / f"{kind}_prog.tp", "-o", t / "out"],
                 ["check", t / f"{kind}_prog.tp"],
                 ["run", work / "tiny", "--inputs", t / f"{kind}_in.npz"]):
        r = cli(*argv)
        assert r.returncode == 1 and words in r.stderr, (argv, r.stderr)
    assert not (t / "out").exists()


def test_build_dev_zero_reads_nothing(tmp_path):
    r = cli("build", "/dev/zero", "-o", tmp_path / "out")
    assert r.returncode == 1 and "'/dev/zero': it is a device, not a regular file" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_program_larger_than_the_limit_is_refused_unread(tmp_path, monkeypatch):
    from tcompile.language import parser
    monkeypatch.setattr(parser, "MAX_PROGRAM_BYTES", 1000)
    (tmp_path / "big.tp").write_text("# " + "x" * 2000 + "\n" + TINY)
    r = cli("build", tmp_path / "big.tp", "-o", tmp_path / "out")
    assert r.returncode == 1 and "more than the 1,000 this reader accepts" in r.stderr


# ---- runs whose cost is estimated and refused before they start ----------------------------

def test_a_shared_build_refuses_10_to_the_12_steps(work):
    r = cli("run", work / "tiny_shared", "--inputs", work / "in.npz", "-p", "steps=1000000000000")
    assert r.returncode == 1 and "refusing to run: steps = 1,000,000,000,000" in r.stderr
    assert "layer applications, at least" in r.stderr and "ask for fewer iterations" in r.stderr
    with deadline(), pytest.raises(InputError, match="refusing to run: steps = 1,000,000,000,000"):
        loaded(work, "tiny_shared").run(steps=1e12, **inputs(work))


def test_a_huge_step_count_is_refused_by_memory_even_within_a_day(work):
    """10**9 steps would take hours, not certainly a day; the structured executor expands
    them into one plan first, which is what is refused (run_budget.PLAN_BYTES_PER_LAYER)."""
    with deadline(), pytest.raises(InputError, match="refusing to run: .* need about"):
        loaded(work, "tiny_shared").run(steps=10 ** 12 // 1000, **inputs(work))


def test_until_with_a_max_steps_of_10_to_the_18_is_refused(work):
    r = cli("run", work / "tiny_shared", "--inputs", work / "in.npz", "--until", "w=1e-300",
            "--max-steps", "1000000000000000000")
    assert r.returncode == 1 and "refusing to run" in r.stderr and "years" in r.stderr


@pytest.mark.parametrize("value", [str(2 ** 63), "100000000000000000000000"])
def test_max_steps_beyond_int64_is_a_usage_error(work, value):
    r = cli("run", work / "tiny_shared", "--inputs", work / "in.npz", "--until", "w=1e-3",
            "--max-steps", value)
    assert r.returncode == 2 and "--max-steps: expected at most 9,223,372,036,854,775,807" in r.stderr
    with pytest.raises(InputError, match="max_steps must be between 1 and"):
        loaded(work, "tiny_shared").run(until=("w", 1e-3), max_steps=int(value), **inputs(work))


def test_check_refuses_a_batch_of_10_to_the_8_before_drawing_it(work):
    t = time.perf_counter()
    r = cli("check", work / "tiny.tp", "--batch", "100000000")
    assert r.returncode == 1 and "refusing to run: 100,000,000 problems" in r.stderr
    assert "of memory" in r.stderr and time.perf_counter() - t < 10


def test_a_run_time_batch_of_3_million_is_refused_by_its_memory_estimate(work, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 512 * 2 ** 20)
    with deadline(), pytest.raises(InputError, match=r"refusing to run: 3,000,000 problems of "
                                                     r"n = 6 tokens .* over the limit of 256\.0 MiB"):
        loaded(work).run(**inputs(work, batch=3_000_000))


def test_a_small_run_does_not_read_the_memory_available(work, monkeypatch):
    """Below run_budget.ALWAYS_FITS a run is not checked against the memory available (the
    probe reads /proc and cgroup files: a tenth of a 1 ms run); above it, it is."""
    from tcompile.runtime import run_budget
    calls = []
    monkeypatch.setattr(resources, "available_memory", lambda: calls.append(1) or 2 ** 40)
    prog = loaded(work)
    prog.run(**inputs(work, batch=4))
    assert calls == [] and prog.check_run_cost(4, 6).bytes <= run_budget.ALWAYS_FITS
    big = int(run_budget.ALWAYS_FITS / prog.check_run_cost(1, 6).bytes) + 1
    assert prog.check_run_cost(big, 6).bytes > run_budget.ALWAYS_FITS and calls == [1]


def test_the_run_estimate_counts_what_a_run_holds(work):
    """The estimate grows with batch, n, dtype and step count as the sizes say (tiny's loop
    runs two steps per layer, as its unrolled build does: a kernel of 2 that reads ahead)."""
    prog = loaded(work, "tiny_shared")
    a = prog.check_run_cost(10, 6)
    assert prog.check_run_cost(20, 6).bytes > 1.99 * a.bytes - 1e6
    assert prog.check_run_cost(10, 6, "float32").bytes < a.bytes
    assert prog.check_run_cost(10, 6, steps=40).layer_runs == a.layer_runs + 36 // 2
    assert prog.check_run_cost(10, 6, until=("w", 1e-9), max_steps=100).layer_runs == \
        a.layer_runs + 96 // 2


def test_a_halting_run_is_estimated_at_the_limit_it_runs_to(work):
    """check_run_cost takes a halting run's step limit from halting.step_limit, the rule the
    run itself follows: a run that never halts runs (and reports) exactly that many steps."""
    from tcompile.errors import NotConvergedWarning
    prog = loaded(work, "tiny_shared")
    with pytest.warns(NotConvergedWarning, match="did not converge"):
        out = prog.run(until=("w", 0.0), max_steps=9, **inputs(work))
    assert int(out["steps"]) == 9 and not out["converged"]          # one problem, unbatched
    assert prog.check_run_cost(1, 6, until=("w", 0.0), max_steps=9).layer_runs == \
        prog.loops.n_layers(prog.loops.counts({"steps": 9}))
    with pytest.raises(InputError, match="max_steps must be between 1 and"):
        prog.check_run_cost(1, 6, until=("w", 0.0), max_steps=0)


def test_counts_and_halting_are_refused_where_the_build_fixed_them(work):
    """An unrolled build's counts are built in: a count or `until` given to run is refused
    with what the build has; a shared build refuses a param that is no run-time count, and
    names those it takes (dispatch.split_counts, the one place run's arguments are split)."""
    with pytest.raises(InputError, match=r"param 'steps': counts and halting are set at run "
                                         r"time only in a shared build .* unrolled with d = 2, steps = 4"):
        loaded(work).run(steps=3, **inputs(work))
    with pytest.raises(InputError, match=r"^until/max_steps: counts and halting"):
        loaded(work).run(until=("w", 1e-9), **inputs(work))
    with pytest.raises(InputError, match=r"d \(run-time params: steps;"):
        loaded(work, "tiny_shared").run(d=3, **inputs(work))
    shared = loaded(work, "tiny_shared").run(steps=5, **inputs(work))
    np.testing.assert_allclose(shared["w"], tcompile.interpret(work / "tiny.tp", {"steps": 5},
                                                               **inputs(work))["w"], rtol=1e-12)


# ---- outputs: never through a link, never onto a device, never the inputs ------------------

def test_trace_o_replaces_a_symlink_instead_of_writing_through_it(work, tmp_path):
    (tmp_path / "target.csv").write_text("precious\n")
    os.symlink(tmp_path / "target.csv", tmp_path / "link.csv")
    r = cli("trace", work / "tiny", "--inputs", work / "in.npz", "-o", tmp_path / "link.csv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "target.csv").read_text() == "precious\n"
    assert not (tmp_path / "link.csv").is_symlink() and "layer" in (tmp_path / "link.csv").read_text()


@pytest.mark.parametrize("command", ["trace", "run"])
def test_o_refuses_its_own_inputs_file(work, tmp_path, command):
    (tmp_path / "in.npz").write_bytes((work / "in.npz").read_bytes())
    os.symlink(tmp_path / "in.npz", tmp_path / "alias.npz")
    before = listing(tmp_path)
    for target in ("in.npz", "alias.npz"):
        r = cli(command, work / "tiny", "--inputs", tmp_path / "in.npz", "-o", tmp_path / target)
        assert r.returncode == 2 and "is the --inputs file" in r.stderr
    assert listing(tmp_path) == before


def test_trace_o_is_atomic_a_failed_write_keeps_the_old_file(work, tmp_path, monkeypatch):
    from tcompile.runtime import files
    (tmp_path / "t.json").write_text("old\n")

    def full_disk(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(files.os, "fsync", full_disk)
    r = cli("trace", work / "tiny", "--inputs", work / "in.npz", "-o", tmp_path / "t.json")
    assert r.returncode == 1 and "cannot write" in r.stderr and "No space left" in r.stderr
    assert (tmp_path / "t.json").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.parametrize("command", ["run", "trace"])
def test_o_onto_a_device_or_fifo_is_refused_and_leaves_it(work, tmp_path, command):
    os.mkfifo(tmp_path / "pipe")
    for target in ("/dev/null", tmp_path / "pipe"):
        mode = os.stat(target).st_mode
        r = cli(command, work / "tiny", "--inputs", work / "in.npz", "-o", target)
        assert r.returncode == 2 and "tcompile replaces only regular files" in r.stderr
        assert os.stat(target).st_mode == mode                  # still the device / the FIFO
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_atomic_writes_refuse_non_regular_targets(tmp_path):
    from tcompile.runtime.files import NotRegularFileError, atomic_write_bytes, atomic_write_many
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotRegularFileError):
        atomic_write_bytes(tmp_path / "pipe", b"x")
    with pytest.raises(NotRegularFileError):
        atomic_write_many([(tmp_path / "a", b"x"), (tmp_path / "pipe", b"y")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


# ---- usage errors exit 2 -------------------------------------------------------------------

@pytest.mark.parametrize("argv_tail, words", [
    (["--seed", "-1"], "--seed: expected a whole number >= 0, got -1"),
    (["--n", "1"], "--n 1: tiny needs at least 2 tokens"),
    (["--tol", "0"], "--tol: expected a number in (0, 1)"),
])
def test_check_usage_errors_exit_2(work, argv_tail, words):
    r = cli("check", work / "tiny.tp", *argv_tail)
    assert r.returncode == 2 and words in r.stderr, r.stderr


@pytest.mark.parametrize("tol", ["-1", "nan", "0", "1", "inf", "abc"])
def test_build_tol_out_of_range_is_a_usage_error(work, tmp_path, tol):
    r = cli("build", work / "tiny.tp", "--tol", tol, "-o", tmp_path / "out")
    assert r.returncode == 2 and "--tol: expected a number in (0, 1)" in r.stderr
    assert not (tmp_path / "out").exists()


# ---- results that are not numbers are said to be so ----------------------------------------

@pytest.fixture(scope="module")
def least_squares(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ls")
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params={"steps": 2, "d": 2})
    prog.save(tmp / "ls")
    data = dict(A=np.ones((4, 2)) / np.sqrt(2), y=np.full(4, 1e308), a_test=np.ones(2))
    np.savez(tmp / "huge.npz", **data)
    return prog, tmp, data


def test_a_least_squares_run_with_y_1e308_names_its_non_finite_outputs(least_squares):
    prog, tmp, data = least_squares
    with pytest.warns(NonFiniteOutputWarning, match=r"outputs 'w' \(2 of 2 entries\), 'y_hat' "
                                                    r"\(1 of 1 entries\) not finite"):
        out = prog.run(**data)
    assert np.isnan(out["w"]).all()                  # returned as computed, but not silently
    (tmp / "res.npz").write_bytes(b"old")
    r = cli("run", tmp / "ls", "--inputs", tmp / "huge.npz", "-o", tmp / "res.npz")
    assert r.returncode == 1 and "error: outputs 'w' (2 of 2 entries)" in r.stderr
    assert (tmp / "res.npz").read_bytes() == b"old"


def test_finite_runs_give_no_warning(least_squares):
    prog, _, data = least_squares
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteOutputWarning)
        prog.run(**dict(data, y=np.ones(4)))
