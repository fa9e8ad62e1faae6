"""Trace: where does a compiled model depart from its program?

After every sublayer, every stored block that holds a program variable (`X@3` is the fourth
assignment to X; inputs by name) is decoded from the residual stream and compared with the
reference interpreter's value of that variable at that program point. Rows come out in time
order, so the first row over tolerance names the first layer and variable that went wrong.

Layers are counted from 0, as everywhere (runtime/card.py says why): a row of layer L was read after
the attention (`attn`) or the MLP (`mlp`) of `module.blocks[L]`, i.e. from the hook
`blocks.L.hook_resid_mid` or `blocks.L.hook_resid_post`.

A shared build's layers hold a different iteration each time they run, so the question —
which stored value is in which rows after sublayer t — becomes: after application j of a loop
body, which iterate is in the rows the loop state is pinned to? The build records it (loops.py
`LoopSpec.state`: name@(first + j·stride)), so `trace_loops` compares each application with
the interpreter's value of that assignment, and the outputs with the final ones. Its rows have
the same columns plus the loop's line and the iteration; `layer` counts the layers run so far,
from 0. `trace` picks the one the build needs.
"""
from __future__ import annotations

import csv
import io
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..language.points import point_count, point_variable, program_point
from ..runtime import clock
from ..runtime.dispatch import split_counts
from .reference import interpreter_assignments, relative_error
from .tolerance import (FIT_FACTOR, Tolerances, fit_tolerance, rounding_sensitivity,
                        tolerances, what_if_builds)


def trace(prog, /, **inputs) -> list[dict]:
    """`tcompile.trace(prog, **inputs)`: every stored value against the interpreter, in time
    order; a shared build's every iteration of every top-level loop (trace_loops; its
    run-time counts may be given by name, `steps=50`)."""
    if prog.loops is not None:
        return trace_loops(prog, **inputs)
    _counts, inputs = split_counts(prog, inputs)     # a count on an unrolled build: said so
    return trace_program(prog, **inputs)


def trace_program(prog, **inputs) -> list[dict]:
    """Rows (layer, sublayer, variable, block, max_abs_err, rel_err, tol, ok) in time order.

    A value is ok within the tolerance policy of tolerance.py (the policy `check` applies too)."""
    prepared = prog.prepare_inputs(inputs)
    want = interpreter_assignments(prog.program, prog.info.float_params(), prepared.arrays,
                                   prepared.n)
    policy = tolerances(prog, prepared, want)          # before `want` gains the inputs
    want.update({f"input:{name}": a for name, a in prepared.arrays.items()})
    states = prog.sublayer_states(prepared)
    rows, read = [], []
    for t in range(1, len(states)):
        for blk in prog.layout.readable_at(t):
            if blk.kind == "const":
                want.setdefault(blk.key, prog.value_at_input(blk, prepared))
            for var in _traced_names(blk):
                if var not in want:
                    continue
                got = prog.read_block(states[t], blk, list(want[var].shape[1:]))
                rows.append(trace_row(t, var, blk, got, want[var], policy.for_variable(var)))
                read.append((t, blk, got))
    if all(r["ok"] for r in rows):
        return rows
    builds = what_if_builds(prog)               # the policy's fit term, where it is needed
    if builds is None:
        return rows
    up, down = (b.sublayer_states(prepared) for b in builds)

    def tol(row, t, blk, got):
        shape = list(got.shape[1:])
        return fit_tolerance(row["tol"], prog.read_block(up[t], blk, shape),
                             prog.read_block(down[t], blk, shape))
    return [row if row["ok"] else _judged_by_fits(trace_row(
                t, row["variable"], blk, got, want[row["variable"]], tol(row, t, blk, got)))
            for row, (t, blk, got) in zip(rows, read)]


def trace_loops(prog, **kwargs) -> list[dict]:
    """A shared build's rows: every application of every top-level loop's body against the
    interpreter's iterate (the looped module's `halt` hook reads the loop state after each),
    then the outputs against their final values (`loop_line` and `iteration` None)."""
    counts, inputs = split_counts(prog, kwargs)
    prepared = prog.prepare_inputs(inputs)
    params = prog.interpreter_params(counts)
    want = interpreter_assignments(prog.program, params, prepared.arrays, prepared.n)
    policy = Tolerances(prog.predicted_rtol(), rounding_sensitivity(
        prog.program, params, prepared.arrays, prepared.n, want))
    run = loop_iterates(prog, prepared, counts, want)
    read = _reads(run)
    tols = [policy.for_variable(name) for name, _ in read]
    rows = _loop_rows(run, want, tols)
    if all(r["ok"] for r in rows):
        return rows
    builds = what_if_builds(prog)               # the policy's fit term, where it is needed
    if builds is None:
        return rows
    up, down = (_reads(loop_iterates(b, prepared, counts, want)) for b in builds)
    names = [name for name, _ in read]
    if [name for name, _ in up] != names or [name for name, _ in down] != names:
        return rows                             # not read alike: no fit term
    fitted = _loop_rows(run, want, [tol if row["ok"] else fit_tolerance(tol, u, d)
                                    for row, tol, (_, u), (_, d) in zip(rows, tols, up, down)])
    return [row if row["ok"] else _judged_by_fits(new) for row, new in zip(rows, fitted)]


def _judged_by_fits(row: dict) -> dict:
    """A row the policy's fit term passes (tolerance.py): `judged` says so."""
    return {**row, "judged": "fits"} if row["ok"] and row["judged"] == "relative" else row


def _reads(run) -> list[tuple[str, np.ndarray]]:
    """(program point, value) of a loop run's rows, in trace_loops' order."""
    return [(it.name, it.value) for it in run.iterates] + \
        [(final, got) for final, (_, got) in run.outputs.items()]


def _loop_rows(run, want: dict, tols: list[float]) -> list[dict]:
    """trace_loops' rows of one run, each with its tolerance (in _reads' order)."""
    rows: list[dict] = []
    for it, tol in zip(run.iterates, tols):
        row = trace_row(clock.n_times(it.layers), it.name, it.block, it.value, want[it.name], tol)
        rows.append(_loop_row(row, it.spec, it.iteration))
    for (final, (blk, got)), tol in zip(run.outputs.items(), tols[len(run.iterates):]):
        rows.append({**trace_row(clock.n_times(run.layers), final, blk, got, want[final], tol),
                     "loop_line": None, "iteration": None})
    return rows


@dataclass(frozen=True)
class Iterate:
    """One loop-state value read from the stream after one application of its loop's body."""
    spec: object            # the loop's LoopSpec
    iteration: int          # which application, from 0
    name: str               # the program point it holds, `x@7`
    block: object           # the layout block (its rows are the loop's state rows)
    value: np.ndarray       # float64, the program's shape, batch first
    layers: int             # layers run so far


@dataclass(frozen=True)
class LoopRun:
    iterates: list          # Iterate, in the order they were read
    outputs: dict           # an output's last program point (`x@9`) -> (block, value) at the end
    layers: int             # layers run in all


def loop_iterates(prog, prepared, counts: dict, want: dict) -> LoopRun:
    """Run a shared build's looped module in float64 at `counts` (run-time params by name,
    `steps=50`) and read every top-level loop's state after every application of its body (the
    looped module's `halt` hook), and the outputs at the end: what trace and the convergence
    plot compare with the interpreter.
    `want` (the interpreter's assignments: `x@7` -> its value, batch first) says which points
    are read and in what shape."""
    import torch

    from ..runtime.halting import watch_hooks, watch_points
    from .run_layout import point_mover
    specs = {s.key: s for s in prog.loops.loops if s.state}
    iterates: list[Iterate] = []
    # the points an application holds are named as the base unrolling names them, moved to
    # the run's counts (a loop after another assigning the same variable at another count
    # holds other numbers)
    move = point_mover(prog, prog.loops.counts(counts))

    def record(ctx, loop, before, after, it):
        spec = specs.get(loop.key)
        if spec is not None:
            h = after.detach().to("cpu", torch.float64).numpy()
            for var, key, first, stride in spec.state:
                name = move(program_point(var, first), spec.key, it * spec.every)
                if name in want:
                    blk = prog.layout.block(key)
                    got = prog.read_block(h, blk, list(want[name].shape[1:]))
                    iterates.append(Iterate(spec, it, name, blk, got, ctx.layers))
        return after

    x = prog.encode_inputs(prepared, "float64", "cpu")
    module = prog.module_for("float64", "cpu")
    # a carried variable the loop does not hold between applications (power_iteration's u: the
    # next S u starts from v) is read where an application writes it, as halting reads it
    handles = []
    for spec in prog.loops.loops:
        held = {var for var, *_ in spec.state}
        blocks = {p: (var, prog.layout.block(b)) for p, var, b in watch_points(prog, spec)
                  if var not in held}
        if not blocks:
            continue

        def read(j, p, out, spec=spec, blocks=blocks):
            var, blk = blocks[p]
            mine = next((v for v in blk.vars if point_variable(v) == var), None)
            name = None if mine is None else move(mine, spec.key, j * spec.every)
            if name in want:
                h = out.detach().to("cpu", torch.float64).numpy()
                got = prog.read_block(h, blk, list(want[name].shape[1:]))
                iterates.append(Iterate(spec, j, name, blk, got, module._ctx.layers))
        handles += watch_hooks(prog, module, spec.key, sorted(blocks), read)
    try:
        with torch.no_grad():
            y = module(x, counts, halt=record)
    finally:
        for hd in handles:
            hd.remove()
    h = y.numpy()
    blocks = prog.output_blocks(**counts)      # the rows these counts leave the outputs in
    outputs = {}
    for out in prog.layout.outputs:
        final = max((k for k in want if point_variable(k) == out.name),
                    key=point_count, default=None)
        if final is not None:
            blk = blocks[out.name]
            outputs[final] = (blk, prog.read_block(h, blk, list(want[final].shape[1:])))
    return LoopRun(iterates, outputs, module.n_layers(counts))


def _loop_row(row: dict, spec, it: int) -> dict:
    return {**row, "loop_line": spec.line, "iteration": it}


def _traced_names(blk) -> list[str]:
    """The names a block's value is compared under: its variables, its input, its constant."""
    if blk.kind == "const":
        return [blk.key]
    return list(blk.vars) or ([f"input:{blk.name}"] if blk.kind == "input" else [])


def trace_row(t: int, var: str, blk, got: np.ndarray, ref: np.ndarray, tol: float) -> dict:
    """One trace row; ok when the gap is within `tol` relatively, or absolutely (a value that
    converged to about zero has no meaningful relative error: `judged` says which test
    passed, and `ref_scale` is max |value| the relative error divides by)."""
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    rel = relative_error(got, ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    ok = rel <= tol or err <= tol
    # about zero (at most tol), or small enough that only the absolute test passes
    absolute = ok and err <= tol and (scale <= tol or rel > tol)
    return {"layer": clock.layer_of(t), "sublayer": clock.sublayer_of(t), "variable": var,
            "block": blk.key, "max_abs_err": err, "rel_err": rel, "tol": tol, "ok": bool(ok),
            "ref_scale": scale, "judged": "absolute" if absolute else "relative"}


def first_departure(rows: list[dict]) -> dict | None:
    return next((r for r in rows if not r["ok"]), None)


def base_name(variable: str) -> str:
    """The program's name of a traced value: `x@3` → x, `input:A` → A, `const:eye` → eye."""
    return point_variable(variable).split(":")[-1]


def select_rows(rows: list[dict], var: str | None = None, failing: bool = False,
                every: bool = False) -> list[dict]:
    """The rows `tcompile trace` prints. By default each stored value where it first appears
    and again wherever its error changes (a value that sits unchanged in its rows for 40
    sublayers is one row, an input or constant once), which keeps every row where something
    happens, the first departure included. `every`: every row, every sublayer. `var`: only the
    values of that program variable (`x`: every x@k; `x@3`; an input or constant by name).
    `failing`: only the rows over tolerance."""
    out, last = [], {}
    for r in rows:
        if var is not None and var not in (r["variable"], base_name(r["variable"])):
            continue
        if failing and r["ok"]:
            continue
        key = (r["variable"], r["block"])
        state = (r["max_abs_err"], r["ok"])
        if every or last.get(key) != state:
            out.append(r)
        last[key] = state
    return out


def traced_names(rows: list[dict]) -> list[str]:
    """The names `select_rows(var=...)` accepts, in order of first appearance."""
    return list(dict.fromkeys(base_name(r["variable"]) for r in rows))


def format_trace(rows: list[dict], sources: dict[str, int] | None = None, *, var: str | None = None,
                 failing: bool = False, every: bool = True) -> str:
    """The trace as a table of `select_rows(rows, var, failing, every)` (every row unless
    told otherwise; `tcompile trace` prints the compact view); with `sources`
    (`source_lines`), each variable's source line. The verdict under it is the whole trace's.

    A row judged by its absolute error (a small value, whose relative error divides by almost
    nothing) is marked `yes*`, its relative error `(≈0)` when the value is at most the
    tolerance, and the note under the table says why; one passed by the policy's fit term
    (tolerance.py) `yes+`, with its note."""
    shown = select_rows(rows, var, failing, every)
    head = " layer  sub   variable          block             max abs err    rel err   ok"
    lines = [head + ("   source" if sources else "")]
    for r in shown:
        where = sources.get(r["variable"]) if sources else None
        absolute = r.get("judged") == "absolute"
        rel = "(≈0)" if absolute and r["ref_scale"] <= r["tol"] else f"{r['rel_err']:9.2e}"
        ok = ("yes*" if absolute else "yes+" if r.get("judged") == "fits" else "yes ") \
            if r["ok"] else "NO  "
        lines.append((f" {r['layer']:>5}  {r['sublayer']:<4}  {r['variable']:<16}  {r['block']:<16}"
                     f"  {r['max_abs_err']:11.3e}  {rel:>9}   {ok}"
                     + (f" line {where}" if where else "")).rstrip())
    lines.append("")
    if any(r.get("judged") == "absolute" for r in shown):
        lines += textwrap.wrap("* judged by its absolute error, max abs err <= tol: the value is "
                               "small ((≈0): its largest entry is at most tol, e.g. a gradient "
                               "that converged to zero), so its relative error, which divides "
                               "by it, means nothing", 96)
    if any(r.get("judged") == "fits" for r in shown):
        lines += textwrap.wrap(f"+ within {FIT_FACTOR:g}x what the fits move it: compiled again "
                               "with every fitted function off by its own measured error, up and "
                               "down, the model moves this value further than the card's "
                               "estimate allows (a fit applied step after step adds up)", 96)
    if len(shown) < len(rows):
        lines += textwrap.wrap(_shown_note(len(shown), len(rows), var, failing, every), 96)
    bad = first_departure(rows)
    where = sources.get(bad["variable"]) if sources and bad else None
    lines.append("every traced value matches the interpreter" if bad is None else
                 f"first departure: layer {bad['layer']} ({bad['sublayer']}), variable "
                 f"{bad['variable']}" + (f" (line {where})" if where else "") +
                 f", relative error {bad['rel_err']:.2e} > {bad['tol']:.1e}")
    return "\n".join(lines)


def _shown_note(shown: int, total: int, var, failing: bool, every: bool) -> str:
    what = [] if every else ["each value where it first appears or its error changes"]
    what += [f"values of {var}"] if var else []
    what += ["rows over tolerance"] if failing else []
    more = "" if every else "; --all for every value after every sublayer"
    return f"{shown:,} of {total:,} rows shown ({', '.join(what)}{more})"


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
__all__ = ["trace", "trace_program", "trace_loops", "first_departure", "select_rows", "traced_names", "base_name",
           "format_trace", "source_lines", "write_trace", "interpreter_assignments"]
