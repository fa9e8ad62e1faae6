"""The fused table lookup (tcompile/runtime/fused_lookup.py): a C kernel that must give the
torch path's results bit for bit, and fall back to that path when it cannot be had.

Oracle: the torch path itself (exec_ops._Tables by torch, MlpOp._passes), itself held to the
module and numpy by tests/test_executor.py. The kernel is compiled once per machine into the
user's cache; a machine without a compiler runs the fallback tests and fails the first one,
which says why the kernel is missing (a CI without cc is a configuration to know about)."""
from __future__ import annotations

import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import builds
from tcompile.inspection.sampling import sample_inputs
from tcompile.runtime import exec_ops, fused_lookup
from tcompile.runtime.exec_ops import MlpOp
from tcompile.runtime.executor import StructuredExecutor

ROOT = Path(__file__).resolve().parents[1]
LOGISTIC = ("newton_logistic", {"d": 3, "steps": 2, "inv_steps": 3}, 12)


def _table_ops(dtype):
    name, params, n = LOGISTIC
    prog = builds.build(name, params)
    ex = StructuredExecutor(prog.layers, prog.layout)
    ops = [op for sub in ex.resolved(n, dtype).sublayers for op in sub.ops
           if isinstance(op, MlpOp) and op.kind == "table"]
    kinds = {}
    for op in ops:         # one of each: the sigmoid (2 outputs), a product (2 tables), λ's seed
        kinds.setdefault((len(op.tables), op.outs, op.e), op)
    return list(kinds.values())


def _edge_inputs(op, B, rng, dtype):
    """Coordinates whose s = Σ coef · x hit the tables' breakpoints, domain ends, both signed
    zeros, values far beyond the domain and ±inf, among uniform ones; read through strided
    and broadcast views as the executor's reads are."""
    bps = np.concatenate([t[0] for t in op.tables])
    span = max(1.0, float(np.max(np.abs(bps))))
    special = np.concatenate([bps, np.nextafter(bps, np.inf), np.nextafter(bps, -np.inf),
                              [0.0, -0.0, 1e300, -1e300, np.inf, -np.inf]])
    xs = []
    for i, rd in enumerate(op.coords):
        rows = 1 if len(rd.read.rows) == 1 and op.inst > 1 else op.inst
        v = rng.uniform(-1.5 * span, 1.5 * span, (B, rows + 1, op.e + 2))
        flat = v.reshape(-1)
        pick = rng.choice(flat.size, min(flat.size // 3, special.size), replace=False)
        flat[pick] = special[:len(pick)] if i == 0 else 0.0     # s = x0 at those entries
        xs.append(torch.as_tensor(v, dtype=dtype)[:, 1:, 1:1 + op.e])
    return xs


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    ints = {torch.float64: torch.int64, torch.float32: torch.int32}[a.dtype]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def test_the_kernel_is_available_here():
    """On a machine with a C compiler the kernel compiles, loads and passes its probe."""
    fused_lookup._reset()
    for dtype in (torch.float64, torch.float32):
        assert fused_lookup.kernel(dtype, exec_ops._Tables) is not None, fused_lookup.why_not()
    lib = fused_lookup.library()
    assert lib is not None and ROOT not in lib.parents        # never inside the repository


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_the_torch_path_bit_for_bit(dtype):
    """Every kind of table pass (product squares by the clamped grid, the sigmoid by the grid
    with kinks, and by searchsorted below SEARCH_BELOW entries; λ's seed by searchsorted), at
    batch 1 and 40, on random and edge inputs (breakpoints and their neighbours, the domain
    ends, ±0, ±1e300, ±inf): the same bits as the torch path."""
    rng = np.random.default_rng(7)
    paths = set()
    for op in _table_ops(dtype):
        assert op._fused is not None, fused_lookup.why_not()
        for B in (1, 40):
            xs = _edge_inputs(op, B, rng, dtype)
            shape = (B, op.inst, op.e)
            paths.add(op._lookup.path(B * op.inst * op.e))
            want = torch.empty((B, op.inst * op.outs, op.e), dtype=dtype)
            got = torch.empty_like(want)
            op._passes(xs, shape, want)
            fused_lookup.lookup(op._fused, xs, shape, got)
            assert _same_bits(got, want), (op.outs, len(op.tables), B)
    assert paths == {exec_ops.SEARCH, exec_ops.GRID, exec_ops.CLAMPED}


def test_nan_in_nan_out():
    """A NaN s has no cell (the torch path's grid index is out of range; the kernel reports
    it and the call is made again by torch): the entry comes out NaN, as through the dense
    module's ReLUs, and every other entry as it is without the NaN, on both paths — so a run
    that meets a NaN ends with NaN outputs and the domain guard's report, not an IndexError."""
    for op in _table_ops(torch.float64):
        B = 40
        shape = (B, op.inst, op.e)
        xs = [torch.full((B, op.inst if i == 0 else 1, op.e), 0.25, dtype=torch.float64)
              for i in range(op.k)]
        clean = torch.empty((B, op.inst * op.outs, op.e), dtype=torch.float64)
        op._passes(xs, shape, clean)
        j = min(2, op.e - 1)
        xs[0][3, 0, j] = float("nan")
        runs = [op._passes]
        if op._fused is not None:
            runs.append(lambda x, s, o: fused_lookup.lookup(op._fused, x, s, o))
        for run in runs:
            out = torch.empty_like(clean)
            run(xs, shape, out)
            nan = torch.isnan(out)
            assert nan.any(), op.tables
            assert not nan[:3].any() and not nan[4:].any()          # that problem's only,
            assert not nan[:, :, :j].any() and not nan[:, :, j + 1:].any()   # that token's
            assert torch.equal(out[~nan], clean[~nan])


@pytest.mark.parametrize("switch", ["1", "0"])
def test_a_nan_mid_run_ends_as_nan(monkeypatch, switch):
    """A NaN reaching the tables mid-run (planted in one problem's data after validation, as
    an overflow would make one), with the kernel and on the torch path, through the generated
    straight-line code (twice: traced, then replayed): that problem's outputs NaN, every
    other problem's the same bits as without it."""
    monkeypatch.setenv(fused_lookup.ENV_SWITCH, switch)
    fused_lookup._reset()
    try:
        name, params, n = LOGISTIC
        prog = builds.build(name, params)
        prep = prog.prepare_inputs(sample_inputs(prog.program, params, n=n, batch=12, seed=3))
        ex = StructuredExecutor(prog.layers, prog.layout)
        clean = ex.run_inputs(prep)
        prep.arrays["A"][5, 0, 0] = np.nan
        for _ in range(2):
            got = ex.run_inputs(prep)
            for k in clean:
                nan = torch.isnan(got[k].reshape(12, -1))
                keep = torch.arange(12) != 5
                assert nan[5].all() and not nan[keep].any()
                assert _same_bits(got[k][keep], clean[k][keep])
    finally:
        monkeypatch.undo()
        fused_lookup._reset()


def _logistic_run(B=4):
    name, params, n = LOGISTIC
    prog = builds.build(name, params)
    prep = prog.prepare_inputs(sample_inputs(prog.program, params, n=n, batch=B, seed=3))
    ex = StructuredExecutor(prog.layers, prog.layout)
    ops = [op for sub in ex.resolved(prep.n, torch.float64).sublayers for op in sub.ops
           if isinstance(op, MlpOp) and op.kind == "table"]
    return ex.run_inputs(prep), ops


@pytest.mark.parametrize("how", ["switch", "no compiler", "compile fails"])
def test_fallback_to_the_torch_path(monkeypatch, tmp_path, how):
    """TCOMPILE_FUSED_LOOKUP=0, no compiler, or a compiler that fails: no kernel, the reason
    said, every table op on the torch path, and the program's outputs the same bits."""
    fused, _ = _logistic_run(B=2)
    if how == "switch":
        monkeypatch.setenv(fused_lookup.ENV_SWITCH, "0")
    else:
        monkeypatch.setenv(fused_lookup.ENV_CACHE, str(tmp_path / "cache"))
        monkeypatch.setenv(fused_lookup.ENV_CC, str(tmp_path / "no-cc") if how == "no compiler"
                           else _script(tmp_path, "cc", "echo 'cc 1.0'; exit 1"))
    fused_lookup._reset()
    try:
        assert fused_lookup.kernel(torch.float64, exec_ops._Tables) is None
        why = fused_lookup.why_not()
        assert {"switch": "is off", "no compiler": "no C compiler",
                "compile fails": "failed"}[how] in why
        plain, ops = _logistic_run(B=2)
        assert ops and all(op._fused is None for op in ops)
        assert all(_same_bits(plain[k], fused[k]) for k in fused)
        if how == "compile fails":               # nothing half-written left in the cache
            assert not any((tmp_path / "cache").iterdir())
    finally:
        monkeypatch.undo()
        fused_lookup._reset()


def _script(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def test_cache_is_written_by_rename_and_shared(monkeypatch, tmp_path):
    """Eight threads building into an empty cache at once (a stand-in compiler that copies the
    real library slowly) all get the one file, complete and loadable, and no temporary is
    left; the next build finds it and compiles nothing."""
    fused_lookup.kernel(torch.float64, exec_ops._Tables)
    real = fused_lookup.library()
    assert real is not None, fused_lookup.why_not()
    log = tmp_path / "calls"
    cc = _script(tmp_path, "cc", f"""[ "$1" = --version ] && {{ echo 'fake cc 1'; exit 0; }}
echo x >> {log}
while [ "$1" != -o ]; do shift; done
head -c 1000 {real} > "$2"; sleep 0.2; cat {real} > "$2" """)
    cache = tmp_path / "cache"
    monkeypatch.setenv(fused_lookup.ENV_CACHE, str(cache))
    got, errors = [], []

    def build():
        try:
            got.append(fused_lookup._build(cc))
        except Exception as exc:            # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 1
    assert [p.name for p in cache.iterdir()] == [got[0].name]
    assert got[0].read_bytes() == real.read_bytes()
    calls = log.read_text().count("x")
    assert fused_lookup._build(cc) == got[0] and log.read_text().count("x") == calls


def test_the_probe_verdict_is_kept_beside_the_kernel(monkeypatch, tmp_path):
    """The first load in a cache probes and writes its verdict beside the library; the next
    load (another process, here a reset) takes the same functions without probing, and takes
    what a verdict says (no kernel for a dtype it says none matches); a verdict file that is
    not one (truncated, edited) or a torch dispatching to another CPU capability
    (other kernels: FMA or not) probes again."""
    fused_lookup.kernel(torch.float64, exec_ops._Tables)
    real = fused_lookup.library()
    assert real is not None, fused_lookup.why_not()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / real.name).write_bytes(real.read_bytes())      # the library, as if built here
    monkeypatch.setenv(fused_lookup.ENV_CACHE, str(cache))
    calls = []
    probe = fused_lookup.probe

    def counted(*args):
        calls.append(args[1])
        return probe(*args)
    monkeypatch.setattr(fused_lookup, "probe", counted)

    def load():
        fused_lookup._reset()
        return {dt: fused_lookup.kernel(dt, exec_ops._Tables) for dt in (torch.float64,
                                                                          torch.float32)}
    try:
        first = load()
        assert calls and all(first.values())
        (verdict,) = cache.glob("*-probe-*.json")
        assert verdict.name.startswith(real.stem)
        assert sorted(p.name for p in cache.iterdir()) == sorted([real.name, verdict.name])
        n = len(calls)
        again = load()
        assert len(calls) == n                                   # not probed again
        assert {dt: fn.__name__ for dt, fn in again.items()} == \
            {dt: fn.__name__ for dt, fn in first.items()}
        verdict.write_text('{"f32": null, "f64": "mad"}')       # a verdict is taken as it is
        got = load()
        assert len(calls) == n and got[torch.float32] is None
        assert got[torch.float64].__name__ == "lookup_f64_mad"
        verdict.write_text('{"f64": "fma"')                      # not a verdict: probe
        load()
        assert len(calls) > n and fused_lookup._read_verdict(verdict) is not None
        n = len(calls)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
        load()
        assert len(calls) > n and len(list(cache.glob("*-probe-*.json"))) == 2
    finally:
        monkeypatch.undo()
        fused_lookup._reset()
