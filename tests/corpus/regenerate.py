"""Write the fixed build corpus and its checksums (tests/test_build_identity.py reads them).

Run only when a change is MEANT to alter compiled artifacts, and say so in the commit:

    python tests/corpus/regenerate.py            # checksums of the existing programs
    python tests/corpus/regenerate.py --programs # also redraw the random programs (seeded)
    python tests/corpus/regenerate.py --print    # print this machine's digests, write nothing

The programs come from the random-program generators of tests/test_compile_random.py, driven
by a seeded `random.Random` instead of hypothesis, and are kept as .tp files so the corpus does
not move when the generator does. Only programs that compile are kept. `fn_*.tp` are written
by hand (functions the generators do not call: tanh, sin, cos) and never redrawn.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

N_LINEAR, N_ELEMENTWISE = 32, 10

# The three seed programs at their defaults and at one other setting, and the other programs
# of programs/ at their defaults (their fits exercise exp, log, log1p, powers and division).
SHIPPED = [
    ("newton_inverse.tp", {}), ("newton_inverse.tp", {"steps": 7, "d": 3, "norm_bound": 2}),
    ("least_squares.tp", {}), ("least_squares.tp", {"steps": 5, "d": 6}),
    ("newton_logistic.tp", {}), ("newton_logistic.tp", {"steps": 3, "inv_steps": 4, "d": 3}),
] + [(name, {}) for name in (
    "conjugate_gradient.tp", "cubic_newton_schulz.tp", "gd_least_squares.tp", "gd_logistic.tp",
    "ista_lasso.tp", "jacobi.tp", "newton_logistic_warm.tp", "newton_schulz_sign.tp",
    "newton_schulz_sqrt.tp", "power_iteration.tp", "ridge_newton_schulz.tp",
    "softmax_regression.tp", "fista_elastic_net.tp", "huber_irls.tp", "adam_least_squares.tp",
    "poisson_newton.tp")]
# shared builds (`"loops": "shared"`, not a param: the build's loop mode): their choices (the
# fold, kernels, reading ahead, row pinning) compare layers bit for bit, so another CPU's or
# BLAS kernel's last bit would show here too
SHIPPED += [("power_iteration.tp", {"loops": "shared"}),
            ("least_squares.tp", {"loops": "shared"}),
            ("jacobi.tp", {"loops": "shared"})]


def artifact_digests(path: Path, params: dict | None, build=None) -> dict[str, str]:
    """sha256 of what the artifact of `path` built with `params` holds, byte for byte: its
    tensors (names, dtypes, shapes, bytes), the manifest embedded in it, and the readable JSON
    copy beside it without its model card (the card's wording belongs to the report, not to
    the build) and without its digest of the whole file. Only the compiler version string is
    blanked (it may move without the build moving)."""
    import numpy as np
    from safetensors import safe_open
    import tcompile
    params = dict(params or {})
    loops = params.pop("loops", "unrolled")
    prog = (build or tcompile.compile_file)(path, params=params or None, loops=loops)
    with tempfile.TemporaryDirectory() as tmp:
        artifact, copy = prog.save(Path(tmp) / "a")
        with safe_open(artifact, "np") as f:
            manifest = f.metadata()["manifest"].encode()
            tensors = hashlib.sha256()
            for name in sorted(f.keys()):
                a = np.ascontiguousarray(f.get_tensor(name))
                tensors.update(f"{name} {a.dtype.str} {list(a.shape)}\n".encode() + a.tobytes())
        doc = json.loads(copy.read_text())
        del doc["report"], doc["artifact_sha256"]
        copy_text = json.dumps(doc, indent=1).encode()
        return {"tensors": tensors.hexdigest(), "manifest": hashlib.sha256(_blank(manifest)).hexdigest(),
                "json_copy": hashlib.sha256(_blank(copy_text)).hexdigest()}


def _blank(text: bytes) -> bytes:
    return re.sub(rb'"compiler_version": "[^"]*"', b'"compiler_version": ""', text, count=1)


def draw_programs() -> None:
    import tcompile
    from test_compile_random import generate
    for old in [*HERE.glob("linear_*.tp"), *HERE.glob("ew_*.tp")]:   # fn_*.tp: by hand, kept
        old.unlink()
    for kind, count, elementwise in (("linear", N_LINEAR, False), ("ew", N_ELEMENTWISE, True)):
        rng, kept = random.Random(f"corpus-{kind}"), 0
        while kept < count:
            src, _ = generate(rng.randint, elementwise=elementwise)
            try:
                tcompile.compile_source(src, file="r.tp")
            except tcompile.TcompileError:
                continue
            (HERE / f"{kind}_{kept:02d}.tp").write_text(src)
            kept += 1


def corpus_entries() -> list[tuple[Path, dict]]:
    programs = ROOT / "programs"
    return ([(programs / f, p) for f, p in SHIPPED] +
            [(p, {}) for p in sorted(HERE.glob("*.tp"))])


def entry_id(path: Path, params: dict) -> str:
    return path.name + ("" if not params else " " + json.dumps(params, sort_keys=True))


def all_digests() -> dict[str, dict[str, str]]:
    return {entry_id(path, params): artifact_digests(path, params)
            for path, params in corpus_entries()}


def main() -> None:
    if "--print" in sys.argv:        # the digests of this process's build, as JSON, nothing written
        print(json.dumps(all_digests(), sort_keys=True))
        return
    if "--programs" in sys.argv:
        draw_programs()
    sums = all_digests()
    (HERE / "checksums.json").write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")
    print(f"{len(sums)} artifacts hashed")


if __name__ == "__main__":
    main()
