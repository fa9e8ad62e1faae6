"""Every label of every shipped program against the residual stream it labels.

Oracles: the model's own states after every sublayer (`prog.sublayer_states`, float64) and the
float64 interpreter. For every program in programs/ at small params (unrolled), and for shared
builds whose runs clear rows, at run-time counts their base unrolling never ran:

- a `live` row holds its program point's entries, within the trace's tolerance policy;
- a `live` or `dead` row holds, bit for bit, what its block wrote there (the state of that row
  just after the block's write): nothing has touched it since — so a dead row of a nonzero
  value is not zero;
- a `free` row is exactly zero, and so is a `cleared` row: the sublayer named by `cleared_at`
  zeroed it, after the value's last read (a clear never takes a value still to be read), and
  just before that sublayer the row still held the value.

Before `cleared` (inspection/clears.py), the rows the compiler clears exactly between a value's
last read and the next write (rows.py `_clearing_mlp`) were labelled `dead` while the stream
held 0 there: at these params 30 labels (27 rows of blocks) in power_iteration, 34 in
conjugate_gradient (2 of them `live`: a value cleared by the MLP that reads it last), 41 in
lanczos, 25 in gram_schmidt_qr and 10 in kaczmarz (CLEARED_LABELS)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

import builds
import tcompile
from cli_in_process import run_in_process
from tcompile.inspection.clears import cleared_rows
from tcompile.runtime.artifact import _compact, _expand, manifest_from_json, manifest_to_json
from tcompile.inspection.labels import CLEARED, DEAD, FREE, LIVE, STATUSES, label_layout
from tcompile.inspection.run_layout import run_layers, run_layout
from tcompile.inspection.sampling import sample_inputs
from test_labels_shared import interpreter_values

# every program in programs/ at params small enough to build and run in well under a second
SMALL = {
    "adam_least_squares": {"d": 2, "steps": 2}, "conjugate_gradient": {"d": 2, "steps": 2},
    "cubic_newton_schulz": {"d": 2, "steps": 2},
    "denman_beavers": {"d": 2, "steps": 2, "inv_steps": 2}, "expm": {"d": 2, "s": 1, "p": 3},
    "fista_elastic_net": {"d": 2, "steps": 2}, "gd_least_squares": {"d": 2, "steps": 2},
    "gd_logistic": {"d": 2, "steps": 2}, "gram_schmidt_qr": {}, "huber_irls": {"d": 2, "steps": 2},
    "ista_lasso": {"d": 2, "steps": 2}, "jacobi": {"d": 2, "steps": 2, "inv_steps": 2},
    "kaczmarz": {"d": 2, "sweeps": 1}, "lanczos": {"d": 3}, "least_squares": {"d": 2, "steps": 2},
    "newton_inverse": {"d": 2, "steps": 2},
    "newton_logistic": {"d": 2, "steps": 2, "inv_steps": 2},
    "newton_logistic_warm": {"d": 2, "steps": 2}, "newton_schulz_sign": {"d": 2, "steps": 2},
    "newton_schulz_sqrt": {"d": 2, "steps": 3}, "poisson_newton": {"d": 2, "steps": 2},
    "power_iteration": {"d": 3, "steps": 3}, "ridge_newton_schulz": {"d": 2, "steps": 2},
    "sinkhorn": {"iters": 1}, "softmax_regression": {"d": 2, "K": 2, "steps": 2},
    "sor": {"d": 2, "steps": 2, "inv_steps": 2},
}
# the labels these params give `cleared` (before: `dead`, or `live` where the MLP that reads a
# value last also clears it; architecture.md §6 quotes them): every other program clears
# rows only in the sublayer that writes their next value
CLEARED_LABELS = {"conjugate_gradient": 34, "gram_schmidt_qr": 25, "kaczmarz": 10,
                  "lanczos": 40, "power_iteration": 30}
# shared builds whose runs clear rows, at counts their base unrolling did not run
SHARED = [("power_iteration", {"d": 3, "steps": 6}, [{"steps": 4}, {"steps": 8}]),
          ("kaczmarz", {"d": 2, "sweeps": 3}, [{"sweeps": 5}])]


def test_every_shipped_program_is_checked():
    shipped = {p.stem for p in builds.PROGRAMS.glob("*.tp")}
    assert shipped == set(SMALL)


def canonical(v: np.ndarray) -> np.ndarray:
    """(B, ...) → (B, r, c) as the layout stores values (a vector is a column)."""
    return v[:, None, None] if v.ndim == 1 else v[:, :, None] if v.ndim == 2 else v


def write_times(layout) -> dict[tuple[str, int], list[int]]:
    """(block key, row) → the sublayers that write that block into that row (a shared run's
    temporaries keep their key in every application)."""
    out: dict[tuple[str, int], list[int]] = {}
    for b in layout.blocks:
        for r in b.rows:
            out.setdefault((b.key, r), []).append(b.written)
    return out


def draw(prog, params: dict, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of a batch of 2 in the program's domains: sinkhorn's fitted reciprocals
    hold for Gibbs kernels of costs in [0, 1] and near-uniform target masses (the program
    says so), which the generic sampler does not draw."""
    n = max(prog.layout.min_tokens, 5)
    if prog.name == "sinkhorn":
        rng = np.random.default_rng(seed)
        b = rng.uniform(0.5, 1.5, (2, 8))
        return {"K": np.exp(-rng.uniform(0, 1, (2, n, 8)) / 0.5), "b": b / b.sum(1, keepdims=True)}
    return sample_inputs(prog.program, params, n=n, batch=2, seed=seed)


def check_against_states(prog, params: dict, counts: dict, seed: int) -> dict[str, int]:
    """Hold every label of the run at `counts` to the states of that run on random inputs
    (the module docstring's rules); how many labels of each status were checked."""
    inputs = draw(prog, params, seed)
    prepared = prog.prepare_inputs(inputs)
    want, policy = interpreter_values(prog, prepared, counts)
    states = prog.sublayer_states(prepared, **counts)
    labels = tcompile.residual_labels(prog, **counts)
    layout = run_layout(prog, **counts)[0]
    assert len(states) == layout.n_sublayers + 1
    written = write_times(layout)
    status = {(lab.sublayer, lab.row): lab for lab in labels}
    seen = dict.fromkeys(STATUSES, 0)
    for lab in labels:
        seen[lab.status] += 1
        row = states[lab.sublayer][:, :, lab.row]
        where = (prog.name, counts, lab)
        if lab.status in (FREE, CLEARED):
            assert not np.any(row), where
            if lab.status == CLEARED:
                c = lab.cleared_at
                t0 = max(w for w in written[(lab.block, lab.row)] if w < c)
                blk = next(b for b in layout.written_at(t0) if b.key == lab.block)
                assert t0 < c <= lab.sublayer, where
                assert blk.last_read != -1 and blk.last_read <= c, where   # read no more
                assert status[(c - 1, lab.row)].status in (LIVE, DEAD), where
                assert status[(c - 1, lab.row)].block == lab.block, where
                assert np.array_equal(states[c - 1][:, :, lab.row], states[t0][:, :, lab.row])
            continue
        t0 = max(w for w in written[(lab.block, lab.row)] if w <= lab.sublayer)
        assert np.array_equal(row, states[t0][:, :, lab.row]), where
        if lab.status == LIVE and lab.point in want:
            value = want[lab.point]
            C = canonical(value)
            e = C[:, lab.index, :] if lab.axis == "row" else C[:, :, lab.index]
            err = float(np.abs(row[:, :e.shape[1]] - e).max())
            tol = policy.for_variable(lab.point)
            assert err <= tol or err <= tol * float(np.abs(value).max()), where
    return seen


@pytest.mark.parametrize("name", sorted(SMALL))
def test_labels_say_what_the_stream_holds(name):
    prog = builds.build(name, SMALL[name])
    seen = check_against_states(prog, SMALL[name], {}, seed=3)
    assert seen[LIVE] > prog.width
    assert seen[CLEARED] == CLEARED_LABELS.get(name, 0)


@pytest.mark.parametrize("name,params,counts_list", SHARED, ids=[c[0] for c in SHARED])
def test_a_shared_runs_labels_say_what_its_stream_holds(name, params, counts_list):
    prog = builds.build(name, params, loops="shared")
    for counts in counts_list:
        seen = check_against_states(prog, params, counts, seed=4)
        assert seen[CLEARED] > 0 and seen[LIVE] > prog.width, counts


def test_clears_are_the_rows_a_sublayer_writes_that_no_block_written_there_holds():
    """The weights name them: power_iteration's MLPs clear with ReLU pairs (two hidden units
    per row, reading it with ±1 and writing it back with ∓1); no clear holds a block."""
    prog = builds.build("power_iteration", SMALL["power_iteration"])
    clears = cleared_rows(prog.layout, prog.layers)
    assert clears and all(t % 2 == 0 for t in clears)          # MLP sublayers only
    for t, rows in clears.items():
        layer = prog.layers[(t - 1) // 2]
        assert not {r for b in prog.layout.written_at(t) for r in b.rows} & set(rows)
        for r in rows:
            units = np.flatnonzero(layer.W_2[r])
            assert sorted(layer.W_2[r, units]) == [-1.0, 1.0]
            assert sorted(layer.W_1[units, r]) == [-1.0, 1.0]
    with pytest.raises(ValueError, match="layers of weights"):
        cleared_rows(prog.layout, prog.layers[:-1])


def test_no_clears_no_cleared_labels_and_the_csv_and_json_say_when(tmp_path):
    prog = builds.build("power_iteration", SMALL["power_iteration"])
    layout, lines = run_layout(prog)
    inputs = {d.name: d.loc.line for d in prog.program.inputs}
    labels = tcompile.residual_labels(prog)
    assert labels == label_layout(layout, lines, inputs, cleared_rows(layout, run_layers(prog)))
    without = label_layout(layout, lines, inputs)           # what the labels said before
    changed = [(a, b) for a, b in zip(without, labels) if a != b]
    assert {(a.status, b.status) for a, b in changed} == {(DEAD, CLEARED)}
    assert all(replace(b, status=DEAD, cleared_at=None) == a for a, b in changed)
    prog.save(tmp_path / "p")                # a loaded artifact's dense weights say the same
    r = run_in_process(["labels", tmp_path / "p", "-o", tmp_path / "labels.json"])
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "labels.json").read_text())
    assert doc["labels"] == [lab.as_dict() for lab in labels]
    r = run_in_process(["labels", tmp_path / "p", "-o", tmp_path / "labels.csv"])
    assert r.returncode == 0, r.stderr
    head, *rows = (tmp_path / "labels.csv").read_text().splitlines()
    assert head.endswith(",block,cleared_at")
    cleared = [lab for lab in labels if lab.status == CLEARED]
    assert sum(row.split(",")[4] == CLEARED for row in rows) == len(cleared)
    assert all(row.endswith(f",{lab.cleared_at}") for row, lab in zip(rows, labels)
               if lab.status == CLEARED)


HINGE = """program svm
dim d = 3
param steps = 3
input X : [n, d] assume row_norm <= 1
input y : [n] sign
output w
w = zeros(d)
repeat steps {
  act = clip(1e4 * (1 - y * (X @ w)), 0, 1)
  w = w - 0.5 * (0.01 * w - X.T @ (act * y) / n)
}
"""


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_temporary_is_labelled_by_its_text_as_written(name):
    """A value the program never named (`X @ w` inside a statement) was labelled `tmp37.T`;
    its label now carries the program's own text for it and that text's line. Oracle: the
    program source, where that text stands on that line."""
    prog = builds.build(name, SMALL[name])
    lines = prog.info.source.split("\n")
    temps = [lab for lab in tcompile.residual_labels(prog) if lab.kind == "temporary"]
    for lab in temps:
        assert lab.point == lab.block and lab.iteration is None
        if lab.name != lab.block:
            assert lab.name in lines[lab.line - 1], (lab.name, lab.line)
    # all but the pieces of an expression written over several lines (lanczos' and
    # gram_schmidt_qr's stacked matrices: 3 and 2 blocks), which keep their key
    unnamed = {lab.block for lab in temps if lab.name == lab.block}
    assert len(unnamed) <= {"lanczos": 3, "gram_schmidt_qr": 2}.get(name, 0), sorted(unnamed)


def test_a_hinges_temporaries_and_its_clamp_are_named(tmp_path):
    prog = tcompile.compile_source(HINGE)
    names = {(lab.name, lab.line) for lab in tcompile.residual_labels(prog)
             if lab.kind == "temporary"}
    assert {("X @ w", 9), ("act * y", 10), ("clip(X @ w, -1, 1)", 10)} <= names
    saved = tcompile.CompiledProgram.load(prog.save(tmp_path / "svm")[0])
    assert saved.layout.blocks == prog.layout.blocks
    assert all(b.expr is None and b.line is None for b in prog.layout.blocks
               if b.vars or b.kind in ("input", "const"))


def test_an_artifact_without_temporaries_text_still_loads_and_labels_by_key():
    """Artifacts written before blocks carried `expr` and `line` (the blocks table without
    those fields) load; their temporaries are labelled by key, as they were."""
    prog = tcompile.compile_source(HINGE)
    doc = _compact(manifest_to_json(prog.typed_manifest))
    table = doc["blocks"]
    assert table["fields"][-2:] == ["expr", "line"]
    table["fields"] = table["fields"][:-2]
    table["rows"] = [row[:-2] for row in table["rows"]]
    old = manifest_from_json(_expand(json.loads(json.dumps(doc))))
    temps = [b for b in old.layout.blocks if not b.vars and b.kind not in ("input", "const")]
    assert temps and all(b.expr is None and b.line is None for b in temps)
    labels = label_layout(old.layout, {}, {})
    assert {lab.name for lab in labels if lab.kind == "temporary"} <= {b.key for b in temps}
