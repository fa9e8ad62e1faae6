"""How well shared builds fold their loops: every program in programs/ and the 24 random loop
programs of tests/test_shared_loops.py, built unrolled and shared (`loops="shared"`).

For each build: which loops were kept as loops and which stayed unrolled (with the reason the
build gives), the layers per iteration of each kept loop beside the unrolled build's (both as
the layers two more iterations add, halved: the build run at count + 2 minus count, per
instance of the loop — a kernel of 2 iterations adds its layers every other count), stored layers, layers run, parameters, build times, and the largest output difference
between the two builds on sampled inputs, relative to max(1, |unrolled output|) (None,
"off-domain", where those inputs leave a fitted domain: the two builds then clamp differently).
Prints a table and writes bench/results/loop_fold.json.

    python bench/bench_loop_fold.py [--only NAME|randomN|random ...] [--no-random] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _params(prog) -> int:
    return int(sum(p.numel() for p in prog.module.parameters()))


def _layers_run(prog, given: dict | None = None) -> int:
    return prog.loops.n_layers(prog.loops.counts(given)) if prog.loops else prog.n_layers


def _max_diff(shared, unrolled, inputs) -> float | None:
    """None where the sampled inputs leave a fitted domain (the unrolled build's guard says
    so): both builds then clamp, each on its own fitted ranges, and their difference measures
    nothing (sinkhorn: random b without unit mass drives K @ v past its declared [1, 8])."""
    import numpy as np

    from tcompile.errors import DomainError
    try:
        b = unrolled.run(executor="module", **inputs)
    except DomainError:
        return None
    a = shared.run(domains="off", **inputs)
    worst = 0.0
    for name in b:
        scale = max(float(np.abs(b[name]).max()), 1.0)
        worst = max(worst, float(np.abs(np.asarray(a[name]) - np.asarray(b[name])).max()) / scale)
    return worst


def _diff_text(diff: float | None) -> str:
    return f"{diff:>10.1e}" if diff is not None else f"{'off-domain':>10}"


def measure(label: str, build, inputs_for, params: dict) -> dict:
    """build(params, loops) → CompiledProgram; inputs_for(prog) → inputs."""
    t = time.perf_counter()
    unrolled = build(params, "unrolled")
    t_unrolled = time.perf_counter() - t
    t = time.perf_counter()
    shared = build(params, "shared")
    t_shared = time.perf_counter() - t
    lp = shared.loops
    loops = []
    instances = _instances(lp) if lp else {}
    for spec in (lp.loops if lp else ()):
        row = {"line": spec.line, "key": spec.key, "count": spec.count, "param": spec.param,
               "depth": spec.depth, "min_count": spec.min_count,
               "layers_per_iteration_spec": spec.layers_per_iteration / spec.every,
               "every": spec.every}
        if spec.param is not None:
            c = shared.info.params[spec.param]
            more = {**params, spec.param: c + 2}
            n_inst = instances.get(spec.key, 1)
            u2 = build(more, "unrolled").n_layers
            row["unrolled_per_iteration"] = (u2 - unrolled.n_layers) / n_inst / 2
            row["shared_per_iteration"] = (_layers_run(shared, {spec.param: c + 2})
                                           - _layers_run(shared)) / n_inst / 2
        loops.append(row)
    kept_unrolled = [{"line": line, "count": count, "why": why}
                     for line, count, why in (lp.unrolled if lp else ())]
    diff = _max_diff(shared, unrolled, inputs_for(shared))
    return {"program": label, "params": params,
            "build_s_unrolled": t_unrolled, "build_s_shared": t_shared,
            "loops_kept": loops, "stayed_unrolled": kept_unrolled,
            "stored_layers_unrolled": len(unrolled.layers), "stored_layers_shared": len(shared.layers),
            "layers_run_unrolled": unrolled.n_layers, "layers_run_shared": _layers_run(shared),
            "params_unrolled": _params(unrolled), "params_shared": _params(shared),
            "max_output_diff": diff}


def _instances(lp) -> dict[str, int]:
    """How many times one more count of each loop adds a body (an inner loop: once per outer
    iteration, at the built counts)."""
    from tcompile.runtime.loops import LoopItem
    built = dict(lp.counts())
    out: dict[str, int] = {}

    def walk(seq, mult):
        for item in seq:
            if isinstance(item, LoopItem):
                runs = item.runs(built[item.loop])[0]
                out[item.loop] = out.get(item.loop, 0) + mult
                walk(item.body, mult * runs)
    walk(lp.sequence, 1)
    return out


def shipped(only):
    import tcompile
    from tcompile.inspection.sampling import sample_inputs
    from tcompile.language.parser import parse_file
    for path in sorted((ROOT / "programs").glob("*.tp")):
        program = parse_file(path)

        def build(params, loops, path=path):
            return tcompile.compile_file(path, params, loops=loops)

        def inputs_for(prog, program=program):
            return sample_inputs(program, prog.info.params, n=8, batch=2, seed=0)
        yield path.stem, build, inputs_for


def random_programs():
    import tcompile
    from test_shared_loops import SEEDS, _inputs, random_loop_program
    for seed in SEEDS:
        src = random_loop_program(seed)

        def build(params, loops, src=src):
            return tcompile.compile_source(src, params=params, loops=loops)

        def inputs_for(prog, seed=seed):
            return _inputs(seed, prog.info.params["d"])
        yield f"random{seed}", build, inputs_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="programs to run: stems of programs/, randomN, or random for all 24")
    ap.add_argument("--no-random", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop_fold.json"))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    rows = []
    print(f"load average {os.getloadavg()[0]:.2f}; defaults; per iteration = layers one more "
          "count adds (unrolled / shared)")
    print(f"{'program':<22}{'kept':>5}{'unr':>4} {'per iteration u/s':<26}{'stored u/s':>13}"
          f"{'run u/s':>12}{'params u/s':>24}{'build s u/s':>14}{'max diff':>10}")
    cases = list(shipped(args.only)) + ([] if args.no_random else list(random_programs()))
    if args.only:
        cases = [c for c in cases if c[0] in args.only or "random" in args.only and c[0].startswith("random")]
    for label, build, inputs_for in cases:
        try:
            r = measure(label, build, inputs_for, {})
        except Exception as e:         # a number, not a verdict: say what failed and go on
            print(f"{label:<22} failed: {type(e).__name__}: {e}")
            rows.append({"program": label, "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append(r)
        per = " ".join(f"{x.get('unrolled_per_iteration', '-'):g}/{x.get('shared_per_iteration', '-'):g}"
                       if "unrolled_per_iteration" in x else f"-/{x['layers_per_iteration_spec']}"
                       for x in r["loops_kept"])
        print(f"{label:<22}{len(r['loops_kept']):>5}{len(r['stayed_unrolled']):>4} {per:<26}"
              f"{r['stored_layers_unrolled']:>6}/{r['stored_layers_shared']:<6}"
              f"{r['layers_run_unrolled']:>5}/{r['layers_run_shared']:<6}"
              f"{r['params_unrolled']:>11,}/{r['params_shared']:<12,}"
              f"{r['build_s_unrolled']:>6.2f}/{r['build_s_shared']:<7.2f}{_diff_text(r['max_output_diff'])}")
        for u in r["stayed_unrolled"]:
            print(f"{'':<22}  stays unrolled: line {u['line']} ({u['count']}x): {u['why']}")
    folded = sum(len(r.get("loops_kept", ())) for r in rows)
    stayed = sum(len(r.get("stayed_unrolled", ())) for r in rows)
    worse = [f"{r['program']}:{x['line']}" for r in rows for x in r.get("loops_kept", ())
             if x.get("shared_per_iteration", 0) > x.get("unrolled_per_iteration", 1e9)]
    longer = [f"{r['program']} {r['layers_run_unrolled']}/{r['layers_run_shared']}" for r in rows
              if r.get("layers_run_shared", 0) > r.get("layers_run_unrolled", 1e9)]
    print(f"loops kept {folded}, stayed unrolled {stayed}; deeper per iteration than unrolled: "
          f"{', '.join(worse) or 'none'}; more layers run than unrolled: {', '.join(longer) or 'none'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "load_average": os.getloadavg()[0], "loops_kept": folded,
                               "stayed_unrolled": stayed, "deeper_than_unrolled": worse,
                               "more_layers_run_than_unrolled": longer,
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
