"""Artifact size vs the nonzero weights it holds (issue 9 item 4: ≤ 4×), for every program in
programs/ at its defaults and for the large settings the issue measured; also what the dense
format-1 files took (8 bytes per weight entry), and save / load times. Prints a table and
writes bench/results/artifacts.json.

    python bench/bench_artifacts.py [--large] [--out bench/results/artifacts.json]

The artifact is NAME.safetensors (what tcompile reads); NAME.json beside it is a readable copy
of the manifest with the row map and the model card, reported separately.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEIGHTS = ("W_K", "W_Q", "W_V", "W_1", "W_2")
LARGE = [("newton_inverse", {"d": 64, "steps": 200}), ("newton_logistic", {"d": 30, "inv_steps": 16}),
         ("least_squares", {"d": 32})]


def measure(path: Path, params: dict) -> dict:
    import numpy as np
    import tcompile
    t = time.perf_counter()
    prog = tcompile.compile_file(path, params=params or None, max_memory=float("inf"))
    compile_s = time.perf_counter() - t
    arrays = [getattr(w, n) for w in prog.layers for n in WEIGHTS]
    nnz = sum(int(np.count_nonzero(a)) for a in arrays)
    dense = 8 * sum(a.size for a in arrays)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        st, copy = prog.save(Path(tmp) / "a")
        save_s = time.perf_counter() - t
        t = time.perf_counter()
        tcompile.load(st)
        load_s = time.perf_counter() - t
        st_bytes, copy_bytes = st.stat().st_size, copy.stat().st_size
    return {"program": path.stem, "params": params, "layers": prog.n_layers, "width": prog.width,
            "nonzeros": nnz, "nonzero_bytes": 8 * nnz, "artifact_bytes": st_bytes,
            "ratio": st_bytes / max(8 * nnz, 1), "json_copy_bytes": copy_bytes,
            "ratio_with_copy": (st_bytes + copy_bytes) / max(8 * nnz, 1),
            "dense_weight_bytes": dense, "compile_s": compile_s, "save_s": save_s, "load_s": load_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="also the issue's large settings")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "artifacts.json"))
    args = ap.parse_args()
    cases = [(p, {}) for p in sorted((ROOT / "programs").glob("*.tp"))]
    if args.large:
        cases += [(ROOT / "programs" / f"{name}.tp", params) for name, params in LARGE]
    print(f"{'program':<22} {'params':<24} {'nonzero B':>10} {'artifact B':>11} {'ratio':>6} "
          f"{'+json':>6} {'dense B':>12} {'save s':>7} {'load s':>7}")
    records = []
    import tcompile
    for path, params in cases:
        try:
            r = measure(path, params)
        except tcompile.TcompileError as e:        # report it, measure the others
            records.append({"program": path.stem, "params": params, "error": str(e)})
            print(f"{path.stem:<22} {json.dumps(params):<24} does not compile: {e}")
            continue
        records.append(r)
        print(f"{r['program']:<22} {json.dumps(params):<24} {r['nonzero_bytes']:>10} "
              f"{r['artifact_bytes']:>11} {r['ratio']:>6.2f} {r['ratio_with_copy']:>6.2f} "
              f"{r['dense_weight_bytes']:>12} {r['save_s']:>7.3f} {r['load_s']:>7.3f}")
    worst = max(r["ratio"] for r in records if "ratio" in r)
    print(f"worst artifact / nonzero bytes: {worst:.2f} (target <= 4)")
    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "worst_ratio": worst, "records": records}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
