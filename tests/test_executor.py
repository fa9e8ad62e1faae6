"""The structured executor (tcompile/runtime/executor.py) against its oracles: the dense
paper-form module (the same function: ≤ 1e-13 relative in float64) and the float64
interpreter (as close as the module is), on the shipped programs and the random-program corpus;
the PL tables against the ReLU sums they replace, in numpy."""
from __future__ import annotations

import collections
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import builds
import tcompile
from arrays import rel
from tcompile.errors import InputError
from tcompile.inspection.sampling import sample_inputs
from tcompile.runtime import exec_ops, fused_lookup
from tcompile.runtime.exec_ops import HeadOp, MlpOp, relu_pairs_linear
from tcompile.runtime.exec_plan import common, sorted_distinct
from tcompile.runtime.executor import StructuredExecutor, executor_for
from tcompile.runtime.pl_tables import build_table, clamped_grid_table, grid_table

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "programs"
CORPUS = ROOT / "tests" / "corpus"
RTOL = 1e-13

SHIPPED = [
    ("newton_inverse", {"d": 4, "steps": 6}, None),
    ("least_squares", {"d": 4, "steps": 6}, 20),
    ("newton_logistic", {"d": 3, "steps": 2, "inv_steps": 3}, 12),
]


def rel_gap(got: dict, want: dict) -> float:
    """Worst over outputs of arrays.rel: max|got − want| / max|want| (shapes must agree)."""
    return max((rel(got[k], w) for k, w in want.items()), default=0.0)


def module_outputs(prog, inputs: dict, dtype=torch.float64) -> dict:
    x = prog.encode(dtype=dtype, **inputs)
    with torch.no_grad():
        return prog.decode(prog.module_for(dtype)(x))


@pytest.mark.parametrize("name,params,n", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_structured_equals_module_and_interpreter(name, params, n):
    prog = builds.build(name, params)
    batch = sample_inputs(prog.program, params, n=n or 16, batch=5, seed=1)
    got = prog.run(**batch)                                    # the default executor
    ref = module_outputs(prog, batch)
    assert rel_gap(got, ref) <= RTOL
    assert rel_gap(prog.run(executor="module", **batch), ref) == 0.0
    # single problem (no batch axis): same shapes as the module's, same numbers
    one = {k: v[2] for k, v in batch.items()}
    single = prog.run(**one)
    assert rel_gap(single, {k: v[2] for k, v in ref.items()}) <= RTOL
    # against the interpreter: as close as the module is (plus rounding)
    want = tcompile.interpret(PROGRAMS / f"{name}.tp", params, **one)
    gap_module = rel_gap({k: v[2] for k, v in ref.items()}, want)
    assert rel_gap(single, want) <= gap_module + RTOL


def test_logistic_runs_its_sigmoid_as_a_table_and_its_products_as_tables():
    """The agreement above covers the table path: the sigmoid piece and the product pieces of
    newton_logistic are evaluated as tables, not ReLUs."""
    name, params, n = SHIPPED[2]
    prog = builds.build(name, params)
    ex = StructuredExecutor(prog.layers, prog.layout)
    kinds = [op.kind for sub in ex.resolved(n).sublayers for op in sub.ops if hasattr(op, "kind")]
    assert kinds.count("table") >= 3 * params["steps"]
    units_in_tables = sum(g.W2.shape[1] * g.instances for p in ex.plans for g in p.contribs
                          if getattr(g, "kind", None) == "table")
    units = sum(int(np.count_nonzero(np.any(w.W_1 != 0, axis=1))) for w in prog.layers)
    assert units_in_tables >= 0.9 * units


def logistic_ops(n: int, dtype=torch.float64):
    name, params, _ = SHIPPED[2]
    prog = builds.fresh(name, params)
    ex = StructuredExecutor(prog.layers, prog.layout)
    return prog, params, [[op for op in sub.ops if op is not None]
                          for sub in ex.resolved(n, dtype).sublayers]


def test_logistic_product_pieces_share_reads_and_the_hessian_shares_its_gram():
    """The fast forms newton_logistic takes (agreement with the module is the test above):
    each product piece's two squares are one op over the shared rows (A's d rows, p(1 − p) read
    once and broadcast); the Hessian's two symmetric halves share V Kᵀ (one computes AMᵀ, the
    other takes its transpose), and so do the gradient's two writes (g and gᵀ: one product
    A (y p), not two); the MLP clearing of reused rows is found linear and dropped."""
    prog, params, subs = logistic_ops(12)
    d, steps = params["d"], params["steps"]
    pairs = [op for ops in subs for op in ops
             if isinstance(op, MlpOp) and op.kind == "table" and len(op.tables) == 2]
    assert len(pairs) == steps
    for op in pairs:
        assert op.inst == d and [rd.rows for rd in op.coords] == [d, 1]
    keys = [{op.gram_key for op in ops if isinstance(op, HeadOp) and op.gram_key}
            for ops in subs]
    # per step: the Hessian's halves, and the gradient's A (y p) written as g and gᵀ
    assert sum(any(k[::-1] in ks for k in ks) for ks in keys) == 2 * steps
    # the Hessian halves' W_V, [I/(2n); c I], is left to the residual sums: no product by it
    assert sum(isinstance(op, HeadOp) and op.stacked is not None
               for ops in subs for op in ops) == 2 * steps
    relu_reads = [len(op.q_rows) for ops in subs for op in ops
                  if isinstance(op, MlpOp) and op.kind in ("relu", "linear")]
    assert max(relu_reads) <= 3          # y, and the pieces gated by it: no clearing of H


@pytest.mark.parametrize("chunk", [1, 80, 1 << 20])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logistic_chunked_tables_equal_module(monkeypatch, chunk, dtype):
    """Tables looked up in passes over the batch (one problem per pass; two, the last pass
    ragged, for the product pieces' 3 × 12 entries per problem; all at once) compute the same
    function as the module, in float64 to RTOL and in float32 to float32 accuracy (the cell
    lookup's margins are sized by the dtype). By torch: the fused kernel makes one pass."""
    monkeypatch.setitem(exec_ops.CHUNK, "cpu", chunk)
    monkeypatch.setenv(fused_lookup.ENV_SWITCH, "0")
    name, params, n = SHIPPED[2]
    prog = builds.fresh(name, params)
    batch = sample_inputs(prog.program, params, n=n, batch=5, seed=5)
    ex = StructuredExecutor(prog.layers, prog.layout)
    dt = getattr(torch, dtype)
    got = ex.run_inputs(prog.prepare_inputs(batch), dt)
    got = {k: v.double().numpy() for k, v in got.items()}
    ref = module_outputs(prog, batch)
    assert rel_gap(got, ref) <= (RTOL if dtype == "float64" else 1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_relu_pairs_are_the_linear_map(seed):
    """relu_pairs_linear: W2 ReLU(W1 x) = M x when units pair as (w, c), (−w, −c), in any
    order and with signed zeros; None as soon as one unit has no partner."""
    rng = np.random.default_rng(seed)
    w, c = rng.normal(size=(4, 3)), rng.normal(size=(2, 4))
    w[0, 1] = 0.0
    W1 = np.concatenate([w, -w])
    W2 = np.concatenate([c, -c], axis=1)
    perm = rng.permutation(8)
    W1, W2 = W1[perm], W2[:, perm]
    M = relu_pairs_linear(W1, W2)
    x = rng.normal(size=(3, 50))
    assert np.allclose(M @ x, W2 @ np.maximum(W1 @ x, 0), rtol=0, atol=1e-13)
    W2[0, 0] *= 2
    assert relu_pairs_linear(W1, W2) is None
    assert relu_pairs_linear(W1[:7], W2[:, :7]) is None


def corpus_programs():
    sums = json.loads((CORPUS / "checksums.json").read_text())
    return sorted(p.name for p in CORPUS.glob("*.tp") if p.name in sums)


@pytest.mark.parametrize("fname", corpus_programs())
def test_corpus_structured_equals_module(fname):
    prog = tcompile.compile_file(CORPUS / fname)
    inputs = sample_inputs(prog.program, None, n=max(prog.layout.min_tokens, 7), batch=3, seed=3)
    assert rel_gap(prog.run(**inputs), module_outputs(prog, inputs)) <= RTOL


def test_float32_path_runs_and_is_float32_accurate():
    name, params, n = SHIPPED[1]
    prog = builds.fresh(name, params)
    inputs = sample_inputs(prog.program, params, n=n, batch=4, seed=2)
    got = prog.run(dtype="float32", **inputs)
    assert rel_gap(got, module_outputs(prog, inputs)) <= 1e-4
    assert rel_gap(got, module_outputs(prog, inputs, torch.float32)) <= 1e-4
    assert rel_gap(got, prog.run(**inputs)) > 0          # really computed in float32


def test_compiled_executor_equals_structured():
    prog = tcompile.compile_file(PROGRAMS / "least_squares.tp", params={"d": 2, "steps": 2})
    inputs = sample_inputs(prog.program, {"d": 2, "steps": 2}, n=6, batch=2, seed=4)
    assert rel_gap(prog.run(executor="compiled", **inputs), module_outputs(prog, inputs)) <= RTOL


def test_unknown_executor_is_an_input_error():
    prog = tcompile.compile_file(PROGRAMS / "newton_inverse.tp", params={"d": 2, "steps": 1})
    with pytest.raises(InputError, match="executor must be one of"):
        prog.run(A=np.eye(2) / 2, executor="fast")
    with pytest.raises(InputError):
        executor_for(prog, "dense")


@pytest.mark.parametrize("seed", range(4))
def test_pl_table_is_the_relu_sum(seed):
    """build_table against Σ_u C[:, u] ReLU(a_u s + b_u) evaluated directly, on and between
    the breakpoints and beyond both ends; repeated breakpoints and both unit directions."""
    rng = np.random.default_rng(seed)
    U, O = 40, 2
    a = rng.choice([-1, 1], U) * rng.uniform(0.2, 3, U)
    b = rng.uniform(-2, 2, U)
    b[:5] = -a[:5] * 0.5                                  # five units share a breakpoint
    C = rng.normal(size=(O, U))
    bp, slope, icpt = build_table(a, b, C)
    assert np.all(np.diff(bp) > 0) and slope.shape == (len(bp) + 1, O)
    s = np.concatenate([bp, rng.uniform(bp[0] - 3, bp[-1] + 3, 500)])
    want = np.maximum(np.outer(s, a) + b, 0) @ C.T
    i = np.searchsorted(bp, s)
    got = slope[i] * s[:, None] + icpt[i]
    assert np.max(np.abs(got - want)) <= 1e-13 * np.max(np.abs(C).sum(1) * 5)


@pytest.mark.parametrize("seed", range(3))
def test_planning_set_routines_are_numpys(seed):
    """exec_plan.common and sorted_distinct (which planning uses so that numpy.ma stays
    unimported) against np.intersect1d and np.unique, repeats and empty sets included."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        t = rng.integers(-6, 6, size=rng.integers(1, 40)) / 3.0
        got, want = sorted_distinct(t), np.unique(t, return_inverse=True)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1].ravel())
        a, b = (np.unique(rng.integers(0, 25, size=rng.integers(0, 12))) for _ in range(2))
        np.testing.assert_array_equal(common(a, b), np.intersect1d(a, b))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("spread", ["uniform", "clustered", "square", "grid"])
def test_grid_table_is_the_table(spread, dtype):
    """The grid lookup (cell j from a uniform grid, then #kinks of the cell below s) gives
    build_table's function, computed in the dtype as the executor computes it: on the
    breakpoints, one ulp either side, on and beside every cell edge, between them and beyond
    both ends; within rounding of the exact interval's value (a cell one off at an edge, or a
    kink snapped to it, costs |slope jump| × rounding). None when no grid keeps m kinks."""
    rng = np.random.default_rng(7)
    bp = np.sort(rng.uniform(-6, 6, 300) if spread == "uniform" else
                 np.concatenate([rng.uniform(-6, 6, 100), rng.uniform(0, 0.05, 6)])
                 if spread == "clustered" else np.linspace(-1.0, 1.25, 58) +
                 (rng.normal(0, 1e-3, 58) if spread == "square" else 0.0))
    U = len(bp)
    a = rng.choice([-1.0, 1.0], U) * rng.uniform(0.5, 2, U)
    C = rng.normal(size=(2, U))
    bp, slope, icpt = build_table(a, -a * bp, C)
    gt = None
    for m in range(4):
        gt = grid_table(bp, slope, icpt, m)
        if gt is not None:
            break
    assert gt is not None and m <= (0 if spread == "grid" else 1 if spread == "square" else 3)
    bpd = bp.astype(dtype)
    edges = (gt.lo + np.arange(gt.G + 1) / gt.inv_h).astype(dtype)
    s = np.concatenate([bpd, np.nextafter(bpd, dtype(np.inf)), np.nextafter(bpd, dtype(-np.inf)),
                        edges, np.nextafter(edges, dtype(np.inf)), np.nextafter(edges, dtype(-np.inf)),
                        rng.uniform(-9, 9, 5000).astype(dtype)])
    j = np.clip(s * dtype(gt.inv_h) + dtype(-gt.lo * gt.inv_h), 0, gt.G - 1).astype(np.int64)
    k = (m + 1) * j + sum((gt.t[i].astype(dtype)[j] < s).astype(np.int64) for i in range(m))
    got = gt.slope.astype(dtype)[k] * s[:, None] + gt.icpt.astype(dtype)[k]
    s64 = s.astype(np.float64)
    i = np.searchsorted(bp, s64)
    want = slope[i] * s64[:, None] + icpt[i]
    assert np.max(np.abs(got - want)) <= 8 * np.finfo(dtype).eps * np.max(np.abs(want))
    assert grid_table(np.array([0.0, 1e-12, 2e-12, 1.0, 1 + 1e-12]), np.arange(6.0)[:, None] ** 2,
                      np.zeros((6, 1)), 1, max_cells=64) is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clamped_grid_table_is_the_table(dtype):
    """A table constant beyond its ends with uniform kinks inside but for the last (a domain
    end cutting the last interval short: newton_logistic's squares) is looked up with no kink
    compared: s clamped to [lo, hi], the cell j = trunc(s · inv_h + shift) with no clamp
    (padding cells), then slope[j] s + icpt[j]; on the breakpoints, one ulp either side, on
    and beside every cell edge and far beyond both ends, within rounding of build_table's
    interval. Not for a table whose end pieces slope or whose inner kinks are not uniform."""
    lo, hi, h = -0.9976331909086259, 1.250037197000374, 0.03992001499554
    bp = np.append(lo + h * np.arange(57), hi)
    v = bp ** 2
    sl = np.diff(v) / np.diff(bp)
    slope = np.concatenate([[0.0], sl, [0.0]])[:, None]
    icpt = np.concatenate([[v[0]], v[:-1] - sl * bp[:-1], [v[-1]]])[:, None]
    gt = clamped_grid_table(bp, slope, icpt)
    assert gt is not None and gt.m == 0 and gt.clamp == (lo, hi) and gt.G == 57 + 2
    rng = np.random.default_rng(3)
    bpd = bp.astype(dtype)
    edges = (gt.lo + np.arange(gt.G + 1) / gt.inv_h).astype(dtype)
    s = np.concatenate([bpd, np.nextafter(bpd, dtype(np.inf)), np.nextafter(bpd, dtype(-np.inf)),
                        edges, np.nextafter(edges, dtype(np.inf)), np.nextafter(edges, dtype(-np.inf)),
                        rng.uniform(-9, 9, 5000).astype(dtype), np.array([-1e6, 1e6], dtype)])
    sc = np.clip(s, dtype(lo), dtype(hi))
    j = (sc * dtype(gt.inv_h) + dtype(-gt.lo * gt.inv_h)).astype(np.int64)
    assert j.min() >= 0 and j.max() < gt.G
    got = gt.slope.astype(dtype)[j] * sc[:, None] + gt.icpt.astype(dtype)[j]
    s64 = s.astype(np.float64)
    i = np.searchsorted(bp, s64)
    want = slope[i] * s64[:, None] + icpt[i]
    assert np.max(np.abs(got - want)) <= 8 * np.finfo(dtype).eps * np.max(np.abs(want))
    sloped = slope.copy()
    sloped[-1] = 1e-3
    assert clamped_grid_table(bp, sloped, icpt - np.append(np.zeros(58), hi * 1e-3)[:, None]) is None
    uneven = bp.copy()
    uneven[20] += 1e-3
    assert clamped_grid_table(uneven, slope, icpt) is None


# ---- generated straight-line code (exec_codegen.py) and fused BLAS calls ---------------------

def _interpreted(ex):
    """The same executor with code generation off: its plan run as Python objects."""
    plain = copy.copy(ex)
    plain.__class__ = type("Interpreted", (type(ex),), {"codegen": False})
    return plain


@pytest.mark.parametrize("name,params,n", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_generated_code_replays_the_plan_bit_for_bit(name, params, n):
    prog = builds.fresh(name, params)
    ex = executor_for(prog, "structured")
    for B, seed in ((3, 1), (3, 2), (1, 3)):        # a new shape traces anew; a seen one replays
        batch = sample_inputs(prog.program, params, n=n or 16, batch=B, seed=seed)
        prep = prog.prepare_inputs(batch)
        state = ex.input_state(prep)
        got = ex.run_state(state, prep.n, torch.float64, "cpu")
        want = _interpreted(ex).run_state(state, prep.n, torch.float64, "cpu")
        for k in want:
            assert torch.equal(got[k], want[k]), k
        got_w, ranges_w = ex.run_state_watched(state, prep.n, torch.float64, "cpu")
        _, ranges = _interpreted(ex).run_state_watched(state, prep.n, torch.float64, "cpu")
        assert ranges_w == ranges and all(torch.equal(got_w[k], want[k]) for k in want)
    assert len(ex._traces) == 4                      # (B = 3, B = 1) × (watched or not)


def test_newton_inverse_step_is_one_bmm_and_one_baddbmm():
    """X ← 2X − X A X: the residual X, the head adding X and the product −X A X are one
    baddbmm(X, X·A, X, beta=2, alpha=−1) after one bmm, as a hand-written loop does."""
    steps = 5
    prog = tcompile.compile_file(PROGRAMS / "newton_inverse.tp", params={"d": 4, "steps": steps})
    ex = executor_for(prog, "structured")
    batch = sample_inputs(prog.program, {"d": 4, "steps": steps}, n=16, batch=2, seed=0)
    prep = prog.prepare_inputs(batch)
    ex.run_state(ex.input_state(prep), prep.n, torch.float64, "cpu")
    (traced,) = ex._traces.values()
    calls = [ln.split("(")[0].split("=")[-1].strip() for ln in traced.source.splitlines()[1:-1]
             if not ln.strip().startswith("del ")]
    called = collections.Counter(traced.fn.__globals__[f] for f in calls)
    assert called[torch.baddbmm] == steps and called[torch.bmm] == steps
    assert len(calls) == 2 * steps + 1                # + Aᵀ (a view, taken once; the output's
    #                                                   view changes nothing: no line)
    assert rel_gap(prog.run(**batch), module_outputs(prog, batch)) <= RTOL


def test_a_plan_that_reads_values_is_not_traced():
    """A call whose answer depends on the values (item, bool) cannot be replayed: NotTraceable."""
    from tcompile.runtime.exec_codegen import NotTraceable, trace

    def reads(x):
        return x * 2 if bool(x.sum() > 0) else x
    with pytest.raises(NotTraceable):
        trace(reads, [torch.ones(2)])
    traced, first = trace(lambda x, y: {"s": torch.add(x, y).mul_(3.0)}, [torch.ones(2), torch.ones(2)])
    assert torch.equal(first["s"], torch.full((2,), 6.0))
    assert torch.equal(traced(torch.zeros(2), torch.ones(2))["s"], torch.full((2,), 3.0))


@pytest.mark.parametrize("search_below", [0, 1 << 30])
def test_table_lookup_by_grid_or_searchsorted_agrees(monkeypatch, search_below):
    """The two ways a table pass finds intervals (the grid; one searchsorted, for small
    passes) give the same function: the module's, and each other's to rounding."""
    name, params, n = SHIPPED[2]
    prog = builds.fresh(name, params)
    batch = sample_inputs(prog.program, params, n=n, batch=5, seed=4)
    prep = prog.prepare_inputs(batch)
    default = StructuredExecutor(prog.layers, prog.layout).run_inputs(prep)
    monkeypatch.setattr(exec_ops, "SEARCH_BELOW", search_below)
    got = StructuredExecutor(prog.layers, prog.layout).run_inputs(prep)
    assert rel_gap(got, {k: v.numpy() for k, v in default.items()}) <= RTOL
    assert rel_gap(got, module_outputs(prog, batch)) <= RTOL


_VIEWS = {"view", "_unsafe_view", "transpose", "select", "slice", "expand", "unbind", "as_strided",
          "alias", "t", "unsqueeze", "reshape", "empty", "new_empty"}


class _Passes(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten calls that touch every entry (views and allocations left out)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _VIEWS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("grid", [True, False])
def test_table_op_values_and_passes(monkeypatch, grid):
    """newton_logistic's sigmoid op (one table, two outputs) and a product op (two squares)
    against build_table's function in numpy, and the passes each makes over its entries (a
    deterministic proxy for its cost): by the grid for the cell an add and a clamp per table,
    then one pass sending NaN to cell 0 and one cast, 3 per kink a cell holds (gather, compare,
    add), 2 gathers and 1 multiply-add for all outputs and tables together (the sigmoid's two outputs: +1, their
    offsets; a product: + its two s and the sum of its squares); by searchsorted the cell
    passes are one call (+1 for the offsets of outputs or tables)."""
    monkeypatch.setattr(exec_ops, "SEARCH_BELOW", 0 if grid else 1 << 30)
    _, _, subs = logistic_ops(12)
    ops = [op for ops in subs for op in ops if isinstance(op, MlpOp) and op.kind == "table"]
    for op in (next(op for op in ops if op.outs == 2), next(op for op in ops if len(op.tables) == 2)):
        op._lookup = exec_ops._Tables(op.tables, torch.float64, "cpu")      # SEARCH_BELOW read at call
        lk, B = op._lookup, 40
        shape = (B, op.inst, op.e)
        rng = np.random.default_rng(0)
        xs = [torch.as_tensor(rng.uniform(-1.5, 1.5, shape) * (8 if op.outs == 2 else 1))
              for _ in range(op.k)]
        dst = torch.empty((B, op.inst * op.outs, op.e), dtype=torch.float64)
        with _Passes() as p:
            lk(xs, shape, dst)
        want = 0.0
        for bp, slope, icpt, coef in op.tables:
            s = sum(c * x.numpy() for c, x in zip(coef, xs))
            i = np.searchsorted(bp, s)
            want = want + slope[i] * s[..., None] + icpt[i]           # (B, inst, e, O)
        want = np.moveaxis(want, -1, 1).reshape(dst.shape) if op.outs > 1 else want[..., 0]
        assert np.max(np.abs(dst.numpy() - want)) <= 1e-14 * np.max(np.abs(want))
        T, O = len(op.tables), op.outs
        s_pass = 0 if T == 1 else T              # s = x0 ± x1 into each table's row
        fixed = s_pass + (O * T > 1) + 3 + (T - 1)      # offsets, 2 gathers + 1 multiply-add, sum
        if grid:
            assert lk.grid is not None
            cells = 2 * T + 2                    # add, clamp per table; one nan_to_num, one cast
            assert len(p.calls) == cells + 3 * lk.m + fixed - (T > 1), p.calls
        else:
            assert len(p.calls) == 1 + fixed, p.calls


# ---- shared products, input views, plan memory -------------------------------------------------

class _Products(TorchFunctionMode):
    """Counts the batched products (bmm, baddbmm) whose inner size is `inner`."""

    def __init__(self, inner: int):
        super().__init__()
        self.inner, self.count = inner, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.bmm, torch.baddbmm, torch.Tensor.baddbmm_):
            left = args[0] if func is torch.bmm else args[1]
            self.count += left.shape[-1] == self.inner
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,params,n,want", [
    ("least_squares", {"d": 4, "steps": 6}, 20, 1),      # [A; y] Aᵀ: S, b and 2I − AᵀA/n
    ("gd_least_squares", {"d": 3, "steps": 12}, 20, 2),  # was one per step (13)
])
def test_products_over_the_tokens_are_made_once(name, params, n, want):
    """A V Kᵀ over the same slots is one product per forward (in a later sublayer too), and a
    head whose V rows are some of an earlier head's takes those rows of its product: counted
    as the products whose inner size is n, against the module."""
    prog = builds.fresh(name, params)
    batch = sample_inputs(prog.program, params, n=n, batch=3, seed=4)
    prog.run(domains="off", **batch)                  # traced: the next run replays
    with _Products(n) as p:
        got = prog.run(domains="off", **batch)
    assert p.count == want
    assert rel_gap(got, module_outputs(prog, batch)) <= RTOL


def test_a_concatenated_read_is_multiplied_in_batch_slices_bit_for_bit(monkeypatch):
    """least_squares' [A; y] Aᵀ in slices of the batch (so that [A; y] never exists whole)
    gives what the whole product gives, bit for bit."""
    name, params, n = SHIPPED[1]
    prog = builds.fresh(name, params)
    batch = sample_inputs(prog.program, params, n=n, batch=7, seed=2)
    whole = executor_for(prog, "structured").run_inputs(prog.prepare_inputs(batch))
    monkeypatch.setitem(exec_ops.CHUNK, "cpu", 2 * (params["d"] + 1) * n)   # 2 problems a slice
    prog2 = builds.fresh(name, params)
    with _Products(n) as p:
        sliced = executor_for(prog2, "structured").run_inputs(prog2.prepare_inputs(batch))
    assert p.count == 4                               # ceil(7 / 2) slices, one product each
    for k in whole:
        assert torch.equal(whole[k], sliced[k]), k


def test_inputs_are_read_in_place_and_left_as_they_were():
    """A transposed input block (least_squares' A, held (d, n)) is a view of the caller's
    array, not a copy; a run writes into none of them."""
    name, params, n = SHIPPED[1]
    prog = builds.build(name, params)
    batch = sample_inputs(prog.program, params, n=n, batch=4, seed=3)
    kept = {k: np.array(v, copy=True) for k, v in batch.items()}
    prep = prog.prepare_inputs(batch)
    state = executor_for(prog, "structured").input_state(prep)
    A = state["input:A"]
    assert A.shape == (4, params["d"], n) and not A.is_contiguous()
    assert A.untyped_storage().data_ptr() == prep.arrays["A"].ctypes.data
    prog.run(**batch)
    for k, v in kept.items():
        assert np.array_equal(batch[k], v), k


def test_the_plan_keeps_no_dense_mlp_matrices_and_one_copy_of_equal_tables():
    """Planning reads each layer's W_1, W_2 dense for that read only (the layers keep their
    nonzeros); newton_logistic's product pieces' squares, equal in every Newton step, are one
    _Tables (one copy of its grid, not one per step)."""
    name, params, n = SHIPPED[2]
    prog = tcompile.compile_file(PROGRAMS / f"{name}.tp", params=params)   # (its layers' state)
    held = [w._held("W_1") is not None for w in prog.layers]
    assert any(held)
    ex = StructuredExecutor(prog.layers, prog.layout)
    assert [w._held("W_1") is not None for w in prog.layers] == held
    ops = [op for sub in ex.resolved(n).sublayers for op in sub.ops
           if isinstance(op, MlpOp) and op.kind == "table" and len(op.tables) == 2]
    assert len(ops) == params["steps"] and len({id(op._lookup) for op in ops}) == 1
    assert rel_gap(prog.run(**sample_inputs(prog.program, params, n=n, batch=2, seed=0)),
                   module_outputs(prog, sample_inputs(prog.program, params, n=n, batch=2,
                                                      seed=0))) <= RTOL


COLUMN_MAX = """program column_max
dim d = 4
input X : [n, d] in [-1, 1]
output m, s
m = max(X[:, 0], X[:, 1])
s = relu(X.T)
"""


def test_a_row_written_over_with_a_value_that_subtracts_it_keeps_that_term():
    """X[:, 0] − X[:, 1] written over the row that held X[:, 1] adds X[:, 0] − X[:, 1] and
    the clearing −X[:, 1]: two terms that each add −(the old row). The structured executor
    dropped both with the old value (one cancels it), computed X[:, 0], and returned
    X[:, 0] + X[:, 1] for the max (0.94 off) — the default executor, silently. One −old per
    row is dropped now; the structured run equals the module and the interpreter."""
    prog = tcompile.compile_source(COLUMN_MAX)
    X = np.random.default_rng(0).uniform(-1, 1, (3, 7, 4))
    want = np.maximum(X[..., 0], X[..., 1])
    assert rel(prog.run(X=X)["m"], want) <= 1e-15
    assert rel(prog.run(X=X, executor="module")["m"], want) <= 1e-15
    assert rel(prog.run(X=X)["s"], np.maximum(X, 0).transpose(0, 2, 1)) <= 1e-15
