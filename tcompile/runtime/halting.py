"""Halting: each problem of a batch leaves a loop when its state stops moving.

A universal transformer halts per position when a learned signal says so; here the signal is
the loop variable itself, read from the rows the shared build pins it to (the same rows after
every application of the body, loops.py `LoopSpec.state`). After each application, a problem
whose variable moved by at most `tol` (max abs change over its rows) halts: from then on its
residual stream is kept as it is while the rest of the batch goes on, and the loop stops when
every problem has halted or after `max_steps` iterations. The layers after the loop (its
drain, the epilogue) then run for all. Problems still moving at the limit are named in a
NotConvergedWarning (the CLI prints it).

A problem that halts after application j has the state a fixed-count run with
`count = offset + j + 1` has there, and that is the count reported for it.

A loop run by a kernel of k iterations (every > 1: where two iterations fit one layer) is
tested between kernel applications, every k iterations: the movement is over the k
iterations of the last application. The step limit's residue r (loops.py `LoopItem.residue`)
picks the tail every problem runs after the loop (a batch runs one), so a problem halts after
application j with `count = offsets[r] + k·(j + 1)` (`LoopItem.halted_count`; exact: a
fixed-count run at that count runs the same applications and tail): with an odd limit the
counts are odd where the even ones are (with offsets 2 and 5: 5 + 2j against 2 + 2j), and the
outputs are read from the rows that residue leaves them in.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import InputError, NotConvergedWarning


def resolve_until(prog, until) -> tuple[str, str, float]:
    """("x", tol) → (loop key, block key, tol), with clear errors."""
    if not (isinstance(until, (tuple, list)) and len(until) == 2 and isinstance(until[0], str)):
        raise InputError(f"until must be (variable name, tolerance), got {until!r}")
    name, tol = until
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise InputError(f"until's tolerance must be a number >= 0, got {tol!r}")
    options = [(spec.key, var, block) for spec in prog.loops.loops for var, block, *_ in spec.state]
    for key, var, block in options:
        if var == name:
            return key, block, float(tol)
    raise InputError(f"until names {name!r}, which no top-level loop carries; loop variables of "
                     f"this build: {', '.join(sorted(v for _, v, _ in options)) or 'none'}")


def step_limit(prog, counts: dict, until, max_steps):
    """(loop key, rows, tol, spec, the most iterations) for a halting run: both halting paths
    run to it, and check_run_cost estimates a run at it."""
    key, block_key, tol = resolve_until(prog, until)
    spec = prog.loops.spec(key)
    if spec.param is None:
        raise InputError(f"the loop at line {spec.line} has a fixed count; halting needs one "
                         "set at run time")
    limit = counts.get(spec.param, spec.count) if max_steps is None else max_steps
    return key, prog.layout.block(block_key).rows, tol, spec, limit


def structured_until(prog, executor, inputs, counts: dict, until, max_steps, dtype, device,
                     watch: bool = False):
    """Halting through the shared build's structured executor (exec_loops.py), which plans
    each body once and tests the variable between applications; None where its plan does not
    cover the run (a loop run 0 times), and the looped module must do it."""
    from .exec_loops import Halting
    key, rows, tol, spec, limit = step_limit(prog, counts, until, max_steps)
    resolved = prog.loops.counts({**counts, spec.param: limit})
    if not executor.covers(resolved):
        return None
    out, (steps, converged), ranges = executor.run_inputs(
        inputs, resolved, dtype, device, Halting(key, tuple(rows), tol, limit, spec.min_count),
        watch)
    warn_not_converged(converged, until, tol, limit)
    return out, steps, converged, ranges


def run_until(prog, module, x: torch.Tensor, counts: dict, until, max_steps):
    """Run the looped module with halting; (final residual, steps per problem, converged per
    problem: False where the variable still moved by more than the tolerance at the last
    iteration allowed, the run-time counts the module ran: the step limit's, whose residue
    every halting count shares, so decode reads the outputs from that residue's rows)."""
    key, rows, tol, spec, limit = step_limit(prog, counts, until, max_steps)
    rows = torch.tensor(rows, device=x.device)
    batch = x.shape[0]
    active = torch.ones(batch, dtype=torch.bool, device=x.device)
    steps = torch.full((batch,), -1, dtype=torch.long)

    def halt(ctx, loop, before, after, it):
        if loop.key != key or loop.item.halted_count(it + 1, limit) < spec.min_count:
            return after             # a count below min_count is not one this build runs
        keep = active.view(-1, 1, 1)
        after = torch.where(keep, after, before)
        moved = (after.index_select(2, rows) - before.index_select(2, rows)).abs().amax(dim=(1, 2))
        now = active & (moved <= tol)
        steps[now.cpu()] = loop.item.halted_count(it + 1, limit)
        active.copy_(active & ~now)
        ctx.stop = not bool(active.any())
        return after

    ran = {**counts, spec.param: limit}
    y = module(x, ran, halt=halt)
    converged = (steps >= 0).numpy()
    steps[steps < 0] = limit
    warn_not_converged(converged, until, tol, limit)
    return y, steps.numpy().astype(np.int64), converged, ran


def warn_not_converged(converged: np.ndarray, until, tol: float, limit: int) -> None:
    """A NotConvergedWarning naming the problems that hit the step limit still moving."""
    stuck = ~converged
    if stuck.any():
        batch = len(converged)
        which = ", ".join(map(str, np.flatnonzero(stuck)[:10])) + (", ..." if stuck.sum() > 10 else "")
        warnings.warn(NotConvergedWarning(
            f"{int(stuck.sum())} of {batch} problem{'s' * (batch != 1)} did not converge: "
            f"{until[0]} still moved more than {tol:g} in iteration {limit} (problem"
            f"{'s' * (int(stuck.sum()) != 1)} {which}); steps = {limit} there is the limit, not "
            "a convergence: raise it with max_steps (--max-steps)"), stacklevel=4)


__all__ = ["run_until", "resolve_until", "step_limit", "warn_not_converged"]
