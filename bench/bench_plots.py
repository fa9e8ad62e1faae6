"""How long the pictures take: `tcompile plot --what weights` (the overview), `--layer L` and
`--what layout`, end to end in a fresh process (imports included), for the shipped programs at
their defaults. Numbers, not assertions (bench/README.md).

    python bench/bench_plots.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ["newton_inverse", "least_squares", "newton_logistic"]


def timed(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tcompile", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROGRAMS:
            subprocess.run([sys.executable, "-m", "tcompile", "build", f"programs/{name}.tp", "-o", tmp],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            art = str(Path(tmp) / name)
            out = str(Path(tmp) / "plots")
            cases = {"weights overview": ["plot", art, "--what", "weights", "-o", out],
                     "weights --layer 1": ["plot", art, "--what", "weights", "--layer", "1", "-o", out],
                     "layout": ["plot", art, "--what", "layout", "-o", out]}
            for what, argv in cases.items():
                best = min(timed(argv) for _ in range(args.repeats))
                rows.append({"program": name, "picture": what, "seconds": round(best, 2)})
                print(f"{name:<16} {what:<18} {best:6.2f} s")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "plots.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
