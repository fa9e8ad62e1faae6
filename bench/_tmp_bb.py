"""Back-end benchmark: the compiled program run by the structured executor and by the dense
paper-form module, beside the same iteration written directly in batched PyTorch.

    python bench/bench_backend.py [--quick] [--device cpu|cuda] [--threads T] [--torch-compile]

For each program (newton_inverse, least_squares, newton_logistic), width parameter d and
batch size B, in float64 and float32:

* compile time and the model card numbers (layers, width D, heads, parameters, nonzero);
* forward time of `executor="structured"` (tcompile/runtime/executor.py, from the input slots,
  encode excluded; "structured" without the domain guard, "guarded" with it, as `run` runs
  by default: `guard_overhead` is guarded / structured − 1), of the dense module (`prog.module_for(dtype, device)(x)`, encode excluded)
  and of the direct torch iteration (bench/direct_reference.py: bmm/baddbmm, buffers allocated
  beforehand, no loop over problems), warm-up first, median and spread (min, max) over
  repeats, `torch.cuda.synchronize()` around each run on CUDA;
* `cpu_min_s` beside each side's wall-clock times: the least CPU time of the timing thread
  over the repeats (`time.thread_time`: time descheduled by other processes is not counted,
  which on a loaded machine makes it steadier than wall-clock minima; cache and memory
  contention still count), and `ratio_<side>_of_cpu_min`;
* `aten_calls`: aten operations per forward of structured, guarded and direct (a
  TorchDispatchMode counter; deterministic, where timings on a loaded machine are not);
* the direct iteration against the float64 interpreter on the batch's first problem
  (`rel_diff_direct_vs_interpreter`: the reference computes the program);
* with --torch-compile, also `executor="compiled"` (torch.compile of the structured
  executor) at the small sizes, with its one-off compile time;
* the max relative difference structured vs module and structured vs direct (float64);
* with --memory (or --memory-only, without the timings), peak memory of one forward at the
  largest batch, for every (program, d) of the grid, structured vs direct (vs module where it
  fits), each measured in a fresh process over a baseline holding the compiled program and
  the inputs, so each side's own state (input slots and plan, preallocated buffers) counts
  with its temporaries (resident set on CPU, sampled by a thread, malloc made to return freed
  blocks; max_memory_allocated on CUDA).

Relative difference of an output: for matrix/vector outputs the worst problem in the batch of
max|a - b| / max|b|; for scalar outputs the batch is one vector. Worst over the outputs.

Timing: every configuration is set up, checked and warmed up first; then `--rounds` passes over
the grid, each taking, per configuration, triples of runs (structured, module, direct) for
about `--budget` seconds. Triples put all sides under the same machine load; rounds spread
each configuration's samples over the run. The load average is printed with every round.
The dense module is skipped where its forward would need more than --max-gflop dense GFLOP
(it is the reference, not the thing measured).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tcompile  # noqa: E402
from tcompile.runtime.executor import executor_for  # noqa: E402
from tcompile.runtime.model import exact_float32  # noqa: E402
from tcompile.inspection.sampling import sample_inputs  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from direct_reference import check_against_interpreter, make_direct  # noqa: E402

# name: {d: tokens n (None: the program has no token input, n = min_tokens)}, params besides d
PROGRAMS = {
    "newton_inverse": ({5: None, 10: None, 32: None}, {"steps": 20}),
    "least_squares": ({5: 64, 10: 64, 32: 64}, {"steps": 20}),
    "newton_logistic": ({5: 26, 10: 64, 30: 569}, {}),
}
QUICK = {"newton_inverse": [5, 10], "least_squares": [5, 10], "newton_logistic": [5]}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
SIDES = ("structured", "module", "direct")


# ---- the direct torch iterations: bench/direct_reference.py ------------------------------------------

def flops_module(prog, B: int, n: int) -> int:
    """Dense flops of CompiledTransformer.forward as tcompile/runtime/model.py runs it."""
    D = prog.width
    total = 0
    for w in prog.layers:
        h, dk, hidden = w.W_K.shape[0], w.W_K.shape[1], w.W_1.shape[0]
        if h:
            total += 2 * B * n * D * h * (2 * dk + D) + 2 * B * h * dk * n * D * 2
        if hidden:
            total += 2 * B * n * D * hidden * 2
    return total


# ---- timing ---------------------------------------------------------------------------------

def timed(fn, device: str) -> float:
    """Wall time of one call, synchronised on CUDA."""
    cuda = device.startswith("cuda")
    w = os.environ.get("WARM", "")
    z2 = torch.ones((1, 3, 4), dtype=dtype) if w else None
    if "zeros" in w: torch.zeros((), dtype=dtype)
    if "np" in w: z2.double().cpu().numpy()
    if "gi" in w: z2[:, 1:2]
    if "cont" in w: z2.contiguous().data_ptr()
    if "ast" in w: torch.as_tensor(np.zeros(3), dtype=dtype)
    if "to" in w: z2.to(torch.float32)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


class Timing:
    """Samples of one configuration: runs of every side in turn (so that all see the same
    machine load), taken in rounds over the whole grid (see `bench`)."""

    def __init__(self, fns: dict, device: str):
        self.fns, self.device = fns, device
        self.samples = {k: [] for k in fns}
        self.cpu = {k: [] for k in fns}          # the thread's CPU time (CPU devices)

    def warm_up(self):
        for f in self.fns.values():
            f()

    def sample(self, budget_s: float, max_reps: int):
        t_end = time.perf_counter() + budget_s
        for _ in range(max_reps):
            for k, f in self.fns.items():
                c0 = time.thread_time()
                self.samples[k].append(timed(f, self.device))
                self.cpu[k].append(time.thread_time() - c0)
            if time.perf_counter() >= t_end:
                break

    def result(self) -> dict:
        out = {}
        for k, ts in self.samples.items():
            out[k] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                      "repeats": len(ts), "cpu_min_s": min(self.cpu[k])}
        return out


def rel_diff(out: dict, ref: dict) -> float:
    worst = 0.0
    for k, r in ref.items():
        c = np.asarray(out[k], dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        if r.ndim == 1:                                       # scalar output, batch axis only
            num, den = np.max(np.abs(c - r)), np.max(np.abs(r))
            worst = max(worst, float(num / den) if den > 0 else float(num))
            continue
        axes = tuple(range(1, r.ndim))
        num = np.max(np.abs(c - r), axis=axes)
        den = np.max(np.abs(r), axis=axes)
        worst = max(worst, float(np.max(num / np.where(den > 0, den, 1.0))))
    return worst


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def aten_calls(fn) -> int:
    """aten operations one call of fn dispatches (after a first call: the generated code's
    forward, not its tracing): a deterministic proxy for time where the machine is loaded."""
    fn()
    with _Count() as c:
        fn()
    return c.n


def to_numpy(out: dict) -> dict:
    """A copy (the direct side returns views of buffers its next call overwrites)."""
    return {k: v.detach().to("cpu", torch.float64).numpy().copy() for k, v in out.items()}


def loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ---- machine info ---------------------------------------------------------------------------

def machine_info(device: str) -> dict:
    info = {"torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_num_threads": torch.get_num_threads(),
            "device": device, "tcompile": tcompile.__version__}
    try:       # which compiler was measured (the tree may have uncommitted changes)
        info["git_head"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True, timeout=10).stdout.strip() or None
        info["tcompile_uncommitted_changes"] = bool(subprocess.run(
            ["git", "status", "--porcelain", "--", "tcompile", "programs"], cwd=ROOT,
            capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["git_head"] = None
    cpu_name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                            cpu_name)
    except OSError:
        pass
    info["cpu_name"] = cpu_name
    info["device_name"] = torch.cuda.get_device_name(torch.device(device)) \
        if device.startswith("cuda") else cpu_name
    return info


# ---- one configuration ----------------------------------------------------------------------

def setup(name: str, d: int, B: int, dt_name: str, device: str, cache: dict) -> dict:
    """Program, inputs and the three callables of one configuration."""
    ds, extra = PROGRAMS[name]
    n_tokens = ds[d]
    key = (name, d)
    if key not in cache:
        t0 = time.perf_counter()
        prog = tcompile.compile_file(ROOT / "programs" / f"{name}.tp", params={"d": d, **extra})
        cache[key] = (prog, time.perf_counter() - t0)
    prog, compile_s = cache[key]
    params = {k: float(v) for k, v in prog.manifest["params"].items()}
    inputs = sample_inputs(prog.program, {"d": d, **extra}, n=n_tokens or 16, batch=B, seed=0)
    dtype = DTYPES[dt_name]
    prep = prog.prepare_inputs(inputs)
    ex = executor_for(prog, "structured")
    state = ex.input_state(prep, dtype, device)
    x = None

    def f_module():                     # encoded on first use: (B, n, D) is the largest array
        nonlocal x
        if x is None:
            x = prog.encode_inputs(prep, dtype, device)
        with torch.no_grad():
            return prog.module_for(dtype, device)(x)
    tin = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in inputs.items()}
    direct = make_direct(name, tin, params)           # buffers allocated here, once

    def f_direct():
        with torch.no_grad(), exact_float32():       # same matmul precision as the model
            return direct()

    return {"prog": prog, "compile_s": compile_s, "inputs": inputs, "n": prep.n, "dtype": dtype, "params": params,
            "prep": prep, "tin": tin, "state": state, "f_module": f_module,
            "f_direct": f_direct,
            "f_structured": lambda: ex.run_state(state, prep.n, dtype, device),
            "f_guarded": lambda: ex.run_state_watched(state, prep.n, dtype, device)}

# ---- the benchmark --------------------------------------------------------------------------

def card_of(prog) -> dict:
    rep = prog.report
    return {"layers": rep["layers"], "width": rep["width"], "heads": rep["heads_total"],
            "parameters": rep["parameters"], "nonzero": rep["nonzero_parameters"],
            "min_tokens": rep["min_tokens"]}


def grid(args) -> list[tuple[str, int]]:
    pick = QUICK if args.quick else {k: list(v[0]) for k, v in PROGRAMS.items()}
    return [(name, d) for name in (args.programs or PROGRAMS) for d in pick[name]
            if not args.d or d in args.d]


def bench(args) -> dict:
    device = args.device
    batches = args.batch or ([1, 64] if args.quick else [1, 64, 1024])
    cache, configs, skipped = {}, [], []
    for name, d in grid(args):
        for B in batches:
            for dt_name in DTYPES:
                c = setup(name, d, B, dt_name, device, cache)
                prog = c["prog"]
                gflop = flops_module(prog, B, c["n"]) / 1e9
                fns = {"structured": c["f_structured"], "guarded": c["f_guarded"],
                       "direct": c["f_direct"]}
                if gflop <= args.max_gflop and not args.no_module:
                    fns["module"] = c["f_module"]
                else:
                    skipped.append(f"{name} d={d} B={B} {dt_name}: module ~{gflop:.0f} GFLOP"
                                   if not args.no_module else f"{name} d={d} B={B}: --no-module")
                out_s = to_numpy(c["f_structured"]())
                rec = {"program": name, "d": d, "n": c["n"], "batch": B, "dtype": dt_name,
                       "device": device, "compile_s": c["compile_s"], **card_of(prog),
                       "module_gflop": gflop,
                       "rel_diff_structured_vs_direct": rel_diff(out_s, to_numpy(c["f_direct"]())),
                       "aten_calls": {k: aten_calls(c[f"f_{k}"]) for k in ("structured", "guarded", "direct")}}
                if dt_name == "float64":           # the reference computes the program
                    rec["rel_diff_direct_vs_interpreter"] = check_against_interpreter(
                        name, ROOT / "programs" / f"{name}.tp", c["params"], c["inputs"])
                if gflop <= args.max_gflop and (B <= 64 or not args.no_module):  # agreement
                    rec["rel_diff_structured_vs_module"] = rel_diff(
                        out_s, prog.decode(c["f_module"]()))
                if args.torch_compile and B <= 64:
                    comp = executor_for(prog, "compiled")
                    t0 = time.perf_counter()
                    comp.run_state(c["state"], c["n"], c["dtype"], device)
                    rec["torch_compile_s"] = time.perf_counter() - t0
                    fns["compiled"] = lambda comp=comp, c=c: comp.run_state(
                        c["state"], c["n"], c["dtype"], device)
                tm = Timing(fns, device)
                tm.warm_up()
                configs.append((rec, tm))
        print(f"set up {name} d={d} ({cache[(name, d)][1]:.2f} s compile)", flush=True)
        if not args.keep_modules:
            cache[(name, d)][0]._modules.clear()
    for r in range(args.rounds):
        t0 = time.perf_counter()
        for rec, tm in (configs if r % 2 == 0 else configs[::-1]):
            tm.sample(args.budget, 25)
        print(f"timing round {r + 1}/{args.rounds}: {time.perf_counter() - t0:.1f} s "
              f"(load average {loadavg()[0]:.1f})", flush=True)
    records = []
    for rec, tm in configs:
        res = tm.result()
        rec["times"] = res
        for side in res:
            if side != "direct":
                rec[f"ratio_{side}"] = res[side]["median_s"] / res["direct"]["median_s"]
                rec[f"ratio_{side}_of_min"] = res[side]["min_s"] / res["direct"]["min_s"]
                rec[f"ratio_{side}_of_cpu_min"] = res[side]["cpu_min_s"] / res["direct"]["cpu_min_s"]
        rec["guard_overhead"] = res["guarded"]["median_s"] / res["structured"]["median_s"] - 1
        rec["guard_overhead_cpu_min"] = res["guarded"]["cpu_min_s"] / res["structured"]["cpu_min_s"] - 1
        records.append(rec)
    return {"records": records, "skipped": skipped}


# ---- memory (fresh process per measurement) ---------------------------------------------------

def memory_probe(name: str, d: int, B: int, side: str, device: str) -> dict:
    """Peak memory of one forward of `side` over what both sides share (the compiled program
    and the sampled inputs): the side's own state (the structured executor's input slots and
    resolved plan, the reference's preallocated buffers, the module's encoded x) is set up
    after the baseline is read, so it counts, as do the forward's temporaries."""
    ds, extra = PROGRAMS[name]
    prog = tcompile.compile_file(ROOT / "programs" / f"{name}.tp", params={"d": d, **extra})
    params = {k: float(v) for k, v in prog.manifest["params"].items()}
    inputs = sample_inputs(prog.program, {"d": d, **extra}, n=ds[d] or 16, batch=B, seed=0)
    dtype = torch.float64
    prep = prog.prepare_inputs(inputs)
    cuda = device.startswith("cuda")
    w = os.environ.get("WARM", "")
    z2 = torch.ones((1, 3, 4), dtype=dtype) if w else None
    if "zeros" in w: torch.zeros((), dtype=dtype)
    if "np" in w: z2.double().cpu().numpy()
    if "gi" in w: z2[:, 1:2]
    if "cont" in w: z2.contiguous().data_ptr()
    if "ast" in w: torch.as_tensor(np.zeros(3), dtype=dtype)
    if "to" in w: z2.to(torch.float32)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else _rss()
    base_anon = None if cuda else _rss(anon=True)

    def setup_and_run():
        if side == "structured":
            ex = executor_for(prog, "structured")
            state = ex.input_state(prep, dtype, device)
            ex.resolved(prep.n, dtype, device)
            return lambda: ex.run_state(state, prep.n, dtype, device)
        if side == "direct":
            tin = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in inputs.items()}
            direct = make_direct(name, tin, params)
            return lambda: direct()
        x = prog.encode_inputs(prep, dtype, device)
        module = prog.module_for(dtype, device)
        return lambda: module(x)
    with torch.no_grad(), exact_float32():
        if cuda:
            setup_and_run()()
            torch.cuda.synchronize()
            return {"peak_bytes": torch.cuda.max_memory_allocated() - base}
        peak, peak_anon = rss_peak(lambda: setup_and_run()(), base, base_anon)
        return {"peak_bytes": peak, "peak_anon_bytes": peak_anon,
                "note": "resident set over the baseline during setup and one forward, sampled "
                        "every 0.2 ms, malloc returning freed blocks (MALLOC_MMAP_THRESHOLD_); "
                        "peak_anon_bytes: its anonymous part (data: resident minus file-backed "
                        "pages, which are mostly libtorch's code paged in at an op's first use, "
                        "~0.5 MiB per distinct op)"}


def _rss(anon: bool = False) -> int:
    """Resident bytes of this process (anon: without file-backed pages, /proc's statm
    resident − shared)."""
    with open("/proc/self/statm") as fh:
        f = fh.read().split()
    pages = int(f[1]) - (int(f[2]) if anon else 0)
    return pages * os.sysconf("SC_PAGE_SIZE")


def rss_peak(f, base: int, base_anon: int) -> tuple[int, int]:
    """Peak RSS during f() minus `base`, and the peak of its anonymous part minus
    `base_anon` (a sampling thread reads /proc/self/statm; torch releases the GIL inside its
    ops). The child runs with glibc's mmap threshold fixed (see `memory`), so every large
    buffer is mmap'ed and unmapped on free: RSS follows what is live instead of keeping an
    earlier peak in the heap."""
    peak, done = [0, 0], threading.Event()

    def read():
        peak[0] = max(peak[0], _rss())
        peak[1] = max(peak[1], _rss(anon=True))

    def sample():
        while not done.is_set():
            read()
            time.sleep(0.0002)
    th = threading.Thread(target=sample)
    th.start()
    try:
        f()
    finally:
        done.set()
        th.join()
    read()
    return peak[0] - base, peak[1] - base_anon


def memory(args) -> list[dict]:
    out = []
    for name, d in grid(args):
        B = max(args.batch or [1024])
        for side in ("structured", "direct") + (() if args.no_module else ("module",)):
            cmd = [sys.executable, __file__, "--memory-probe", name, str(d), str(B), side,
                   "--device", args.device, "--threads", str(torch.get_num_threads())]
            if side == "module":
                prog = tcompile.compile_file(ROOT / "programs" / f"{name}.tp",
                                             params={"d": d, **PROGRAMS[name][1]})
                n = PROGRAMS[name][0][d] or prog.layout.min_tokens
                if flops_module(prog, B, n) / 1e9 > args.max_gflop:
                    out.append({"program": name, "d": d, "batch": B, "side": side,
                                "skipped": "over --max-gflop"})
                    continue
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            rec = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                {"error": p.stderr.strip().splitlines()[-1:]}
            out.append({"program": name, "d": d, "batch": B, "side": side, **rec})
            print(f"memory {name} d={d} B={B} {side}: "
                  f"{rec.get('peak_bytes', 0) / 2**20:.1f} MiB (anonymous "
                  f"{rec.get('peak_anon_bytes', 0) / 2**20:.1f}) {rec.get('error', '')}", flush=True)
    return out


# ---- printing -------------------------------------------------------------------------------

def fmt_t(s: float) -> str:
    return f"{s * 1e3:.3g}ms" if s < 1 else f"{s:.3g}s"


def print_table(result: dict):
    recs = result["records"]
    print(f"\n{'program':<16}{'d':>3}{'n':>5}{'B':>6} {'dtype':<8}{'direct':>10}{'struct':>10}"
          f"{'×':>7}{'(min)':>7}{'(cpu)':>7}{'guard':>7}{'module':>10}{'×':>8}{'compiled':>10}{'×':>7}{'diff vs mod':>12}"
          f"{'reps':>5}")
    for r in recs:
        t = r["times"]
        mod = t.get("module")
        cmp = t.get("compiled")
        print(f"{r['program']:<16}{r['d']:>3}{r['n']:>5}{r['batch']:>6} {r['dtype']:<8}"
              f"{fmt_t(t['direct']['median_s']):>10}{fmt_t(t['structured']['median_s']):>10}"
              f"{r['ratio_structured']:>6.2f}x{r['ratio_structured_of_min']:>6.2f}x"
              f"{r['ratio_structured_of_cpu_min']:>6.2f}x"
              f"{100 * r['guard_overhead']:>6.1f}%"
              f"{fmt_t(mod['median_s']) if mod else '-':>10}"
              f"{(format(r['ratio_module'], '7.1f') + 'x') if mod else '-':>8}"
              f"{fmt_t(cmp['median_s']) if cmp else '-':>10}"
              f"{(format(r['ratio_compiled'], '6.2f') + 'x') if cmp else '-':>7}"
              f"{r.get('rel_diff_structured_vs_module', float('nan')):>12.1e}"
              f"{t['structured']['repeats']:>5}")
    gaps = [r["rel_diff_direct_vs_interpreter"] for r in recs
            if "rel_diff_direct_vs_interpreter" in r]
    if gaps:
        print(f"direct vs interpreter (float64, worst): {max(gaps):.1e}")
    for s in result["skipped"]:
        print(f"module skipped: {s}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small d, batch in (1, 64)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/backend_<device>.json)")
    ap.add_argument("--programs", nargs="+", choices=list(PROGRAMS), default=None)
    ap.add_argument("--d", type=int, nargs="+", default=None, help="only these d values")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="override the batch sizes")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds over the grid")
    ap.add_argument("--budget", type=float, default=0.15,
                    help="seconds of timed triples per configuration and round (at least one)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--max-gflop", type=float, default=30.0,
                    help="skip the dense module where its forward needs more GFLOP (default 30)")
    ap.add_argument("--torch-compile", action="store_true",
                    help="also time executor='compiled' (torch.compile) at B <= 64")
    ap.add_argument("--no-module", action="store_true",
                    help="do not time the dense module (it is the reference for agreement only)")
    ap.add_argument("--memory", action="store_true",
                    help="peak memory at the largest batch for every (program, d), fresh process per side")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak memory measurements (no timing)")
    ap.add_argument("--keep-modules", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-probe", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    if args.memory_probe:
        name, d, B, side = args.memory_probe
        print(json.dumps(memory_probe(name, int(d), int(B), side, args.device)))
        return
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / \
        f"backend_{args.device.split(':')[0]}{'_quick' if args.quick else ''}.json"
    t0, load0 = time.perf_counter(), loadavg()
    print(f"load average at start {load0}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}", flush=True)
    result = {"records": [], "skipped": []} if args.memory_only else bench(args)
    result["memory"] = memory(args) if args.memory or args.memory_only else []
    result["machine"] = {**machine_info(args.device), "loadavg_at_start": load0,
                         "loadavg_at_end": loadavg()}
    result["settings"] = {k: v for k, v in vars(args).items() if k != "memory_probe"}
    result["settings"]["programs_grid"] = {k: {"d_to_n": v[0], "params": v[1]}
                                           for k, v in PROGRAMS.items()}
    result["total_s"] = time.perf_counter() - t0
    print_table(result)
    print(f"load average at start {load0}, at end {result['machine']['loadavg_at_end']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(out)
    print(f"\nwrote {out}  (total {result['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
