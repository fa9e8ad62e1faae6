"""Builds of programs/ cached for the whole test session and shared by the files that check
them (test_docs_numbers.py's README claims, test_programs_structured.py's oracles): a default
build costs a second or more, and a compiled program's first run as much again (the executor
plans its layers once per program object), so each is paid once, not once per file."""
from __future__ import annotations

import functools
from pathlib import Path

import tcompile

PROGRAMS = Path(__file__).resolve().parents[1] / "programs"


def build(name: str, loops: str = "unrolled", **params):
    return _build(name, loops, tuple(sorted(params.items())))


@functools.lru_cache(maxsize=None)
def _build(name: str, loops: str, params: tuple):
    """One key per build however it is asked for (build(name) and build(name, "unrolled"))."""
    return tcompile.compile_file(PROGRAMS / f"{name}.tp", params=dict(params) or None, loops=loops)
