"""newton_logistic's structured executor before and after a change, side by side in one process.

    python bench/bench_logistic_ab.py --before COMMIT [--cfg 5,1 10,64 ...] [--float32] [--out JSON]

The tree at COMMIT (`git archive COMMIT tcompile`, unpacked into a temporary directory as the
package `tcompile_b`: its imports are relative) and this tree each compile
programs/newton_logistic.tp and run the same sampled inputs by the structured executor, with
and without the domain guard, beside the direct reference (bench/direct_reference.py): the
five interleaved over 5 rounds, one torch thread, each side's least thread CPU time
(`time.thread_time`: descheduling by other processes is not counted), and aten calls per
forward. Prints a line per configuration and writes JSON (bench/results/...). Nothing here
runs in the test suite.
"""
import argparse
import atexit
import shutil
import subprocess
import tempfile

import sys, os, time, json
from pathlib import Path
ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT); sys.path.insert(0, ROOT + "/bench")
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--before", required=True, help="the commit to compare with (a git revision)")
ap.add_argument("--cfg", nargs="+", default=["5,1", "10,1", "5,64", "10,64", "5,1024", "10,1024"],
                help="d,B pairs")
ap.add_argument("--float32", action="store_true")
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--out", default=None)
args = ap.parse_args()
_tmp = tempfile.mkdtemp(prefix="tcompile_before_")
atexit.register(shutil.rmtree, _tmp, True)
_tar = subprocess.run(["git", "archive", args.before, "tcompile"], cwd=ROOT, capture_output=True, check=True).stdout
subprocess.run(["tar", "-x", "-C", _tmp], input=_tar, check=True)
os.rename(os.path.join(_tmp, "tcompile"), os.path.join(_tmp, "tcompile_b"))
sys.path.insert(0, _tmp)
import torch
torch.set_num_threads(1)
import bench_backend as bb
import tcompile, tcompile_b
from tcompile_b.runtime.executor import executor_for as ex_b
from tcompile.runtime.executor import executor_for as ex_a
from tcompile.inspection.sampling import sample_inputs
from tcompile.runtime.model import exact_float32
from direct_reference import make_direct

def sides(d, B, dt):
    n = {5: 26, 10: 64, 30: 569}[d]
    out = {}
    pa = tcompile.compile_file(f"{ROOT}/programs/newton_logistic.tp", params={"d": d})
    inputs = sample_inputs(pa.program, {"d": d}, n=n, batch=B, seed=0)
    for tag, pkg, exf in (("before", tcompile_b, ex_b), ("after", tcompile, ex_a)):
        prog = pkg.compile_file(f"{ROOT}/programs/newton_logistic.tp", params={"d": d})
        prep = prog.prepare_inputs(inputs)
        ex = exf(prog, "structured")
        st = ex.input_state(prep, dt, "cpu")
        out[tag] = lambda ex=ex, st=st, n=prep.n: ex.run_state(st, n, dt, "cpu")
        out[tag + "_g"] = lambda ex=ex, st=st, n=prep.n: ex.run_state_watched(st, n, dt, "cpu")
        params = {k: float(v) for k, v in prog.manifest["params"].items()}
    tin = {k: torch.as_tensor(v, dtype=dt) for k, v in inputs.items()}
    direct = make_direct("newton_logistic", tin, params)
    def f_direct():
        with torch.no_grad(), exact_float32():
            return direct()
    out["direct"] = f_direct
    return out

def tmin(fn, k):
    best = 1e9
    for _ in range(k):
        t0 = time.thread_time(); fn(); best = min(best, time.thread_time() - t0)
    return best

cfgs = [tuple(int(x) for x in a.split(",")) for a in args.cfg]
dt = torch.float32 if args.float32 else torch.float64
rounds = args.rounds
print("load", os.getloadavg(), flush=True)
recs = []
for d, B in cfgs:
    fns = sides(d, B, dt)
    for f in fns.values(): f(); f()
    a, b = fns["after"](), fns["before"]()
    diff = max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)
    calls = {k: bb.aten_calls(f) for k, f in fns.items()}
    res = {}
    k = 20 if B == 1 else 8 if B == 64 else 2
    for r in range(rounds):
        for name, f in (fns.items() if r % 2 == 0 else list(fns.items())[::-1]):
            res[name] = min(res.get(name, 1e9), tmin(f, k))
    dr = res["direct"]
    rec = {"d": d, "n": {5: 26, 10: 64}[d], "batch": B, "dtype": str(dt).split(".")[-1],
           "cpu_min_s": res, "ratio_of_direct": {k: v / dr for k, v in res.items()},
           "aten_calls": calls, "guard_overhead": {t: res[t + "_g"] / res[t] - 1 for t in ("before", "after")},
           "rel_diff_after_vs_before": diff, "loadavg": os.getloadavg()}
    recs.append(rec)
    print(f"d={d} B={B} {rec['dtype']}: " + "  ".join(f"{n} {v*1e3:.3f}ms {v/dr:.2f}x ({calls[n]})" for n, v in res.items()),
          f" guard before {rec['guard_overhead']['before']:+.3f} after {rec['guard_overhead']['after']:+.3f}  diff {diff:.1e} load {os.getloadavg()[0]:.1f}", flush=True)
if args.out:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    json.dump({"records": recs, "before": args.before, "after": head, "torch": torch.__version__, "threads": 1,
               "method": "one process, before/after (with and without the guard)/direct interleaved, "
                         "rounds x repeats, least thread CPU time"},
              open(args.out, "w"), indent=1)
