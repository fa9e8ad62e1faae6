"""The cost of a run before it runs: refuse what cannot finish or cannot fit, say why.

A build refuses a model whose weights would not fit (compiler/budget.py); a run has two costs
of its own that the caller sets, and both are estimated here from sizes alone, before any
tensor exists:

- memory: the residual stream is batch × n × D numbers, held by the encoder (float64 numpy),
  as the model's input and as its working state, plus the largest per-layer intermediate of
  the paper-form module (every head's V over the stream, every MLP unit over every token).
  Over the limit — runtime/resources.DEFAULT_FRACTION of the memory available now, as for a
  build — is an InputError naming the estimate and the batch size and n that set it. A batch
  of 3,000,000 problems is refused here instead of failing inside torch's allocator.
- time: a shared build runs its loop bodies as often as its run-time counts (or `max_steps`)
  say, so `steps=10**12` asks for 10**12 layer applications. The estimate is a LOWER bound —
  every layer application costs at least MIN_SECONDS_PER_LAYER (a kernel launch), and the
  flops it must do at most FAST_FLOPS per second — so only runs that certainly take longer
  than MAX_RUN_SECONDS are refused; a long but possible run is left alone. (The structured
  executor expands a shared build's loops into one plan first, so for it the layer
  applications also count against memory: PLAN_BYTES_PER_LAYER each.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from . import resources
from .layout import Layout

MIN_SECONDS_PER_LAYER = 5e-6    # the least one layer application costs on any device
FAST_FLOPS = 1e14               # more float operations per second than any one device does
MAX_RUN_SECONDS = 24 * 3600     # a run certain to take longer than a day is refused
PLAN_BYTES_PER_LAYER = 1024     # the least an expanded layer's plan keeps (about 10 KiB measured)
# a run estimated below this is not checked against the memory available: reading it
# (/proc/meminfo and the cgroup's files, twice per run) took ~0.1 ms, a tenth of a 1 ms run
ALWAYS_FITS = 64 * 2 ** 20
INT64_MAX = 2 ** 63 - 1         # the largest step count a run can report (as int64)


@dataclass(frozen=True)
class RunEstimate:
    """What a run will cost, from its sizes: layer applications, float operations (a lower
    bound) and peak bytes of memory."""
    batch: int
    n: int
    layer_runs: int            # layer applications (loops at their counts)
    flops: float               # lower bound over the run, all problems
    bytes: float               # peak memory of the run

    @property
    def min_seconds(self) -> float:
        """A lower bound on the run's time (see the module docstring)."""
        return self.layer_runs * MIN_SECONDS_PER_LAYER + self.flops / FAST_FLOPS


def estimate_run(layout: Layout, batch: int, n: int, layer_runs: int, itemsize: int = 8,
                 expanded: bool = False) -> RunEstimate:
    """The cost of `layer_runs` layer applications on `batch` problems of `n` tokens;
    `expanded`: a shared build's loops are expanded into a plan of `layer_runs` layers first
    (the structured executor's way), at least PLAN_BYTES_PER_LAYER each."""
    D = layout.width
    stream = batch * n * D
    widest = max((s.heads * (2 * s.dk + D) + s.mlp_hidden for s in layout.layers), default=0)
    peak = 8 * stream + 2 * itemsize * stream + itemsize * batch * n * widest
    if expanded:
        peak += PLAN_BYTES_PER_LAYER * layer_runs
    cheapest = min((_layer_flops(s, D) for s in layout.layers), default=0)
    return RunEstimate(batch, n, layer_runs, float(layer_runs) * batch * n * cheapest, float(peak))


def _layer_flops(spec, D: int) -> int:
    """Per problem and token, the fewest float operations a layer of this spec can cost: each
    head reads the D-wide stream into its K and Q, each MLP unit reads it once."""
    return 2 * D * (2 * spec.heads * spec.dk + spec.mlp_hidden) or 1


def check_run(est: RunEstimate, what: str) -> RunEstimate:
    """Refuse (InputError) a run over the memory limit or certain to outlast MAX_RUN_SECONDS;
    `what` says what set the cost, for the message."""
    if est.min_seconds > MAX_RUN_SECONDS:
        raise InputError(
            f"refusing to run: {what} means {est.layer_runs:.3g} layer applications, at least "
            f"{_duration(est.min_seconds)} on any device (the limit is "
            f"{_duration(MAX_RUN_SECONDS)}): ask for fewer iterations")
    if est.bytes <= ALWAYS_FITS:
        return est
    limit = resources.default_memory_limit()
    if est.bytes > limit:
        raise InputError(
            f"refusing to run: {est.batch:,} problem{'s' * (est.batch != 1)} of n = {est.n:,} "
            f"tokens ({what}, {est.layer_runs:,} layer applications) need about "
            f"{resources.format_bytes(est.bytes)} of memory for the residual stream and its "
            f"intermediates, over the limit of {resources.format_bytes(limit)} "
            f"({resources.DEFAULT_FRACTION:.0%} of the memory available now): run fewer "
            "problems at a time, or fewer iterations")
    return est


def whole_count(value, what: str, lo: int = 1, hi: int = INT64_MAX) -> int:
    """A count given at run time (max_steps, a repeat count) as an int in [lo, hi]: InputError
    for a bool, a fraction, a non-number or a value outside (numpy and torch cannot hold a step
    count past int64)."""
    import numbers
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            (isinstance(value, float) and not math.isfinite(value)) or value != int(value):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise InputError(f"{what} must be between {lo} and {hi:,}, got {value:,}")
    return value


def _duration(seconds: float) -> str:
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}{'s' * (seconds != size)}"
    return f"{seconds:.3g} s"


__all__ = ["RunEstimate", "estimate_run", "check_run", "whole_count", "MAX_RUN_SECONDS",
           "MIN_SECONDS_PER_LAYER", "FAST_FLOPS", "INT64_MAX"]
