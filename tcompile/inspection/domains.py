"""`check_domains(prog, **inputs)`: for every MLP piece, the range its real input took on these
inputs, and whether it left the domain the piece was fitted on (outside its domain a piece
clamps, so what it computes there is wrong).

One path for both builds, the one `run`'s module guard takes (runtime/domain_guard.py:
`watch_module` hooks the attention output of each check's layer, the MLP that reads the block
running next; in a shared build that layer runs many times and the range is taken over all of
them, every iteration checked), and one rule for "left its domain" (`domain_guard.outside`).
The answer is a DomainReport: one row per piece (the range, the domain, whether it left it)
and a summary in the program's words: all inside, or which pieces, reading which values of
the program, left their domain at which layers.
"""
from __future__ import annotations

from dataclasses import asdict

from ..runtime.dispatch import split_counts
from ..runtime.domain_guard import outside, settle, watch_module
from ..runtime.program import RotatedProgram


def check_domains(prog, /, **inputs) -> "DomainReport":
    """Run the float64 module on these inputs (a shared build: with its run-time counts by
    name, `steps=50`) and report each MLP piece's input range against its fitted domain. A
    rotated build answers with its original's rows (it computes the same values, to
    rounding)."""
    import torch
    if isinstance(prog, RotatedProgram):
        prog = prog.original
    counts, inputs = split_counts(prog, inputs)
    module = prog.module_for("float64", "cpu")
    x = prog.encode_inputs(prog.prepare_inputs(inputs))
    with watch_module(prog, module, every=True) as seen, torch.no_grad():
        module(x, counts) if prog.loops is not None else module(x)
    ranges = settle(seen)
    rows = []
    for i, chk in enumerate(prog.typed_manifest.domains):
        lo, hi = ranges.get(i, (float("inf"), float("-inf")))      # never read: nothing seen
        rows.append({**asdict(chk), "min": lo, "max": hi,
                     "outside": outside(chk.lo, chk.hi, lo, hi)})
    return DomainReport(prog, rows)


class DomainReport(list):
    """A list of check_domains rows (dicts, as before) that also says what they add up to:
    `all_inside`, `outside` (the rows that left their domain) and `summary` (text; also
    `str(report)`)."""

    def __init__(self, prog, rows: list[dict]):
        super().__init__(rows)
        self._prog = prog

    @property
    def outside(self) -> list[dict]:
        return [r for r in self if r["outside"]]

    @property
    def all_inside(self) -> bool:
        return not self.outside

    @property
    def summary(self) -> str:
        return domain_summary(self._prog, list(self))

    def __str__(self) -> str:
        return self.summary


def domain_summary(prog, rows: list[dict]) -> str:
    """All inside, or one line per (piece, value it reads) that left its domain, with the
    layers where it did and the range seen against the domain fitted."""
    if not rows:
        return "no domain checks: this model has no approximated (clamping) MLP pieces"
    bad = [r for r in rows if r["outside"]]
    if not bad:
        implied = sum(1 for r in rows if r.get("implied"))
        return (f"all {len(rows)} domain checks inside: every MLP piece read inputs within the "
                f"domain it was fitted on" + (f" ({implied} implied by the others, which run's "
                                               "guard reads instead)" if implied else ""))
    names = _reads(prog)
    groups: dict[tuple, list[dict]] = {}
    for r in bad:
        read = names.get(r["block"], r["block"]).rstrip("ᵀ")       # how it is stored: no matter
        groups.setdefault((r["label"], read, r["lo"], r["hi"]), []).append(r)
    lines = [f"{len(bad)} of {len(rows)} domain checks left their domain (there the piece clamps, "
             f"so its output is wrong):"]
    for (label, read, lo, hi), group in groups.items():
        layers = _layers([r["layer"] for r in group])
        seen = f"[{min(r['min'] for r in group):.4g}, {max(r['max'] for r in group):.4g}]"
        lines.append(f"  {_readable(label)}, reading {read}, at {layers}: saw {seen}, fitted on "
                     f"[{lo:.4g}, {hi:.4g}]")
    return "\n".join(lines)


def _layers(layers: list[int]) -> str:
    """`layer 3`, `layers 3, 9`, or for an evenly spaced run of four or more (a piece in a
    loop) `17 layers, 6 to 38 every 2`."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    steps = {b - a for a, b in zip(layers, layers[1:])}
    if len(layers) >= 4 and len(steps) == 1:
        step = steps.pop()
        return f"{len(layers)} layers, {layers[0]} to {layers[-1]}" + (f" every {step}" if step > 1 else "")
    return "layers " + ", ".join(map(str, layers))


def _reads(prog) -> dict[str, str]:
    """Block key → the user's name for it (flows.display_names: `z (line 55)`, `A (input)`)."""
    try:
        from .flows import display_names
        return display_names(prog)
    except Exception:                       # a name is a courtesy: the keys still say where
        return {}


def _readable(label: str) -> str:
    from .naming import readable
    return readable(label)


__all__ = ["check_domains", "DomainReport", "domain_summary"]
