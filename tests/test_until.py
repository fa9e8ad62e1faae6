"""`until` on every top-level loop-carried variable, through the structured executor.

Which variables: every variable a top-level loop carries (the table below, per program and
loop line) is one `until` may name wherever the loop folds — those whose rows other values take
later in the application (power_iteration's u, huber_irls' r, poisson_newton's z, sinkhorn's v)
included: the build records where an application writes each value of an iteration
(LoopSpec.watch), and halting reads it there (runtime/halting.py).

Oracle: the reference interpreter run with the same halting rule (`interpret_program(...,
halting=rule)`) stops every problem after the same iteration, and the outputs are those of a
fixed-count run of the count returned (bit for bit on the structured executor: the same
layers run; ≤ 1e-13 on the looped module, which reads the same points through hooks).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import builds
import tcompile
from tcompile.compiler.steady_state import loop_sites
from tcompile.errors import InputError, NotConvergedWarning
from tcompile.inspection.sampling import sample_inputs
from tcompile.language.interpreter import interpret_program
from tcompile.language.parser import parse_file, parse_source
from tcompile.runtime.halting import halting_plan

from test_shared_loops import (PROGRAMS, RIDGE, _inputs, _power_problem,  # noqa: F401
                               least_squares, power_iteration, random_loop_program,
                               shared_random)

# every shipped program's top-level loops: {line: the variables it carries}
CARRIED = {
    "adam_least_squares.tp": {43: ("c1", "c2", "m", "v", "x")},
    "conjugate_gradient.tp": {56: ("P", "ep", "om", "pt", "rho", "rs", "rzp", "z")},
    "cubic_newton_schulz.tp": {21: ("R", "X")},
    "denman_beavers.tp": {36: ("Y", "Z", "yh", "yl", "zh", "zl")},
    "expm.tp": {21: ("E", "k"), 25: ("E",)},
    "fista_elastic_net.tp": {30: ("x", "x_prev")},
    "gd_least_squares.tp": {19: ("w",)},
    "gd_logistic.tp": {26: ("x", "z")},
    "gram_schmidt_qr.tp": {},
    "huber_irls.tp": {33: ("X", "r", "x")},
    "ista_lasso.tp": {21: ("x",)},
    "jacobi.tp": {28: ("Dinv",), 32: ("x",)},
    "kaczmarz.tp": {30: ("x",)},
    "lanczos.tp": {},
    "least_squares.tp": {22: ("X", "w")},
    "newton_inverse.tp": {15: ("X",)},
    "newton_logistic.tp": {47: ("x", "z")},
    "newton_logistic_warm.tp": {34: ("X", "x", "z")},
    "newton_schulz_sign.tp": {17: ("X",)},
    "newton_schulz_sqrt.tp": {18: ("Y", "Z")},
    "poisson_newton.tp": {34: ("X", "x", "z")},
    "power_iteration.tp": {24: ("u",)},
    "ridge_newton_schulz.tp": {21: ("X", "w")},
    "sinkhorn.tp": {30: ("v",)},
    "softmax_regression.tp": {28: ("W",)},
    "sor.tp": {34: ("P",), 38: ("x",)},
}
# loops kept unrolled (their count is built in, so nothing to halt): a compile-time number
# that changes every iteration (adam's bias corrections, denman_beavers' bounds, expm's k)
UNROLLED = {("adam_least_squares.tp", 43), ("denman_beavers.tp", 36), ("expm.tp", 21)}


def shipped(name: str):
    """The shared build test_shared_loops reads (the same settings: one build per session)."""
    program = parse_file(PROGRAMS + name)
    small = "logistic" not in name and any(p.name == "d" for p in program.dims)
    cg, adam = name == "conjugate_gradient.tp", name == "adam_least_squares.tp"
    params = (("d", 6 if cg else 4),) * small + (("steps", 5),) * cg + (("steps", 4),) * adam
    return program, builds.build(PROGRAMS + name, dict(params), loops="shared")


def halts_as_interpreted(prog, program, inputs: dict, until, max_steps, executors=(None,),
                         exact: bool = True):
    """Run `until`; the interpreter with the same rule stops each problem at the same count
    (`exact`: and gives the outputs to 1e-9 of their scale), and a fixed-count run at each
    count returned gives the outputs (the structured executor: to 1e-14 of their scale, bit
    for bit where the BLAS rounds a batch as its parts). The run's result."""
    spec = prog.loops.spec(prog.loops.until_loops()[until[0]])     # the loop it halts
    rule = halting_plan(prog, {}, until, max_steps).rule
    want = interpret_program(program, {**prog.info.float_params(), spec.param: rule.limit},
                             halting=rule, **inputs)
    outs = []
    for executor in executors:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotConvergedWarning)
            out = prog.run(until=until, max_steps=max_steps, executor=executor, **inputs)
        assert np.array_equal(out["steps"], want["steps"]), (executor, out["steps"], want["steps"])
        assert np.array_equal(out["converged"], want["converged"]), executor
        for c in sorted(set(out["steps"].tolist())):
            which = np.flatnonzero(out["steps"] == c)
            one = {k: np.asarray(v)[which] if np.ndim(v) and len(v) == len(out["steps"]) else v
                   for k, v in inputs.items()}
            fixed = prog.run(**{spec.param: c}, **one)
            for k, v in fixed.items():
                # the fixed-count run takes those problems alone: bit for bit on most
                # machines, but a BLAS kernel may round a batch of another size otherwise
                # (2.8e-17 with MKL_CBWR=COMPATIBLE), so within rounding of the scale
                gap = np.abs(out[k][which] - v).max() / max(float(np.abs(v).max()), 1.0)
                assert gap <= (1e-14 if executor is None else 1e-13), (executor, c, k, gap)
                if exact:
                    scale = max(float(np.abs(want[k][which]).max()), 1.0)
                    assert np.abs(v - want[k][which]).max() <= 1e-9 * scale, (c, k)
        outs.append(out)
    return outs[0], rule


@pytest.mark.parametrize("name", sorted(CARRIED))
def test_until_accepts_every_variable_a_top_level_loop_carries(name):
    """The table is what the programs carry; every folded top-level loop with a run-time count
    accepts all of them, and the stored values its body assigns (the card lists them; a fixed count refuses them, and the card lists
    none); a halted run stops at the rule's first count when any movement is
    small enough, equal to a fixed-count run there, and runs to the limit when none is."""
    from tcompile.runtime.exec_loops import shared_executor_for
    from tcompile.inspection.sampling import sample_inputs
    program, prog = shipped(name)
    sites = loop_sites(program, {**prog.info.params})
    assert {s.line: s.state for s in sites.values() if s.depth == 0} == CARRIED[name]
    assert not prog.loops.loops or shared_executor_for(prog) is not None, name
    specs = {s.line: s for s in prog.loops.loops if s.depth == 0}
    assert set(specs) == {line for line in CARRIED[name] if (name, line) not in UNROLLED}
    card = " ".join(tcompile.report_text(prog).split())
    inputs = sample_inputs(program, prog.info.params, n=8, batch=2, seed=0)
    assigned = {s.line: s.assigned for s in sites.values() if s.depth == 0}
    for line, spec in specs.items():
        # what it carries, and of what its body assigns, what the model stores in rows of its
        # own (ista_lasso's u, power_iteration's v, the Newton steps' gradient g and H)
        carried, extra = set(CARRIED[name][line]), set(spec.watchable) - set(CARRIED[name][line])
        assert carried <= set(spec.watchable) and extra <= set(assigned[line]), (name, line)
        if spec.param is None:       # a fixed count: halting refuses it, the card lists none
            assert "until may watch" not in card
            with pytest.raises(InputError, match="has a fixed count"):
                prog.run(until=(spec.watchable[0], 1e-9), max_steps=spec.count, **inputs)
            continue
        assert f"until may watch: {', '.join(spec.watchable)}" in card
        item = prog.loops.item(spec.key)
        cap = max(spec.min_count, item.offset + item.every) + 2 * item.every + 1
        if spec.max_count is not None:
            cap = min(cap, spec.max_count)
        # the halting mechanics, not the domains: sampled inputs need not keep a program's
        # run-time values inside its declared domains (sinkhorn's K @ v on [1, 8])
        for var in spec.watchable:
            rule = halting_plan(prog, {}, (var, np.inf), cap).rule
            out = prog.run(until=(var, np.inf), max_steps=cap, domains="off", **inputs)
            assert out["converged"].all() and (out["steps"] == rule.first).all(), (name, var)
            fixed = prog.run(**{spec.param: rule.first}, domains="off", **inputs)
            for key in fixed:
                assert np.array_equal(out[key], fixed[key]), (name, var, key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotConvergedWarning)
            out = prog.run(until=(spec.watchable[0], 0.0), max_steps=cap, domains="off", **inputs)
        rule = halting_plan(prog, {}, (spec.watchable[0], 0.0), cap).rule
        assert (out["converged"] | (out["steps"] == rule.limit)).all()


LOGISTIC_WATCH = """program logistic_gd_watch
dim d = 3
param steps = 30
param eta = 2
input A : [n, d] assume row_norm <= 1
input y : [n] assume in [0, 1]
output w
w = zeros(d)
repeat steps {
  p = sigmoid((A @ w) on [-10, 10])
  w = (w - eta * (A.T @ (p - y) / n + 0.1 * w)) on [-10, 10]
}
"""

ADMM = """program admm_lasso
dim d = 3
param steps = 10
param inv_steps = 8
input A : [n, d] assume row_norm <= 1
input y : [n] assume in [-1, 1]
output x, z
S = A.T @ A / n + I
b = A.T @ y / n
Q = I / 2
repeat inv_steps {
  Q = 2 * Q - Q @ S @ Q
}
x = zeros(d)
z = zeros(d)
u = zeros(d)
repeat steps {
  x = Q @ (b + z - u)
  v = x + u
  z = relu(v - 0.05) - relu(-v - 0.05)
  u = u + x - z
}
"""


def test_until_watches_a_stored_value_the_body_assigns_without_carrying_it():
    """A user wanted to stop a logistic regression when its predictions p settle: p is
    assigned every iteration but not carried, and `until` said no top-level loop carries it.
    The model stores p (a fitted sigmoid) every iteration, so a halting run reads it there and
    stops where the interpreter with the same rule does (both executors). ADMM's x, folded
    into the sums that read it, is in no rows of its own: the error lists what may be watched."""
    prog = tcompile.compile_source(LOGISTIC_WATCH, loops="shared")
    (spec,) = prog.loops.loops
    assert spec.watchable == ["p", "w"]
    program = parse_source(LOGISTIC_WATCH)
    inputs = sample_inputs(program, {}, n=16, batch=6, seed=2)
    out, _ = halts_as_interpreted(prog, program, inputs, ("p", 1e-7), 80, (None, "module"),
                                  exact=False)
    assert out["converged"].all() and 30 <= out["steps"].min()
    admm = tcompile.compile_source(ADMM, loops="shared")
    assert [s.watchable for s in admm.loops.loops] == [["Q"], ["u", "z"]]
    with pytest.raises(InputError, match="until names 'x', which no top-level loop of this "
                                         "build assigns where it can be watched; its loop "
                                         "variables: Q, u, z") as e:
        admm.run(until=("x", 1e-9), max_steps=40, **sample_inputs(parse_source(ADMM), n=8))
    assert "build with keep=['x'], `tcompile build ... --keep x`, to store it" in str(e.value)


def test_a_kept_variable_is_stored_traced_and_watched(tmp_path):
    """keep=["x"] stores every value of ADMM's x in rows of its own (the build folded it into
    the sums that read it): the unrolled trace shows every x@k within tolerance of the
    interpreter, the shared build's halting stops on x where the interpreter with the same
    rule does (both executors), outputs follow the interpreter, the artifact and card record
    the option, and a name the program does not assign is refused."""
    from tcompile.errors import ParamError
    program = parse_source(ADMM)
    inputs = sample_inputs(program, n=12, batch=4, seed=3)
    unrolled = tcompile.compile_source(ADMM, keep=["x"])
    def traced_x(prog):
        rows = tcompile.trace(prog, **inputs)
        assert all(r["ok"] for r in rows)
        return {r["variable"] for r in rows if r["variable"].startswith("x@")}
    assert traced_x(unrolled) == {f"x@{k}" for k in range(1, 11)}
    assert traced_x(tcompile.compile_source(ADMM)) == {"x@10"}        # the output only
    shared = tcompile.compile_source(ADMM, loops="shared", keep=["x"])
    assert [s.watchable for s in shared.loops.loops] == [["Q"], ["u", "x", "z"]]
    out, _ = halts_as_interpreted(shared, program, inputs, ("x", 1e-6), 300, (None, "module"))
    assert out["converged"].all()
    want = interpret_program(program, None, **inputs)
    for prog in (unrolled, shared):
        got = prog.run(**inputs)
        assert max(np.abs(got[k] - want[k]).max() for k in want) <= 1e-12
    assert "kept in rows of their own: x" in tcompile.report_text(shared)
    shared.save(tmp_path / "admm")
    assert tcompile.load(tmp_path / "admm").info.keep == ("x",)
    with pytest.raises(ParamError, match="keep names 'y', which the program does not assign; "
                                         "its variables: Q, S, b, u, v, x, z"):
        tcompile.compile_source(ADMM, keep=["y"])
    for bad in ("x", 5, [1]):
        with pytest.raises(ParamError, match="keep must be a list of variable names"):
            tcompile.compile_source(ADMM, keep=bad)


@pytest.mark.parametrize("seed", range(24))
def test_until_on_every_variable_of_the_random_loop_programs(seed):
    """Each of the 24 random loop programs: every variable its loop carries is one `until`
    accepts, and each halts where the interpreter with the same rule does (a kernel of 2
    included: programs 8, 13, 16, at an even and an odd limit)."""
    src, prog = random_loop_program(seed), shared_random(seed)
    program = parse_source(src)
    (site,) = loop_sites(program, {**prog.info.params}).values()
    (spec,) = prog.loops.loops
    assert tuple(spec.watchable) == site.state
    d = prog.info.params["d"]
    problems = [_inputs(10 * seed + i, d) for i in range(3)]
    batch = {k: np.stack([np.asarray(p[k]) for p in problems]) for k in problems[0]}
    for var in spec.watchable:
        for cap in ((30, 31) if spec.every > 1 else (30,)):
            halts_as_interpreted(prog, program, batch, (var, 1e-7), cap)


def test_until_on_variables_whose_rows_are_overwritten_in_the_body():
    """power_iteration's u (its kernel of 2 writes u at every iteration beside the next S v r,
    nodes.LOOP_AHEAD: each application tests the change over its last iteration, gap 1, and
    an odd limit is run to), huber_irls' r, poisson_newton's z and sinkhorn's v: values
    written over later in the application, read where they are written; each problem halts
    where the interpreter with the same rule does, on both executors."""
    from test_programs_structured import huber_problem, poisson_problem
    from test_exact_products import sinkhorn_problem
    program, prog = parse_file(PROGRAMS + "power_iteration.tp"), power_iteration()
    inputs = _power_problem(np.random.default_rng(3), gaps=(0.3, 0.5, 0.7))
    for cap in (40, 41):
        out, rule = halts_as_interpreted(prog, program, inputs, ("u", 1e-6), cap, (None, "module"))
        assert (rule.every, rule.gap, rule.limit) == (2, 1, cap)
        assert out["converged"].all() and len(set(out["steps"].tolist())) == 3
    rng = np.random.default_rng(5)
    for name, var, problem, tol in (("huber_irls.tp", "r", huber_problem, 1e-5),
                                    ("huber_irls.tp", "x", huber_problem, 1e-5),
                                    ("poisson_newton.tp", "z", poisson_problem, 1e-6)):
        program, prog = shipped(name)
        A, y = zip(*[problem(rng) for _ in range(3)])
        inputs = {"A": np.stack(A), "y": np.stack(y)}
        out, _ = halts_as_interpreted(prog, program, inputs, (var, tol), 30, (None, "module"),
                                      exact=False)
        assert out["converged"].all(), name
    program, prog = shipped("sinkhorn.tp")
    K, b = zip(*[sinkhorn_problem(s) for s in range(3)])
    out, rule = halts_as_interpreted(prog, program, {"K": np.stack(K), "b": np.stack(b)},
                                     ("v", 1e-9), 50, (None, "module"), exact=False)
    assert rule.gap == 1 and out["converged"].all()


def test_until_on_ridge_by_gradient_descent():
    """The issue's ridge program (w = zeros(d), a gradient step per iteration): w halts where
    the interpreter's does, and its outputs are a fixed-count run's."""
    prog = tcompile.compile_source(RIDGE, loops="shared")
    assert prog.loops.loops[0].watchable == ["w"]
    rng = np.random.default_rng(4)
    B, n, d = 6, 12, 4
    A = rng.standard_normal((B, n, d))
    A /= np.linalg.norm(A, axis=2).max(axis=1)[:, None, None]
    A *= np.linspace(1, 0.4, B)[:, None, None]               # slower for smaller A
    y = rng.standard_normal((B, n))
    y /= 2 * np.linalg.norm(y, axis=1, keepdims=True)
    out, rule = halts_as_interpreted(prog, parse_source(RIDGE), {"A": A, "y": y}, ("w", 1e-9),
                                     120, (None, "module"))
    assert out["converged"].all() and len(set(out["steps"].tolist())) > 2
    # the first count tested is the first whose predecessor an application reads: w@2, read in
    # the first application, against w@3 (the prologue's w@1 is in no rows then)
    assert rule.first == prog.loops.loops[0].min_count + 1 == 3


DAMPED_LEAPFROG = """program leapfrog
param steps = 40
param dt = 0.3
dim d = 3
input K : [d, d] spectrum in [0.5, 2]
input x0 : [d] in [-1, 1]
output x, p
x = x0
p = zeros(d)
repeat steps {
  p = 0.9 * p - dt / 2 * K @ x
  x = x + dt * p
  p = 0.9 * p - dt / 2 * K @ x
}
"""


def test_until_where_one_sublayer_writes_the_variable_of_both_kernel_iterations():
    """A damped leapfrog step is linear: its kernel of 2 writes x of both iterations in one
    attention sublayer. The structured executor then failed (KeyError 'p@6': the second read
    at that sublayer cut the layer again after its MLP), and both executors read the two
    values in row order, not count order, so x never halted at an even limit (200 steps,
    where the interpreter stops at 92-116). Each problem now halts where the interpreter does,
    on both executors, at either parity of the limit."""
    prog = tcompile.compile_source(DAMPED_LEAPFROG, loops="shared")
    rng = np.random.default_rng(6)
    K = np.stack([q @ np.diag(rng.uniform(0.5, 2, 3)) @ q.T
                  for q in (np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(3))])
    inputs = {"K": K, "x0": rng.uniform(-1, 1, (3, 3)) * np.array([[1], [0.5], [0.1]])}
    for cap in (200, 201):
        plan = halting_plan(prog, {}, ("x", 1e-6), cap)
        assert [p.count for p in plan.points] == [5, 6] and \
            {(p.position, p.sublayer) for p in plan.points} == {(0, 1)}
        out, rule = halts_as_interpreted(prog, parse_source(DAMPED_LEAPFROG), inputs,
                                         ("x", 1e-6), cap, (None, "module"))
        assert out["converged"].all() and rule.gap == 1


def test_the_watch_passes_the_problems_whose_largest_change_is_within_tol(least_squares):
    """Watch.read on the CPU tests in numpy (every entry within tol; nothing more where fewer
    entries than one problem has are): the problems it stops, and at which count, are those
    of the largest change by torch (amax of |value − before| ≤ tol), float32 and NaN too."""
    import torch
    tol = 2.0 ** -20                    # a change of exactly tol is exact in both dtypes
    plan = halting_plan(least_squares, {}, ("w", tol), 60)
    rule, (point,) = plan.rule, plan.points
    rng = np.random.default_rng(5)
    B = 40
    for dtype in (torch.float64, torch.float32):
        scale = np.logspace(-3, 2, B)[:, None, None]
        watch, values = plan.watch(B), []
        for j in range(40):
            step = scale * 0.6 ** j * rng.standard_normal((B, 4, 1))
            step[3] = 0.0                            # never moves: passes at the first test
            value = (values[-1].double().numpy() if values else 0.0) + step
            value[7, 2] = np.nan                     # never passes
            value[11], value[12] = j * tol, 2 * j * tol   # moves by exactly tol, by 2 tol
            values.append(torch.tensor(value, dtype=dtype))
            watch.read(j, point, values[-1])
        want = np.full(B, -1)
        for j in range(1, len(values)):
            c = point.count + j
            moved = torch.amax(torch.sub(values[j], values[j - 1]).abs_(), dim=(1, 2))
            if rule.tests(c):
                want[(want < 0) & (moved.numpy() <= rule.tol)] = c
        assert np.array_equal(watch.steps, want), (dtype, watch.steps, want)
        assert want[3] == want[11] == rule.first and want[7] == want[12] == -1
        assert len(set(want.tolist())) > 5


def test_a_kept_halting_plan_does_not_let_an_equal_but_bad_until_through(least_squares):
    """structured_until keeps each until's plan: ("w", True) equals ("w", 1) but is refused."""
    inputs = _ls_inputs(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        first = least_squares.run(until=("w", 1), max_steps=6, **inputs)
        again = least_squares.run(until=("w", 1), max_steps=6, **inputs)
    assert np.array_equal(first["steps"], again["steps"])
    with pytest.raises(InputError, match="tolerance"):
        least_squares.run(until=("w", True), max_steps=6, **inputs)


def _ls_inputs(B: int, n: int = 40, d: int = 4) -> dict:
    rng = np.random.default_rng(2)
    As = rng.standard_normal((B, n, d))
    As /= np.linalg.norm(As, axis=2).max(axis=1)[:, None, None]
    return {"A": As, "y": rng.standard_normal((B, n)), "a_test": rng.standard_normal((B, d))}


def test_until_and_a_count_on_a_loop_kept_unrolled_say_so():
    """expm's Horner loop (line 21) is kept unrolled: its k is a compile-time number that
    changes every iteration. `until k` and a run-time `p` (its count) name that loop and the
    reason, not the generic "no loop carries it" that sent users to --keep."""
    from tcompile.inspection.sampling import sample_inputs
    program, prog = shipped("expm.tp")
    inputs = sample_inputs(program, prog.info.params, n=8, batch=1, seed=0)
    why = r"keeps that loop unrolled \('k' is a compile-time number that changes every iteration\)"
    with pytest.raises(InputError, match=r"until names 'k', which the loop at line 21 assigns, "
                                         r"and this build " + why):
        prog.run(until=("k", 1e-9), **inputs)
    with pytest.raises(InputError, match=r"p counts the loop at line 21, which this build keeps "
                                         r"unrolled \('k' is a compile-time number"):
        prog.run(p=6, **inputs)
    card = " ".join(tcompile.report_text(prog).split())        # and the card says what it means
    assert ("line 21: repeat 12 kept unrolled: 'k' is a compile-time number that changes every "
            "iteration (its count is fixed at build time; `until` cannot stop it)") in card
