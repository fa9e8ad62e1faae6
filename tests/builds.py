"""One build per program and settings per test session.

Many test files read the same build (newton_logistic at d = 3 was compiled 16 times by four
files; every shipped program at its defaults by the identity, docs-numbers, library and
division tests). Building costs seconds; reading a build costs nothing, so tests that only
read a compiled program — run it, encode, decode, save, report, probe — take it from here.
A test that edits a program in place, or that measures the state a build accumulates (the
executor's plan caches), compiles its own with tcompile.compile_file.
"""
from __future__ import annotations

import functools
from pathlib import Path

import tcompile

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "programs"


def build(program, params: dict | None = None, tol: float | None = None,
          loops: str = "unrolled"):
    """The CompiledProgram of `program` — a path, or the name of a program in programs/ —
    with `params`, shared by every test in the session that asks for the same settings."""
    path = Path(program)
    if path.suffix != ".tp":
        path = PROGRAMS / f"{program}.tp"
    key = tuple(sorted((params or {}).items()))
    return _build(str(path.resolve()), key, tol, loops)


@functools.lru_cache(maxsize=None)
def _build(path: str, params: tuple, tol, loops: str):
    return tcompile.compile_file(path, params=dict(params) or None, tol=tol, loops=loops)


def fresh(program, params: dict | None = None, tol: float | None = None,
          loops: str = "unrolled"):
    """A new CompiledProgram over the shared build's manifest and weights: none of the
    caches a program keeps (its modules, its executors and their plans), for tests that plan
    or trace anew, without compiling again. A test that edits weights compiles its own."""
    from tcompile.runtime.program import CompiledProgram
    built = build(program, params, tol, loops)
    return CompiledProgram(built.typed_manifest, built.layers)
