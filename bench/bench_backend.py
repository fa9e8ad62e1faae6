"""Back-end benchmark: the compiled linear-attention model against the same iteration
written directly in batched PyTorch.

    python bench/bench_backend.py [--quick] [--device cpu|cuda] [--out PATH]

For each program (newton_inverse, least_squares), width parameter d and batch size B:

* compile time (median of a few `tcompile.compile_file` calls) and the model card numbers
  (layers, width D, heads, parameters, nonzero parameters);
* forward time of the compiled model (`prog.module_for(dtype, device)(x)` under no_grad,
  encode excluded, warm-up first, median over repeats, `torch.cuda.synchronize()` around each
  run on CUDA), in float64 and float32;
* forward time of the SAME iteration written directly in batched torch (same dtype, device,
  batch; input tensors prepared beforehand, as the encoded x is), and the ratio
  compiled / direct;
* the max relative difference between the compiled output and the direct output in float64
  (and, for information, each float32 output against the float64 direct one).

Relative difference of an output: for matrix/vector outputs the worst problem in the batch of
max|compiled - direct| / max|direct|; for scalar outputs (y_hat) the batch is one vector,
max_b |compiled_b - direct_b| / max_b |direct_b|. The figure for a configuration is the worst
over the program's outputs.

FLOP counts (JSON fields flops_compiled / flops_direct) are analytic: for the compiled model
the dense einsums/matmuls that tcompile/model.py executes (zero blocks included), for the
direct code its matmuls. Their ratio says how much of the slowdown is arithmetic the dense
D x D weights force, rather than per-op overhead.

Timing: every configuration is first compiled, encoded, checked and warmed up; then the
script makes `--rounds` passes over the whole grid, each taking, per configuration, pairs of
runs (compiled, then direct) for about `--budget` seconds (at least one pair). Medians and
minima are over all pairs of all rounds. Pairing puts both sides under the same machine load;
rounds spread each configuration's samples over the whole run, so a burst of load from other
processes (this benchmark was written on a shared 2-core machine) spoils a few samples of
many configurations rather than all samples of one. `ratio_of_min` (min over min) is the
better estimate of the unloaded ratio when the load average was high.

torch.set_num_threads is left as found. Writes one JSON record per (program, d, batch, dtype)
plus machine info; prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tcompile  # noqa: E402
from tcompile.runtime.model import exact_float32  # noqa: E402
from tcompile.inspection.sampling import sample_inputs  # noqa: E402

PROGRAMS = {
    # name: (steps T, tokens n; None = the program has no token input, n = min_tokens)
    "newton_inverse": (20, None),
    "least_squares": (20, 64),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


# ---- the direct torch iterations --------------------------------------------------------------

def direct_newton_inverse(A: torch.Tensor, steps: int, norm_bound: float = 1.0) -> dict:
    """X0 = Aᵀ / bound², X ← 2X − X A X, batched over the leading axis."""
    X = A.mT / norm_bound ** 2
    for _ in range(steps):
        X = 2 * X - X @ A @ X
    return {"X": X}


def direct_least_squares(A: torch.Tensor, y: torch.Tensor, a_test: torch.Tensor, steps: int) -> dict:
    """S = AᵀA/n, b = Aᵀy/n, X = I, w = b; w ← 2w − X S w, X ← 2X − X S X; ŷ = a_testᵀ w."""
    n = A.shape[-2]
    At = A.mT
    S = At @ A / n
    w = At @ y.unsqueeze(-1) / n                     # (B, d, 1)
    X = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(S)
    for _ in range(steps):
        w, X = 2 * w - X @ (S @ w), 2 * X - X @ S @ X
    y_hat = (a_test.unsqueeze(-2) @ w)[..., 0, 0]
    return {"w": w[..., 0], "y_hat": y_hat}


def run_direct(name: str, t: dict, steps: int, params: dict) -> dict:
    if name == "newton_inverse":
        return direct_newton_inverse(t["A"], steps, float(params.get("norm_bound", 1.0)))
    if name == "least_squares":
        return direct_least_squares(t["A"], t["y"], t["a_test"], steps)
    raise KeyError(name)


def flops_direct(name: str, B: int, d: int, n: int, steps: int) -> int:
    if name == "newton_inverse":
        return B * steps * 4 * d ** 3
    if name == "least_squares":
        return B * (2 * n * d * d + 2 * n * d + steps * (4 * d ** 3 + 4 * d * d) + 2 * d)
    raise KeyError(name)


def flops_compiled(prog, B: int, n: int) -> int:
    """Dense flops of CompiledTransformer.forward as tcompile/model.py runs it."""
    D = prog.width
    total = 0
    for w in prog.layers:
        h, dk = w.W_K.shape[0], w.W_K.shape[1]
        hidden = w.W_1.shape[0]
        if h:
            total += 2 * B * n * D * h * dk * 2        # k and q projections
            total += 2 * B * n * D * h * D             # v projection (W_V is D x D per head)
            total += 2 * B * h * dk * n * D * 2        # kᵀv, then q (kᵀv)
        if hidden:
            total += 2 * B * n * D * hidden * 2        # W_1, W_2
    return total


# ---- timing ---------------------------------------------------------------------------------

def timed(fn, device: str) -> float:
    """Wall time of one call, synchronised on CUDA."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


class Timing:
    """Samples of one configuration: pairs of runs (compiled, then direct), so that both see
    the same machine load. Pairs are taken in rounds over the whole grid (see `bench`), so a
    burst of load from other processes hits a few samples of many configurations instead of
    every sample of one."""

    def __init__(self, f_compiled, f_direct, device: str):
        self.f_compiled, self.f_direct, self.device = f_compiled, f_direct, device
        self.tc: list[float] = []
        self.td: list[float] = []
        self.pair_s = 0.0

    def warm_up(self, runs: int = 2):
        """One pair, a second unless the first took over half a second."""
        for i in range(runs):
            c, d = timed(self.f_compiled, self.device), timed(self.f_direct, self.device)
            self.pair_s = c + d
            if self.pair_s > 0.5:
                break

    def sample(self, budget_s: float, max_pairs: int):
        """At least one pair; more while the round's budget for this configuration lasts."""
        t_end = time.perf_counter() + budget_s
        for _ in range(max_pairs):
            self.tc.append(timed(self.f_compiled, self.device))
            self.td.append(timed(self.f_direct, self.device))
            if time.perf_counter() >= t_end:
                break

    def result(self) -> dict:
        return {"compiled_s": statistics.median(self.tc), "direct_s": statistics.median(self.td),
                "compiled_min_s": min(self.tc), "direct_min_s": min(self.td),
                "repeats": len(self.tc)}


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


def to_numpy(out: dict) -> dict:
    return {k: v.detach().to("cpu", torch.float64).numpy() for k, v in out.items()}


# ---- machine info ---------------------------------------------------------------------------

def machine_info(device: str) -> dict:
    info = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "device": device,
        "tcompile": tcompile.__version__,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
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
            for line in f:
                if line.startswith("model name"):
                    cpu_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["cpu_name"] = cpu_name
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = cpu_name
    return info


# ---- the benchmark --------------------------------------------------------------------------

def bench(args) -> dict:
    device = args.device
    ds = args.d or ([4, 8] if args.quick else [4, 8, 16, 32])
    batches = args.batch or ([1, 64] if args.quick else [1, 64, 1024])
    rounds = args.rounds or 3
    budget = args.budget if args.budget is not None else (0.1 if args.quick else 0.12)
    max_pairs = 25
    compile_runs = 3
    cuda = device.startswith("cuda")

    # phase 1: compile, encode, check accuracy, warm up -- every configuration
    configs = []          # (record without timings, Timing)
    compiles = []
    skipped = []
    print(f"{'program':<15}{'d':>4}{'layers':>7}{'D':>5}{'heads':>6}{'params':>10}{'nonzero':>9}"
          f"{'compile':>9}   max rel diff compiled vs direct (float64, per batch)")
    for name, (steps, n_tokens) in PROGRAMS.items():
        path = ROOT / "programs" / f"{name}.tp"
        for d in ds:
            params = {"d": d, "steps": steps}
            ctimes = []
            for _ in range(compile_runs):
                t0 = time.perf_counter()
                prog = tcompile.compile_file(path, params=params)
                ctimes.append(time.perf_counter() - t0)
            rep = prog.report
            card = {"layers": rep["layers"], "width": rep["width"], "heads": rep["heads_total"],
                    "parameters": rep["parameters"], "nonzero": rep["nonzero_parameters"],
                    "min_tokens": rep["min_tokens"]}
            compile_s = statistics.median(ctimes)
            compiles.append({"program": name, "d": d, "steps": steps, "compile_s": compile_s,
                             "compile_runs": compile_runs, **card})
            allp = {k: float(v) for k, v in prog.manifest["params"].items()}
            diffs = []
            for B in batches:
                n_est = n_tokens or prog.manifest["min_tokens"]
                est = flops_compiled(prog, B, n_est) / 1e9
                if args.max_gflop is not None and est > args.max_gflop:
                    skipped.append({"program": name, "d": d, "batch": B,
                                    "flops_compiled": int(est * 1e9),
                                    "reason": f"compiled forward ~{est:.0f} GFLOP > --max-gflop "
                                              f"{args.max_gflop:g}"})
                    diffs.append(f"B={B}: skipped (~{est:.0f} GFLOP)")
                    continue
                inputs = sample_inputs(prog.program, params, n=n_tokens or 16, batch=B, seed=0)
                ref64 = None
                for dt_name in ("float64", "float32"):
                    dtype = DTYPES[dt_name]
                    x = prog.encode(dtype=dtype, device=device, **inputs)
                    n = x.shape[1]
                    model = prog.module_for(dtype, device)
                    tin = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in inputs.items()}

                    def f_compiled(model=model, x=x):
                        with torch.no_grad():
                            return model(x)

                    def f_direct(name=name, tin=tin, steps=steps, allp=allp):
                        with torch.no_grad(), exact_float32():   # same matmul precision as the model
                            return run_direct(name, tin, steps, allp)

                    out_c = prog.decode(f_compiled())
                    out_d = to_numpy(f_direct())
                    if dt_name == "float64":
                        ref64 = out_d
                    fc, fd = flops_compiled(prog, B, n), flops_direct(name, B, d, n, steps)
                    rec = {
                        "program": name, "d": d, "steps": steps, "n": n, "batch": B,
                        "dtype": dt_name, "device": device, "compile_s": compile_s, **card,
                        "flops_compiled": fc, "flops_direct": fd, "flops_ratio": fc / fd,
                        # compiled vs direct in this dtype; float64 is the sanity check (~1e-13)
                        "max_rel_diff": rel_diff(out_c, out_d),
                        # this dtype against the float64 direct result (float32: its precision)
                        "max_rel_diff_compiled_vs_direct64": rel_diff(out_c, ref64),
                        "max_rel_diff_direct_vs_direct64": rel_diff(out_d, ref64),
                    }
                    if dt_name == "float64":
                        diffs.append(f"B={B}: {rec['max_rel_diff']:.1e}")
                    tm = Timing(f_compiled, f_direct, device)
                    tm.warm_up()
                    configs.append((rec, tm))
            print(f"{name:<15}{d:>4}{card['layers']:>7}{card['width']:>5}{card['heads']:>6}"
                  f"{card['parameters']:>10}{card['nonzero']:>9}{compile_s:>8.3f}s   "
                  + ", ".join(diffs), flush=True)

    # phase 2: timing, in rounds over the grid (alternate rounds run it backwards)
    for r in range(rounds):
        t0 = time.perf_counter()
        order = configs if r % 2 == 0 else configs[::-1]
        for rec, tm in order:
            tm.sample(budget, max_pairs)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"timing round {r + 1}/{rounds}: {time.perf_counter() - t0:.1f} s "
              f"(load average {load:.1f})", flush=True)

    # phase 3: results
    records = []
    print()
    for i, (rec, tm) in enumerate(configs):
        t = tm.result()
        rec.update({"compiled_s": t["compiled_s"], "direct_s": t["direct_s"],
                    "ratio": t["compiled_s"] / t["direct_s"],
                    "compiled_min_s": t["compiled_min_s"], "direct_min_s": t["direct_min_s"],
                    "ratio_of_min": t["compiled_min_s"] / t["direct_min_s"],
                    "repeats": t["repeats"],
                    "compiled_gflops": rec["flops_compiled"] / t["compiled_s"] / 1e9,
                    "direct_gflops": rec["flops_direct"] / t["direct_s"] / 1e9})
        records.append(rec)
        print_row(rec, header=i == 0)
    for sk in skipped:
        print(f"{sk['program']:<15}{sk['d']:>4}{sk['batch']:>6}  skipped: {sk['reason']}")
    return {"machine": machine_info(device),
            "settings": {"quick": bool(args.quick), "d": ds, "batches": batches,
                         "programs": {k: {"steps": s, "n": n} for k, (s, n) in PROGRAMS.items()},
                         "rounds": rounds, "budget_per_round_s": budget,
                         "max_pairs_per_round": max_pairs,
                         "warmup": "2 pairs (1 if a pair takes > 0.5 s)",
                         "compile_runs": compile_runs, "max_gflop": args.max_gflop,
                         "seed": 0, "tf32": "off for both (tcompile.runtime.model.exact_float32)"
                         if cuda else None},
            "compile": compiles,
            "records": records,
            "skipped": skipped}


HEADER = (f"{'program':<15}{'d':>4}{'B':>6} {'dtype':<8}{'layers':>7}{'D':>5}{'heads':>6}"
          f"{'params':>10}{'nonzero':>9}{'compile':>9}{'compiled':>11}{'direct':>11}"
          f"{'ratio':>8}{'(min)':>8}{'flops×':>8}{'rel diff':>10}{'reps':>6}")


def fmt_t(s: float) -> str:
    return f"{s * 1e3:.3f}ms" if s < 1 else f"{s:.3f}s"


def print_row(r: dict, header: bool = False):
    if header:
        print(HEADER)
        print("-" * len(HEADER))
    print(f"{r['program']:<15}{r['d']:>4}{r['batch']:>6} {r['dtype']:<8}{r['layers']:>7}"
          f"{r['width']:>5}{r['heads']:>6}{r['parameters']:>10}{r['nonzero']:>9}"
          f"{r['compile_s']:>8.3f}s{fmt_t(r['compiled_s']):>11}{fmt_t(r['direct_s']):>11}"
          f"{r['ratio']:>7.1f}x{r['ratio_of_min']:>7.1f}x{r['flops_ratio']:>7.1f}x{r['max_rel_diff']:>10.1e}"
          f"{r['repeats']:>6}", flush=True)


def print_summary(result: dict):
    recs = result["records"]
    batches = sorted({r["batch"] for r in recs})
    keys = sorted({(r["program"], r["d"], r["dtype"]) for r in recs},
                  key=lambda k: (list(PROGRAMS).index(k[0]), k[2] != "float64", k[1]))
    for field, title in (("ratio", "median"), ("ratio_of_min", "min")):
        print(f"\nratio compiled / direct, forward time ({title} over repeats)")
        head = f"{'program':<15}{'d':>4} {'dtype':<8}" + "".join(f"{'B=' + str(b):>9}" for b in batches)
        print(head)
        print("-" * len(head))
        for prog, d, dt in keys:
            cells = []
            for b in batches:
                m = [r for r in recs if (r["program"], r["d"], r["dtype"], r["batch"]) == (prog, d, dt, b)]
                cells.append(f"{m[0][field]:>8.1f}x" if m else f"{'-':>9}")
            print(f"{prog:<15}{d:>4} {dt:<8}" + "".join(cells))
    f64 = [r["max_rel_diff"] for r in recs if r["dtype"] == "float64"]
    f32 = [r["max_rel_diff_compiled_vs_direct64"] for r in recs if r["dtype"] == "float32"]
    if f64:
        print(f"\nmax rel diff compiled vs direct, float64: {max(f64):.1e} (worst configuration)")
    if f32:
        print(f"max rel diff compiled float32 vs direct float64: {max(f32):.1e}")
    load = result["machine"].get("loadavg_at_start")
    if load:
        print(f"load average at start {load[0]:.1f}, at end {result['machine']['loadavg_at_end'][0]:.1f} "
              f"({result['machine']['cpu_count']} CPUs)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="d in (4, 8), batch in (1, 64), short timing")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/backend_<device>.json)")
    ap.add_argument("--d", type=int, nargs="+", default=None, help="override the d values")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="override the batch sizes")
    ap.add_argument("--rounds", type=int, default=None,
                    help="timing rounds over the whole grid (default 3)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of timed pairs per configuration and round, at least one pair "
                         "(default 0.1 quick, 0.12 full)")
    ap.add_argument("--max-gflop", type=float, default=None,
                    help="skip configurations whose compiled forward needs more dense GFLOP "
                         "(default: 100 for the full run, i.e. least_squares d=32 B=1024; none for --quick)")
    args = ap.parse_args(argv)
    if args.max_gflop is None and not args.quick:
        args.max_gflop = 100.0
    if args.max_gflop is not None and args.max_gflop <= 0:
        args.max_gflop = None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / \
        f"backend_{args.device.split(':')[0]}{'_quick' if args.quick else ''}.json"

    t0 = time.perf_counter()
    load0 = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if load0 and load0[0] > 0.5 * (os.cpu_count() or 1) and not args.device.startswith("cuda"):
        print(f"warning: load average {load0[0]:.1f} on {os.cpu_count()} CPUs: other processes compete "
              f"with torch's {torch.get_num_threads()} threads, CPU timings will be noisy and the "
              f"compiled model (hundreds of small parallel ops) suffers most", file=sys.stderr)
    result = bench(args)
    result["machine"]["loadavg_at_start"] = load0
    result["total_s"] = time.perf_counter() - t0
    print_summary(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print(f"\nwrote {out}  (total {result['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
