"""The passes after the front end, and the manifest they produce, shared by both builds.

    dataflow → lower → depth → plan (orient, schedule, rows) → emit

with the size checked twice before any dense array exists (budget.py). `compile_dataflow`
runs them on one dataflow graph; the unrolled build calls it once (pipeline.py), the shared
build once per small unrolling it folds (shared_build.py). `build_manifest` records what the
runtime needs besides the weights.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..runtime.codec import pattern_min_tokens
from ..runtime.layout import InputSpec, LayerSpec, Layout, OutputSpec, max_small_dim
from ..runtime.manifest import ApproxRecord, DomainCheck, Manifest, ProgramInfo
from ..version import __version__
from .budget import check_early, check_plan
from .depth import reduce_depth
from .emit import emit
from .lower import lower
from .pieces import DEFAULT_TOL
from .plan import plan_program


def compile_dataflow(df, params, values, max_memory, report, pieces=None, pace=None,
                     min_width: int = 0):
    """Dataflow graph → (plan, layers, blocks, keys): the passes after the front end.
    `pieces`: a PieceBuilder whose fits to reuse (lower.py); `pace`: loops whose iterations
    the schedule releases at a fixed rate, `min_width`: the residual width at least (shared
    builds: plan.plan_program)."""
    stage = report.stage if report else (lambda _name: None)
    stage("lower")
    lowered = lower(df, pieces)
    stage("depth")
    atoms = reduce_depth(lowered, df.outputs)
    cause = _size_cause(params, values)
    check_early(atoms, cause, max_memory)
    stage("plan")
    plan = plan_program(atoms, df.outputs, pace, min_width)
    stage("size check")
    check_plan(plan, cause, max_memory)
    stage("emit")
    layers, blocks, keys = emit(plan, df.outputs, progress=report.layer if report else None,
                                source=df.source)
    return plan, layers, blocks, keys


def _size_cause(params: dict | None, values: dict) -> str:
    """Which params set the size, for the refusal message."""
    chosen = [k for k in (params or {}) if k in values]
    if chosen:
        return ("The size follows from " + ", ".join(f"{k} = {values[k]:g}" for k in chosen) +
                " (set for this build); smaller values build a smaller model.")
    return ("The size follows from the program's own defaults (" +
            ", ".join(f"{k} = {v:g}" for k, v in values.items()) + ").")


def build_manifest(program, values, tol, df, plan, layers, blocks, keys) -> Manifest:
    """What the artifact records besides the weights: the program, the layout the encoder and
    decoder follow, and the approximations (runtime/manifest.py, written by artifact.py)."""
    min_tokens = max([1, plan.identity_size, plan.inv_n_identity_size] +
                     [b.cshape[0] if b.transposed else b.cshape[1] for b in blocks
                      if "n" not in b.cshape] +
                     [pattern_min_tokens(b.const) for b in blocks if b.kind == "const"])
    info = ProgramInfo(
        name=program.name, file=Path(program.file).name, source=program.source,
        params={k: (int(v) if float(v).is_integer() else v) for k, v in values.items()},
        default_tol=tol if tol is not None else DEFAULT_TOL, compiler_version=__version__,
        keep=tuple(program.keep))
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
                d[k] for k in ("lo", "hi", "neurons_per_entry", "max_error", "tol", "exact", "choice",
                               "steepest"))
            entry = seen.setdefault(key, [d, 0, set()])
            entry[1] += rows
            entry[2].update(atom.lines)
    return tuple(ApproxRecord(
        name=d["name"], lo=d["lo"], hi=d["hi"], neurons=entries * d["neurons_per_entry"],
        neurons_per_entry=d["neurons_per_entry"], max_error=d["max_error"], tol=d["tol"],
        exact=d["exact"], entries=entries, choice=d["choice"], lines=tuple(sorted(lines)),
        steepest=d["steepest"])
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
            checks = [(piece.leaf, *(piece.checked or (piece.lo, piece.hi)))]
        elif piece.kind == "product":
            checks = [(piece.u, *piece.u_range), (piece.v, *piece.v_range)]
        else:
            checks = []
        for leaf, lo, hi in checks:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue                        # exact on all of R: nothing to check
            pair = plan.mlp_input(leaf, atom.id)
            out.append(DomainCheck(piece.label, keys[pair], float(lo), float(hi), int(layer),
                                   _implied(plan, leaf, lo, hi), tuple(atom.lines)))
    return tuple(out)


def _implied(plan, leaf: int, lo: float, hi: float) -> str:
    """Why a check of `leaf` against [lo, hi] holds whenever the checks before it do ("":
    it may not). A leaf that is a unary piece's output takes the values of its PL function,
    whose extremes on the piece's domain are at its knots (UnaryPiece.range: the range a
    product fitted on it was given, newton_logistic's p(1 − p)); where the piece's own input
    stays in its domain — checked itself — the leaf stays in that range, up to rounding far
    inside the guard's slack. A product piece's range is the exact product's, not its fitted
    squares' (those err by their tolerance), so it implies nothing."""
    atom = plan.atoms.get(leaf)
    piece = atom.piece if atom is not None else None
    if piece is None or piece.kind != "unary":
        return ""
    plo, phi = piece.range
    if not (math.isfinite(plo) and math.isfinite(phi)) or plo < lo or phi > hi:
        return ""
    return f"{piece.label} on [{piece.lo:.6g}, {piece.hi:.6g}] takes values in [{plo:.6g}, {phi:.6g}]"


__all__ = ["compile_dataflow", "build_manifest"]
