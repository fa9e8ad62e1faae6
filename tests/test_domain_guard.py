"""The run-time domain guard (tcompile/runtime/domain_guard.py): `run` watches every fitted
piece's input and raises a DomainError when one left the domain it was fitted on; oracles:
numpy's lstsq (the out-of-domain result really is wrong, the in-domain one right) and
check_domains (the module's ranges, read from the dense states)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import builds
import tcompile
from cli_in_process import run_in_process
from tcompile.errors import DomainError, InputError, TcompileError
from tcompile.inspection.sampling import sample_inputs
from tcompile.runtime.domain_guard import guarded, outside
from tcompile.runtime.executor import executor_for, expanded_executor_for

ROOT = Path(__file__).resolve().parents[1]
CG = ROOT / "programs" / "conjugate_gradient.tp"


def cg_problem(scale: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(12, 3))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    return {"A": scale * A, "y": rng.uniform(-1, 1, 12)}


@pytest.fixture(scope="module")
def cg_narrow():
    """Conjugate gradient whose divisions are fitted on [1e-3, 1e15] only."""
    return tcompile.compile_file(CG, {"d": 3, "lo": 1e-3})


@pytest.mark.parametrize("executor", ["structured", "module"])
def test_divisor_below_its_lo_is_a_domain_error(cg_narrow, executor):
    small = cg_problem(0.01)                         # ||Aᵀy/n||² ~ 1e-6 < lo = 1e-3
    assert issubclass(DomainError, TcompileError)
    with pytest.raises(DomainError) as e:
        cg_narrow.run(executor=executor, **small)
    msg = str(e.value)
    assert "line 48 `rs = 1 / sqrt(g @ g) on [lo, hi]`" in msg        # the statement
    assert "seed of rsqrt((gᵀ@g))" in msg                             # the piece
    assert "read `g @ g` (tmp12, after layer" in msg                  # its input, as written
    assert "fitted on [0.001, 1e+15]" in msg                           # the domain
    seen = [r for r in tcompile.check_domains(cg_narrow, **small) if r["block"] == "tmp12"][0]
    assert f"values in [{seen['min']:.6g}, {seen['max']:.6g}]" in msg  # the range seen
    # and it was right to: the clamped run is far from the least-squares solution
    off = cg_narrow.run(executor=executor, domains="off", **small)["w"]
    want = np.linalg.lstsq(small["A"], small["y"], rcond=None)[0]
    assert np.max(np.abs(off - want)) > 1e-2 * np.max(np.abs(want))


def test_in_domain_run_is_not_flagged_and_is_right(cg_narrow):
    ok = cg_problem(1.0, seed=3)
    assert not any(r["outside"] for r in tcompile.check_domains(cg_narrow, **ok))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = cg_narrow.run(**ok)["w"]
    want = np.linalg.lstsq(ok["A"], ok["y"], rcond=None)[0]
    assert np.max(np.abs(w - want)) <= 1e-10 * np.max(np.abs(want))


def test_warn_warns_and_off_is_silent(cg_narrow):
    small = cg_problem(0.01)
    with pytest.warns(RuntimeWarning, match="outside its fitted domain"):
        warned = cg_narrow.run(domains="warn", **small)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = cg_narrow.run(domains="off", **small)
    np.testing.assert_array_equal(warned["w"], off["w"])
    with pytest.raises(InputError, match="domains must be one of"):
        cg_narrow.run(domains="loud", **small)


def test_one_bad_problem_in_a_batch_is_caught(cg_narrow):
    good, bad = cg_problem(1.0, seed=3), cg_problem(0.01)
    batch = {k: np.stack([good[k], bad[k], good[k]]) for k in good}
    with pytest.raises(DomainError):
        cg_narrow.run(**batch)


def test_structured_ranges_equal_check_domains():
    """The executor's watched ranges are the ranges check_domains reads from the module, for
    every check the guard reads; check_domains reads the implied ones too."""
    params = {"d": 3, "steps": 2, "inv_steps": 3}
    prog = builds.build("newton_logistic", params)
    inputs = sample_inputs(prog.program, params, n=10, batch=4, seed=5)
    _, ranges = executor_for(prog, "structured").run_watched(prog.prepare_inputs(inputs))
    rows = tcompile.check_domains(prog, **inputs)
    read = {i for i, _ in guarded(prog.typed_manifest.domains)}
    assert set(ranges) == read and 0 < len(read) < len(rows)
    for i in read:
        assert ranges[i] == pytest.approx((rows[i]["min"], rows[i]["max"]), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("name,params,n", [
    ("newton_logistic", {}, 26), ("newton_logistic", {"d": 3, "steps": 2, "inv_steps": 3}, 10),
    ("huber_irls", {}, 30), ("poisson_newton", {}, 30), ("newton_logistic_warm", {}, 26)])
def test_implied_checks_hold_whenever_the_others_do(name, params, n):
    """A check the guard skips (DomainCheck.implied: a unary piece's output, its values on
    the piece's domain inside this check's) is inside on every input whose other checks are:
    check_domains, which reads them all, on random problems. Which checks are implied: a
    product's factor that a fitted piece computes (the Hessians' p(1 − p), huber's weights w,
    poisson's mu = exp(z)), its domain exactly that piece's values."""
    prog = builds.build(name, params)
    checks = prog.typed_manifest.domains
    implied = [i for i, c in enumerate(checks) if c.implied]
    assert implied and len(guarded(checks)) == len(checks) - len(implied)
    for i in implied:
        c = checks[i]
        assert c.label.startswith("A*")                  # the second factor of A * (...)
        assert c.implied.endswith(f"takes values in [{c.lo:.6g}, {c.hi:.6g}]")
    inside_runs = 0
    for seed in range(4):
        inputs = sample_inputs(prog.program, params, n=n, batch=3, seed=seed)
        rows = tcompile.check_domains(prog, **inputs)
        others_inside = all(not r["outside"] for i, r in enumerate(rows) if i not in implied)
        if others_inside:
            inside_runs += 1
            assert not any(rows[i]["outside"] for i in implied), [rows[i] for i in implied]
    assert inside_runs >= 2


def test_a_skipped_checks_premise_failing_is_still_an_error():
    """newton_logistic with its sigmoid fitted on [-0.5, 0.5]: |z| goes beyond 0.5, the check
    of z (which the guard reads) fails, and run raises naming the sigmoid — skipping the
    p(1 − p) check that z's implies loses no error."""
    src = (ROOT / "programs" / "newton_logistic.tp").read_text()
    assert src.count("on [-6, 6]") == 1
    prog = tcompile.compile_source(src.replace("on [-6, 6]", "on [-0.5, 0.5]"),
                                   params={"d": 3, "steps": 2, "inv_steps": 3})
    assert any(c.implied for c in prog.typed_manifest.domains)
    inputs = sample_inputs(prog.program, {"d": 3}, n=10, batch=2, seed=1)
    inputs["x0"] = np.tile([0.9, 0.0, 0.0], (2, 1))
    inputs["A"][:, 0] = np.array([1.0, 0.0, 0.0])              # z = A x0 = 0.9 in row 0
    with pytest.raises(DomainError, match=r"sigmoid.*fitted on \[-0.5, 0.5\]"):
        prog.run(**inputs)


def test_shared_build_watches_every_iteration():
    prog = tcompile.compile_file(CG, {"d": 3, "lo": 1e-3}, loops="shared")
    small = cg_problem(0.01)
    with pytest.raises(DomainError, match="seed of"):
        prog.run(**small)
    ok = cg_problem(1.0, seed=3)
    rows = tcompile.check_domains(prog, **ok)                  # the looped module, every iteration
    assert not any(r["outside"] for r in rows)
    prog.run(**ok)
    ex = expanded_executor_for(prog, prog.loops.counts({}))
    _, ranges = ex.run_watched(prog.prepare_inputs(ok))
    assert len(ranges) == len(rows) > 0
    for i, r in enumerate(rows):
        assert ranges[i] == pytest.approx((r["min"], r["max"]), rel=1e-12, abs=1e-14)


def test_outside_rule():
    assert outside(1e-3, 1e15, 2.5e-6, 1.0)                  # far below a small lo
    assert not outside(1e-3, 1e15, 1e-3 * (1 - 1e-12), 1e15 * (1 + 1e-12))   # rounding
    assert outside(-6.0, 6.0, -6.1, 0.0) and outside(-6.0, 6.0, 0.0, 6.1)
    assert not outside(0.0, 25.0, -1e-17, 25.0)
    assert outside(0.0, 1.0, float("nan"), float("nan"))


def test_cli_run_exits_nonzero_on_a_domain_error(tmp_path, cg_narrow):
    cg_narrow.save(tmp_path / "cg")
    np.savez(tmp_path / "small.npz", **cg_problem(0.01))
    r = run_in_process(["run", tmp_path / "cg", "--inputs", tmp_path / "small.npz"])
    assert r.returncode == 1 and "fitted on [0.001, 1e+15]" in r.stderr
    assert "Traceback" not in r.stderr and "w =" not in r.stdout
    r = run_in_process(["run", tmp_path / "cg", "--inputs", tmp_path / "small.npz",
                        "--domains", "warn"])
    assert r.returncode == 0 and "warning: " in r.stderr and "w =" in r.stdout


def test_observe_reduces_an_unwritten_tensor_once_per_run():
    """A tensor read at several points of a run (an input every step's piece reads) is reduced
    once when `done` spans the run; written in place between the points, it is reduced again
    and the later checks see its new range."""
    import torch
    from tcompile.runtime.domain_guard import observe, settle
    x, y = torch.tensor([1.0, -2.0]), torch.tensor([5.0])
    seen, done = [], {}
    observe([(0, x), (1, y)], seen, done)
    observe([(2, x)], seen, done)
    assert len(done) == 2 and seen[2][1] is seen[0][1]
    x.mul_(3.0)
    observe([(3, x)], seen, done)
    assert len(done) == 3
    assert settle(seen) == {0: (-2.0, 1.0), 1: (5.0, 5.0), 2: (-2.0, 1.0), 3: (-6.0, 3.0)}


SINKHORN = """program sinkhorn_small
dim k = 5
param steps = 6
input C : [k, k] assume in [0, 1]
input a : [k] assume in [0.1, 0.3]
input b : [k] assume in [0.1, 0.3]
output P
K = exp(-2 * C)
v = ones(k)
repeat steps {
  u = a / (K @ v) on [0.01, 100]
  v = b / (K.T @ u) on [0.01, 100]
}
P = diag(u) @ K @ diag(v)
"""


def test_a_fit_two_statements_share_names_the_statement_whose_value_left(tmp_path):
    """A user's Sinkhorn: one reciprocal fit on [0.01, 100] serves both divisions (one
    approximation record, lines 11 and 12), and K.T @ u leaves it. The message led with line
    11's statement; each domain check now carries its own statement's line (kept by save and
    load), and the message leads with line 12, the other as 'also'. (At 40 steps; the
    shared build takes the count at run time.)"""
    from tcompile.language.parser import parse_source
    inputs = sample_inputs(parse_source(SINKHORN), seed=3)
    prog = tcompile.compile_source(SINKHORN, loops="shared")
    prog.save(tmp_path / "sinkhorn")
    for p in (prog, tcompile.load(tmp_path / "sinkhorn")):
        p.run(steps=6, **inputs)                         # inside its domains at 6
        with pytest.raises(DomainError) as e:
            p.run(steps=40, **inputs)
        first = str(e.value).splitlines()[1]
        assert first.startswith("  line 12 `v = b / (K.T @ u) on [0.01, 100]` (also line "
                                "11): reciprocal((Kᵀ@u)) read"), first
