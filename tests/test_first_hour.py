"""A new user's first hour (issue 16 §4): the README says what tcompile is, which Python and how
to make a virtual environment before its two commands, and its data-preparation lines write
an .npz that `tcompile run` reads (run here); `tcompile report FILE.tp` builds and reports;
every CLI option explains itself; a CompiledProgram's repr says what it is; every public
function has a docstring; an error printed with print(err) says "error" once; a halting run
says when a problem did not converge.
"""
from __future__ import annotations

import argparse
import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import tcompile
from cli_in_process import run_in_process
from tcompile.cli.main import build_parser
from tcompile.errors import NotConvergedWarning, TcompileWarning

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
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


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)


# ---- the README's top --------------------------------------------------------------------

def test_readme_says_what_it_is_which_python_and_a_venv_before_its_two_commands():
    before, _, _ = README.partition("```")
    assert "tcompile compiles small numerical algorithms" in before
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert f"Python {requires.group(1)} or newer" in before
    assert "python3 -m venv .venv && . .venv/bin/activate" in before
    lang, body = code_blocks(README)[0]
    assert lang == "bash" and body.splitlines() == [
        "pip install torch==2.13.0 && pip install -e . && tcompile build "
        "programs/newton_logistic.tp && tcompile check programs/newton_logistic.tp",
        "pip install torch==2.13.0 && pip install -e '.[test,plot,export,interp]' && python -m "
        "pytest -q -p no:cacheprovider -n 2 tests"]
    # .ci/run runs the same test command with the same extras
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install --quiet -e '.[test,plot,export,interp]'" in ci
    assert ci.rstrip().endswith("python -m pytest -q -p no:cacheprovider -n 2 tests")


def test_readme_data_preparation_lines_write_what_run_reads(tmp_path, monkeypatch):
    snippet = next(body for lang, body in code_blocks(README)
                   if lang == "python" and 'np.savez("inputs.npz"' in body)
    assert len(snippet.strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    # the README's program, built small (fewer steps, looser fits: it takes the same inputs)
    prog = tcompile.compile_file(ROOT / "programs" / "newton_logistic.tp",
                                 params={"steps": 1, "inv_steps": 1, "grad_tol": 1e-3,
                                         "hess_tol": 1e-2})
    prog.save(tmp_path / "build" / "newton_logistic")
    r = run_in_process(["run", "build/newton_logistic", "--inputs", "inputs.npz", "-o", "out.npz"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("x = [") and "warning" not in r.stderr
    with np.load(tmp_path / "out.npz") as out:
        assert out["x"].shape == (5,) and np.all(np.isfinite(out["x"]))


# ---- the command line --------------------------------------------------------------------

def test_report_of_a_program_builds_it_then_prints_its_card(tmp_path):
    (tmp_path / "tiny.tp").write_text(TINY)
    r = run_in_process(["report", tmp_path / "tiny.tp", "-p", "steps=2", "-o", tmp_path / "b"])
    assert r.returncode == 0, r.stderr
    built = tcompile.load(tmp_path / "b" / "tiny")
    assert built.info.params["steps"] == 2
    assert tcompile.report_text(built) in r.stdout and f"wrote {tmp_path / 'b' / 'tiny.safetensors'}" in r.stdout
    again = run_in_process(["report", tmp_path / "b" / "tiny"])
    assert again.returncode == 0 and again.stdout.strip() == tcompile.report_text(built).strip()
    bad = run_in_process(["report", tmp_path / "b" / "tiny", "-p", "steps=3"])
    assert bad.returncode == 2 and "-p goes with a .tp program" in bad.stderr


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_line_option_has_help_text():
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"build", "check", "run", "report", "trace", "plot", "labels", "export"}
    missing = [f"{name} {a.option_strings or a.dest}" for name, sub in subs.items()
               for a in sub._actions if not isinstance(a, argparse._HelpAction)
               and not (a.help or "").strip()]
    assert not missing, missing
    for name, sub in subs.items():               # and --help shows it, with no formatting error
        text = sub.format_help()
        assert all(a.help.split()[0] in text for a in sub._actions if a.help), name


# ---- the Python API ----------------------------------------------------------------------

def test_a_compiled_program_says_what_it_is():
    prog = tcompile.compile_source(TINY, "tiny.tp")
    assert repr(prog) == (f"<CompiledProgram tiny: {prog.n_layers} layers, width {prog.width}, "
                          "params d=2 steps=4, unrolled>")
    shared = tcompile.compile_source(TINY, "tiny.tp", loops="shared")
    assert repr(shared).endswith(", shared, run-time counts steps>")


def _public_members(obj):
    for name, value in vars(obj).items():
        if name.startswith("_") and name != "__init__":
            continue
        f = value.fget if isinstance(value, property) else getattr(value, "func", value)
        if inspect.isfunction(f) or isinstance(value, (property, classmethod, staticmethod)):
            yield name, getattr(f, "__func__", f)


def test_every_public_function_and_method_has_a_docstring():
    missing = []
    for name in tcompile.__all__:
        obj = getattr(tcompile, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for klass in obj.__mro__:
                if klass.__module__.startswith("tcompile"):
                    missing += [f"{name}.{m}" for m, f in _public_members(klass)
                                if m != "__init__" and not (f.__doc__ or "").strip()]
    assert not missing, missing


def test_print_of_an_error_says_error_once():
    with pytest.raises(tcompile.ProgramError) as located:
        tcompile.compile_source("program t\ninput A : [n, 2]\noutput x\nx = A + B\n", "t.tp")
    with pytest.raises(tcompile.InputError) as plain:
        tcompile.compile_source(TINY, "tiny.tp").run(A=np.ones((3, 2)))
    for e in (located.value, plain.value):
        shown = f"{type(e).__name__}: {e}"         # what a traceback's last line shows
        assert shown.lower().count("error") == 1, shown
        assert e.format().count("error: ") == 1    # the CLI's form keeps the compiler convention
    assert str(located.value).startswith("t.tp:4:9: undefined name 'B'")
    assert str(plain.value).startswith("missing input y")


# ---- halting -----------------------------------------------------------------------------

def test_run_until_says_when_a_problem_did_not_converge(tmp_path):
    (tmp_path / "tiny.tp").write_text(TINY)
    tcompile.compile_file(tmp_path / "tiny.tp", loops="shared").save(tmp_path / "tiny")
    rng = np.random.default_rng(0)
    A = rng.normal(size=(2, 6, 2))
    A /= 1.01 * np.linalg.norm(A, axis=-1, keepdims=True)
    np.savez(tmp_path / "in.npz", A=A, y=rng.normal(size=(2, 6)))
    r = run_in_process(["run", tmp_path / "tiny", "--inputs", tmp_path / "in.npz",
                        "--until", "w=1e-12"])
    assert r.returncode == 0 and "steps = [4 4]" in r.stdout
    assert ("warning: 2 of 2 problems did not converge: w still moved more than 1e-12 in "
            "iteration 4 (problems 0, 1)") in r.stderr
    ok = run_in_process(["run", tmp_path / "tiny", "--inputs", tmp_path / "in.npz",
                         "--until", "w=1e-12", "--max-steps", "400"])
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    prog = tcompile.load(tmp_path / "tiny")
    with pytest.warns(NotConvergedWarning, match="did not converge"):
        prog.run(until=("w", 1e-12), A=A, y=rng.normal(size=(2, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TcompileWarning)
        prog.run(until=("w", 1e-12), max_steps=400, A=A, y=rng.normal(size=(2, 6)))
