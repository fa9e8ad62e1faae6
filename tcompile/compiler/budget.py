"""The size of a build before it is built: refuse what would not fit, say why.

The dense weights of layer ℓ hold h·(2·dk·D + D²) + 2·hidden·D float64s (h heads, W_V D×D
each), so a width D in the tens of thousands asks for tens of GiB, and the planner itself
spends time and memory growing with D. Two checks, both before any dense array exists:

- `check_early(atoms, ...)`, after the depth pass and before planning, from lower bounds that
  cost nothing: the width is at least the rows of all inputs together (the encoder writes them
  all at once), and every attention atom on the longest chain of attention atoms reading one
  another needs a head with its own D×D W_V in a layer of its own. `-p d=1e9` is refused here
  in well under a second instead of planning for minutes.
- `check_plan(plan, ...)`, after planning and before emitting: the exact layer shapes the
  emitter will allocate (heads, dk and MLP units counted by emit.py's own functions).

Over the limit (`max_memory`; by default runtime/resources.DEFAULT_FRACTION of the available
memory) is a `ModelTooLarge` error naming the estimate, the limit and the params that set the
size.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompileError, ParamError
from ..runtime.resources import DEFAULT_FRACTION, default_memory_limit, format_bytes, format_count
from .poly import TOKEN
from .schedule import attention_time, mlp_time


class ModelTooLarge(CompileError):
    """The compiled model would exceed the memory limit of the build."""


@dataclass(frozen=True)
class SizeEstimate:
    width: int
    layers: int
    heads: int                 # over all layers
    params: int                # entries of the dense weight arrays
    exact: bool                # False: lower bounds (before planning)

    @property
    def bytes(self) -> int:
        return 8 * self.params

    def describe(self) -> str:
        ge = "" if self.exact else "≥ "
        return (f"{'' if self.exact else 'at least '}{format_bytes(self.bytes)} of dense float64 "
                f"weights (width D = {ge}{self.width if self.width < 10 ** 15 else format_count(self.width)}, {ge}{self.layers} layers, {ge}{self.heads} "
                f"heads each with a D×D W_V; {ge}{format_count(self.params)} parameters)")


def resolve_limit(max_memory) -> tuple[float, str]:
    """(limit in bytes, how it was set) from the `max_memory` argument."""
    if max_memory is None:
        limit = default_memory_limit()
        return limit, (f"{DEFAULT_FRACTION:.0%} of the memory available now; raise it with "
                       "--max-memory SIZE or max_memory=BYTES")
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)) or \
            not max_memory > 0:
        raise ParamError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
    return float(max_memory), "the --max-memory / max_memory limit"


def _refuse_if_over(est: SizeEstimate, max_memory, cause: str) -> None:
    limit, how = resolve_limit(max_memory)
    if est.bytes > limit:
        raise ModelTooLarge(f"refusing to build: the model needs {est.describe()}, over the "
                            f"limit of {format_bytes(limit)} ({how}). {cause}")


def check_early(atoms, cause: str, max_memory=None) -> SizeEstimate:
    """Lower bounds from the atom table (before planning); ModelTooLarge if already over."""
    width = sum(_min_rows(a.cshape) for a in atoms.values() if a.kind == "input")
    chain = _attention_chain(atoms)
    est = SizeEstimate(width, chain, chain, chain * width * width, exact=False)
    _refuse_if_over(est, max_memory, cause)
    return est


def _min_rows(cshape) -> int:
    """Rows a stored value takes at least: its smaller non-token dimension."""
    dims = [d for d in cshape if d != TOKEN]
    return int(min(dims)) if dims else 0


def _attention_chain(atoms) -> int:
    """The longest chain of (nonzero) attention atoms each reading the previous one: each
    needs a layer of its own with at least one head."""
    depth: dict[int, int] = {}
    for a, atom in atoms.items():
        below = max((depth.get(f, 0) for f in atom.reads), default=0)
        depth[a] = below + (1 if atom.kind == "attn" and atom.poly else 0)
    return max(depth.values(), default=0)


def check_plan(plan, cause: str, max_memory=None) -> SizeEstimate:
    """The exact dense size of the planned model; ModelTooLarge if over the limit."""
    from . import emit
    D, params, heads = plan.width, 0, 0
    writers = emit.writers_by_time(plan)
    for layer in range(1, plan.n_layers + 1):
        groups = emit.heads_of(writers.get(attention_time(layer), []))
        dk = emit.head_width(plan, groups)
        hidden = emit.mlp_hidden(plan, writers.get(mlp_time(layer), []), mlp_time(layer))
        heads += len(groups)
        params += len(groups) * (2 * dk * D + D * D) + 2 * hidden * D
    est = SizeEstimate(D, plan.n_layers, heads, params, exact=True)
    _refuse_if_over(est, max_memory, cause)
    return est


__all__ = ["ModelTooLarge", "SizeEstimate", "check_early", "check_plan", "resolve_limit"]
