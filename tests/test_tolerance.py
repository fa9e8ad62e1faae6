"""The fit term of the tolerance policy (inspection/tolerance.py): a value is also within
tolerance when its gap to the interpreter is at most FIT_FACTOR times what the fits move it,
measured by compiling the program again with every fitted function off by its own error,
up and down (compiler/approx.py `errors_shifted`).

The oracle is the interpreter: the gaps these tests accept are the model's measured gaps to
it, and a model whose weights were changed after its build must still fail.
"""
from __future__ import annotations

import numpy as np
import pytest

from tcompile.compiler.approx import approximate, errors_shifted, power_relative
from tcompile.compiler.pipeline import compile_source
from tcompile.inspection.reference import relative_error
from tcompile.inspection.sampling import sample_inputs
from tcompile.inspection.tolerance import FIT_FACTOR, fit_tolerance, what_if_builds
from tcompile.inspection.trace import format_trace, trace
from tcompile.language.interpreter import interpret_program
from tcompile.runtime.program import CompiledProgram
from tcompile.runtime.weights import LayerWeights

from cli_in_process import run_in_process

# RK2 for y' = -y + y^3 / 3: the right-hand side is one fitted piece (within 1e-6), applied
# twice a step; ten steps leave y about 6e-6 off, 1.4e-5 relative: over the card's 1e-5.
RK2 = """program rk2
param steps = 10
param h = 0.1
input y0 : [n] in [-1, 1]
output {out}
def f(y) {{
  return -y + y * y * y / 3
}}
y = y0
repeat steps {{
  k1 = f(y)
  k2 = f(y + h * k1)
  y = (y + h / 2 * (k1 + k2)) on [-1.2, 1.2]
}}
{tail}"""
RK2_Y = RK2.format(out="y", tail="")
RK2_Z = RK2.format(out="z", tail="z = 100 * y\n")   # large: trace's absolute test fails too


def form_values(pl, u):
    """A PL function's ReLU form evaluated at u (gate 1), as the MLP computes it."""
    a, b, c = pl.relu_form()
    return np.maximum(np.outer(u, a) + b, 0.0) @ c


def test_a_shifted_fit_moves_by_its_own_error():
    fit = approximate("sigmoid", -4.0, 4.0, 1e-6)
    rel = power_relative("reciprocal", -1.0, 0.5, 4.0, 1e-4)     # |pl - f| <= 1e-4 |f|
    exact = approximate("relu", -1.0, 1.0, 1e-6)
    u, v = np.linspace(-4.0, 4.0, 1001), np.linspace(0.5, 4.0, 1001)
    base, base_rel, base_exact = form_values(fit, u), form_values(rel, v), form_values(exact, u)
    assert rel.relative and fit.max_error > 0
    with errors_shifted(1.0):
        np.testing.assert_allclose(form_values(fit, u) - base, fit.max_error, rtol=0, atol=1e-15)
        np.testing.assert_allclose(form_values(rel, v), base_rel * (1 + rel.max_error),
                                   rtol=1e-12, atol=0)
        np.testing.assert_array_equal(form_values(exact, u), base_exact)
    with errors_shifted(-1.0):
        np.testing.assert_allclose(form_values(fit, u) - base, -fit.max_error, rtol=0, atol=1e-15)
    # after the context the forms are the build's again (the cached form was not touched)
    np.testing.assert_array_equal(form_values(fit, u), base)
    np.testing.assert_array_equal(form_values(rel, v), base_rel)


def _weights(prog):
    return [{k: np.asarray(v) for k, v in w.arrays().items()} for w in prog.layers]


@pytest.fixture(scope="module")
def rk2():
    """RK2's unrolled build and its what-if builds (compiled once for the module)."""
    prog = compile_source(RK2_Y, "rk2.tp")
    return prog, what_if_builds(prog)


def test_what_if_builds_share_the_layout_and_leave_the_build_alone(rk2):
    prog, builds = rk2
    assert builds is not None and all(b.layout == prog.layout for b in builds)
    up, down = builds
    assert any(not np.array_equal(a["W_2"], b["W_2"])
               for a, b in zip(_weights(up), _weights(down)))
    before = compile_source(RK2_Y, "rk2.tp", loops="shared")     # and a shared build's
    twins = what_if_builds(before)
    after = compile_source(RK2_Y, "rk2.tp", loops="shared")
    assert twins is not None and all(b.layout == before.layout for b in twins)
    for w0, w1 in zip(_weights(before), _weights(after)):       # nothing leaked out
        for k in w0:
            np.testing.assert_array_equal(w0[k], w1[k])


def test_a_program_without_fits_has_no_what_if_builds():
    prog = compile_source("program p\ninput x : [n] in [-1, 1]\noutput y\ny = relu(2 * x) - x\n",
                          "p.tp")
    assert what_if_builds(prog) is None


def test_fit_tolerance_is_the_larger_of_the_two():
    up, down = np.array([1.0 + 2e-6, 2.0]), np.array([1.0, 2.0])   # 1e-6 of the scale 2
    assert fit_tolerance(1e-7, up, down) == pytest.approx(FIT_FACTOR * 1e-6 / 2)
    assert fit_tolerance(1e-3, up, down) == 1e-3


def test_the_fits_move_explains_the_measured_gap(rk2):
    """The interpreter is the oracle: the gap of the build is of the size the what-if builds
    move it (0.14 to 1.74 times on eleven outputs measured), not the card's one number."""
    prog, builds = rk2
    inputs = sample_inputs(prog.program, prog.info.float_params(), n=16, batch=8, seed=0)
    got = prog.run(**inputs)["y"]
    want = interpret_program(prog.program, prog.info.float_params(), **inputs)["y"]
    up, down = (b.run(**inputs)["y"] for b in builds)
    gap, move = relative_error(got, want), relative_error(up, down) / 2
    assert gap > prog.predicted_rtol()                     # the card's estimate alone says NO
    assert 0.3 * move < gap < move                         # the fits' move says why


def test_check_passes_rk2_at_its_defaults_with_the_fit_term(tmp_path):
    path = tmp_path / "rk2.tp"
    path.write_text(RK2_Y)
    r = run_in_process(["check", path])
    assert r.returncode == 0, r.stdout
    assert r.stdout.startswith("PASS: every output within its tolerance")
    assert f"or {FIT_FACTOR:g}x what the fits move the output" in r.stdout
    row = next(line.split() for line in r.stdout.splitlines() if line.strip().startswith("y "))
    assert float(row[3]) > 1e-5 and row[4] == "yes"        # tolerance column, loosened
    r = run_in_process(["check", path, "--rtol", "1e-5"])  # an explicit --rtol is the rule
    assert r.returncode != 0 and r.stdout.startswith("FAIL: y out of tolerance")


def _with_mlp_scaled(prog, factor):
    """prog with every MLP output scaled: a model changed after its build."""
    layers = [LayerWeights(w.W_K, w.W_Q, w.W_V, w.W_1, np.asarray(w.W_2) * factor,
                           list(w.head_labels)) for w in prog.layers]
    return CompiledProgram(prog.typed_manifest, layers)


@pytest.mark.parametrize("loops", ["unrolled", "shared"])
def test_trace_uses_the_fit_term_and_still_fails_a_changed_model(loops):
    prog = compile_source(RK2_Z, "rk2z.tp", loops=loops)
    inputs = sample_inputs(prog.program, prog.info.float_params(), n=16, batch=8, seed=0)
    rows = trace(prog, **inputs)
    assert all(r["ok"] for r in rows)
    last = rows[-1]
    assert last["variable"].startswith("z") and last["tol"] > prog.predicted_rtol()
    assert last["rel_err"] > prog.predicted_rtol() and last["max_abs_err"] > last["tol"]
    assert last["judged"] == "fits" and "yes+" in format_trace([last])
    bad = _with_mlp_scaled(prog, 1 + 1e-4)
    assert not trace(bad, **inputs)[-1]["ok"]
