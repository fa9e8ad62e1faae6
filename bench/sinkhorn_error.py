"""Where Sinkhorn's error comes from (programs/sinkhorn.tp, n = 32 sources, k = 8 targets):
the compiled shared build against a float64 numpy Sinkhorn of the same iterations, at several
iteration counts (one build, its loop count set at run time), beside

  * the interpreter against numpy (the language's own rounding),
  * a numpy model of the compiled iteration with the token reciprocal replaced by the build's
    own PL fit (approx.power_relative at the program's tol) and everything else exact: what the
    fit alone explains,
  * the same model without the program's normalisation (a = (2 - s) a), to show what it removes.

    python bench/sinkhorn_error.py [program.tp] [--out bench/results/sinkhorn_error.json]

Prints a table and writes JSON. Accuracy, not speed: numbers do not depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tcompile                                                   # noqa: E402
from tcompile.compiler.approx import power_relative               # noqa: E402
from tcompile.language.parser import parse_file                   # noqa: E402

COUNTS = (3, 5, 10, 20, 30, 40, 50)
SEEDS = range(3)


def problem(seed):
    rng = np.random.default_rng(seed)
    K = np.exp(-rng.uniform(0, 1, (32, 8)) / 0.5)
    b = rng.uniform(0.5, 1.5, 8)
    return K, b / b.sum()


def numpy_sinkhorn(K, b, iters, recip=None, normalise=False):
    n, k = K.shape
    v = np.ones(k)
    for _ in range(iters):
        x = K @ v
        u = (1 / x if recip is None else recip(x)) / n
        a = K.T @ u
        if normalise:
            a = (2 - a @ v) * a
        v = b / a
    return u, v


def rel(got, want):
    return float(max(np.max(np.abs(got[0] - want[0]) / want[0]),
                     np.max(np.abs(got[1] - want[1]) / want[1])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("program", nargs="?", default=str(ROOT / "programs" / "sinkhorn.tp"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    program = parse_file(args.program)
    prog = tcompile.compile_file(args.program, loops="shared")
    fit = next(a for a in prog.report["approximations"] if a["name"].startswith("reciprocal"))
    pl = power_relative("reciprocal", -1.0, fit["lo"], fit["hi"], fit["tol"])
    t, vals = np.asarray(pl.knots), np.asarray(pl.values)
    recip = lambda x: np.interp(x, t, vals)                        # noqa: E731
    normalised = "s = a @ v" in Path(args.program).read_text()
    rows = []
    for iters in COUNTS:
        row = {"iters": iters, "compiled": 0.0, "interpreter": 0.0, "fit_model": 0.0,
               "fit_model_unnormalised": 0.0}
        for seed in SEEDS:
            K, b = problem(seed)
            want = numpy_sinkhorn(K, b, iters)
            out = prog.run(K=K, b=b, iters=iters)
            ref = tcompile.interpret_program(program, {"iters": iters}, K=K, b=b)
            row["compiled"] = max(row["compiled"], rel((out["u"], out["v"]), want))
            row["interpreter"] = max(row["interpreter"], rel((ref["u"], ref["v"]), want))
            row["fit_model"] = max(row["fit_model"], rel(numpy_sinkhorn(
                K, b, iters, recip, normalised), want))
            row["fit_model_unnormalised"] = max(row["fit_model_unnormalised"], rel(
                numpy_sinkhorn(K, b, iters, recip), want))
        rows.append(row)
    result = {"program": str(Path(args.program).name), "normalised": normalised,
              "parameters_shared": prog.report["parameters"], "reciprocal_relus": fit["neurons"],
              "reciprocal_tol_rel": fit["tol"], "rows": rows}
    print(f"{result['program']}: shared build {result['parameters_shared']:,} parameters, "
          f"token reciprocal {fit['neurons']:,} ReLUs at tol rel {fit['tol']:g}")
    print("iters  compiled   interpreter  fit model  fit model, unnormalised   (max relative "
          "error of u, v vs numpy over 3 problems)")
    for r in rows:
        print(f"{r['iters']:5d}  {r['compiled']:.2e}   {r['interpreter']:.2e}     "
              f"{r['fit_model']:.2e}   {r['fit_model_unnormalised']:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
