"""Looking inside a compiled model: the layer-by-layer trace against the interpreter (and that
it names the right layer and variable when a weight is wrong), the TransformerLens-style hook
points and interventions, the model card's depth against the paper's, and the pictures
(layout, weights, convergence), in-process and through the command line.

Small step counts keep the whole file well under a minute: the three shipped programs are
compiled once per module; the CLI commands run in-process from one fixture.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tcompile  # noqa: E402
from cli_in_process import run_in_process  # noqa: E402
from tcompile.inspection import plots  # noqa: E402
from tcompile.runtime import clock  # noqa: E402
from tcompile.cli.main import main  # noqa: E402
from tcompile.inspection.sampling import sample_inputs  # noqa: E402
from tcompile.inspection.trace import first_departure, format_trace, interpreter_assignments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {
    "newton_inverse": {"steps": 5},
    "least_squares": {"steps": 4},
    "newton_logistic": {"steps": 2, "inv_steps": 2},
}
NAMES = list(PROGRAMS)
HOOKS = ["hook_resid_pre", "attn.hook_result", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre",
         "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]


# ---- shared fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def progs():
    return {name: tcompile.compile_file(ROOT / "programs" / f"{name}.tp", params=p)
            for name, p in PROGRAMS.items()}


@pytest.fixture(scope="module")
def inputs(progs):
    """Two random valid problems per program (n = 8 tokens)."""
    return {name: sample_inputs(prog.program, PROGRAMS[name], n=max(8, prog.manifest["min_tokens"]),
                                batch=2, seed=7)
            for name, prog in progs.items()}


@pytest.fixture(scope="module")
def traces(progs, inputs):
    return {name: tcompile.trace(prog, **inputs[name]) for name, prog in progs.items()}


def block_with_var(prog, var):
    found = [b for b in prog.manifest["blocks"] if b["vars"] == [var]]
    assert len(found) == 1, (var, found)
    return found[0]


def output_block(prog, name):
    spec = next(o for o in prog.manifest["outputs"] if o["name"] == name)
    return next(b for b in prog.manifest["blocks"] if b["key"] == spec["block"])


# ---- trace ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_trace_every_row_within_its_tolerance(progs, traces, name):
    rows = traces[name]
    assert rows, "the trace is empty"
    tol = progs[name].predicted_rtol()
    for r in rows:
        assert set(r) == {"layer", "sublayer", "variable", "block", "max_abs_err", "rel_err", "tol",
                          "ok", "ref_scale", "judged"}
        assert r["tol"] == tol
        assert np.isfinite(r["max_abs_err"]) and np.isfinite(r["rel_err"])
        assert r["ok"], r
    assert first_departure(rows) is None
    assert format_trace(rows).splitlines()[-1] == "every traced value matches the interpreter"
    # rows come in time order: (layer, attn before mlp)
    order = [2 * r["layer"] + (r["sublayer"] == "mlp") for r in rows]
    assert order == sorted(order)
    assert min(r["layer"] for r in rows) == 0 and max(r["layer"] for r in rows) == progs[name].n_layers - 1


@pytest.mark.parametrize("name", NAMES)
def test_trace_covers_every_stored_variable_and_the_outputs(progs, inputs, traces, name):
    prog, rows = progs[name], traces[name]
    seen = {r["variable"] for r in rows}
    stored = {v for b in prog.manifest["blocks"] for v in b["vars"]}
    assert stored, "no stored program variable"
    assert stored <= seen, f"never traced: {sorted(stored - seen)}"
    # inputs too, unless the first sublayer already reuses their rows (the trace starts after it)
    first = {r for b in prog.manifest["blocks"] if b["written"] == 1 for r in b["rows"]}
    live_inputs = {f"input:{b['name']}" for b in prog.manifest["blocks"]
                   if b["kind"] == "input" and not b["vars"]
                   and not (b["last_read"] <= 1 and first & set(b["rows"]))}
    assert live_inputs <= seen
    # the final value of every output appears, in the last layer, in its output block
    for spec in prog.manifest["outputs"]:
        blk = output_block(prog, spec["name"])
        final = max(blk["vars"], key=lambda v: int(v.split("@")[1]))
        assert final.split("@")[0] == spec["name"]
        last = [r for r in rows if r["variable"] == final and r["layer"] == prog.n_layers - 1]
        assert last and all(r["block"] == blk["key"] and r["ok"] for r in last), (final, last)
    # the last row of each output measures what run() and the interpreter disagree by
    got = prog.run(executor="module", **inputs[name])
    want = tcompile.interpret_program(prog.program, PROGRAMS[name], **inputs[name])
    for spec in prog.manifest["outputs"]:
        blk = output_block(prog, spec["name"])
        final = max(blk["vars"], key=lambda v: int(v.split("@")[1]))
        (row,) = [r for r in rows if r["variable"] == final and r["layer"] == prog.n_layers - 1
                  and r["sublayer"] == "mlp"]
        gap = float(np.max(np.abs(got[spec["name"]] - want[spec["name"]])))
        assert row["max_abs_err"] == pytest.approx(gap, rel=1e-6, abs=1e-300), (final, row, gap)
    # one stored iterate per step: X@1..X@5 (X@0 = A^T is the input itself), w@0..w@4
    loop = {"newton_inverse": ("X", range(1, 6)), "least_squares": ("w", range(0, 5))}.get(name)
    if loop:
        assert {f"{loop[0]}@{k}" for k in loop[1]} <= seen


def ill_conditioned_least_squares(kappa=1e4, n=16, seed=0):
    """A valid least_squares problem (rows of norm <= 1, full rank) with condition number kappa."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, 4)))
    V, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    M = (U * np.geomspace(1, 1 / kappa, 4)) @ V.T
    A = M / np.linalg.norm(M, axis=1).max()
    return dict(A=A, y=rng.standard_normal(n), a_test=rng.standard_normal(4))


@pytest.fixture(scope="module")
def ill_conditioned():
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params={"steps": 34})
    inp = ill_conditioned_least_squares()
    return prog, inp, tcompile.trace(prog, **inp)


def test_ill_conditioned_least_squares_differs_only_by_rounding(ill_conditioned):
    """kappa(A) = 1e4: the compiled model and the interpreter run the same exact algorithm and
    differ only in float64 rounding, amplified by kappa(S) = kappa(A)^2 = 1e8."""
    prog, inp, rows = ill_conditioned
    assert np.linalg.cond(inp["A"]) == pytest.approx(1e4, rel=1e-6)
    assert prog.manifest["approximations"] == [] and prog.predicted_rtol() == 1e-10
    rounding = np.finfo(float).eps * np.linalg.cond(inp["A"]) ** 2          # ~2e-8
    assert max(r["rel_err"] for r in rows) < 10 * rounding
    # and both are as close to numpy's least squares as that rounding allows
    w_ls = np.linalg.lstsq(inp["A"], inp["y"], rcond=None)[0]
    got = prog.run(**inp)["w"]
    want = tcompile.interpret_program(prog.program, {"steps": 34}, **inp)["w"]
    for w in (got, want):
        assert np.max(np.abs(w - w_ls)) / np.max(np.abs(w_ls)) < 10 * rounding


def test_trace_reports_no_departure_for_rounding_on_an_ill_conditioned_problem(ill_conditioned):
    _prog, _inp, rows = ill_conditioned
    assert first_departure(rows) is None


# (program, variable to corrupt): a loop variable in the middle of the computation
CORRUPT = [("newton_inverse", "X@3"), ("least_squares", "w@2"), ("newton_logistic", "H@1")]


@pytest.mark.parametrize("name,var", CORRUPT)
def test_corrupted_weight_is_found_at_its_layer_and_variable(progs, inputs, traces, name, var):
    prog = progs[name]
    blk = block_with_var(prog, var)
    t = blk["written"]
    assert t % 2 == 1, "written by an attention sublayer"
    ell = (t - 1) // 2                                   # layers count from 0, as in the hooks
    W_V = prog.layers[ell].W_V                       # (heads, D, D): row = the row it writes
    hits = [(h, r, c) for h in range(W_V.shape[0]) for r in blk["rows"] for c in range(W_V.shape[2])
            if W_V[h, r, c] != 0]
    assert hits, f"no head of layer {ell} writes the rows of {var}"
    h, r, c = hits[0]
    saved = W_V[h, r, c]
    try:
        W_V[h, r, c] = saved + 0.5 * abs(saved) + 0.1
        prog._modules.clear()
        rows = tcompile.trace(prog, **inputs[name])
    finally:
        W_V[h, r, c] = saved
        prog._modules.clear()
    bad = first_departure(rows)
    assert bad is not None, "the corrupted weight went unnoticed"
    assert (bad["layer"], bad["sublayer"], bad["variable"], bad["block"]) == (ell, "attn", var, blk["key"])
    # everything before is fine, the error is carried on to what comes after
    before = rows[:rows.index(bad)]
    assert before and all(r["ok"] for r in before)
    assert max(r["layer"] for r in before) <= ell
    clean = {(r["layer"], r["sublayer"], r["block"]): r["max_abs_err"] for r in traces[name]}
    final = [r for r in rows if r["layer"] == prog.n_layers - 1 and r["sublayer"] == "mlp"
             and r["block"] in {o["block"] for o in prog.manifest["outputs"]}]
    assert final and all(r["max_abs_err"] > 10 * clean[(r["layer"], r["sublayer"], r["block"])] + 1e-12
                         for r in final), final
    text = format_trace(rows)
    assert f"first departure: layer {ell} (attn), variable {var}" in text
    # restored weights: the trace is clean again
    assert first_departure(tcompile.trace(prog, **inputs[name])) is None


def test_compact_trace_keeps_each_value_once_and_every_change(progs, traces):
    """The default view: each (value, block) where it first appears, again only where its
    error changes; inputs and constants (which never change) once."""
    from tcompile.inspection.trace import select_rows
    rows = traces["newton_logistic"]
    shown = select_rows(rows)
    assert len(shown) < len(rows) / 5
    keys = [(r["variable"], r["block"]) for r in rows]
    assert {(r["variable"], r["block"]) for r in shown} == set(keys)      # nothing lost
    for r in shown:
        if r["variable"].startswith(("input:", "const:")):
            assert keys.count((r["variable"], r["block"])) > 1            # repeated in the full trace
            assert sum(1 for s in shown if (s["variable"], s["block"]) == (r["variable"], r["block"])) == 1
    # a row left out repeats the error of the last shown row of its value
    last = {}
    for r in rows:
        key = (r["variable"], r["block"])
        if not any(r is s for s in shown):
            assert last[key] == r["max_abs_err"]
        last[key] = r["max_abs_err"]
    assert select_rows(rows, every=True) == rows


def test_trace_filters_by_variable_and_failing(progs, inputs, traces):
    from tcompile.inspection.trace import select_rows
    rows = traces["least_squares"]
    w = select_rows(rows, var="w", every=True)
    assert w and {r["variable"].split("@")[0] for r in w} == {"w"}
    assert len(w) == sum(r["variable"].startswith("w@") for r in rows)
    assert {r["variable"] for r in select_rows(rows, var="w@2")} == {"w@2"}
    assert {r["variable"] for r in select_rows(rows, var="A")} == {"input:A"}
    assert select_rows(rows, failing=True) == []
    # a corrupted weight: --failing shows the departure first, and only rows over tolerance
    prog = progs["least_squares"]
    blk = block_with_var(prog, "w@2")
    ell = (blk["written"] - 1) // 2
    W_V = prog.layers[ell].W_V
    h, r, c = next((h, r, c) for h in range(W_V.shape[0]) for r in blk["rows"]
                   for c in range(W_V.shape[2]) if W_V[h, r, c] != 0)
    saved = W_V[h, r, c]
    try:
        W_V[h, r, c] = saved + 0.5 * abs(saved) + 0.1
        prog._modules.clear()
        bad_rows = tcompile.trace(prog, **inputs["least_squares"])
    finally:
        W_V[h, r, c] = saved
        prog._modules.clear()
    failing = select_rows(bad_rows, failing=True)
    assert failing and not any(r["ok"] for r in failing)
    assert failing[0] is first_departure(bad_rows)
    assert select_rows(bad_rows, failing=True, every=True) == [r for r in bad_rows if not r["ok"]]
    text = format_trace(bad_rows, failing=True, every=False)
    assert "rows over tolerance" in text and "first departure: layer" in text.splitlines()[-1]


def test_a_value_of_about_zero_is_judged_by_its_absolute_error():
    """A gradient that converged to 1e-17: relative error 8 means nothing; the row says it is
    judged by its absolute error and shows no relative error; a normal value is judged
    relatively."""
    from types import SimpleNamespace
    from tcompile.inspection.trace import trace_row
    blk = SimpleNamespace(key="g@7")
    ref = np.full((1, 3), 1e-17)
    tiny = trace_row(5, "g@7", blk, ref + 8e-17, ref, tol=1e-10)
    assert tiny["ok"] and tiny["judged"] == "absolute" and tiny["rel_err"] == pytest.approx(8.0)
    normal = trace_row(5, "w@1", blk, np.ones((1, 3)) + 1e-12, np.ones((1, 3)), tol=1e-10)
    assert normal["ok"] and normal["judged"] == "relative"
    wrong = trace_row(5, "w@1", blk, np.ones((1, 3)) + 1e-3, np.ones((1, 3)), tol=1e-10)
    assert not wrong["ok"] and wrong["judged"] == "relative"
    text = format_trace([tiny, normal])
    line = next(ln for ln in text.splitlines() if "g@7" in ln)
    assert "(≈0)" in line and "yes*" in line and "8.00e+00" not in line
    assert "judged by its absolute error" in text
    assert "judged by" not in format_trace([normal])


def test_cli_trace_var_and_failing(artifacts, inputs, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", **inputs["least_squares"])
    art, inp = str(artifacts["least_squares"]), str(tmp_path / "in.npz")
    assert main(["trace", art, "--inputs", inp, "--var", "w"]) == 0
    out = capsys.readouterr().out
    table = [ln for ln in out.splitlines()[1:] if re.match(r"\s+\d+\s+(attn|mlp)", ln)]
    assert table and all(ln.split()[2].startswith("w@") for ln in table)
    assert "values of w" in out
    assert main(["trace", art, "--inputs", inp, "--failing"]) == 0
    out = capsys.readouterr().out
    assert not [ln for ln in out.splitlines()[1:] if re.match(r"\s+\d+\s+(attn|mlp)", ln)]
    assert out.rstrip().endswith("every traced value matches the interpreter")
    assert main(["trace", art, "--inputs", inp, "--var", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "--var nosuch: least_squares traces no such value; it traces" in err and " w," in err


# ---- hook points -----------------------------------------------------------------------------

def cached(prog, inp):
    x = prog.encode(**inp)
    out, cache = prog.module.run_with_cache(x)
    return x, out, cache


@pytest.mark.parametrize("name", NAMES)
def test_run_with_cache_has_the_hooks_of_every_nonempty_sublayer(progs, inputs, name):
    prog = progs[name]
    _, out, cache = cached(prog, inputs[name])
    B, n, D = out.shape
    for i, spec in enumerate(prog.manifest["layers"]):
        for hook in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert cache[f"blocks.{i}.{hook}"].shape == (B, n, D)
        if spec["heads"]:
            assert cache[f"blocks.{i}.attn.hook_result"].shape == (B, spec["heads"], n, D)
        if spec["mlp_hidden"]:
            assert cache[f"blocks.{i}.mlp.hook_pre"].shape == (B, n, spec["mlp_hidden"])
            assert cache[f"blocks.{i}.mlp.hook_post"].shape == (B, n, spec["mlp_hidden"])
    assert set(cache) <= set(prog.module.hook_points())


@pytest.mark.parametrize("name", NAMES)
def test_run_with_cache_has_every_hook_for_every_block(progs, inputs, name):
    prog = progs[name]
    _, out, cache = cached(prog, inputs[name])
    B, n, D = out.shape
    for i, spec in enumerate(prog.manifest["layers"]):
        for hook in HOOKS:
            assert f"blocks.{i}.{hook}" in cache, f"blocks.{i}.{hook}"
        assert cache[f"blocks.{i}.attn.hook_result"].shape == (B, spec["heads"], n, D)
        assert cache[f"blocks.{i}.mlp.hook_pre"].shape == (B, n, spec["mlp_hidden"])
    assert set(cache) == set(prog.module.hook_points())


@pytest.mark.parametrize("name", NAMES)
def test_hook_values_add_up(progs, inputs, name):
    prog = progs[name]
    x, out, cache = cached(prog, inputs[name])
    L = prog.n_layers
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], x, rtol=0, atol=0)
    torch.testing.assert_close(cache[f"blocks.{L - 1}.hook_resid_post"], out, rtol=0, atol=0)
    for i, (spec, w) in enumerate(zip(prog.manifest["layers"], prog.layers)):
        c = {h: cache.get(f"blocks.{i}.{h}") for h in HOOKS}
        if spec["heads"]:
            torch.testing.assert_close(c["attn.hook_result"].sum(dim=1), c["hook_attn_out"],
                                       rtol=1e-12, atol=1e-12)
        else:
            assert not c["hook_attn_out"].any()
        torch.testing.assert_close(c["hook_resid_mid"], c["hook_resid_pre"] + c["hook_attn_out"],
                                   rtol=0, atol=0)
        torch.testing.assert_close(c["hook_resid_post"], c["hook_resid_mid"] + c["hook_mlp_out"],
                                   rtol=0, atol=0)
        if spec["mlp_hidden"]:
            W_1, W_2 = torch.as_tensor(w.W_1), torch.as_tensor(w.W_2)
            torch.testing.assert_close(c["mlp.hook_pre"], c["hook_resid_mid"] @ W_1.T, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(c["mlp.hook_post"], torch.relu(c["mlp.hook_pre"]), rtol=0, atol=0)
            torch.testing.assert_close(c["hook_mlp_out"], c["mlp.hook_post"] @ W_2.T, rtol=1e-12, atol=1e-12)
        else:
            assert not c["hook_mlp_out"].any()
        if i + 1 < L:
            torch.testing.assert_close(cache[f"blocks.{i + 1}.hook_resid_pre"], c["hook_resid_post"],
                                       rtol=0, atol=0)
    # the forward states the trace reads are the cached residuals
    states = prog.forward_states(x)
    assert len(states) == 2 * L + 1
    torch.testing.assert_close(states[2 * L], out, rtol=0, atol=0)
    torch.testing.assert_close(states[1], cache["blocks.0.hook_resid_mid"], rtol=0, atol=0)


def test_interventions_through_forward_hooks(progs, inputs):
    """Activation patching and head ablation, the TransformerLens way."""
    prog = progs["newton_inverse"]
    module = prog.module
    inp = inputs["newton_inverse"]
    other = sample_inputs(prog.program, PROGRAMS["newton_inverse"], n=8, batch=2, seed=99)
    x, x_other = prog.encode(**inp), prog.encode(**other)
    with torch.no_grad():
        clean = module(x)
    hp = module.hook_points()
    assert set(f"blocks.{i}.{h}" for i in range(prog.n_layers) for h in HOOKS) == set(hp)

    # 1. patch the whole input: the model then computes the other problem's inverse
    handle = hp["blocks.0.hook_resid_pre"].register_forward_hook(lambda m, i, o: x_other)
    try:
        patched, cache = module.run_with_cache(x)
    finally:
        handle.remove()
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], x_other, rtol=0, atol=0)
    want = tcompile.interpret_program(prog.program, PROGRAMS["newton_inverse"], **other)["X"]
    np.testing.assert_allclose(prog.decode(patched)["X"], want, rtol=1e-10, atol=1e-12)

    # 2. ablate head 0 of the last layer: the output changes, only in rows that head writes
    L = prog.n_layers

    def ablate(_m, _i, out):
        out = out.clone()
        out[:, 0] = 0
        return out

    handle = hp[f"blocks.{L - 1}.attn.hook_result"].register_forward_hook(ablate)
    try:
        with torch.no_grad():
            ablated = module(x)
    finally:
        handle.remove()
    diff = (ablated - clean).abs().amax(dim=(0, 1))
    assert diff.max() > 1e-3
    writes = np.abs(prog.layers[L - 1].W_V[0]).sum(axis=1) > 0
    assert not diff[torch.as_tensor(~writes)].any()

    # 3. editing a residual hook point mid-model: scale X@2 right where it is written; the next
    #    step then starts from the edited value
    blk, nxt = block_with_var(prog, "X@2"), block_with_var(prog, "X@3")

    def where(b):                           # the hook after the sublayer that writes block b
        t = b["written"]
        return f"blocks.{(t + 1) // 2 - 1}.{'hook_resid_mid' if t % 2 else 'hook_resid_post'}"

    def scale(_m, _i, out):
        out = out.clone()
        out[..., blk["rows"]] *= 1.5
        return out

    handle = hp[where(blk)].register_forward_hook(scale)
    try:
        _, cache = module.run_with_cache(x)
    finally:
        handle.remove()
    X2 = prog.read_block(cache[where(blk)].numpy(), blk, [4, 4])
    X3 = prog.read_block(cache[where(nxt)].numpy(), nxt, [4, 4])
    params = {k: float(v) for k, v in prog.manifest["params"].items()}
    clean_X2 = interpreter_assignments(prog.program, params, {"A": inp["A"]}, 4)["X@2"]
    np.testing.assert_allclose(X2, 1.5 * clean_X2, rtol=1e-12, atol=1e-14)
    A = inp["A"]
    np.testing.assert_allclose(X3, 2 * X2 - X2 @ A @ X2, rtol=1e-12, atol=1e-12)

    # hooks removed: the same output as before
    with torch.no_grad():
        torch.testing.assert_close(module(x), clean, rtol=0, atol=0)


# ---- the model card ------------------------------------------------------------------------

def compiled(progs, name, params):
    if params == PROGRAMS[name]:
        return progs[name]
    return tcompile.compile_file(ROOT / "programs" / f"{name}.tp", params=params)


# (program, params, loop variable, depth per iteration at most, paper's depth). README: newton_inverse
# 1 layer per step (paper 2), least_squares 1 (paper 1), newton_logistic k + 4 (paper 2k + 11);
# newton_logistic is held to "at most k + 4", so that a shallower compilation still passes.
DEPTHS = [
    ("newton_inverse", {"steps": 5}, "X", 1, 2),
    ("least_squares", {"steps": 4}, "w", 1, 1),
    ("newton_logistic", {"steps": 2, "inv_steps": 2}, "x", 2 + 4, 2 * 2 + 11),
    ("newton_logistic", {"steps": 2, "inv_steps": 3}, "x", 3 + 4, 2 * 3 + 11),
]


@pytest.mark.parametrize("name,params,var,depth,paper", DEPTHS)
def test_report_depth_per_iteration_vs_paper(progs, name, params, var, depth, paper):
    prog = compiled(progs, name, params)
    rep = prog.report
    assert set(rep["depth_per_iteration"]) == {var}, rep["depth_per_iteration"]
    got = rep["depth_per_iteration"][var]
    assert got == depth if name != "newton_logistic" else 1 <= got <= depth
    assert rep["paper_depth"]["per_iteration"] == paper
    assert rep["paper_depth"]["formula"]
    if name == "newton_inverse":                        # T layers for T steps (paper: 2T)
        assert prog.n_layers == params["steps"]
    # the depth the report claims is what one more iteration really costs
    longer = compiled(progs, name, dict(params, steps=params["steps"] + 1))
    assert longer.n_layers - prog.n_layers == got
    assert f"depth per loop iteration ({var}): {got:g} layers   paper: {paper} (" in tcompile.report_text(prog)


# ---- pictures ------------------------------------------------------------------------------

def check_pictures(paths, stem):
    """Each picture as a PNG of reasonable size and a well-formed SVG."""
    import matplotlib.image as mpimg
    by_suffix = {p.suffix: p for p in paths}
    assert set(by_suffix) == {".png", ".svg"}, paths
    for p in paths:
        assert p.name.startswith(stem) and p.is_file()
    png, svg = by_suffix[".png"], by_suffix[".svg"]
    assert png.stat().st_size > 5000
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 200, img.shape
    assert img[..., :3].std() > 0.02, "a blank picture"
    text = svg.read_text()
    assert svg.stat().st_size > 5000 and "<svg" in text and text.rstrip().endswith("</svg>")


# one weight layer per program (counted from 0), among the quicker ones to draw (the overview
# and the CLI's --layer have their own tests in test_plots_readable.py)
WEIGHT_LAYERS = {"newton_inverse": [1], "least_squares": [-1], "newton_logistic": [4]}


@pytest.mark.parametrize("name", NAMES)
def test_plots_layout_weights_convergence(progs, inputs, name, tmp_path):
    prog = progs[name]
    paths = plots.plot_layout(prog, tmp_path)
    check_pictures(paths, f"{name}_layout")
    layers = [ell % prog.n_layers for ell in WEIGHT_LAYERS[name]]           # -1: the last layer
    paths = plots.plot_weights(prog, tmp_path, layers)
    assert len(paths) == 2 * len(layers)
    for ell in layers:
        check_pictures([p for p in paths if p.stem == f"{name}_weights_layer{ell:03d}"],
                       f"{name}_weights_layer{ell:03d}")
    paths = plots.plot_convergence(prog, tmp_path, inputs[name])
    check_pictures(paths, f"{name}_convergence")


def test_convergence_data_matches_the_exact_iterates(progs, inputs):
    """newton_inverse: the compiled error after layer ℓ is the exact algorithm's after step ℓ."""
    prog = progs["newton_inverse"]
    inp = inputs["newton_inverse"]
    A_inv = np.linalg.inv(inp["A"])
    data = plots.convergence_data(prog, inp, reference={"X": A_inv})["X"]
    layers, errs = zip(*data["compiled"])
    assert list(layers) == list(range(1, prog.n_layers + 1))
    exact = {ell: e for ell, e, _var in data["exact"]}
    assert set(exact) == set(layers)
    for ell, e in data["compiled"]:
        assert e == pytest.approx(exact[ell], rel=1e-8, abs=1e-13)
    # numpy's own Newton–Schulz, X_0 = A^T
    X = np.swapaxes(inp["A"], 1, 2).copy()
    for ell in layers:
        X = 2 * X - X @ inp["A"] @ X
        want = float(np.max(np.linalg.norm((X - A_inv).reshape(len(X), -1), axis=1)))
        assert exact[ell] == pytest.approx(want, rel=1e-8, abs=1e-13)
    assert errs[-1] < errs[0]


def test_a_shared_build_plots_its_convergence_and_layout(progs, inputs, tmp_path):
    """A shared build's stored layers run many times: its convergence is read after every
    application of the loop body (here one layer each, so at the unrolled build's layers, with
    its errors; the first iteration runs before the loop, in the prologue, and is not read),
    and its layout is drawn at the counts its blocks come from."""
    from tcompile import compile_file
    shared = compile_file(ROOT / "programs" / "newton_inverse.tp", PROGRAMS["newton_inverse"],
                          loops="shared")
    steps = PROGRAMS["newton_inverse"]["steps"]
    inp = inputs["newton_inverse"]
    ref = {"X": np.linalg.inv(inp["A"])}
    got = plots.convergence_data(shared, inp, reference=ref)["X"]
    want = plots.convergence_data(progs["newton_inverse"], inp, reference=ref)["X"]
    unrolled = dict(want["compiled"])
    assert [ell for ell, _ in got["compiled"]] == list(range(2, steps + 1))   # a layer a step
    assert max(unrolled) == steps
    for ell, e in got["compiled"]:
        assert e == pytest.approx(unrolled[ell], rel=1e-9, abs=1e-14)
    assert [(ell, var) for ell, _, var in got["exact"]] == [
        (ell, var) for ell, _, var in want["exact"] if ell >= 2]
    check_pictures(plots.plot_convergence(shared, tmp_path, inp), "newton_inverse_convergence")
    longer = plots.convergence_data(shared, {**inp, "steps": steps + 4}, reference=ref)["X"]
    assert [ell for ell, _ in longer["compiled"]] == list(range(2, steps + 5))   # a run-time count
    assert longer["compiled"][:steps - 1] == got["compiled"]
    fig = plots.layout_figure(shared)
    base = dict(shared.loops.base_counts)
    title = fig.axes[0].get_title()
    assert f"steps = {next(iter(base.values()))}" in title and "shared build" in title
    assert fig.axes[0].get_xlim()[1] == pytest.approx(
        clock.n_times(len(shared.loops.expand(base))) + 0.5)
    check_pictures(plots.plot_layout(shared, tmp_path), "newton_inverse_layout")


def test_a_read_ahead_loops_convergence_ends_with_the_exact_output_beside_the_compiled_one():
    """Value iteration reads ahead (test_shared_loops.VALUE_ITERATION): its last iterates sit
    in no application's state, so the exact curve stopped two layers before the compiled
    output's point. The output's own program point (V@40) is now drawn beside it."""
    from test_shared_loops import VALUE_ITERATION, _value_iteration_inputs
    prog = tcompile.compile_source(VALUE_ITERATION, loops="shared")
    inp = _value_iteration_inputs(np.random.default_rng(6))
    data = plots.convergence_data(prog, inp)["V"]
    (last, err, name), (end, got) = data["exact"][-1], data["compiled"][-1]
    assert (name, last) == ("V@40", end) and end == prog.loops.n_layers(prog.loops.counts())
    assert err == pytest.approx(got, rel=1e-6, abs=1e-15)


# ---- the command line, end to end ----------------------------------------------------------

@pytest.fixture(scope="module")
def artifacts(progs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect_art")
    for name, prog in progs.items():
        prog.save(tmp / name)
    return {name: tmp / name for name in progs}


@pytest.fixture(scope="module")
def cli(artifacts, inputs, tmp_path_factory):
    """name -> CompletedProcess for the CLI commands these tests read, plus the paths they used."""
    tmp = tmp_path_factory.mktemp("inspect_cli")
    paths = {"inputs": tmp / "ls_inputs.npz", "layout": tmp / "layout_out", "csv": tmp / "t" / "trace.csv",
             "noinputs": tmp / "conv_out"}
    np.savez(paths["inputs"], **inputs["least_squares"])
    art = artifacts["least_squares"]
    results = {
        "report": run_in_process(["report", artifacts["newton_logistic"]]),
        "layout": run_in_process(["plot", art, "--what", "layout", "-o", paths["layout"]]),
        "trace_csv": run_in_process(["trace", art, "--inputs", paths["inputs"], "-o", paths["csv"]]),
        "conv_noinputs": run_in_process(["plot", art, "--what", "convergence", "-o", paths["noinputs"]]),
    }
    results["paths"] = paths
    return results


def depth_line(text, var):
    m = re.search(rf"depth per loop iteration \({var}\): (\d+) layers\s+paper: (\d+) \(", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def test_cli_report_prints_depth_and_paper_depth(cli):
    r = cli["report"]
    assert r.returncode == 0, r.stderr
    assert "program newton_logistic (" in r.stdout and "inv_steps=2" in r.stdout
    depth, paper = depth_line(r.stdout, "x")
    assert 1 <= depth <= 2 + 4 and paper == 2 * 2 + 11
    assert "Theorem 5.2" in r.stdout


@pytest.mark.parametrize("name,var", [("newton_inverse", "X"), ("least_squares", "w"), ("newton_logistic", "x")])
def test_cli_report_in_process(artifacts, progs, capsys, name, var):
    assert main(["report", str(artifacts[name])]) == 0
    out = capsys.readouterr().out
    assert f"program {name} (" in out
    rep = progs[name].report
    assert depth_line(out, var) == (rep["depth_per_iteration"][var], rep["paper_depth"]["per_iteration"])


def test_cli_plot_layout(cli):
    r = cli["layout"]
    assert r.returncode == 0, r.stderr
    out = cli["paths"]["layout"]
    paths = sorted(out.iterdir())
    assert [p.name for p in paths] == ["least_squares_layout.png", "least_squares_layout.svg"]
    check_pictures(paths, "least_squares_layout")
    for p in paths:
        assert f"wrote {p}" in r.stdout


def test_cli_trace_writes_csv(cli, traces):
    import csv
    r = cli["trace_csv"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(f"every traced value matches the interpreter\nwrote {cli['paths']['csv']}")
    want = traces["least_squares"]
    with cli["paths"]["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(want)
    assert list(rows[0]) == ["layer", "sublayer", "variable", "block", "max_abs_err", "rel_err", "tol",
                             "ok", "ref_scale", "judged"]
    for got, w in zip(rows, want):
        assert (int(got["layer"]), got["sublayer"], got["variable"], got["block"], got["ok"]) == \
            (w["layer"], w["sublayer"], w["variable"], w["block"], "True")
        assert float(got["max_abs_err"]) == pytest.approx(w["max_abs_err"], abs=1e-14)
        assert float(got["tol"]) == w["tol"]


def test_cli_trace_writes_json(artifacts, inputs, traces, tmp_path, capsys):
    import json
    np.savez(tmp_path / "in.npz", **inputs["newton_logistic"])
    out = tmp_path / "deep" / "trace.json"
    assert main(["trace", str(artifacts["newton_logistic"]), "--inputs", str(tmp_path / "in.npz"),
                 "-o", str(out)]) == 0
    assert "every traced value matches the interpreter" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    want = traces["newton_logistic"]
    assert [(r["layer"], r["sublayer"], r["variable"]) for r in rows] == \
        [(r["layer"], r["sublayer"], r["variable"]) for r in want]
    assert all(r["ok"] is True for r in rows)


def test_cli_convergence_without_inputs_is_a_usage_error(cli):
    r = cli["conv_noinputs"]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.splitlines()[-1] == ("tcompile plot: error: --what convergence needs --inputs "
                                              "FILE.npz (the problems to converge on)")
    assert "wrote" not in r.stdout
    assert not cli["paths"]["noinputs"].exists()


def test_cli_plot_out_named_like_a_picture_is_a_usage_error(artifacts, tmp_path, capsys):
    """-o is a directory: `-o conv.png` would have made a directory of that name. Refused,
    and nothing is written."""
    out = tmp_path / "conv.png"
    assert main(["plot", str(artifacts["least_squares"]), "--what", "layout", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "looks like a picture's name" in err and "-o DIR" in err
    assert not out.exists()


def test_cli_plot_convergence_in_process(artifacts, inputs, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", **inputs["newton_inverse"])
    assert main(["plot", str(artifacts["newton_inverse"]), "--what", "convergence",
                 "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o")]) == 0
    assert "wrote" in capsys.readouterr().out
    check_pictures(sorted((tmp_path / "o").iterdir()), "newton_inverse_convergence")
    for what, args, why in (("layout", [], "-p goes with --what convergence"),
                            ("convergence", ["--inputs", str(tmp_path / "in.npz")],
                             "only in a shared build")):
        code = main(["plot", str(artifacts["newton_inverse"]), "--what", what, *args,
                     "-p", "steps=9", "-o", str(tmp_path / "p")])
        assert code != 0 and why in capsys.readouterr().err


def test_cli_plot_convergence_of_a_shared_build_at_a_run_time_count(inputs, tmp_path, capsys):
    """`-p steps=K` plots a shared build's convergence over a run of K steps (the run's
    layers on the axis, u* the interpreter after 2K + 10)."""
    from tcompile import compile_file
    shared = compile_file(ROOT / "programs" / "newton_inverse.tp", PROGRAMS["newton_inverse"],
                          loops="shared")
    shared.save(tmp_path / "ni")
    np.savez(tmp_path / "in.npz", **inputs["newton_inverse"])
    steps = PROGRAMS["newton_inverse"]["steps"] + 6
    assert main(["plot", str(tmp_path / "ni"), "--what", "convergence", "--inputs",
                 str(tmp_path / "in.npz"), "-p", f"steps={steps}", "-o", str(tmp_path / "o")]) == 0
    assert "wrote" in capsys.readouterr().out
    fig = plots.convergence_figure(shared, {**inputs["newton_inverse"], "steps": steps})
    caption = " ".join(t.get_text() for t in fig.texts)
    assert f"after {2 * steps + 10} steps" in caption and f"this run's {steps}" in caption
    assert max(fig.axes[0].lines[0].get_xdata()) == steps


def test_a_def_local_named_like_a_variable_does_not_shift_program_points():
    """Blocks, the interpreter's record and the card count top-level assignments alike
    (Walker.program_point): an X assigned inside a def is not X@1, so every stored X@k is
    traced against the interpreter's X@k."""
    src = """program t
dim d = 2
input A : [d, d] assume norm <= 1
output X
def f(M) {
  X = 2 * M
  return X
}
X = A
X = f(X) + X @ X
X = X @ X
"""
    prog = tcompile.compile_source(src)
    stored = {v for b in prog.layout.blocks for v in b.vars}
    assert stored == {"X@0", "X@1", "X@2"}                 # X@0 is the input block A
    rows = tcompile.trace(prog, A=np.array([[0.5, 0.1], [0.2, 0.3]]))
    assert {r["variable"] for r in rows} >= {"X@1", "X@2"} and all(r["ok"] for r in rows)


def test_program_points_are_read_back_as_they_were_written():
    """language/points.py reads `name@k` back: every value a build stores names a variable
    and an assignment count that spell the same point again (the card, trace and plots find
    blocks through these two readings)."""
    from tcompile.language.points import point_count, point_variable, program_point
    prog = tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp", params={"steps": 3})
    points = [v for b in prog.layout.blocks for v in b.vars if "@" in v]
    assert sorted(points) == ["X@1", "X@2", "X@3"]
    assert [point_variable(v) for v in sorted(points)] == ["X"] * 3
    assert [point_count(v) for v in sorted(points)] == [1, 2, 3]
    assert all(program_point(point_variable(v), point_count(v)) == v for v in points)
