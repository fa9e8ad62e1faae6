"""Which engine runs a compiled program, and with what: `CompiledProgram.run` hands its
arguments here. An unrolled build runs on the structured executor (executor.py; or torch.compile
of it, or the paper-form module); a shared build on the looping executor where its plan covers
the counts (exec_loops.py), else on the plan expanded for them, or on the looped module; halting
(`until`) goes through the looping executor where it can (halting.py). Every path can watch the
domain checks (domain_guard.py). The program itself keeps its data, encoding, decoding and
saving (program.py); this module decides and calls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..language.inputs import input_sizes

if TYPE_CHECKING:       # torch is imported on first use
    import torch

DTYPES = ("float64", "float32")


def run_watched(prog, dtype, device, executor, until, max_steps, watch: bool,
                inputs: dict) -> tuple[dict, dict]:
    """`prog.run`'s work: (outputs, the range each domain check saw: {} when not `watch`)."""
    import torch

    from .domain_guard import settle, watch_module
    from .executor import executor_for
    tdtype, device = run_options(dtype, device, "run")
    counts, inputs = split_counts(prog, inputs, until, max_steps)
    batch, n = input_sizes(prog.program, prog.info.float_params(), inputs)
    prog.check_run_cost(batch or 1, n or prog.layout.min_tokens, tdtype, until, max_steps,
                        **counts)                       # before validation copies anything
    prepared = prog.prepare_inputs(inputs)
    prog.check_run_cost(prepared.size, prepared.n, tdtype, until, max_steps, **counts)

    def numpy(out):
        return prepared.unbatch({k: v.detach().to("cpu", torch.float64).numpy()
                                 for k, v in out.items()})

    def structured(ex):
        if watch:
            out, ranges = ex.run_watched(prepared, tdtype, device)
            return numpy(out), ranges
        return numpy(ex.run_inputs(prepared, tdtype, device)), {}
    if prog.loops is not None:
        if executor not in (None, "structured", "module"):
            raise InputError(f"executor={executor!r}: a shared build runs 'structured' (the "
                             "default: its loops expanded) or 'module' (the looped module)")
        if executor != "module":
            done = run_shared(prog, prepared, counts, until, max_steps, tdtype, device, watch)
            if done is not None:
                out, ranges = done
                return prepared.unbatch(out), ranges
        x = prog.encode_inputs(prepared, tdtype, device)
        module = prog.module_for(tdtype, device)
        with torch.no_grad(), watch_module(prog, module, watch) as seen:
            if until is None:
                return prepared.unbatch(prog.decode(module(x, counts), **counts)), settle(seen)
            from .halting import run_until
            y, steps, converged, ran = run_until(prog, module, x, counts, until, max_steps)
        return prepared.unbatch({**prog.decode(y, **ran), "steps": steps,
                                 "converged": converged}), settle(seen)
    executor = executor or "structured"
    if executor != "module":
        return structured(executor_for(prog, executor))
    x = prog.encode_inputs(prepared, tdtype, device)
    module = prog.module_for(tdtype, device)
    with torch.no_grad(), watch_module(prog, module, watch) as seen:
        y = module(x)
    return prepared.unbatch(prog.decode(y)), settle(seen)


def split_counts(prog, kwargs: dict, until=None, max_steps=None) -> tuple[dict, dict]:
    """run()'s keyword arguments → (run-time counts, inputs), with clear errors for a count
    this build cannot take; every call that takes a shared build's counts beside its inputs
    (trace, check_domains, export_onnx) splits them here."""
    params = prog.loops.params if prog.loops is not None else {}
    counts = {k: v for k, v in kwargs.items() if k in params}
    inputs = {k: v for k, v in kwargs.items() if k not in params}
    fixed = [k for k in inputs if k in prog.info.params]
    if prog.loops is None:
        if fixed or until is not None or max_steps is not None:
            what = f"param {fixed[0]!r}" if fixed else "until/max_steps"
            built = ", ".join(f"{k} = {v}" for k, v in prog.info.params.items())
            raise InputError(f"{what}: counts and halting are set at run time only in a "
                             "shared build (tcompile build --loops shared); this build "
                             f"is unrolled with {built}")
    elif fixed:
        prog.resolve_counts({k: inputs[k] for k in fixed})   # raises: says which may be given
    return counts, inputs


def run_options(dtype, device, method: str) -> tuple[torch.dtype, torch.device]:
    """`dtype` and `device` of run/encode checked before any work, as InputErrors that say what
    is accepted (not a bare KeyError or torch's AssertionError). A dict in the dtype slot is
    the inputs passed positionally: say to pass them by name."""
    import torch
    if isinstance(dtype, dict):
        raise InputError(f"{method}() takes the inputs by name: prog.{method}(**inputs) or "
                         f"prog.{method}(A=..., ...), not a dict as its first argument "
                         f"(which is the dtype)")
    name = str(dtype).replace("torch.", "")
    if not isinstance(dtype, (str, torch.dtype)):
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:K', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):         # 'meta' holds no numbers; others are untested
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:K', got {device!r}")
    if dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"device {str(dev)!r} is not usable here ({first}); use device='cpu'"
                             ) from None
    return getattr(torch, name), dev


def run_shared(prog, prepared, counts, until, max_steps, dtype, device, watch: bool):
    """A shared build on the structured executor: the looping one (exec_loops.py: each body
    planned once, halting tested between applications) where its plan covers the counts, else
    the plan expanded for these counts (executor.py). (outputs as numpy, domain ranges), or
    None where halting must go through the looped module (a loop run 0 times)."""
    import torch

    from .exec_loops import shared_executor_for
    from .executor import expanded_executor_for
    looping = shared_executor_for(prog)
    extra, ranges = {}, {}
    if until is not None:
        if looping is None:
            return None
        from .halting import structured_until
        done = structured_until(prog, looping, prepared, counts, until, max_steps, dtype, device,
                                watch)
        if done is None:
            return None
        out, steps, converged, ranges = done
        extra = {"steps": steps, "converged": converged}
    else:
        resolved = prog.loops.counts(counts)
        if looping is not None and looping.covers(resolved):
            out, _, ranges = looping.run_inputs(prepared, resolved, dtype, device, watch=watch)
        else:
            ex = expanded_executor_for(prog, resolved)
            out, ranges = ex.run_watched(prepared, dtype, device) if watch else \
                (ex.run_inputs(prepared, dtype, device), {})
    return {**{k: v.detach().to("cpu", torch.float64).numpy() for k, v in out.items()},
            **extra}, ranges
