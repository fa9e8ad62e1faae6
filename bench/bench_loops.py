"""Shared builds (`loops="shared"`) beside unrolled ones, for the shipped loop programs: build
time, stored layers, layers run, parameters and artifact bytes as the step count grows, and the
forward time of the two modules (the same layers run; the shared one stores each body once).
Prints a table and writes bench/results/loops.json.

    python bench/bench_loops.py [--repeats R] [--out bench/results/loops.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CASES = [("newton_inverse", "steps", (10, 100, 1000)), ("least_squares", "steps", (10, 100, 1000)),
         ("newton_logistic", "steps", (8, 32))]


def inputs_for(name: str, rng):
    import numpy as np
    if name == "newton_inverse":
        A = rng.standard_normal((4, 4))
        return {"A": A / (1.01 * np.linalg.norm(A, 2))}
    A = rng.standard_normal((26, 4 if name == "least_squares" else 5))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    if name == "least_squares":
        return {"A": A, "y": rng.standard_normal(26), "a_test": rng.standard_normal(4)}
    return {"A": A, "y": np.sign(rng.standard_normal(26)), "x0": np.zeros(5)}


def one(name: str, param: str, steps: int, loops: str, repeats: int) -> dict:
    import numpy as np
    import tcompile
    t = time.perf_counter()
    prog = tcompile.compile_file(ROOT / "programs" / f"{name}.tp", {param: steps}, loops=loops)
    build_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        st = next(p for p in prog.save(Path(tmp) / "a") if p.suffix == ".safetensors")
        size = st.stat().st_size
    x = prog.encode(**inputs_for(name, np.random.default_rng(0)))
    module = prog.module
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - t)
    run = prog.loops.n_layers(prog.loops.counts()) if prog.loops else prog.n_layers
    return {"program": name, "steps": steps, "loops": loops, "build_s": build_s,
            "stored_layers": len(prog.layers), "layers_run": run,
            "parameters": int(sum(p.numel() for p in module.parameters())),
            "artifact_bytes": size, "forward_s_median": statistics.median(times),
            "forward_s_spread": [min(times), max(times)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loops.json"))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    rows = []
    print(f"load average {os.getloadavg()[0]:.2f}; float64, CPU, 1 thread, B = 1; forward = the module")
    print(f"{'program':<16}{'steps':>6} {'build':<9}{'build s':>8}{'stored':>7}{'run':>6}"
          f"{'params':>11}{'bytes':>10}{'fwd ms':>9}")
    for name, param, counts in CASES:
        for steps in counts:
            for loops in ("unrolled", "shared"):
                r = one(name, param, steps, loops, args.repeats)
                rows.append(r)
                print(f"{name:<16}{steps:>6} {loops:<9}{r['build_s']:>8.2f}{r['stored_layers']:>7}"
                      f"{r['layers_run']:>6}{r['parameters']:>11,}{r['artifact_bytes']:>10,}"
                      f"{1e3 * r['forward_s_median']:>9.2f}")
    doc = {"machine": platform.platform(), "python": platform.python_version(),
           "torch": torch.__version__, "load_average": os.getloadavg()[0], "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
