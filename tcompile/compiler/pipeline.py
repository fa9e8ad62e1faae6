"""The pipeline, one stage per module:

    parse → check → dataflow → lower → plan (orient, schedule, allocate) → emit → runtime

`compile_program` runs the stages and returns a `CompiledProgram` (program.py): the weights
as numpy arrays plus the manifest (a JSON-able dict) that the encoder, decoder, report, trace
and artifact files all read.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

from .. import __version__
from ..language.checker import check_program
from .dataflow import build_dataflow
from .emit import emit
from ..errors import ParamError
from .pieces import DEFAULT_TOL
from .depth import fuse
from .lower import lower
from ..language.parser import parse_file, parse_source
from .plan import plan_program
from ..runtime.program import CompiledProgram


def compile_source(source: str, file: str = "<string>", params: dict | None = None,
                   tol: float | None = None) -> CompiledProgram:
    return compile_program(parse_source(source, file), params, tol)


def compile_file(path, params: dict | None = None, tol: float | None = None) -> CompiledProgram:
    """Compile the .tp program at `path` (params override its `param`/`dim` defaults; `tol` is
    the error budget of approximations that neither their call nor their statement sets)."""
    return compile_program(parse_file(Path(path)), params, tol)


def compile_program(program, params: dict | None = None, tol: float | None = None) -> CompiledProgram:
    if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ParamError(f"the default tolerance must be a number in (0, 1), got {tol!r}")
    values = check_program(program, params)
    df = build_dataflow(program, values)
    df.source = program.source
    df.default_tol = tol
    atoms, inv_n = lower(df)
    atoms = fuse(atoms, inv_n, df.outputs)
    plan = plan_program(atoms, inv_n, df.outputs)
    layers, blocks, keys = emit(plan, df.outputs)
    small_cols = [c for b in blocks for c in b.cshape if c != "n"]
    min_tokens = max([1, plan.identity_size, plan.inv_n_identity_size] +
                     [b.cshape[0] if b.transposed else b.cshape[1] for b in blocks
                      if "n" not in b.cshape])
    manifest = {
        "format": "tcompile-artifact",
        "format_version": 1,
        "compiler_version": __version__,
        "program": program.name,
        "file": Path(program.file).name,
        "source": program.source,
        "source_sha256": hashlib.sha256(program.source.encode()).hexdigest(),
        "default_tol": tol if tol is not None else DEFAULT_TOL,
        "params": {k: (int(v) if float(v).is_integer() else v) for k, v in values.items()},
        "inputs": [{"name": name, "shape": list(ty.shape)} for name, ty in df.input_types.items()],
        "outputs": [{"name": name, "shape": list(ty.shape),
                     "block": keys[(df.outputs[name], plan.orient[df.outputs[name]])]}
                    for name, ty in df.output_types.items()],
        "width": plan.width,
        "n_layers": plan.n_layers,
        "min_tokens": int(min_tokens),
        "max_small_dim": max(small_cols, default=1),
        "blocks": [vars(b) for b in blocks],
        "row_map": _row_map(blocks, plan.width),
        "layers": [{"heads": int(w.W_K.shape[0]), "dk": int(w.W_K.shape[1]),
                    "mlp_hidden": int(w.W_1.shape[0]), "head_labels": w.head_labels} for w in layers],
        "approximations": _approximations(plan, keys),
        "domains": _domain_checks(plan, keys),
    }
    return CompiledProgram(manifest, layers)


def _row_map(blocks, width: int) -> list[list[dict]]:
    """For every row of the embedding, what it holds over time: which value, which element of
    it (a row of the value, or a column when the value is stored transposed), and the
    sublayers it is live (written .. last read; last read -1: kept to the end)."""
    rows: list[list[dict]] = [[] for _ in range(width)]
    for b in sorted(blocks, key=lambda b: b.written):
        what = b.vars[-1] if b.vars else b.key
        for i, r in enumerate(b.rows):
            element = f"{what}[:, {i}]" if b.transposed else f"{what}[{i}, :]"
            rows[r].append({"block": b.key, "element": element, "written": b.written,
                            "last_read": b.last_read})
    return rows


def _approximations(plan, keys) -> list[dict]:
    """Each distinct PL function once, with how many entries use it (the report's table)."""
    seen: dict[int, dict] = {}
    for atom in plan.atoms.values():
        if atom.piece is None:
            continue
        rows = len(plan.slots[(atom.id, plan.orient[atom.id])].rows)
        for ap in atom.piece.approximations:
            entry = seen.get(id(ap.pl))
            if entry is None:
                entry = seen[id(ap.pl)] = {**ap.as_dict(), "neurons": 0, "entries": 0}
            entry["entries"] += rows
            entry["neurons"] += rows * ap.pl.neurons
    return list(seen.values())


def _domain_checks(plan, keys) -> list[dict]:
    """Where each piece reads its real input, and the domain it was fitted on."""
    from .plan import mlp_input_pair
    out = []
    for atom in plan.atoms.values():
        piece = atom.piece
        if piece is None:
            continue
        layer = plan.write_time[(atom.id, plan.orient[atom.id])] // 2
        if piece.kind == "unary" and piece.leaf is not None:
            checks = [(piece.leaf, piece.lo, piece.hi)]
        elif piece.kind == "product":
            checks = [(piece.u, *piece.u_range), (piece.v, *piece.v_range)]
        else:
            checks = []
        for leaf, lo, hi in checks:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue                        # exact on all of R: nothing to check
            pair = mlp_input_pair(plan.atoms, leaf, atom.id, plan.orient)
            out.append({"label": piece.label, "block": keys[pair], "lo": float(lo), "hi": float(hi),
                        "layer": int(layer)})
    return out


__all__ = ["compile_file", "compile_source", "compile_program"]
