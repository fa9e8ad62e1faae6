"""Random command lines over every subcommand (issue 12 §4): whatever the arguments, the CLI
ends with a documented exit status (0 ok, 1 program/data/artifact error, 2 usage, 3 check out
of tolerance) and never prints a traceback. In-process through `tcompile.cli.main.main` with
stdout/stderr captured, seeded, so a failure names its argument vector and reproduces.

Parameter values stay small: refusing huge builds (`-p d=1e9`) is the memory guard's job and
has its own tests; here a case must be cheap.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from cli_in_process import run_in_process
from tcompile.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = "program tiny\ndim d = 2\nparam steps = 2\ninput A : [n, d]\ninput y : [n]\noutput w\n" \
        "w = A.T @ y / n\nrepeat steps {\n  w = 0.5 * w\n}\n"
CASES = 250


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every kind of path an argument may name: good and bad programs, artifacts, inputs."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "tiny.tp").write_text(SMALL)
    (tmp / "bad.tp").write_text("program bad\ninput A : [n, 2]\noutput x\nx = A +\n")
    (tmp / "binary.tp").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["build", str(tmp / "tiny.tp"), "-o", str(tmp / "art")]) == 0
    rng = np.random.default_rng(0)
    np.savez(tmp / "good.npz", A=rng.normal(size=(4, 2)), y=rng.normal(size=4))
    np.savez(tmp / "wrong.npz", A=rng.normal(size=(4, 3)), z=np.ones(4))
    np.savez(tmp / "complex.npz", A=rng.normal(size=(4, 2)) + 1j, y=rng.normal(size=4))
    np.save(tmp / "single.npy", np.ones(3))
    (tmp / "garbage.npz").write_bytes(b"not a zip at all" * 8)
    (tmp / "taken.txt").write_text("x")
    return tmp


def pools(tmp: Path) -> dict[str, list[str]]:
    art = str(tmp / "art" / "tiny")
    return {
        "program": [str(tmp / "tiny.tp"), str(tmp / "bad.tp"), str(tmp / "binary.tp"),
                    str(tmp / "missing.tp"), str(tmp), "-", ""],
        "artifact": [art, art + ".json", art + ".safetensors", str(tmp / "art"),
                     str(tmp / "nothing"), str(tmp / "tiny.tp"), ""],
        "inputs": [str(tmp / n) for n in ("good.npz", "wrong.npz", "complex.npz", "single.npy",
                                          "garbage.npz", "absent.npz")] + [str(tmp), ""],
        "out": [str(tmp / "o1"), str(tmp / "o2" / "deep"), str(tmp / "taken.txt"), str(tmp / "t.csv"),
                str(tmp / "t.json")],
        "run_out": [str(tmp / "r.npz"), str(tmp / "r2" / "out.npz"), str(tmp), str(tmp / "good.npz"),
                    str(tmp / "taken.txt" / "x.npz")],
        "number": ["2", "1", "0", "-5", "3.5", "1e-300", "nan", "inf", "-inf", "abc", "", "1e400"],
        "param": ["steps=2", "steps=1", "d=3", "d=-1", "d=abc", "zz=1", "steps", "=3", "steps=0.5",
                  "d=1e0", "steps=1e-3"],
        "junk": ["--", "-x", "--what", "-o", "--help-me", "ünïcode", "\x00", "-p"],
    }


OPTIONS = {
    "build": {"-o": "out", "-p": "param", "--tol": "number"},
    "check": {"-p": "param", "--tol": "number", "--seed": "number", "--batch": "number",
              "--n": "number", "--rtol": "number"},
    "run": {"--inputs": "inputs", "-o": "run_out", "--device": ["cpu", "cuda", "tpu"],
            "--dtype": ["float64", "float32", "float16"]},
    "report": {},
    "trace": {"--inputs": "inputs", "-o": "out"},
    "plot": {"--what": ["layout", "weights", "convergence", "all"], "--inputs": "inputs",
             "--layer": "number", "-o": "out"},
}
POSITIONAL = {"build": "program", "check": "program", "run": "artifact", "report": "artifact",
              "trace": "artifact", "plot": "artifact"}


def pick(rnd: random.Random, values: list[str]) -> str:
    """Half the time the first (a good value: the cases must reach success too), else any."""
    return values[0] if rnd.random() < 0.5 else rnd.choice(values)


def draw(rnd: random.Random, pool: dict[str, list[str]]) -> list[str]:
    """One argument vector: usually a well-formed command with random values, sometimes mangled."""
    command = rnd.choice(list(OPTIONS) + ["bogus"]) if rnd.random() < 0.97 else ""
    argv = [command] if command else []
    opts = OPTIONS.get(command, {})
    if rnd.random() < 0.9 and command in POSITIONAL:
        argv.append(pick(rnd, pool[POSITIONAL[command]]))
    for flag in rnd.sample(sorted(opts), k=rnd.randint(0, len(opts))):
        kind = opts[flag]
        values = kind if isinstance(kind, list) else pool[kind]
        # check/build on a big batch are slow, not wrong: keep the cheap values for those
        if command == "check" and flag in ("--batch", "--n"):
            values = ["2", "1", "0", "-5", "abc", "3.5"]
        argv += [flag, pick(rnd, values)]
    if rnd.random() < 0.2:
        argv.insert(rnd.randint(0, len(argv)), rnd.choice(pool["junk"]))
    return argv


def run_cli(argv: list[str]) -> tuple[int, str]:
    try:
        r = run_in_process(argv)
    except Exception as e:                           # escaped main: would be a traceback
        return -1, f"Traceback: {type(e).__name__}: {e}"
    return r.returncode, r.stdout + r.stderr


def test_random_command_lines_end_with_a_documented_exit_status(files, monkeypatch):
    monkeypatch.chdir(files)             # default outputs (build/, plots/) land in the temp dir
    rnd = random.Random(12)
    pool = pools(files)
    seen = set()
    for _ in range(CASES):
        argv = draw(rnd, pool)
        code, text = run_cli(argv)
        assert code in (0, 1, 2, 3), (argv, code, text[-2000:])
        assert "Traceback" not in text, (argv, text[-2000:])
        seen.add((argv[0] if argv else "", code))
    # the draw reaches every subcommand, and both success and refusal
    assert {c for c, _ in seen} >= set(OPTIONS)
    assert {code for _, code in seen} >= {0, 1, 2}


@pytest.mark.parametrize("argv_of, words", [
    (lambda t: ["run", str(t / "art" / "tiny"), "--inputs", str(t / "garbage.npz")],
     "is not an npz archive"),
    (lambda t: ["trace", str(t / "art" / "tiny"), "--inputs", str(t / "single.npy")],
     "is a single .npy array, not an .npz archive"),
    (lambda t: ["run", str(t / "art" / "tiny"), "--inputs", str(t / "complex.npz")],
     "input 'A' is complex"),
    (lambda t: ["report", str(t / "art")], "is a directory: pass DIR/NAME"),
])
def test_named_refusals(files, argv_of, words, monkeypatch):
    monkeypatch.chdir(files)
    code, text = run_cli(argv_of(files))
    assert code in (1, 2) and words in text, text
    assert "allow_pickle" not in text and "Traceback" not in text
