"""The labelled residual stream (inspection/labels.py) and rotated builds (runtime/rotate.py).

Oracles: the float64 interpreter (every live label's rows, read from the model's residual
stream, hold the entries of the labelled program point), the axis-aligned build (a rotated
build's outputs, and each variable read along its label's direction from the rotated stream),
and numpy (the rotation is orthogonal; the rotated weights are dense)."""
from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import builds
import tcompile
from arrays import rel
from cli_in_process import run_in_process
from tcompile.errors import InputError
from tcompile.inspection.labels import CLEARED, DEAD, FREE, LIVE, labels_to_csv
from tcompile.inspection.reference import interpreter_assignments
from tcompile.inspection.sampling import sample_inputs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [("newton_inverse", {"d": 4, "steps": 6}, None),
           ("least_squares", {"d": 4, "steps": 6}, 20),
           ("newton_logistic", {"d": 3, "steps": 2, "inv_steps": 3}, 12)]
RTOL = 1e-12


@pytest.fixture(scope="module", params=SHIPPED, ids=[s[0] for s in SHIPPED])
def case(request):
    name, params, n = request.param
    prog = builds.build(name, params)
    inputs = sample_inputs(prog.program, params, n=n or prog.layout.min_tokens, batch=3, seed=1)
    prepared = prog.prepare_inputs(inputs)
    want = interpreter_assignments(prog.program, prog.info.float_params(), prepared.arrays,
                                   prepared.n)
    want.update({f"input:{k}": v for k, v in prepared.arrays.items()})
    return prog, inputs, prepared, want


def canonical(v: np.ndarray) -> np.ndarray:
    """(B, ...) → (B, r, c) as the layout stores values (a vector is a column)."""
    return v[:, None, None] if v.ndim == 1 else v[:, :, None] if v.ndim == 2 else v


def entries(label, value: np.ndarray) -> np.ndarray:
    """The (B, tokens) entries a labelled row holds: row `index` of the value, or its column."""
    C = canonical(value)
    return C[:, label.index, :] if label.axis == "row" else C[:, :, label.index]


def live_gap(labels, states, want) -> tuple[float, int]:
    """Worst relative gap between each live variable row and the interpreter; rows checked."""
    worst, checked = 0.0, 0
    for lab in labels:
        if lab.status != LIVE or lab.point not in want:
            continue
        e = entries(lab, want[lab.point])
        got = states[lab.sublayer][:, :e.shape[1], lab.row]
        worst = max(worst, float(np.abs(got - e).max()) / max(float(np.abs(want[lab.point]).max()), 1e-300))
        checked += 1
    return worst, checked


def test_every_row_at_every_sublayer_is_labelled(case):
    prog, *_ = case
    labels = tcompile.residual_labels(prog)
    assert len(labels) == (prog.layout.n_sublayers + 1) * prog.width
    assert [(lab.sublayer, lab.row) for lab in labels] == \
        [(t, r) for t in range(prog.layout.n_sublayers + 1) for r in range(prog.width)]
    assert {lab.status for lab in labels} <= {LIVE, DEAD, CLEARED, FREE}
    # the encoder's rows are the inputs and constants; outputs are live at the end
    at0 = [lab for lab in labels if lab.sublayer == 0 and lab.status != FREE]
    assert {lab.kind for lab in at0} <= {"input", "const"}
    assert {lab.name for lab in at0 if lab.kind == "input"} == {i.name for i in prog.layout.inputs}
    last = {lab.row: lab for lab in labels if lab.sublayer == prog.layout.n_sublayers}
    for spec in prog.layout.outputs:
        for r in prog.layout.output_block(spec.name).rows:
            assert last[r].status == LIVE and last[r].name == spec.name
    # free means zero: nothing written there yet
    free = [lab for lab in labels if lab.status == FREE]
    assert all(lab.sublayer == 0 or lab.kind is None for lab in free)


def test_live_labels_hold_the_interpreters_values(case):
    prog, _, prepared, want = case
    labels = tcompile.residual_labels(prog)
    states = prog.sublayer_states(prepared)
    worst, checked = live_gap(labels, states, want)
    assert checked > prog.width
    bound = max(prog.predicted_rtol(), 1e-13)
    assert worst <= bound
    for lab in labels:                      # and a free row is zero
        if lab.status == FREE:
            assert not np.any(states[lab.sublayer][:, :, lab.row])


def test_iterations_count_a_statements_assignments():
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params={"d": 2, "steps": 3})
    labels = tcompile.residual_labels(prog)
    xs = {lab.point: (lab.line, lab.iteration) for lab in labels if lab.name == "X"}
    lines = {line for line, _ in xs.values()}
    loop_line = max(lines)
    its = sorted(it for line, it in xs.values() if line == loop_line)
    assert its == list(range(len(its))) and len(its) >= 2


def test_csv_and_json_round_trip(case, tmp_path):
    prog, *_ = case
    labels = tcompile.residual_labels(prog)
    rows = list(csv.DictReader(io.StringIO(labels_to_csv(labels))))
    assert len(rows) == len(labels)
    assert rows[5]["row"] == str(labels[5].row) and rows[5]["status"] == labels[5].status
    prog.save(tmp_path / "p")
    r = run_in_process(["labels", tmp_path / "p", "-o", tmp_path / "labels.json"])
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "labels.json").read_text())
    assert doc["labels"] == [lab.as_dict() for lab in labels]
    r = run_in_process(["labels", tmp_path / "p", "-o", tmp_path / "labels.txt"])
    assert r.returncode == 2 and not (tmp_path / "labels.txt").exists()


# ---- rotated builds --------------------------------------------------------------------------

def test_rotated_build_equals_the_original_and_is_dense(case):
    prog, inputs, prepared, want = case
    ref = prog.run(executor="module", **inputs)
    rot = prog.rotated(7)
    Q = rot.directions
    assert np.abs(Q.T @ Q - np.eye(prog.width)).max() < 1e-14
    got = rot.run(**inputs)
    assert max(rel(got[k], v) for k, v in ref.items()) <= RTOL
    # dense: every row a map reads from, and every column it writes through, is now all nonzero
    for w0, w in zip(prog.layers, rot.layers):
        for name in ("W_K", "W_Q", "W_1"):
            a0, a = getattr(w0, name).reshape(-1, prog.width), getattr(w, name).reshape(-1, prog.width)
            used = np.any(a0 != 0, axis=1)
            assert np.all(a[used] != 0)
        for h in range(w0.heads):
            if np.any(w0.W_V[h]):
                assert np.all(w.W_V[h] != 0)
        used = np.any(w0.W_2 != 0, axis=0)
        assert np.all(w.W_2[:, used] != 0)


def test_rotated_labels_reproduce_each_variable(case):
    prog, inputs, prepared, want = case
    rot = prog.rotated(11)
    states = rot.sublayer_states(prepared)                     # the rotated stream
    along = [s @ rot.directions for s in states]                # each row's direction
    worst_rot, checked = live_gap(tcompile.residual_labels(rot), along, want)
    worst, _ = live_gap(tcompile.residual_labels(prog), prog.sublayer_states(prepared), want)
    assert checked > prog.width
    assert worst_rot <= worst + RTOL
    # the rotated stream itself is not axis-aligned: no single row holds a variable's entries
    raw, _ = live_gap(tcompile.residual_labels(rot), states, want)
    assert raw > 1e-3


def test_keep_io_leaves_input_and_output_rows_alone(case):
    prog, inputs, prepared, _ = case
    rot = prog.rotated(3, keep_io=True)
    x = prog.encode(**inputs)
    assert np.array_equal(rot.encode(**inputs).numpy(), x.numpy())   # the plain encoder
    with torch.no_grad():
        h = rot.module(x)
    plain = prog.decode(h)                                      # and the plain decoder
    ref = prog.run(executor="module", **inputs)
    assert max(rel(plain[k], v) for k, v in ref.items()) <= RTOL


def test_rotation_errors_are_clear(tmp_path):
    prog = tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp", params={"d": 2, "steps": 2})
    rot = prog.rotated(1)
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(InputError, match="seed"):
            prog.rotated(bad)
    with pytest.raises(InputError, match="rotated already"):
        rot.rotated(2)
    with pytest.raises(InputError, match="executor"):
        rot.run(executor="structured", A=np.eye(2) * 0.5)
    with pytest.raises(InputError, match="not an artifact"):
        rot.save(tmp_path / "r")
    assert not list(tmp_path.iterdir())


def test_build_rotate_writes_the_rotated_state_dict(tmp_path):
    from safetensors.numpy import load_file
    r = run_in_process(["build", ROOT / "programs" / "newton_inverse.tp", "-p", "d=2",
                        "-p", "steps=2", "-o", tmp_path, "--rotate", "5"])
    assert r.returncode == 0, r.stderr
    prog = tcompile.load(tmp_path / "newton_inverse")
    rot = prog.rotated(5)
    tensors = load_file(tmp_path / "newton_inverse.rotated.safetensors")
    assert np.array_equal(tensors.pop("rotation.Q"), rot.directions)
    module = prog.module_for("float64")
    # from copies: from_arrays shares memory with the arrays, and loading writes into them
    fresh = type(module).from_arrays(copy.deepcopy(prog.layers), prog.width)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    A = np.array([[0.5, 0.1], [0.0, 0.4]])
    with torch.no_grad():
        h = fresh(rot.encode(A=A))
    assert rel(rot.decode(h)["X"][0], prog.run(A=A)["X"]) <= RTOL
    doc = json.loads((tmp_path / "newton_inverse.rotated.labels.json").read_text())
    assert doc["seed"] == 5 and np.allclose(np.array(doc["directions"]).T, rot.directions, rtol=0, atol=0)
    bad = run_in_process(["build", ROOT / "programs" / "newton_inverse.tp", "-o", tmp_path / "b",
                          "--rotate-keep-io"])
    assert bad.returncode == 2 and not (tmp_path / "b").exists()


def test_rotated_run_guards_domains_like_the_original():
    """The domain guard reads the rotated stream rotated back: each check's range is the
    original build's (check_domains), and a domain the run leaves (narrowed here in the
    manifest) is the same DomainError as in the original build."""
    from dataclasses import replace

    from tcompile.errors import DomainError
    from tcompile.runtime.domain_guard import guarded, settle, watch_module
    name, params, n = SHIPPED[2]
    prog = builds.build(name, params)
    inputs = sample_inputs(prog.program, params, n=n, batch=2, seed=3)
    rot = prog.rotated(4)
    rot.run(**inputs)
    with watch_module(rot, rot.module, read=rot.unrotate_state) as seen:     # what run watches
        rot.run(domains="off", **inputs)
    ranges = settle(seen)
    want = tcompile.check_domains(prog, **inputs)
    read = {i for i, _ in guarded(prog.typed_manifest.domains)}   # all but the implied
    assert set(ranges) == read and len(want) >= len(read) > 0
    for i, row in enumerate(want):
        if i not in read:
            continue
        scale = max(abs(row["min"]), abs(row["max"]), 1e-300)
        assert abs(ranges[i][0] - row["min"]) <= 1e-12 * scale
        assert abs(ranges[i][1] - row["max"]) <= 1e-12 * scale
    chk = prog.typed_manifest.domains[0]
    narrow = replace(chk, hi=(chk.lo + want[0]["min"]) / 2 if want[0]["min"] > chk.lo else chk.lo)
    m = replace(prog.typed_manifest, domains=(narrow,) + prog.typed_manifest.domains[1:])
    tight = type(prog)(m, prog.layers)
    with pytest.raises(DomainError) as plain:
        tight.run(**inputs)
    with pytest.raises(DomainError) as rotated:
        tight.rotated(4).run(**inputs)
    assert str(rotated.value).splitlines()[1].split(": values")[0] == \
        str(plain.value).splitlines()[1].split(": values")[0]
