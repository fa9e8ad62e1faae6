"""Labels, sublayer states and probing activations of a shared build at run-time counts
(inspection/run_layout.py: the base unrolling's blocks moved to the run's layers).

Oracles: the unrolled build compiled at the same counts — where its layers are the run's, bit
for bit (newton_inverse), the labels and states are its own; where only the schedule is
(least_squares and newton_logistic pin other rows than the unrolled allocator), every program
point is written, read last and shaped as there — the float64 interpreter (every live label's
rows hold the labelled point's value, within the trace's tolerance policy, at counts the base
unrolling never ran), and the build's own layout at its base counts."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import builds
import tcompile
from cli_in_process import run_in_process
from tcompile.errors import InputError
from tcompile.inspection.clears import cleared_rows
from tcompile.inspection.labels import LIVE, label_layout
from tcompile.inspection.naming import assignment_lines
from tcompile.inspection.probe import compiled_activations, written_layer
from tcompile.inspection.reference import interpreter_assignments
from tcompile.inspection.run_layout import _places, run_layers, run_layout
from tcompile.inspection.sampling import sample_inputs
from tcompile.inspection.tolerance import Tolerances, rounding_sensitivity

ROOT = Path(__file__).resolve().parents[1]
# program, built params, tokens, run-time counts to label (the base unrolling's among them)
CASES = [("newton_inverse", {"d": 3, "steps": 6}, None, [{"steps": 2}, {"steps": 3},
                                                        {"steps": 5}, {"steps": 9}]),
         ("least_squares", {"d": 3, "steps": 6}, 12, [{"steps": 3}, {"steps": 4}, {"steps": 7}]),
         # nested: the inversion loop inside the damped Newton step, and after it
         ("newton_logistic", {"d": 3, "steps": 4, "inv_steps": 3}, 12,
          [{"steps": 3, "inv_steps": 3}, {"steps": 4, "inv_steps": 4},
           {"steps": 5, "inv_steps": 6}]),
         # a base unrolling that runs the body once (3 steps, offset 2)
         ("newton_schulz_sqrt", {}, None, [{"steps": 3}, {"steps": 4}, {"steps": 6}]),
         # two loops, the first's base running its body once
         ("jacobi", {}, None, [{"inv_steps": 4, "steps": 3}, {"inv_steps": 6, "steps": 3},
                               {"inv_steps": 4, "steps": 5}]),
         # a kernel of 2 that reads ahead, from 4 steps (the even residue: the built count's)
         ("power_iteration", {"d": 3, "steps": 6}, None, [{"steps": 4}, {"steps": 6},
                                                         {"steps": 10}]),
         # a kernel of 2 iterations: the even residue only (the built count's, 40, and so
         # the base unrolling's, 8 steps)
         ("power_iteration", {}, None, [{"steps": 8}, {"steps": 12}])]
IDS = ["newton_inverse", "least_squares", "newton_logistic", "newton_schulz_sqrt", "jacobi",
       "power_iteration", "power_iteration_kernel"]
# where the run executes the unrolled build's own layers, bit for bit, at every count above
SAME_LAYERS = {"newton_inverse", "newton_schulz_sqrt"}
# where it runs as many layers as the unrolled build, whose rows may differ
SAME_SCHEDULE = {"newton_inverse", "least_squares", "newton_logistic", "newton_schulz_sqrt",
                 "jacobi"}


def shared(name, params):
    return builds.build(name, params, loops="shared")


def run_length(prog, counts) -> int:
    return len(prog.loops.expand(prog.loops.counts(counts)))


def same_layers(prog, unrolled, counts) -> bool:
    """Whether the shared build's run at `counts` executes the unrolled build's layers."""
    run = prog.loops.expand(prog.loops.counts(counts))
    return len(run) == unrolled.n_layers and all(
        all(np.array_equal(a, b) for a, b in zip(prog.layers[i].arrays().values(),
                                                 unrolled.layers[k].arrays().values()))
        for k, i in enumerate(run))


def schedule(layout) -> list:
    """Every stored program point, input and constant: when it is written, read last, how."""
    return sorted((b.vars, b.name or "", b.transposed, b.cshape, b.written, b.last_read)
                  for b in layout.blocks if b.vars or b.kind in ("input", "const"))


@pytest.mark.parametrize("name,params,n,counts_list", CASES, ids=IDS)
def test_a_label_per_row_of_every_sublayer_the_run_executes(name, params, n, counts_list):
    prog = shared(name, params)
    inputs = sample_inputs(prog.program, params, n=n or prog.layout.min_tokens, batch=1, seed=2)
    prepared = prog.prepare_inputs(inputs)
    base = dict(prog.loops.base_counts)
    for counts in counts_list:
        layers = run_length(prog, counts)
        resolved = prog.loops.counts(counts)         # the places walk the order expand runs
        assert [p.layer for p in _places(prog.loops.sequence, resolved, base)] == \
            prog.loops.expand(resolved)
        labels = tcompile.residual_labels(prog, **counts)
        assert [(lab.sublayer, lab.row) for lab in labels] == \
            [(t, r) for t in range(2 * layers + 1) for r in range(prog.width)]
        assert len(prog.sublayer_states(prepared, **counts)) == 2 * layers + 1
        # the outputs are live at the end, in the rows the run leaves them in
        last = {lab.row: lab for lab in labels if lab.sublayer == 2 * layers}
        for out, blk in prog.output_blocks(**counts).items():
            assert {(last[r].status, last[r].name) for r in blk.rows} == {(LIVE, out)}
    try:                                        # the built counts by default
        built = tcompile.residual_labels(prog)
    except InputError as e:                     # (the kernel's built count, 40, is even)
        with pytest.raises(InputError, match=str(e)[:40]):
            tcompile.residual_labels(prog, **prog.loops.params)
    else:
        assert built == tcompile.residual_labels(prog, **prog.loops.params)


@pytest.mark.parametrize("name,params,n,counts_list", CASES, ids=IDS)
def test_at_the_base_counts_the_labels_are_the_layouts(name, params, n, counts_list):
    """The build's layout is its base unrolling's: labelled at those counts it is itself."""
    prog = shared(name, params)
    base = dict(prog.loops.base_counts)
    counts = {s.param: base[s.key] for s in prog.loops.loops if s.param is not None}
    lines = assignment_lines(prog.program, {**prog.info.float_params(),
                                            **{k: float(v) for k, v in counts.items()}})
    layout = replace(prog.layout, n_layers=run_length(prog, counts))
    inputs = {d.name: d.loc.line for d in prog.program.inputs}
    clears = cleared_rows(layout, run_layers(prog, **counts))    # the run's layers' clears
    assert tcompile.residual_labels(prog, **counts) == label_layout(layout, lines, inputs, clears)


@pytest.mark.parametrize("name,params,n,counts_list",
                         [c for c, i in zip(CASES, IDS) if i in SAME_LAYERS],
                         ids=[i for i in IDS if i in SAME_LAYERS])
def test_where_the_run_is_the_unrolled_builds_layers_labels_and_states_are_its(
        name, params, n, counts_list):
    prog = shared(name, params)
    inputs = sample_inputs(prog.program, params, n=n or prog.layout.min_tokens, batch=2, seed=0)
    for counts in counts_list:
        unrolled = builds.build(name, {**params, **counts})
        assert same_layers(prog, unrolled, counts)
        assert tcompile.residual_labels(prog, **counts) == tcompile.residual_labels(unrolled)
        got = prog.sublayer_states(prog.prepare_inputs(inputs), **counts)
        want = unrolled.sublayer_states(unrolled.prepare_inputs(inputs))
        assert len(got) == len(want)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
        assert written_layer(prog, **counts) == written_layer(unrolled)
        acts = compiled_activations(prog, {**inputs, **counts})
        ref = compiled_activations(unrolled, inputs)
        assert list(acts) == list(ref)
        assert all(np.array_equal(v, ref[k]) for k, v in acts.items())


@pytest.mark.parametrize("name,params,n,counts_list",
                         [c for c, i in zip(CASES, IDS) if i in SAME_SCHEDULE],
                         ids=[i for i in IDS if i in SAME_SCHEDULE])
def test_every_point_is_scheduled_as_in_the_unrolled_build(name, params, n, counts_list):
    """least_squares, newton_logistic and jacobi pin their loop state to other rows than the
    unrolled allocator picks, so the rows differ; the schedule may not: each program point (its
    iteration named from the run's counts) written, read last, oriented and shaped as the
    unrolled build at those counts has it."""
    prog = shared(name, params)
    for counts in counts_list:
        unrolled = builds.build(name, {**params, **counts})
        assert unrolled.n_layers == run_length(prog, counts)
        assert schedule(run_layout(prog, **counts)[0]) == schedule(unrolled.layout), counts


def interpreter_values(prog, prepared, counts: dict) -> tuple[dict, Tolerances]:
    """The interpreter's value of every program point (and the inputs, `input:A`) at these
    run-time counts, and the trace's tolerance policy for them."""
    at = {**prog.info.float_params(), **{k: float(v) for k, v in counts.items()}}
    want = interpreter_assignments(prog.program, at, prepared.arrays, prepared.n)
    policy = Tolerances(prog.predicted_rtol(), rounding_sensitivity(
        prog.program, at, prepared.arrays, prepared.n, want))
    want.update({f"input:{k}": v for k, v in prepared.arrays.items()})
    return want, policy


@pytest.mark.parametrize("name,params,n,counts_list", CASES, ids=IDS)
def test_live_labels_hold_the_interpreters_values(name, params, n, counts_list):
    prog = shared(name, params)
    inputs = sample_inputs(prog.program, params, n=n or prog.layout.min_tokens, batch=2, seed=1)
    prepared = prog.prepare_inputs(inputs)
    for counts in counts_list:
        checked = live_labels_hold(prog, prepared, counts)
        assert len(checked) > 2 * run_length(prog, counts)


def live_labels_hold(prog, prepared, counts: dict) -> list[str]:
    """Assert that every live label of the run at `counts` holds its point's interpreter
    value in the rows it names, within the trace's policy; the points checked."""
    want, policy = interpreter_values(prog, prepared, counts)
    states = prog.sublayer_states(prepared, **counts)
    checked = []
    for lab in tcompile.residual_labels(prog, **counts):
        if lab.status != LIVE or lab.point not in want:
            continue
        value = want[lab.point]
        C = value[:, None, None] if value.ndim == 1 else value[:, :, None] \
            if value.ndim == 2 else value
        e = C[:, lab.index, :] if lab.axis == "row" else C[:, :, lab.index]
        err = float(np.abs(states[lab.sublayer][:, :e.shape[1], lab.row] - e).max())
        tol = policy.for_variable(lab.point)
        assert err <= tol or err <= tol * float(np.abs(value).max()), (counts, lab)
        checked.append(lab.point)
    return checked


def test_a_kernel_is_labelled_only_where_its_base_unrolling_says():
    """power_iteration folds to a kernel of 2 iterations; its base unrolling is taken of the
    built count's residue (8 steps, shared_build._built_residue: 40 is even), so even counts
    are labelled (test_live_labels_...), the built one included, and odd ones, whose tail no
    recorded unrolling ran, refused, naming the nearest even counts; so is a count that runs
    a body 0 times (conjugate_gradient at its fewest count, 3)."""
    prog = shared("power_iteration", {})
    assert prog.loops.item(prog.loops.loops[0].key).every == 2
    assert prog.loops.base_counts == ((prog.loops.loops[0].key, 8),)
    for steps, near in ((5, "4 or 6"), (41, "40 or 42")):
        with pytest.raises(InputError, match=f"residue 0 \\(steps = {near}\\)"):
            tcompile.residual_labels(prog, steps=steps)
    assert tcompile.residual_labels(prog, steps=4) and tcompile.residual_labels(prog)
    at = written_layer(prog)                   # at the built count, 40
    assert at["u@40"] == "281" and at["lam@0"] == "282"
    cg = shared("conjugate_gradient", {})
    with pytest.raises(InputError, match="0 times .*; label steps = 4 or more"):
        tcompile.residual_labels(cg, steps=3)


REFINED_SOLVE = """program refined_solve
dim d = 3
param ns = 3
param refine = 4
input M : [d, d] spectrum in [0.5, 2]
input b : [d] assume norm <= 1
output x
X = 0.8 * I
repeat ns {
  X = 2 * X - X @ M @ X
}
x = X @ b
repeat refine {
  x = x + X @ (b - M @ x)
}
"""


def test_labels_refused_at_a_count_that_runs_no_body_name_the_first_that_does():
    """A Newton–Schulz inverse, then residual corrections (written as a new user would):
    the inverse's loop is built at 3 steps, all of which its pipeline's fill and drain hold,
    so at the built counts it runs its body 0 times and `tcompile labels` at the defaults was
    refused without saying what to do. It names ns = 4, where the labels hold the
    interpreter's values."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(REFINED_SOLVE, loops="shared")
    with pytest.raises(InputError, match="line 9 runs its body 0 times .*; label ns = 4 or more"):
        tcompile.residual_labels(prog)
    inputs = sample_inputs(prog.program, n=8, batch=2, seed=1)
    for counts in ({"ns": 4}, {"ns": 6, "refine": 2}):
        assert live_labels_hold(prog, prog.prepare_inputs(inputs), counts)


GROUP_PROX = """program group_prox
dim d = 3
param steps = 20
param eta = 0.5
param lam = 0.05
input A : [n, d] assume row_norm <= 1
input y : [n] in [-1, 1]
output x
S = A.T @ A / n
b = A.T @ y / n
x = zeros(d)
repeat steps {
  z = x - eta * (S @ x - b)
  nz = sqrt(z @ z + 1e-6) on [1e-7, 4]
  x = z * relu(1 - eta * lam / nz)
}
"""


def test_the_card_says_which_counts_a_kernels_labels_cover_where_the_built_one_is_not():
    """A proximal gradient step with a group-lasso shrinkage, written as a new user would, runs
    as a kernel of 2 whose layout is the unrolling at 9 (the other residue's, 10, lacks one
    of its MLP layers, and the domain checks come from the layout): labels at the built 20
    are refused. The card now says so before anyone asks (the counts come from the rule
    the refusal applies, LoopProgram.labelled_counts_near), and the labels at those counts
    hold the interpreter's values."""
    from tcompile.inspection.sampling import sample_inputs
    prog = tcompile.compile_source(GROUP_PROX, loops="shared")
    (spec,) = prog.loops.loops
    assert (spec.every, dict(prog.loops.base_counts)[spec.key]) == (2, 9)
    card = " ".join(tcompile.report_text(prog).split())
    assert ("labels (tcompile labels) at counts of residue 1 (mod 2) only, not the built 20: "
            "steps = 19 or 21 (the layout is the unrolling at 9)") in card
    with pytest.raises(InputError, match=r"residue 1 \(steps = 19 or 21\)"):
        tcompile.residual_labels(prog)
    inputs = sample_inputs(prog.program, n=8, batch=2, seed=1)
    assert live_labels_hold(prog, prog.prepare_inputs(inputs), {"steps": 21})
    power = shared("power_iteration", {})         # built at 40, laid out at 8: no such line
    assert "only, not the built" not in tcompile.report_text(power)


def test_counts_are_checked_like_a_runs():
    prog = shared(*CASES[0][:2])
    with pytest.raises(InputError, match="run-time count"):
        tcompile.residual_labels(prog, d=4)
    with pytest.raises(InputError, match="at least"):
        tcompile.residual_labels(prog, steps=1)
    with pytest.raises(InputError, match="unrolled build takes no run-time counts"):
        tcompile.residual_labels(builds.build("newton_inverse", {"d": 3, "steps": 3}), steps=3)


def test_cli_labels_a_shared_build_at_its_counts(tmp_path):
    prog = shared(*CASES[0][:2])
    prog.save(tmp_path / "p")
    r = run_in_process(["labels", tmp_path / "p", "-p", "steps=5", "-o", tmp_path / "l.json"])
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "l.json").read_text())
    assert doc["labels"] == [lab.as_dict() for lab in tcompile.residual_labels(prog, steps=5)]
    r = run_in_process(["labels", tmp_path / "p", "-o", tmp_path / "built.csv"])
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "built.csv").read_text().splitlines()
    assert len(lines) == 1 + (2 * run_length(prog, {}) + 1) * prog.width
    for bad, code, why in ((["-p", "steps=x"], 2, "whole number"),
                           (["-p", "nope=3"], 1, "not a run-time count"),
                           (["-p", "steps=1"], 1, "at least 2")):
        r = run_in_process(["labels", tmp_path / "p", *bad, "-o", tmp_path / "bad.json"])
        assert r.returncode == code and why in r.stderr, (bad, r.stderr)
        assert not (tmp_path / "bad.json").exists()


def test_build_rotate_writes_a_shared_builds_labels(tmp_path):
    r = run_in_process(["build", ROOT / "programs" / "newton_inverse.tp", "-p", "d=2",
                        "-p", "steps=4", "--loops", "shared", "-o", tmp_path, "--rotate", "5"])
    assert r.returncode == 0, r.stderr
    prog = tcompile.load(tmp_path / "newton_inverse")
    doc = json.loads((tmp_path / "newton_inverse.rotated.labels.json").read_text())
    assert doc["seed"] == 5
    assert doc["labels"] == [lab.as_dict() for lab in tcompile.residual_labels(prog)]
    assert len(doc["labels"]) == (2 * 4 + 1) * prog.width


def test_labels_at_other_counts_of_a_repeat_nested_in_a_top_level_one():
    """A paced nested build (test_shared_loops' NESTED_TWO_RATES) lays out its inner loop at
    4 iterations, while it is built at 3. A repeat nested directly in another numbers its
    program points within the outer loop's iterations; the run's layout renames them level by
    level (run_layout._Mapper: an application's iterations by the applications between it and
    its anchor; one a layer outside the inner body holds, by whether the layers before or
    after the body hold it). Labels at the built counts and at others hold the interpreter's
    values (this once refused every inner count but the layout's; sinkhorn's labels at its
    defaults with it)."""
    from test_shared_loops import NESTED_TWO_RATES
    prog = tcompile.compile_source(NESTED_TWO_RATES, loops="shared")
    assert dict(prog.loops.base_counts)["12:3"] == 4 and prog.loops.spec("12:3").count == 3
    inputs = sample_inputs(prog.program, {}, n=prog.layout.min_tokens, batch=2, seed=1)
    prepared = prog.prepare_inputs(inputs)
    for counts in ({}, {"inner": 6}, {"steps": 3, "inner": 3}, {"steps": 6, "inner": 5}):
        checked = live_labels_hold(prog, prepared, counts)
        run = prog.loops.counts(counts)          # every iterate of a is labelled somewhere
        assert {p for p in checked if p.startswith("a@")} == \
            {f"a@{k}" for k in range(1, run["11:1"] * run["12:3"] + 1)}


NESTED_FIXED = """program nested_fixed
param steps = 4
input X : [n, 3] in [-1, 1]
input r : [n] in [-1, 1]
output a, c
a = r
c = 0.5 * r
repeat steps {
  repeat 2 {
    a = clip(0.5 * a + X[:, 0], -1, 1)
  }
  c = clip(0.5 * c + a, -1, 1)
}
"""


def test_labels_of_a_nested_repeat_with_a_fixed_count():
    """`repeat 2` has no param, so the interpreter's walk cannot be given the base
    unrolling's 3 iterations by param: the program points are walked at the loops' counts by
    key (run_layout._Points). adam_least_squares' fixed Newton refinement is this case; its
    labels were refused at its only counts."""
    prog = tcompile.compile_source(NESTED_FIXED, loops="shared")
    assert dict(prog.loops.base_counts)["9:3"] == 3 and prog.loops.spec("9:3").param is None
    inputs = sample_inputs(prog.program, {}, n=8, batch=2, seed=1)
    prepared = prog.prepare_inputs(inputs)
    for counts in ({}, {"steps": 6}):
        checked = live_labels_hold(prog, prepared, counts)
        steps = prog.loops.counts(counts)["8:1"]
        assert {p for p in checked if p.startswith("a@")} == \
            {f"a@{k}" for k in range(1, 2 * steps + 1)}
