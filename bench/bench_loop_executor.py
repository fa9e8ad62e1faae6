"""The structured executor on shared builds: each loop body planned once (exec_loops.py).

Measures, side by side in one process (float64, CPU, 1 thread):
  * the shared build of newton_inverse at 10 and at 10,000 steps;
  * newton_inverse (d = 4) at 10,000 steps: the first run (planning and resolving included)
    and a later one, and the process's peak RSS growth of the first — beside the executor
    that expands the plan per count (executor.ExpandedExecutor) at 1,000 steps;
  * least_squares (d = 4, B = 64): halting on w (tolerance 1e-13, at most 200 steps) against a
    fixed-count run of as many steps as the last problem to halt took (the same iterations:
    the batch runs until its last problem halts), the two timed alternately (at least 30
    pairs): medians, and the median of the per-pair ratios.
Prints a table and writes bench/results/loop_executor.json.

    python bench/bench_loop_executor.py [--repeats R] [--out bench/results/loop_executor.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def timed_pair(a, b, repeats: int) -> tuple[float, float, float]:
    """a and b timed alternately (a, b, b, a, ...: a load burst hits both alike): their
    medians, and the median of the per-pair ratios b / a (steadier than a ratio of medians
    on a shared machine)."""
    ta, tb = [], []
    for i in range(repeats):
        for which in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t = time.perf_counter()
            which[0]()
            which[1].append(time.perf_counter() - t)
    return (statistics.median(ta), statistics.median(tb),
            statistics.median(y / x for x, y in zip(ta, tb)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop_executor.json"))
    args = ap.parse_args()
    import numpy as np
    import torch

    import tcompile
    from tcompile.runtime.exec_loops import shared_executor_for
    from tcompile.runtime.executor import ExpandedExecutor
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = {}

    tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp", {"d": 4}, loops="shared")
    builds = {}
    for steps in (10, 10_000):               # the checker walks types to a fixed point
        builds[steps], _ = timed(lambda: tcompile.compile_file(
            ROOT / "programs" / "newton_inverse.tp", {"d": 4, "steps": steps}, loops="shared"),
            args.repeats)
    rows["newton_inverse_shared_build_s"] = {str(k): v for k, v in builds.items()}
    print(f"newton_inverse shared build: {builds[10]:.3f} s at 10 steps, "
          f"{builds[10_000]:.3f} s at 10,000")
    inv = tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp", {"d": 4}, loops="shared")
    A = rng.standard_normal((4, 4))
    A /= 1.01 * np.linalg.norm(A, 2)
    rss = _rss_mb()
    t = time.perf_counter()
    inv.run(A=A, steps=10_000)
    first = time.perf_counter() - t
    grew = _rss_mb() - rss
    later, _ = timed(lambda: inv.run(A=A, steps=10_000), args.repeats)
    plans = len(shared_executor_for(inv).plans)
    prep = inv.prepare_inputs({"A": A})
    t = time.perf_counter()
    ex = ExpandedExecutor(inv.loops.expand(inv.loops.counts({"steps": 1000})), inv.layers,
                          inv.layout, inv.loops.expand(dict(inv.loops.base_counts)))
    ex.run_inputs(prep)
    expanded_first_1000 = time.perf_counter() - t
    rows["newton_inverse_10000"] = {
        "first_run_s": first, "later_run_s_median": later, "first_over_later": first / later,
        "peak_rss_growth_first_mb": grew, "sublayer_plans": plans,
        "expanded_executor_first_run_at_1000_s": expanded_first_1000}
    print(f"newton_inverse, 10,000 steps: first run {first:.3f} s, later {later:.3f} s "
          f"(x{first / later:.2f}); peak RSS +{grew:.0f} MB; {plans} sublayer plans; the "
          f"plan expanded per count: first run at 1,000 steps {expanded_first_1000:.2f} s")

    ls = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", loops="shared")
    B, n, d = 64, 40, 4
    As = rng.standard_normal((B, n, d))
    As /= np.linalg.norm(As, axis=2).max(axis=1)[:, None, None]
    inputs = {"A": As, "y": rng.standard_normal((B, n)), "a_test": rng.standard_normal((B, d))}
    out = ls.run(until=("w", 1e-13), max_steps=200, **inputs)
    N = int(out["steps"].max())
    ls.run(steps=N, **inputs)
    ls.run(until=("w", 1e-13), max_steps=200, **inputs)
    fixed, halting, paired = timed_pair(lambda: ls.run(steps=N, **inputs),
                                        lambda: ls.run(until=("w", 1e-13), max_steps=200, **inputs),
                                        max(args.repeats, 30))
    module, _ = timed(lambda: ls.run(until=("w", 1e-13), max_steps=200, executor="module",
                                     **inputs), 1)
    rows["least_squares_halting_B64"] = {
        "iterations": N, "fixed_count_s_median": fixed, "halting_s_median": halting,
        "halting_over_fixed": halting / fixed, "halting_over_fixed_paired_median": paired,
        "module_halting_s": module}
    print(f"least_squares B = 64, halting after {N} steps: fixed count {1e3 * fixed:.2f} ms, "
          f"halting {1e3 * halting:.2f} ms (x{halting / fixed:.2f}; median of paired ratios "
          f"x{paired:.2f}); halting on the looped module {1e3 * module:.0f} ms")
    doc = {"machine": platform.platform(), "python": platform.python_version(),
           "torch": torch.__version__, "load_average": os.getloadavg()[0], "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"load average {os.getloadavg()[0]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
