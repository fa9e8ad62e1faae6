"""Build time of the shipped programs: `tcompile build` end to end (a fresh process: imports,
parse, check, lowering, approximation fits, planning, emission, writing the artifact) and the
in-process compile alone; then compile time of newton_inverse against the step count and d,
which should grow linearly with the unrolled program (steps × d²-sized blocks), not with its
square. Prints tables and writes bench/results/build.json.

    python bench/bench_build.py [--repeats 3] [--out bench/results/build.json]

`--times` instead builds every program in programs/ at its defaults, unrolled and shared
(`--loops shared`), each in a fresh process (`tcompile build`, end to end, and the in-process
compile timed inside that process), prints a table and writes bench/results/build_times.json:

    python bench/bench_build.py --times [--repeats 1] [--only sinkhorn gd_logistic] [--unrolled-only]
                                [--root OTHER_CHECKOUT] [--out FILE]
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


# what `tcompile build` does (compile, write the artifact, the model card), timed part by part
_TIMED_CHILD = """
import sys, tempfile, time
t = time.perf_counter()
from tcompile.compiler.pipeline import compile_file
t_import = time.perf_counter() - t
t = time.perf_counter()
prog = compile_file(sys.argv[1], loops=sys.argv[2])
t_compile = time.perf_counter() - t
t = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    prog.save_to_dir(out)
    from tcompile.inspection.report import report_text   # `tcompile build` prints the card
    report_text(prog)
print(t_import, t_compile, time.perf_counter() - t, prog.n_layers)
"""


def _timed_build(root: Path, path: Path, loops: str) -> dict:
    """One build of `path` in a fresh process with `root`'s tcompile: the in-process compile
    time, the save (artifact + model card), and the whole process's wall time (start,
    imports, compile, save: `tcompile build` end to end)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _TIMED_CHILD, str(path), loops], env=env,
                          capture_output=True, text=True, cwd=str(root))
    wall = time.perf_counter() - t
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    t_import, compile_s, save_s, layers = done.stdout.split()
    return {"compile_s": float(compile_s), "save_s": float(save_s), "process_s": wall,
            "import_s": float(t_import), "layers": int(layers)}


def build_times(args) -> None:
    """Every program of programs/ at its defaults, unrolled and shared: the median over
    `--repeats` fresh-process builds; the table and bench/results/build_times.json."""
    root = Path(args.root).resolve() if args.root else ROOT
    names = args.only or sorted(p.stem for p in (root / "programs").glob("*.tp"))
    modes = ["unrolled"] if args.unrolled_only else ["unrolled", "shared"]
    load_before = os.getloadavg()
    print(f"tcompile from {root}; compile: in-process compile_file; build: the whole "
          "process (start, imports, compile, artifact, card) = `tcompile build`")
    print(f"{'program':<24}" + "".join(f" {m + ' compile':>17} {'build (s)':>10}" for m in modes)
          + f" {'layers':>7}")
    rows = []
    for name in names:
        rec = {"program": name}
        line = f"{name:<24}"
        for mode in modes:
            runs = [_timed_build(root, root / "programs" / f"{name}.tp", mode)
                    for _ in range(args.repeats)]
            ok = [r for r in runs if "error" not in r]
            if not ok:
                rec[mode] = {"error": runs[0]["error"]}
                line += f" {'error':>17} {'':>10}"
                continue
            rec[mode] = {"compile_s": statistics.median(r["compile_s"] for r in ok),
                         "save_s": statistics.median(r["save_s"] for r in ok),
                         "process_s": statistics.median(r["process_s"] for r in ok),
                         "compile_s_all": [r["compile_s"] for r in ok], "layers": ok[0]["layers"]}
            line += f" {rec[mode]['compile_s']:>17.2f} {rec[mode]['process_s']:>10.2f}"
        rec["layers"] = rec.get("unrolled", {}).get("layers")
        rows.append(rec)
        print(line + f" {rec['layers'] if rec['layers'] is not None else '-':>7}", flush=True)
    out = Path(args.out or ROOT / "bench" / "results" / "build_times.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"python": platform.python_version(),
                                           "cpus": os.cpu_count(), "platform": platform.platform(),
                                           "loadavg_before": load_before,
                                           "loadavg_after": os.getloadavg()},
                               "root": str(root), "repeats": args.repeats, "records": rows}, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--times", action="store_true",
                    help="build every program in programs/ unrolled and shared; "
                         "write bench/results/build_times.json")
    ap.add_argument("--only", nargs="+", default=None, help="with --times: these programs only")
    ap.add_argument("--unrolled-only", action="store_true", help="with --times: skip shared builds")
    ap.add_argument("--root", default=None,
                    help="with --times: the checkout whose tcompile and programs/ to time "
                         "(default: this one), to compare two versions on the same machine")
    args = ap.parse_args()
    if args.times:
        args.repeats = args.repeats or 1
        build_times(args)
        return
    args.repeats = args.repeats or 3
    args.out = args.out or str(ROOT / "bench" / "results" / "build.json")
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
