"""No resource blow-ups (issue 12 §3): a build's size is estimated before any dense array
exists and refused over a limit with the estimate and the params that set it; huge dims are
refused before planning; long builds say what they are doing on stderr, short ones nothing.
The oracles: the emitted arrays' sizes (the exact estimate must equal them), the planned sizes
(the early lower bounds must not exceed them), and a planner that fails if it is reached.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

import tcompile
import tcompile.compiler.backend as backend
from tcompile import ParamError
from tcompile.cli.main import main
from tcompile.compiler import budget
from tcompile.compiler.budget import ModelTooLarge
from tcompile.compiler.progress import Progress
from tcompile.runtime import resources
from tcompile.runtime.resources import format_bytes, parse_size

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {p.stem: p for p in (ROOT / "programs").glob("*.tp")}
SHIPPED = [("newton_inverse", {}), ("newton_inverse", {"d": 9, "steps": 3}),
           ("least_squares", {"steps": 3}), ("least_squares", {"d": 7, "steps": 2}),
           ("newton_logistic", {"d": 3, "steps": 1, "inv_steps": 2})]
WEIGHTS = ("W_K", "W_Q", "W_V", "W_1", "W_2")


@pytest.fixture()
def estimates(monkeypatch):
    """Record what the two checks return during a compile."""
    seen = {}
    for name in ("check_early", "check_plan"):
        def spy(*a, _f=getattr(budget, name), _n=name, **k):
            seen[_n] = _f(*a, **k)
            return seen[_n]
        monkeypatch.setattr(backend, name, spy)
    return seen


@pytest.mark.parametrize("name, params", SHIPPED)
def test_estimates_match_the_emitted_weights(estimates, name, params):
    prog = tcompile.compile_file(PROGRAMS[name], params=params)
    exact, early = estimates["check_plan"], estimates["check_early"]
    sizes = sum(getattr(w, n).size for w in prog.layers for n in WEIGHTS)
    assert exact.exact and exact.params == sizes and exact.bytes == 8 * sizes
    assert (exact.width, exact.layers) == (prog.width, prog.n_layers)
    assert exact.heads == sum(w.heads for w in prog.layers)
    assert not early.exact
    assert early.width <= exact.width and early.layers <= exact.layers
    assert early.heads <= exact.heads and 0 < early.params <= exact.params


@pytest.mark.parametrize("name", ["newton_inverse", "least_squares", "newton_logistic"])
@pytest.mark.parametrize("d", ["1e9", "20000"])
def test_huge_dims_are_refused_before_planning(monkeypatch, name, d):
    def no_planning(*a, **k):
        raise AssertionError("planned a model the early bound should have refused")
    monkeypatch.setattr(backend, "plan_program", no_planning)
    with pytest.raises(ModelTooLarge) as e:
        tcompile.compile_file(PROGRAMS[name], params={"d": d}, max_memory=8 * 2 ** 30)
    msg = str(e.value)
    assert "at least" in msg and "dense float64 weights" in msg and "width D = ≥" in msg
    assert "over the limit of 8.0 GiB" in msg and f"d = {float(d):g}" in msg


def test_the_limit_applies_to_the_exact_size(estimates):
    """Under the early bound, over the exact size: refused after planning, with the exact
    numbers; the same build passes with room to spare, and with no limit at all."""
    prog = tcompile.compile_file(PROGRAMS["newton_inverse"], params={"d": 9, "steps": 3})
    exact = estimates["check_plan"]
    limit = (exact.bytes + estimates["check_early"].bytes) // 2
    with pytest.raises(ModelTooLarge, match=rf"needs {format_bytes(exact.bytes)} of dense .*"
                                            rf"width D = {prog.width}, {prog.n_layers} layers"):
        tcompile.compile_file(PROGRAMS["newton_inverse"], params={"d": 9, "steps": 3}, max_memory=limit)
    tcompile.compile_file(PROGRAMS["newton_inverse"], params={"d": 9, "steps": 3}, max_memory=exact.bytes)
    tcompile.compile_file(PROGRAMS["newton_inverse"], params={"d": 9, "steps": 3}, max_memory=float("inf"))


def test_default_limit_is_a_fraction_of_available_memory(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 2 ** 20)
    with pytest.raises(ModelTooLarge, match=r"over the limit of 512\.0 KiB \(50% of the memory "
                                            r"available now.*--max-memory"):
        tcompile.compile_file(PROGRAMS["newton_inverse"], params={"d": 40, "steps": 3})


def test_available_memory_is_read():
    avail = resources.available_memory()
    assert avail is None or avail > 2 ** 20


@pytest.mark.parametrize("bad", [0, -1, "8G", True, float("nan")])
def test_bad_max_memory_is_a_param_error(bad):
    with pytest.raises(ParamError, match="max_memory must be a positive number of bytes"):
        tcompile.compile_file(PROGRAMS["newton_inverse"], max_memory=bad)


@pytest.mark.parametrize("text, value", [("8G", 8 * 2 ** 30), ("512M", 512 * 2 ** 20), ("1.5GiB", 1.5 * 2 ** 30),
                                         ("2e9", 2e9), ("100", 100), ("4kb", 4096), ("none", float("inf"))])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "8X", "-1G", "0", "G", "1 2"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 1536, 44.7 * 2 ** 30, float("inf"))] == \
        ["512 B", "1.5 KiB", "44.7 GiB", "unlimited"]


# ---- progress ------------------------------------------------------------------------------

class FakeClock:
    """Time that moves `step` seconds at every reading."""
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def test_slow_builds_show_stages_and_layers():
    out = io.StringIO()
    prog = tcompile.compile_file(PROGRAMS["newton_inverse"], params={"steps": 6},
                                 progress=Progress(out, after=2.0, every=1.0, clock=FakeClock(0.5),
                                                   heartbeat=False))
    lines = out.getvalue().splitlines()
    assert all(line.startswith("tcompile: ") and line.endswith(" s)") for line in lines)
    text = "\n".join(lines)
    for stage in ("plan", "emit"):
        assert f"tcompile: {stage} (" in text
    assert f"emit: {prog.n_layers}/{prog.n_layers} layers" in text


def test_quick_builds_are_quiet():
    out = io.StringIO()
    progress = Progress(out, after=2.0, clock=FakeClock(0.0), heartbeat=False)
    tcompile.compile_file(PROGRAMS["newton_inverse"], params={"steps": 6}, progress=progress)
    progress.finish()
    assert out.getvalue() == ""


def test_a_long_stage_is_announced_while_it_runs():
    """The heartbeat names a stage that began before the threshold and is still running."""
    out = io.StringIO()
    progress = Progress(out, after=0.05)
    progress.stage("plan")
    deadline = time.monotonic() + 10
    while "tcompile: plan (" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    progress.finish(ok=False)
    assert out.getvalue().startswith("tcompile: plan (") and "done" not in out.getvalue()


def test_a_failed_build_stops_its_progress_quietly(monkeypatch):
    out = io.StringIO()
    progress = Progress(out, after=0.0, heartbeat=False)
    with pytest.raises(ModelTooLarge):
        tcompile.compile_file(PROGRAMS["newton_inverse"], max_memory=1, progress=progress)
    progress.finish(ok=False)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("tcompile: depth (") and not any("done" in line for line in lines)


# ---- the command line ----------------------------------------------------------------------

def test_cli_build_refuses_huge_dims_and_writes_nothing(tmp_path, capsys):
    code = main(["build", str(PROGRAMS["newton_inverse"]), "-o", str(tmp_path / "b"), "-p", "d=20000",
                 "--max-memory", "8G"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "refusing to build" in err and "over the limit of 8.0 GiB" in err and "d = 20000" in err
    assert not (tmp_path / "b").exists()


def test_cli_max_memory(tmp_path, capsys):
    args = ["build", str(PROGRAMS["newton_inverse"]), "-o", str(tmp_path / "b"), "-p", "steps=2"]
    assert main(args + ["--max-memory", "1K"]) == 1
    assert "over the limit of 1.0 KiB (the --max-memory" in capsys.readouterr().err
    assert main(args + ["--max-memory", "none"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["newton_inverse.json",
                                                                   "newton_inverse.safetensors"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["check", str(PROGRAMS["newton_inverse"]), "--max-memory", "lots"])
    assert e.value.code == 2 and "not a size" in capsys.readouterr().err
