"""The pipeline, one stage per module:

    parse → check → dataflow → lower → depth → plan (orient, schedule, rows) → emit → runtime

with the size checked twice before any dense array exists (budget.py: lower bounds after the
depth pass, the exact shapes after planning) and progress reported per stage and layer
(progress.py) when asked.

`compile_program` runs the stages and returns a `CompiledProgram` (runtime/program.py): the
weights as numpy arrays plus the typed manifest (runtime/manifest.py, runtime/layout.py) that
the encoder, decoder, report, trace and artifact files all read.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import ParamError
from ..language.checker import check_program
from ..language.parser import parse_file, parse_source
from ..runtime.layout import InputSpec, LayerSpec, Layout, OutputSpec, max_small_dim
from ..runtime.manifest import ApproxRecord, DomainCheck, Manifest, ProgramInfo
from ..runtime.program import CompiledProgram
from ..version import __version__
from .budget import check_early, check_plan, resolve_limit
from .dataflow import build_dataflow
from .depth import reduce_depth
from .emit import emit
from .lower import lower
from .pieces import DEFAULT_TOL
from .plan import plan_program
from .progress import resolve as resolve_progress


def compile_source(source: str, file: str = "<string>", params: dict | None = None,
                   tol: float | None = None, *, max_memory=None, progress=None) -> CompiledProgram:
    return compile_program(parse_source(source, file), params, tol, max_memory=max_memory,
                           progress=progress)


def compile_file(path, params: dict | None = None, tol: float | None = None, *,
                 max_memory=None, progress=None) -> CompiledProgram:
    """Compile the .tp program at `path` (params override its `param`/`dim` defaults; `tol` is
    the error budget of approximations that neither their call nor their statement sets).
    `max_memory` (bytes; default half the available memory) refuses a model whose dense
    weights would not fit, before allocating them (budget.py); `progress=True` reports the
    stages and layers of a build that runs for more than two seconds on stderr."""
    return compile_program(parse_file(Path(path)), params, tol, max_memory=max_memory,
                           progress=progress)


def compile_program(program, params: dict | None = None, tol: float | None = None, *,
                    max_memory=None, progress=None) -> CompiledProgram:
    if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ParamError(f"the default tolerance must be a number in (0, 1), got {tol!r}")
    resolve_limit(max_memory)                     # a bad max_memory fails before any work
    report = resolve_progress(progress)
    if progress is not True:                      # the caller's Progress: the caller finishes it
        return _compile(program, params, tol, max_memory, report)
    ok = False
    try:
        prog = _compile(program, params, tol, max_memory, report)
        ok = True
        return prog
    finally:
        report.finish(ok)


def _compile(program, params, tol, max_memory, report) -> CompiledProgram:
    """The stages, in order, with the two size checks before any dense array exists."""
    stage = report.stage if report else (lambda _name: None)
    stage("check")
    values = check_program(program, params)
    stage("dataflow")
    df = build_dataflow(program, values, default_tol=tol)
    stage("lower")
    lowered = lower(df)
    stage("depth")
    atoms = reduce_depth(lowered, df.outputs)
    cause = _size_cause(params, values)
    check_early(atoms, cause, max_memory)
    stage("plan")
    plan = plan_program(atoms, df.outputs)
    stage("size check")
    check_plan(plan, cause, max_memory)
    stage("emit")
    layers, blocks, keys = emit(plan, df.outputs, progress=report.layer if report else None)
    return CompiledProgram(_manifest(program, values, tol, df, plan, layers, blocks, keys), layers)


def _size_cause(params: dict | None, values: dict) -> str:
    """Which params set the size, for the refusal message."""
    chosen = [k for k in (params or {}) if k in values]
    if chosen:
        return ("The size follows from " + ", ".join(f"{k} = {values[k]:g}" for k in chosen) +
                " (set for this build); smaller values build a smaller model.")
    return ("The size follows from the program's own defaults (" +
            ", ".join(f"{k} = {v:g}" for k, v in values.items()) + ").")


def _manifest(program, values, tol, df, plan, layers, blocks, keys) -> Manifest:
    """What the artifact records besides the weights: the program, the layout the encoder and
    decoder follow, and the approximations (runtime/manifest.py, written by artifact.py)."""
    min_tokens = max([1, plan.identity_size, plan.inv_n_identity_size] +
                     [b.cshape[0] if b.transposed else b.cshape[1] for b in blocks
                      if "n" not in b.cshape])
    info = ProgramInfo(
        name=program.name, file=Path(program.file).name, source=program.source,
        params={k: (int(v) if float(v).is_integer() else v) for k, v in values.items()},
        default_tol=tol if tol is not None else DEFAULT_TOL, compiler_version=__version__)
    layout = Layout(
        width=plan.width, n_layers=plan.n_layers, min_tokens=int(min_tokens),
        max_small_dim=max_small_dim(blocks),
        inputs=tuple(InputSpec(name, tuple(ty.shape)) for name, ty in df.input_types.items()),
        outputs=tuple(OutputSpec(name, tuple(ty.shape),
                                 keys[(df.outputs[name], plan.orient[df.outputs[name]])])
                      for name, ty in df.output_types.items()),
        blocks=tuple(blocks), layers=tuple(LayerSpec.of(w) for w in layers))
    return Manifest(info, layout, _approximations(plan), _domain_checks(plan, keys))


def _approximations(plan) -> tuple[ApproxRecord, ...]:
    """Each distinct PL function once — the same function of the same leaves on the same
    domain, however many statements and loop iterations apply it — with how many entries use
    it and the source lines that apply it (the report's table). A piece with no units
    approximates nothing and is not listed."""
    seen: dict[tuple, list] = {}         # identity → [its first use, entries, lines]
    for atom in plan.atoms.values():
        if atom.piece is None:
            continue
        rows = len(plan.slots[(atom.id, plan.orient[atom.id])].rows)
        for ap in atom.piece.approximations:
            d = ap.as_dict()
            if not d["neurons_per_entry"]:
                continue
            # a fitted function is one fit object however its leaves are named; exact pieces
            # are made per use, so those are the same function when they read the same
            key = (id(ap.pl) if not ap.pl.exact else d["name"],) + tuple(
                d[k] for k in ("lo", "hi", "neurons_per_entry", "max_error", "tol", "exact", "choice"))
            entry = seen.setdefault(key, [d, 0, set()])
            entry[1] += rows
            entry[2].update(atom.lines)
    return tuple(ApproxRecord(
        name=d["name"], lo=d["lo"], hi=d["hi"], neurons=entries * d["neurons_per_entry"],
        neurons_per_entry=d["neurons_per_entry"], max_error=d["max_error"], tol=d["tol"],
        exact=d["exact"], entries=entries, choice=d["choice"], lines=tuple(sorted(lines)))
        for d, entries, lines in seen.values())


def _domain_checks(plan, keys) -> tuple[DomainCheck, ...]:
    """Where each piece reads its real input, and the domain it was fitted on."""
    out = []
    for atom in plan.atoms.values():
        piece = atom.piece
        if piece is None:
            continue
        layer = plan.write_time[(atom.id, plan.orient[atom.id])] // 2 - 1   # counted from 0
        if piece.kind == "unary" and piece.leaf is not None:
            checks = [(piece.leaf, piece.lo, piece.hi)]
        elif piece.kind == "product":
            checks = [(piece.u, *piece.u_range), (piece.v, *piece.v_range)]
        else:
            checks = []
        for leaf, lo, hi in checks:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue                        # exact on all of R: nothing to check
            pair = plan.mlp_input(leaf, atom.id)
            out.append(DomainCheck(piece.label, keys[pair], float(lo), float(hi), int(layer)))
    return tuple(out)


__all__ = ["compile_file", "compile_source", "compile_program"]
