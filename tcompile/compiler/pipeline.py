"""The pipeline, one stage per module:

    parse → check → dataflow → lower → depth → plan (orient, schedule, rows) → emit → runtime

with the size checked twice before any dense array exists (budget.py: lower bounds after the
depth pass, the exact shapes after planning) and progress reported per stage and layer
(progress.py) when asked. The passes after the dataflow graph live in backend.py; a shared
build (`loops="shared"`) runs them on a few small unrollings and folds (shared_build.py).

`compile_program` runs the stages and returns a `CompiledProgram` (runtime/program.py): the
weights as numpy arrays plus the typed manifest (runtime/manifest.py, runtime/layout.py) that
the encoder, decoder, report, trace and artifact files all read.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import ParamError
from ..language import ast
from ..language.checker import check_program
from ..language.parser import parse_file, parse_source
from ..runtime.program import CompiledProgram
from .backend import build_manifest, compile_dataflow
from .budget import resolve_limit
from .dataflow import build_dataflow
from .progress import resolve as resolve_progress
from .shared_build import compile_shared


def compile_source(source: str, file: str = "<string>", params: dict | None = None,
                   tol: float | None = None, *, max_memory=None, progress=None,
                   loops: str = "unrolled", keep=()) -> CompiledProgram:
    """Compile a program given as text (`file` names it in error messages); the other
    arguments are compile_file's."""
    return compile_program(parse_source(source, file), params, tol, max_memory=max_memory,
                           progress=progress, loops=loops, keep=keep)


def compile_file(path, params: dict | None = None, tol: float | None = None, *,
                 max_memory=None, progress=None, loops: str = "unrolled",
                 keep=()) -> CompiledProgram:
    """Compile the .tp program at `path` (params override its `param`/`dim` defaults; `tol` is
    the error budget of approximations that neither their call nor their statement sets).
    `max_memory` (bytes; default half the available memory) refuses a model whose dense
    weights would not fit, before allocating them (budget.py); `progress=True` reports the
    stages and layers of a build that runs for more than two seconds on stderr.
    `loops="shared"` stores each repeat body once and runs it as a loop (shared_build.py);
    the default unrolls every iteration into its own layers. `keep=("x", ...)` stores every
    value of those variables in rows of their own, where the build would otherwise fold one
    into the sums that read it (ADMM's `x = Q @ (...)`): the trace, probes and labels then see
    it and `until` may watch it, at the cost of rows and sometimes a layer."""
    return compile_program(parse_file(Path(path)), params, tol, max_memory=max_memory,
                           progress=progress, loops=loops, keep=keep)


def compile_program(program, params: dict | None = None, tol: float | None = None, *,
                    max_memory=None, progress=None, loops: str = "unrolled",
                    keep=()) -> CompiledProgram:
    """Compile a parsed program (language.parser.parse_source / parse_file); the arguments
    are compile_file's."""
    if loops not in ("unrolled", "shared"):
        raise ParamError(f"loops must be 'unrolled' or 'shared', got {loops!r}")
    program = _with_keep(program, keep)
    if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ParamError(f"the default tolerance must be a number in (0, 1), got {tol!r}")
    resolve_limit(max_memory)                     # a bad max_memory fails before any work
    report = resolve_progress(progress)
    if progress is not True:                      # the caller's Progress: the caller finishes it
        return _compile(program, params, tol, max_memory, report, loops)
    ok = False
    try:
        prog = _compile(program, params, tol, max_memory, report, loops)
        ok = True
        return prog
    finally:
        report.finish(ok)


def _with_keep(program, keep):
    """The program with its `keep` build option, every name one the program assigns."""
    if keep is None:
        return program
    if not isinstance(keep, (list, tuple, set, frozenset)) or \
            not all(isinstance(k, str) for k in keep):
        raise ParamError(f"keep must be a list of variable names, got {keep!r}")
    assigned = sorted({n.target for n, _ in ast.walk(program.body) if isinstance(n, ast.Assign)})
    unknown = [k for k in keep if k not in assigned]
    if unknown:
        raise ParamError(f"keep names {', '.join(map(repr, unknown))}, which the program does "
                         f"not assign; its variables: {', '.join(assigned) or 'none'}")
    return replace(program, keep=tuple(sorted(set(keep)))) if keep else program


def _compile(program, params, tol, max_memory, report, loops="unrolled") -> CompiledProgram:
    """The stages, in order, with the two size checks before any dense array exists."""
    stage = report.stage if report else (lambda _name: None)
    stage("check")
    values = check_program(program, params)
    if loops == "shared":
        return compile_shared(program, values, tol, max_memory, report)
    stage("dataflow")
    df = build_dataflow(program, values, default_tol=tol)
    built = compile_dataflow(df, params, values, max_memory, report)
    return CompiledProgram(build_manifest(program, values, tol, df, *built), built[1])


__all__ = ["compile_file", "compile_source", "compile_program"]
