"""Which run-time counts of each shipped program's shared build the labels cover, against the
unrolled build at the same counts (inspection/run_layout.py; tests/test_labels_shared.py
holds a few of them as tests).

For every program in programs/ that folds: its base counts, one and three iterations more of
every run-time count, two more of each alone, one fewer of each alone. Per count: `refused`
(the InputError's first line), or the layout of the run compared with the unrolled build's —
`schedule` where the run is as long as the unrolled build (every program point, input and
constant written, read last, oriented and shaped alike: `equal` or `differs`), else the two
lengths. Prints a table and writes bench/results/labels_shared.json.

    python bench/bench_labels_shared.py [--only NAME ...] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def schedule(layout) -> list:
    return sorted((b.vars, b.name or "", b.transposed, b.cshape, b.written, b.last_read)
                  for b in layout.blocks if b.vars or b.kind in ("input", "const"))


def counts_to_try(base: dict) -> list[dict]:
    out = [base] + [{k: v + d for k, v in base.items()} for d in (1, 3)]
    out += [{**base, k: base[k] + 2} for k in base] + [{**base, k: base[k] - 1} for k in base]
    return [c for i, c in enumerate(out) if c not in out[:i]]


def sweep(path: Path) -> dict:
    import tcompile
    from tcompile.errors import InputError
    from tcompile.inspection.run_layout import run_layout
    prog = tcompile.compile_file(path, loops="shared")
    loops = prog.loops
    if loops is None or not loops.loops:
        return {"program": path.stem, "folds": False}
    base = dict(loops.base_counts)
    base_params = {s.param: base[s.key] for s in loops.loops if s.param is not None}
    rows = []
    for counts in counts_to_try(base_params):
        row = {"counts": counts}
        try:
            layout, _ = run_layout(prog, **counts)
        except InputError as e:
            rows.append({**row, "refused": str(e).splitlines()[0]})
            continue
        unrolled = tcompile.compile_file(path, params=counts)
        row["layers"], row["unrolled_layers"] = layout.n_layers, unrolled.n_layers
        if layout.n_layers == unrolled.n_layers:
            row["schedule"] = "equal" if schedule(layout) == schedule(unrolled.layout) else "differs"
        rows.append(row)
    return {"program": path.stem, "folds": True, "base": base_params, "runs": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "labels_shared.json"))
    args = ap.parse_args(argv)
    paths = sorted((ROOT / "programs").glob("*.tp"))
    if args.only:
        paths = [p for p in paths if p.stem in args.only]
    results = []
    for path in paths:
        res = sweep(path)
        results.append(res)
        for row in res.get("runs", [{"counts": "-", "refused": "no loop folds"}]):
            what = row.get("refused") or (f"schedule {row['schedule']}" if "schedule" in row else
                                          f"{row['layers']} layers, unrolled "
                                          f"{row['unrolled_layers']}")
            print(f"{res['program']:<22} {json.dumps(row['counts']):<34} {what}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
