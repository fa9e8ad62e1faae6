"""Trace: where does a compiled model depart from its program?

After every sublayer, every stored block that holds a program variable (`X@3` is the fourth
assignment to X; inputs by name) is decoded from the residual stream and compared with the
reference interpreter's value of that variable at that program point. Rows come out in time
order, so the first row over tolerance names the first layer and variable that went wrong.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from ..language.checker import Val
from ..language.interpreter import NumpyWalker


class RecordingWalker(NumpyWalker):
    """The interpreter, keeping every top-level assignment as `name@k`."""

    def __init__(self, program, params, n):
        super().__init__(program, params, n)
        self.record: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def _assign(self, stmt, env):
        super()._assign(stmt, env)
        if not self.call_stack:
            k = self.counts.get(stmt.target, 0)
            self.counts[stmt.target] = k + 1
            if env[stmt.target].ty.shape is not None:       # an unsized c·I is never stored
                self.record[f"{stmt.target}@{k}"] = np.asarray(env[stmt.target].data, dtype=np.float64)


def interpreter_assignments(program, params, arrays: dict, n) -> dict[str, np.ndarray]:
    """Every assignment's value for each problem of the (batched) inputs: name@k → (B, ...)."""
    size = next(iter(arrays.values())).shape[0] if arrays else 1
    per_problem = []
    for b in range(size):
        walker = RecordingWalker(program, params, n)
        walker.inputs = set(arrays)
        env = {d.name: Val(walker.input_type(d), arrays[d.name][b]) for d in program.inputs}
        walker.run(env)
        per_problem.append(walker.record)
    return {k: np.stack([r[k] for r in per_problem]) for k in per_problem[0]}


ROUNDING_PROBE = 1e-15        # relative input perturbation that stands in for float64 rounding
ROUNDING_FACTOR = 100.0       # how much worse than the interpreter's own rounding is tolerated


def rounding_sensitivity(program, params, arrays: dict, n) -> dict[str, float]:
    """How much each variable moves (relative) when the inputs move by ~1 ulp: the amount by
    which float64 rounding alone can separate two correct evaluations of this program on
    these inputs. Ill-conditioned problems amplify it; a fixed tolerance would not know."""
    base = interpreter_assignments(program, params, arrays, n)
    rng = np.random.default_rng(0)
    nudged = {k: a * (1 + ROUNDING_PROBE * rng.choice([-1.0, 1.0], size=a.shape))
              for k, a in arrays.items()}
    moved = interpreter_assignments(program, params, nudged, n)
    return {k: _rel(moved[k], v) for k, v in base.items() if k in moved}


def _rel(got, ref) -> float:
    if not np.size(ref):
        return 0.0
    return float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-300)


def trace_program(prog, **inputs) -> list[dict]:
    """Rows (layer, sublayer, variable, block, max_abs_err, rel_err, tol, ok) in time order.

    A value is ok within the report's predicted gap, or within ROUNDING_FACTOR times what
    rounding alone moves it on these inputs (ill-conditioned problems), whichever is larger."""
    arrays, _batch, n = prog._validated(inputs)
    params = {k: float(v) for k, v in prog.manifest["params"].items()}
    want = interpreter_assignments(prog.program, params, arrays, n)
    sensitivity = rounding_sensitivity(prog.program, params, arrays, n)
    want.update({f"input:{name}": a for name, a in arrays.items()})
    states = prog.forward_states(prog._encode_arrays(arrays, n, torch.float64, "cpu"))
    base_tol = prog.predicted_rtol()
    blocks = prog.manifest["blocks"]
    rows = []
    for t in range(1, len(states)):
        h = states[t].numpy()
        overwritten = {r for b in blocks if b["written"] == t for r in b["rows"]}
        for blk in blocks:
            end = blk["last_read"] if blk["last_read"] >= 0 else len(states)
            if not blk["written"] <= t <= end:
                continue
            if blk["written"] < t and overwritten & set(blk["rows"]):
                continue                        # its rows were reused in this sublayer
            if blk["kind"] == "const":
                want.setdefault(blk["key"], _const_value(prog, blk, arrays, n))
                names = [blk["key"]]
            else:
                names = list(blk["vars"]) or ([f"input:{blk['name']}"] if blk["kind"] == "input" else [])
            for var in names:
                if var not in want:
                    continue
                ref = want[var]
                got = prog.read_block(h, blk, list(ref.shape[1:]))
                err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
                rel = _rel(got, ref)
                tol = max(base_tol, ROUNDING_FACTOR * sensitivity.get(var, 0.0))
                rows.append({"layer": (t + 1) // 2, "sublayer": "attn" if t % 2 else "mlp",
                             "variable": var, "block": blk["key"], "max_abs_err": err,
                             "rel_err": rel, "tol": tol, "ok": bool(rel <= tol or err <= tol)})
    return rows


def _const_value(prog, blk, arrays, n) -> np.ndarray:
    """A constant block's canonical value (batch, r, c), as the encoder wrote it."""
    B = next(iter(arrays.values())).shape[0] if arrays else 1
    storage = prog._storage_at_input(blk, arrays, B, n)
    return np.swapaxes(storage, 1, 2) if blk["transposed"] else np.asarray(storage)


def first_departure(rows: list[dict]) -> dict | None:
    return next((r for r in rows if not r["ok"]), None)


def format_trace(rows: list[dict]) -> str:
    lines = [" layer  sub   variable          block             max abs err    rel err   ok"]
    for r in rows:
        lines.append(f" {r['layer']:>5}  {r['sublayer']:<4}  {r['variable']:<16}  {r['block']:<16}"
                     f"  {r['max_abs_err']:11.3e}  {r['rel_err']:9.2e}   {'yes' if r['ok'] else 'NO'}")
    bad = first_departure(rows)
    lines.append("")
    lines.append("every traced value matches the interpreter" if bad is None else
                 f"first departure: layer {bad['layer']} ({bad['sublayer']}), variable "
                 f"{bad['variable']}, relative error {bad['rel_err']:.2e} > {bad['tol']:.1e}")
    return "\n".join(lines)


def write_trace(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1) + "\n")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["layer"])
        writer.writeheader()
        writer.writerows(rows)
