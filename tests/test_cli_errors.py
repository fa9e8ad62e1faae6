"""The command line's error output, end to end in a subprocess: `FILE:LINE:COL: error:`, the
source line, a caret, what was expected, no traceback, the right exit status, nothing written.

Starting Python and importing torch takes seconds, so only one case runs as a real process (a
usage error: argparse's exit path); the others call `cli.main` in-process with stdout and
stderr captured, the same code `python -m tcompile` runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_in_process import run_in_process
from tcompile.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
HEADER = "program t\ninput A : [n, 2]\noutput x\n"
BAD_BODIES = {"syntax_error": "x = A +\n", "undefined_name": "x = A + B\n"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (CompletedProcess-like result, program path, output dir) for every CLI run."""
    tmp = tmp_path_factory.mktemp("cli")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    jobs = {}
    for name, body in BAD_BODIES.items():
        src = tmp / f"{name}.tp"
        src.write_text(HEADER + body)
        out = tmp / f"out_{name}"
        out.mkdir()
        jobs[name] = (["build", src, "-o", out], src, out)
    out = tmp / "out_unknown_param"
    jobs["unknown_param"] = (["build", ROOT / "programs" / "least_squares.tp", "-o", out, "-p", "zz=1"],
                             None, out)
    jobs["no_file"] = (["build"], None, None)
    args = [sys.executable, "-m", "tcompile", *map(str, jobs["no_file"][0])]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    results = {name: (run_in_process(job[0]), job[1], job[2])
               for name, job in jobs.items() if name != "no_file"}
    stdout, stderr = proc.communicate(timeout=180)
    results["no_file"] = (subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), None, None)
    return results


def is_empty(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


@pytest.mark.parametrize("name, line, col, message, expected", [
    ("syntax_error", 4, 8, "unexpected end of line", "expected: '(', '+', '-', a name, a number"),
    ("undefined_name", 4, 9, "undefined name 'B'",
     "expected: an input, param, dim, or a variable assigned earlier"),
])
def test_build_reports_program_errors(runs, name, line, col, message, expected):
    r, src, out = runs[name]
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.splitlines()
    head = f"{src}:{line}:{col}: error: "
    i = next((k for k, text in enumerate(lines) if text.startswith(head)), None)
    assert i is not None, r.stderr
    assert message in lines[i]
    source_line = BAD_BODIES[name].rstrip("\n")
    assert lines[i + 1].strip() == source_line                                  # the source line
    caret = lines[i + 2]
    assert caret.strip() == "^"
    assert caret.index("^") == lines[i + 1].index(source_line) + col - 1       # under the column
    assert any(text.strip() == expected for text in lines[i + 3:]), r.stderr
    assert is_empty(out)


def test_build_without_a_file_is_a_usage_error(runs):
    r, _, _ = runs["no_file"]
    assert r.returncode == 2
    assert "usage:" in r.stderr and "file" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_param_override(runs):
    r, _, out = runs["unknown_param"]
    assert r.returncode == 1
    assert "error: unknown parameter 'zz'; this program has: d, steps" in r.stderr
    assert "Traceback" not in r.stderr
    assert is_empty(out)


# ---- in-process: the same entry point, without the start-up cost --------------------------

def test_malformed_param_override_is_a_usage_error(tmp_path, capsys):
    code = main(["build", str(ROOT / "programs" / "least_squares.tp"), "-o", str(tmp_path), "-p", "steps"])
    assert code == 2
    assert "-p expects NAME=VALUE, got 'steps'" in capsys.readouterr().err


def test_bad_override_value(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["build", str(ROOT / "programs" / "least_squares.tp"), "-o", str(out), "-p", "d=2.5"])
    assert code == 1
    assert "dim 'd' must be a positive integer, got 2.5" in capsys.readouterr().err
    assert is_empty(out)


def test_missing_program_file(tmp_path, capsys):
    code = main(["build", str(tmp_path / "nope.tp"), "-o", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot read program file" in err and "nope.tp" in err
    assert is_empty(tmp_path / "out")


def test_error_in_a_shipped_program_after_an_edit(tmp_path, capsys):
    """A realistic slip: a typo in a name deep in newton_logistic.tp is located exactly."""
    text = (ROOT / "programs" / "newton_logistic.tp").read_text().replace("g = mu * x", "g = mu * xx")
    src = tmp_path / "typo.tp"
    src.write_text(text)
    code = main(["build", str(src), "-o", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    line = next(k for k, t in enumerate(text.splitlines(), 1) if "g = mu * xx" in t)
    col = text.splitlines()[line - 1].index("xx") + 1
    assert err.startswith(f"{src}:{line}:{col}: error: undefined name 'xx'")
    assert is_empty(tmp_path / "out")
