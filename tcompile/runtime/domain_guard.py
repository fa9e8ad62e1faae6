"""The run-time domain guard: did every fitted MLP piece see only values inside its domain?

A piece fitted on [lo, hi] (a PL seed of a division, a sigmoid on [-6, 6]) clamps outside it:
the run then returns numbers off by 1e-3 or more and nothing else says so. The manifest lists,
per piece, the block holding its real input and the layer after whose attention it is read
(manifest.DomainCheck). `run` records the min and max of each such block as the run goes (the
structured executor: one reduction per check, right after the sublayer that writes it; the
module: a forward hook on that layer's attention output) and, after the run, `enforce` raises
a DomainError naming the statement, the variable, the domain and the range seen (or warns, or
does nothing: run(..., domains="raise" | "warn" | "off")).

`outside` is the one rule for "left its domain", and `watch_module` the one way to read the
ranges through the module: run's module path, a rotated build's run (reading the stream
rotated back) and inspection/domains.py's check_domains all use it.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import DomainError, InputError

MODES = ("raise", "warn", "off")
RTOL = 1e-9        # rounding slack, relative to the bound (domains span up to 1e-120 .. 1e120)


def guarded(domains) -> list[tuple[int, object]]:
    """(index, check) of the checks `run`'s guard reads: all but those the others imply
    (DomainCheck.implied: a fitted piece's output whose input is checked). The one rule for
    it: the structured executors, the looping one and the module's hooks all take this list."""
    return [(i, chk) for i, chk in enumerate(domains) if not chk.implied]


def check_mode(mode) -> str:
    if mode not in MODES:
        raise InputError(f"domains must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def outside(lo: float, hi: float, seen_lo: float, seen_hi: float) -> bool:
    """Did values in [seen_lo, seen_hi] leave [lo, hi]? Slack RTOL relative to each bound (a
    bound of 0: relative to the other bound's size, at most 1), so rounding at a bound is not
    an error and a geometric domain such as [1e-3, 1e15] is not widened by 1e-9 · 1e15."""
    def slack(b, other):
        return RTOL * (abs(b) if b != 0 else min(1.0, abs(other)))
    if seen_lo != seen_lo or seen_hi != seen_hi:       # NaN seen: certainly not in the domain
        return True
    return seen_lo < lo - slack(lo, hi) or seen_hi > hi + slack(hi, lo)


def merge(ranges) -> dict[int, tuple[float, float]]:
    """(check index, min, max) triples (a check read many times: a loop) → check → range."""
    out: dict[int, tuple[float, float]] = {}
    for i, lo, hi in ranges:
        if i in out:
            a, b = out[i]
            if any(v != v for v in (a, b, lo, hi)):        # NaN anywhere: the range is NaN
                lo = hi = float("nan")
            else:
                lo, hi = min(a, lo), max(b, hi)
        out[i] = (lo, hi)
    return out


def enforce(prog, ranges: dict[int, tuple[float, float]], mode: str) -> None:
    """Raise (or warn about) the first check whose range left its domain, all of them named."""
    if mode == "off":
        return
    checks = prog.typed_manifest.domains
    bad = [(checks[i], lo, hi) for i, (lo, hi) in sorted(ranges.items())
           if outside(checks[i].lo, checks[i].hi, lo, hi)]
    if not bad:
        return
    source = prog.info.source.split("\n")
    rows = [_describe(chk, lo, hi, _lines_of(prog, chk), source, _text_of(prog, chk.block))
            for chk, lo, hi in bad]
    shown = rows[:SHOWN] + ([f"and {len(rows) - SHOWN} more"] if len(rows) > SHOWN else [])
    message = (f"{len(bad)} fitted piece{'s' if len(bad) > 1 else ''} saw values outside "
               "its fitted domain (a piece clamps there: the result is wrong):\n"
               + "\n".join(f"  {r}" for r in shown) + "\n"
               "widen the domain (`on [lo, hi]`), rescale the inputs, or run with "
               "domains='warn' or 'off'")
    if mode == "warn":
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return
    raise DomainError(message)


SHOWN = 5      # checks listed in a DomainError's message


def _lines_of(prog, chk) -> tuple[int, ...]:
    """The source lines of the statements applying the check's piece, its own first (the
    check's `lines`; an artifact written before they were recorded has none), then the
    others the same fit serves: the approximation records of the same function
    (`reciprocal`, `sigmoid`, ...) on the same domain (a fit is one record however many
    statements use it)."""
    fn = _function(chk.label)
    lines: set[int] = set()
    for a in prog.typed_manifest.approximations:
        if _function(a.name) == fn and a.lo == chk.lo and a.hi == chk.hi:
            lines.update(a.lines)
    own = tuple(sorted(chk.lines))
    return own + tuple(sorted(lines - set(own)))


def _function(label: str) -> str:
    return label.removeprefix("seed of ").split("(")[0].strip()


def _text_of(prog, key: str) -> str | None:
    """The program text a temporary block computes, as written (`g @ g + 1e-6`), where the
    layout records it: a message names what the user wrote, not only `tmp164`."""
    try:
        return prog.layout.block(key).expr
    except KeyError:
        return None


def _describe(chk, lo: float, hi: float, lines: tuple, source: list[str],
              computes: str | None = None) -> str:
    """One line of the message: the statement, the piece, the variable (block; a temporary
    with its text as written), the range seen and the domain."""
    if lines:
        text = source[lines[0] - 1].strip() if 0 < lines[0] <= len(source) else ""
        others = f" (also line {', '.join(map(str, lines[1:]))})" if len(lines) > 1 else ""
        at = f"line {lines[0]} `{text}`{others}: "
    else:
        at = ""
    what = f"`{computes}` ({chk.block}, after layer {chk.layer})" if computes else \
        f"{chk.block} (after layer {chk.layer})"
    return (f"{at}{chk.label} read {what}: values in "
            f"[{lo:.6g}, {hi:.6g}], fitted on [{chk.lo:.6g}, {chk.hi:.6g}]")


@contextmanager
def watch_module(prog, module, enabled: bool = True, read=None, every: bool = False):
    """Record each check's range while `module` runs (a CompiledTransformer: blocks[layer];
    a LoopedTransformer: stored[layer], every iteration): yields the list of (check, (min,
    max)) pairs the hooks fill (`settle` turns them into ranges). `read` maps the stream the
    module computes to the layout's rows first (a rotated build's `unrotate_state`). The
    checks `guarded` lists, or `every` one (check_domains' report)."""
    import torch
    seen: list = []
    handles = []
    if enabled:
        layers = module.stored if hasattr(module, "stored") else module.blocks
        domains = prog.typed_manifest.domains
        for i, chk in (enumerate(domains) if every else guarded(domains)):
            blk = prog.layout.block(chk.block)
            rows = list(blk.rows)

            def hook(_m, _inp, out, i=i, blk=blk, rows=rows):
                h = out if read is None else read(out)
                vals = h[:, :blk.storage_cols(h.shape[1]), rows]
                seen.append((i, torch.aminmax(vals)))
            handles.append(layers[chk.layer].hook_resid_mid.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def observe(reads, seen: list, done: dict | None = None) -> None:
    """(check, tensor) pairs → (check, aminmax) appended to `seen`, one reduction per tensor:
    checks of the same block at the same point (two pieces fitted on one variable) read the
    same tensor and share its reduction. `done`, kept by the caller over a whole run, shares
    it between points too: a tensor not written since (same object, same version counter),
    such as an input every Newton step's product piece reads (newton_logistic's A), is reduced
    once per run, not once per step."""
    import torch
    done = {} if done is None else done
    for i, x in reads:
        key = (id(x), x._version)
        if key not in done:
            # the order of the entries is no matter to a min and max: a transposed view of a
            # contiguous tensor (an input read as Kᵀ) is reduced in its memory order (3×
            # faster than through its strides at B = 64)
            flat = x.mT if x.dim() >= 2 and not x.is_contiguous() and x.mT.is_contiguous() else x
            done[key] = (x, torch.aminmax(flat))     # x kept: its id is not reused meanwhile
        seen.append((i, done[key][1]))


@dataclass(frozen=True)
class Packed:
    """Which checks a stacked tensor of reductions answers: check `checks[k]`'s (min, max)
    are its entries 2·at[k] and 2·at[k] + 1."""
    checks: tuple[int, ...]
    at: tuple[int, ...]


def pack(seen: list) -> list:
    """(check, aminmax) pairs → [(Packed, one tensor of every distinct reduction)]: stacked
    by the run itself (one call, part of its generated code), so that `settle` reads one
    tensor, not a pair of scalars per check, and the generated forward returns one tensor,
    not two per check (at B = 64 the per-scalar reads cost newton_logistic's guard as much as
    its reductions). For a whole forward; a loop's segments keep their pairs (a stack per
    application would cost more than it saves)."""
    if not seen:
        return []
    import torch
    at: dict[int, int] = {}
    parts = []
    for _, mm in seen:
        if id(mm) not in at:
            at[id(mm)] = len(at)
            parts.extend(mm)
    return [(Packed(tuple(i for i, _ in seen), tuple(at[id(mm)] for _, mm in seen)),
             torch.stack(parts))]


def settle(seen: list) -> dict[int, tuple[float, float]]:
    """What a run saw → check → (min, max) in floats: (check, (min tensor, max tensor)) pairs
    (the module's hooks, a loop's segments: read by .item() on the CPU, else in one transfer)
    and `pack`'s (Packed, tensor) entries (one transfer each)."""
    if not seen:
        return {}
    import torch
    ranges = []
    for packed, t in seen:
        if isinstance(packed, Packed):
            v = t.double().cpu().tolist()
            ranges += [(i, v[2 * j], v[2 * j + 1]) for i, j in zip(packed.checks, packed.at)]
    pairs = [(i, mm) for i, mm in seen if not isinstance(i, Packed)]
    if pairs:
        uniq = {id(mm): mm for _, mm in pairs}   # a reduction several checks share, once
        if pairs[0][1][0].device.type == "cpu":  # no transfer to save: .item() is cheaper
            vals = {k: (mm[0].item(), mm[1].item()) for k, mm in uniq.items()}
        else:                                    # one transfer (a sync) for all of them
            flat = torch.stack([x for mm in uniq.values() for x in mm]).double().cpu().tolist()
            vals = {k: (flat[2 * j], flat[2 * j + 1]) for j, k in enumerate(uniq)}
        ranges += [(i, *vals[id(mm)]) for i, mm in pairs]
    return merge(ranges)


__all__ = ["MODES", "guarded", "check_mode", "outside", "merge", "enforce", "watch_module", "observe",
           "pack", "Packed", "settle"]
