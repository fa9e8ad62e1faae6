"""newton_logistic's table ops one by one: the torch passes (MlpOp._passes) against the fused C
kernel (fused_lookup.lookup), the same inputs, checked bit for bit.

    python bench/bench_table_ops.py [--out JSON]

For d = 5 and 10 (n = 26 and 64), one op of each kind (the sigmoid: one table, two outputs,
the grid with 2 kinks per cell; a product piece: two clamped squares; λ's seed: searchsorted)
at B = 1, 64, 1024, float64 and float32, one torch thread, inputs read through strided and
broadcast views as the executor's reads are. Least thread CPU time over 5 repeats. Nothing
here runs in the test suite.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tcompile                                           # noqa: E402
from tcompile.runtime import fused_lookup                 # noqa: E402
from tcompile.runtime.exec_ops import MlpOp               # noqa: E402
from tcompile.runtime.executor import StructuredExecutor  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(1)


def tmin(f, k):
    best = 1e9
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(k):
            f()
        best = min(best, (time.thread_time() - t0) / k)
    return best


recs = []
print("load", os.getloadavg(), flush=True)
for d in (5, 10):
    n = {5: 26, 10: 64}[d]
    prog = tcompile.compile_file(ROOT / "programs" / "newton_logistic.tp", params={"d": d})
    for dtype in (torch.float64, torch.float32):
        ex = StructuredExecutor(prog.layers, prog.layout)
        ops = [op for sub in ex.resolved(n, dtype).sublayers for op in sub.ops
               if isinstance(op, MlpOp) and op.kind == "table"]
        kinds = {}
        for op in ops:
            kinds.setdefault((len(op.tables), op.outs, op.e), op)
        for op in kinds.values():
            assert op._fused is not None, fused_lookup.why_not()
            for B in (1, 64, 1024):
                shape = (B, op.inst, op.e)
                rng = np.random.default_rng(0)
                xs = []
                for rd in op.coords:
                    rows = 1 if len(rd.read.rows) == 1 else op.inst
                    v = rng.uniform(-1.5, 1.5, (B, rows + 2, op.e)) * (8 if op.outs == 2 else 1)
                    xs.append(torch.as_tensor(v, dtype=dtype)[:, 1:1 + rows, :])
                a = torch.empty((B, op.inst * op.outs, op.e), dtype=dtype)
                b = torch.empty_like(a)
                op._passes(xs, shape, a)
                fused_lookup.lookup(op._fused, xs, shape, b)
                same = torch.equal(a, b)
                k = 30 if B < 1024 else 5
                t_torch = tmin(lambda: op._passes(xs, shape, a), k)
                t_fused = tmin(lambda: fused_lookup.lookup(op._fused, xs, shape, b), k)
                rec = {"d": d, "n": n, "dtype": str(dtype).split(".")[-1], "batch": B,
                       "tables": len(op.tables), "outputs": op.outs, "instances": op.inst,
                       "tokens": op.e, "entries": B * op.inst * op.e,
                       "path": op._lookup.path(B * op.inst * op.e),
                       "torch_s": t_torch, "fused_s": t_fused, "bit_identical": same,
                       "loadavg": os.getloadavg()}
                recs.append(rec)
                print(f"d={d} {rec['dtype']} tables={rec['tables']} outputs={op.outs} "
                      f"entries={rec['entries']} path={rec['path']}: torch {t_torch * 1e6:.1f} us "
                      f"fused {t_fused * 1e6:.1f} us ({t_torch / t_fused:.2f}x) identical={same}",
                      flush=True)
if args.out:
    json.dump({"records": recs, "torch": torch.__version__, "threads": 1,
               "kernel": str(fused_lookup.library()),
               "method": "least thread CPU time of 5 repeats, each op alone"},
              open(args.out, "w"), indent=1)
