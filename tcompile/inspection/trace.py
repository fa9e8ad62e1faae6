"""Trace: where does a compiled model depart from its program?

After every sublayer, every stored block that holds a program variable (`X@3` is the fourth
assignment to X; inputs by name) is decoded from the residual stream and compared with the
reference interpreter's value of that variable at that program point. Rows come out in time
order, so the first row over tolerance names the first layer and variable that went wrong.

Layers are counted from 0, as everywhere (report.py says why): a row of layer L was read after
the attention (`attn`) or the MLP (`mlp`) of `module.blocks[L]`, i.e. from the hook
`blocks.L.hook_resid_mid` or `blocks.L.hook_resid_post`.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .reference import interpreter_assignments, relative_error
from .tolerance import tolerances


def trace_program(prog, **inputs) -> list[dict]:
    """Rows (layer, sublayer, variable, block, max_abs_err, rel_err, tol, ok) in time order.

    A value is ok within the tolerance policy of tolerance.py (the policy `check` applies too)."""
    prepared = prog.prepare_inputs(inputs)
    want = interpreter_assignments(prog.program, prog.info.float_params(), prepared.arrays,
                                   prepared.n)
    policy = tolerances(prog, prepared, want)          # before `want` gains the inputs
    want.update({f"input:{name}": a for name, a in prepared.arrays.items()})
    states = prog.sublayer_states(prepared)
    rows = []
    for t in range(1, len(states)):
        for blk in prog.layout.readable_at(t):
            if blk.kind == "const":
                want.setdefault(blk.key, prog.value_at_input(blk, prepared))
            for var in _traced_names(blk):
                if var not in want:
                    continue
                got = prog.read_block(states[t], blk, list(want[var].shape[1:]))
                rows.append(trace_row(t, var, blk, got, want[var], policy.for_variable(var)))
    return rows


def _traced_names(blk) -> list[str]:
    """The names a block's value is compared under: its variables, its input, its constant."""
    if blk.kind == "const":
        return [blk.key]
    return list(blk.vars) or ([f"input:{blk.name}"] if blk.kind == "input" else [])


def trace_row(t: int, var: str, blk, got: np.ndarray, ref: np.ndarray, tol: float) -> dict:
    """One trace row; ok when the gap is within `tol` relatively, or absolutely (a value that
    converged to about zero has no meaningful relative error)."""
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    rel = relative_error(got, ref)
    return {"layer": (t - 1) // 2, "sublayer": "attn" if t % 2 else "mlp", "variable": var,
            "block": blk.key, "max_abs_err": err, "rel_err": rel, "tol": tol,
            "ok": bool(rel <= tol or err <= tol)}


def first_departure(rows: list[dict]) -> dict | None:
    return next((r for r in rows if not r["ok"]), None)


def format_trace(rows: list[dict], sources: dict[str, int] | None = None) -> str:
    """The trace as a table; with `sources` (`source_lines`), each variable's source line."""
    head = " layer  sub   variable          block             max abs err    rel err   ok"
    lines = [head + ("   source" if sources else "")]
    for r in rows:
        where = sources.get(r["variable"]) if sources else None
        lines.append(f" {r['layer']:>5}  {r['sublayer']:<4}  {r['variable']:<16}  {r['block']:<16}"
                     f"  {r['max_abs_err']:11.3e}  {r['rel_err']:9.2e}   {'yes' if r['ok'] else 'NO '}"
                     + (f"  line {where}" if where else "").rstrip())
    bad = first_departure(rows)
    lines.append("")
    where = sources.get(bad["variable"]) if sources and bad else None
    lines.append("every traced value matches the interpreter" if bad is None else
                 f"first departure: layer {bad['layer']} ({bad['sublayer']}), variable "
                 f"{bad['variable']}" + (f" (line {where})" if where else "") +
                 f", relative error {bad['rel_err']:.2e} > {bad['tol']:.1e}")
    return "\n".join(lines)


def source_lines(prog) -> dict[str, int]:
    """Traced name → source line: `x@3` the statement of its assignment, `input:A` its
    declaration (what `format_trace` prints beside each row)."""
    from .naming import assignment_lines
    out = assignment_lines(prog.program, prog.info.float_params())
    out.update({f"input:{d.name}": d.loc.line for d in prog.program.inputs})
    return out


def write_trace(rows: list[dict], path: Path) -> None:
    """The rows as JSON (a .json path) or CSV, written atomically (runtime/files.py): a symlink
    at `path` is replaced, not written through, and a failed write leaves the old file."""
    from ..runtime.files import atomic_write_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        atomic_write_bytes(path, (json.dumps(rows, indent=1) + "\n").encode())
        return
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["layer"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


# interpreter_assignments is re-exported: callers have long imported it from here.
__all__ = ["trace_program", "first_departure", "format_trace", "source_lines", "write_trace",
           "interpreter_assignments"]
