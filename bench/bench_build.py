"""Build time of the shipped programs: `tcompile build` end to end (a fresh process: imports,
parse, check, lowering, approximation fits, planning, emission, writing the artifact) and the
in-process compile alone; then compile time of newton_inverse against the step count and d,
which should grow linearly with the unrolled program (steps × d²-sized blocks), not with its
square. Prints tables and writes bench/results/build.json.

    python bench/bench_build.py [--repeats 3] [--out bench/results/build.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ["newton_inverse", "least_squares", "newton_logistic"]
SWEEP = [(steps, 8) for steps in (10, 50, 200, 1000, 2000)] + [(200, d) for d in (16, 32, 64)]


def scaling(repeats: int) -> list[dict]:
    """newton_inverse compile time (median of repeats) for each (steps, d) of SWEEP."""
    import tcompile
    path = ROOT / "programs" / "newton_inverse.tp"
    print(f"\n{'steps':>6} {'d':>4} {'compile (s)':>12} {'s per step (ms)':>16} {'layers':>7}")
    out = []
    for steps, d in SWEEP:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            prog = tcompile.compile_file(path, params={"steps": steps, "d": d})
            times.append(time.perf_counter() - t)
        rec = {"steps": steps, "d": d, "compile_s": statistics.median(times),
               "layers": prog.n_layers}
        out.append(rec)
        print(f"{steps:>6} {d:>4} {rec['compile_s']:>12.3f} {1e3 * rec['compile_s'] / steps:>16.2f} "
              f"{rec['layers']:>7}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "build.json"))
    args = ap.parse_args()
    import tcompile
    records = []
    print(f"{'program':<18} {'cli build (s)':>14} {'compile (s)':>12} {'layers':>7} {'width':>6} "
          f"{'mlp max':>8}")
    for name in PROGRAMS:
        path = ROOT / "programs" / f"{name}.tp"
        cli = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "tcompile", "build", str(path), "-o", out],
                               check=True, capture_output=True)
                cli.append(time.perf_counter() - t)
        inproc = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            prog = tcompile.compile_file(path)
            inproc.append(time.perf_counter() - t)
        rep = prog.report
        rec = {"program": name, "params": rep["params"], "cli_build_s": statistics.median(cli),
               "compile_s": statistics.median(inproc), "layers": rep["layers"], "width": rep["width"],
               "mlp_hidden_max": rep["mlp_hidden_max"], "heads_total": rep["heads_total"],
               "parameters": rep["parameters"]}
        records.append(rec)
        print(f"{name:<18} {rec['cli_build_s']:>14.2f} {rec['compile_s']:>12.2f} {rec['layers']:>7} "
              f"{rec['width']:>6} {rec['mlp_hidden_max']:>8}")
    sweep = scaling(args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"python": platform.python_version(),
                                           "cpus": os.cpu_count(), "platform": platform.platform(),
                                           "loadavg": os.getloadavg()},
                               "records": records, "newton_inverse_scaling": sweep}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
