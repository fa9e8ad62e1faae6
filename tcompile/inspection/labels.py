"""A labelled residual stream: for every sublayer and every row, which user variable it holds.

Ground truth for probing and circuit-finding methods, read off the layout and the weights (no
run): row r after sublayer t (0: the encoder, 2L+1: the attention of layer L, 2L+2: its MLP,
as in layout.py) holds the block written last into r at or before t, if any:

- `live`: the block's value is still to be read (or is an output, kept to the end);
- `dead`: nothing reads it any more, but no later block has reused the row, so the value is
  still there, bit for bit as written (the residual stream keeps what it is not told to
  change);
- `cleared`: the compiler has zeroed the row after the value's last read, and no later block
  has been written there yet: the row holds 0. `cleared_at` says which sublayer cleared it
  (an MLP that clears a dead value exactly before the next occupant of its rows is written,
  compiler/rows.py `_clearing_mlp`; clears.py finds them in the weights); the row's other
  fields still name the value that was there, as a dead row's do. A value its last reader
  clears (the MLP that reads it last zeroes it in the same sublayer) is `cleared` from that
  sublayer on, not `live`: the stream after it holds 0. Every other clear happens in the
  sublayer that writes the next value into the row, which is then `live`;
- `free`: no block has written the row yet (it is zero).

`cleared` is not `free` again: the MLP units that write into a cleared row are the erasure of
a named value, which a circuit-finding method should be able to tell from a row never used.

So a row holds its block's value exactly where it is `live` or `dead`, and 0 where it is
`cleared` or `free` (tests/test_labels_states.py holds every shipped program's labels to its
residual stream). `cleared_at` is None in every other status.

A block holding a C of shape r×c keeps row i of C in its i-th row (entries C[i, j] at tokens
j < c), or, stored transposed, column i of C (entries C[j, i] at tokens j < r): `axis` says
which ("row"/"col"), `index` which, `tokens` over how many token columns ("n": all).

The variable is named as the trace names it: `x@3`, the fourth assignment to x (`point`), with
its name, the source line of the assignment and its `iteration` (how many earlier assignments
to the same name the same statement made: the loop iteration of a statement inside a repeat,
counted from 0); inputs are `input:A`, encoder constants `const:eye` (I), `const:inv_n` (1/n).
Several program points may share one block (a copy `w = b` stores nothing new): `points`
lists them all, `point` is the last. A value the program never named (`X @ w` inside a
statement, which the compiler stores for a later piece or head) is a `temporary`: its `name`
is its text as written in the program (`X @ w`; a clamp the compiler adds, `clip(X @ w, -1,
1)`), `line` that text's line, `point` the block's key (`tmp30`).

A shared build runs its stored layers many times, so its labels are those of a run at given
run-time counts (`residual_labels(prog, steps=50)`, the built counts by default): one sublayer
per sublayer the run executes (2·len(prog.loops.expand(counts)) + 1, as `prog.sublayer_states
(inputs, steps=50)`), read off the layout of that run (run_layout.py), its points named by the
run's iterations, its clears those of the stored layers where the run executes them. Counts
that run's layout cannot be derived for are refused with an InputError that says why
(run_layout.py lists them).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..language.points import point_count, point_variable
from ..runtime import clock
from ..runtime.layout import Block, Layout
from ..runtime.program import RotatedProgram
from .naming import constant_name

LIVE, DEAD, CLEARED, FREE = "live", "dead", "cleared", "free"
STATUSES = (LIVE, DEAD, CLEARED, FREE)
FIELDS = ("sublayer", "layer", "part", "row", "status", "kind", "name", "point", "points",
          "line", "iteration", "axis", "index", "tokens", "block", "cleared_at")


@dataclass(frozen=True)
class RowLabel:
    """What row `row` of the residual stream holds just after `sublayer`."""
    sublayer: int          # 0: encoder, 2L+1: attention of layer L, 2L+2: its MLP
    layer: int | None      # L (None for the encoder)
    part: str              # "embed" | "attn" | "mlp"
    row: int
    status: str            # live | dead | cleared | free
    kind: str | None       # variable | temporary | input | const (None when free)
    name: str | None       # the user's name: x, A, I, 1/n (None when free)
    point: str | None      # x@3, input:A, const:eye
    points: tuple[str, ...]
    line: int | None       # source line of the assignment (of the input declaration)
    iteration: int | None  # earlier assignments to the name by the same statement
    axis: str | None       # "row": entries value[index, j]; "col": entries value[j, index]
    index: int | None
    tokens: int | str | None    # token columns holding entries ("n": every token)
    block: str | None      # the layout block's key
    cleared_at: int | None = None   # cleared: the sublayer that zeroed the row (else None)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["points"] = list(self.points)
        return d


def _where(t: int) -> tuple[int | None, str]:
    return (None, "embed") if t == clock.ENCODER else (clock.layer_of(t), clock.sublayer_of(t))


def _describe(blk: Block, lines: dict[str, int], iterations: dict[str, int],
              input_lines: dict[str, int]) -> dict:
    """The fields a block gives every row it holds (all but row, index and status)."""
    if blk.kind == "const":
        return {"kind": "const", "name": constant_name(blk.key),
                "point": blk.key, "points": (blk.key,), "line": None, "iteration": None}
    if blk.kind == "input":
        point = f"input:{blk.name}"
        return {"kind": "input", "name": blk.name, "point": point, "points": (point,),
                "line": input_lines.get(blk.name), "iteration": None}
    if not blk.vars:            # a value the program never named: its text as written
        return {"kind": "temporary", "name": blk.expr or blk.key, "point": blk.key,
                "points": (blk.key,), "line": blk.line, "iteration": None}
    point = blk.vars[-1]
    return {"kind": "variable", "name": point_variable(point), "point": point,
            "points": tuple(blk.vars), "line": lines.get(point), "iteration": iterations.get(point)}


def iterations_of(lines: dict[str, int]) -> dict[str, int]:
    """`x@k` → how many earlier assignments to x were made by the statement (line) of x@k."""
    seen: dict[tuple[str, int], int] = {}
    out = {}
    for point in sorted(lines, key=lambda p: (point_variable(p), point_count(p))):
        key = (point_variable(point), lines[point])
        out[point] = seen.get(key, 0)
        seen[key] = out[point] + 1
    return out


def label_layout(layout: Layout, lines: dict[str, int],
                 input_lines: dict[str, int] | None = None,
                 clears: dict[int, tuple[int, ...]] | None = None) -> list[RowLabel]:
    """Every (sublayer, row) of this layout labelled, sublayer-major. `lines`: `x@k` → source
    line (naming.assignment_lines); `clears`: sublayer → the rows it zeroes (clears.py's
    cleared_rows of the layout and its layers; none given: no row is labelled cleared)."""
    clears = clears or {}
    iterations = iterations_of(lines)
    input_lines = input_lines or {}
    n_sub = layout.n_sublayers
    order = sorted(layout.blocks, key=lambda b: b.written)       # stable: layout order in a time
    described = {id(b): _describe(b, lines, iterations, input_lines) for b in order}
    holder: list[tuple[Block, int, int | None] | None] = [None] * layout.width
    out = []
    by_time: dict[int, list[Block]] = {}
    for b in order:
        by_time.setdefault(b.written, []).append(b)
    for t in range(n_sub + 1):
        for b in by_time.get(t, []):
            for i, r in enumerate(b.rows):
                holder[r] = (b, i, None)
        for r in clears.get(t, ()):
            if holder[r] is not None and holder[r][2] is None:
                holder[r] = (*holder[r][:2], t)
        layer, part = _where(t)
        for r in range(layout.width):
            if holder[r] is None:
                out.append(RowLabel(t, layer, part, r, FREE, None, None, None, (), None, None,
                                    None, None, None, None))
                continue
            b, i, cleared_at = holder[r]
            status = CLEARED if cleared_at is not None else \
                LIVE if t <= b.live_until(n_sub) else DEAD
            out.append(RowLabel(t, layer, part, r, status, axis="col" if b.transposed else "row",
                                index=i, tokens=b.storage_ext, block=b.key,
                                cleared_at=cleared_at, **described[id(b)]))
    return out


def residual_labels(prog, /, **counts) -> list[RowLabel]:
    """`tcompile.residual_labels(prog)`: the labels of every sublayer a run executes (see the
    module docstring); a shared build's at its run-time counts, by param name (`steps=50`;
    the built counts by default). A rotated build has its original's labels: row r of a label
    is the direction `prog.directions[:, r]` of its stream (labels_json adds the directions)."""
    from .clears import cleared_rows
    from .run_layout import run_layers, run_layout
    if isinstance(prog, RotatedProgram):
        prog = prog.original
    layout, lines = run_layout(prog, **counts)
    input_lines = {d.name: d.loc.line for d in prog.program.inputs}
    clears = cleared_rows(layout, run_layers(prog, **counts))
    return label_layout(layout, lines, input_lines, clears)


def labels_to_json(labels: list[RowLabel], extra: dict | None = None) -> str:
    """The labels as JSON: {"labels": [...], **extra} (extra: e.g. the rotation's directions)."""
    return json.dumps({**(extra or {}), "labels": [lab.as_dict() for lab in labels]},
                      indent=None, separators=(",", ":")) + "\n"


def labels_json(prog, /, **counts) -> str:
    """The labels as JSON (`tcompile labels -o FILE.json`); a rotated build's with its rotation:
    {"seed", "keep_io", "directions" (D lists: entry r is the direction of original row r),
    "labels"} (what `tcompile build --rotate` writes beside the rotated weights)."""
    extra = None
    if isinstance(prog, RotatedProgram):
        extra = {"seed": prog.seed, "keep_io": prog.keep_io,
                 "directions": [prog.Q[:, r].tolist() for r in range(prog.width)]}
    return labels_to_json(residual_labels(prog, **counts), extra)


def labels_to_csv(labels: list[RowLabel]) -> str:
    """The labels as CSV, one line per (sublayer, row); `points` joined with '|'."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for lab in labels:
        d = lab.as_dict()
        d["points"] = "|".join(d["points"])
        writer.writerow({k: "" if v is None else v for k, v in d.items()})
    return buf.getvalue()


def labels_text(labels: list[RowLabel], path: Path | str) -> str:
    """The labels in the format `path`'s suffix names (.json or .csv)."""
    suffix = Path(path).suffix
    if suffix == ".json":
        return labels_to_json(labels)
    if suffix == ".csv":
        return labels_to_csv(labels)
    raise ValueError(f"labels are written as .csv or .json, not {suffix or 'a file without suffix'!r}")


__all__ = ["RowLabel", "LIVE", "DEAD", "CLEARED", "FREE", "STATUSES", "FIELDS", "label_layout",
           "residual_labels", "iterations_of", "labels_json", "labels_to_json", "labels_to_csv",
           "labels_text"]
