"""Trace of a shared build: every iteration of every top-level loop against the interpreter.

A shared build's layers hold a different iteration each time they run, so the unrolled
trace's question — which stored value is in which rows after sublayer t — becomes: after
application j of a loop body, which iterate is in the rows the loop state is pinned to? The
build records it (loops.py `LoopSpec.state`: name@(first + j·stride)), so each application is
compared with the interpreter's value of that assignment, and the outputs with the final ones.
Rows have the unrolled trace's columns (trace.py: `format_trace` prints both) plus the loop's
line and the iteration; `layer` counts the layers run so far, from 0.
"""
from __future__ import annotations

from ..runtime import clock
from .reference import interpreter_assignments
from .tolerance import Tolerances, rounding_sensitivity
from .trace import trace_row


def trace_loops(prog, **kwargs) -> list[dict]:
    import torch
    counts, inputs = prog.split_counts(kwargs, None, None)
    prepared = prog.prepare_inputs(inputs)
    params = {**prog.info.float_params(), **{k: float(v) for k, v in counts.items()}}
    want = interpreter_assignments(prog.program, params, prepared.arrays, prepared.n)
    policy = Tolerances(prog.predicted_rtol(), rounding_sensitivity(
        prog.program, params, prepared.arrays, prepared.n, want))
    specs = {s.key: s for s in prog.loops.loops if s.state}
    rows: list[dict] = []

    def record(ctx, loop, before, after, it):
        spec = specs.get(loop.key)
        if spec is not None:
            h = after.detach().to("cpu", torch.float64).numpy()
            for var, key, first, stride in spec.state:
                name = f"{var}@{first + it * stride}"
                if name in want:
                    blk = prog.layout.block(key)
                    got = prog.read_block(h, blk, list(want[name].shape[1:]))
                    row = trace_row(clock.n_times(ctx.layers), name, blk, got, want[name],
                                    policy.for_variable(name))
                    rows.append(_loop_row(row, spec, it))
        return after

    x = prog.encode_inputs(prepared, "float64", "cpu")
    module = prog.module_for("float64", "cpu")
    with torch.no_grad():
        y = module(x, counts, halt=record)
    h = y.numpy()
    last = module.n_layers(counts)
    for out in prog.layout.outputs:
        final = max((k for k in want if k.split("@")[0] == out.name),
                    key=lambda k: int(k.split("@")[1]), default=None)
        if final is not None:
            blk = prog.layout.block(out.block)
            got = prog.read_block(h, blk, list(want[final].shape[1:]))
            rows.append({**trace_row(clock.n_times(last), final, blk, got, want[final],
                                policy.for_variable(final)), "loop_line": None, "iteration": None})
    return rows


def _loop_row(row: dict, spec, it: int) -> dict:
    return {**row, "loop_line": spec.line, "iteration": it}


__all__ = ["trace_loops"]
