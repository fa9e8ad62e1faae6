"""Random inputs that satisfy a program's declared assumptions (for `tcompile check`, tests
and benchmarks). Each qualifier is honoured exactly; everything else is standard normal."""
from __future__ import annotations

import numpy as np

from ..language.checker import TOKEN, Walker, resolve_params


def sample_inputs(program, params: dict | None = None, n: int = 16, batch: int | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    values = resolve_params(program, params)
    walker = Walker(program, values)
    rng = np.random.default_rng(seed)
    out = {}
    for decl in program.inputs:
        ty = walker.input_type(decl)
        shape = tuple(n if d == TOKEN else d for d in ty.shape)
        draws = [_one(rng, decl, shape, walker) for _ in range(batch or 1)]
        out[decl.name] = np.stack(draws) if batch else draws[0]
    return out


def _one(rng, decl, shape, walker) -> np.ndarray:
    quals = {q.kind: q for q in decl.qualifiers}
    x = rng.standard_normal(shape)
    if "sign" in quals:
        return np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    if "flag" in quals:
        return (rng.random(shape) < 0.5).astype(float)
    if "range" in quals:
        lo = walker.const_of(quals["range"].interval.lo, "")
        hi = walker.const_of(quals["range"].interval.hi, "")
        x = rng.uniform(lo, hi, shape)
        return (x + x.T) / 2 if "symmetric" in quals else x     # still within [lo, hi]
    if "spectrum" in quals:
        lo = walker.const_of(quals["spectrum"].interval.lo, "")
        hi = walker.const_of(quals["spectrum"].interval.hi, "")
        q, _ = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))
        return (q * rng.uniform(lo, hi, shape[0])) @ q.T
    if "row_norm" in quals:
        b = walker.const_of(quals["row_norm"].bound, "")
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / norms * b * rng.uniform(0.3, 1.0, norms.shape)
    if "norm" in quals:
        b = walker.const_of(quals["norm"].bound, "")
        if len(shape) == 2:
            u, _, vt = np.linalg.svd(x, full_matrices=False)
            s = b * np.geomspace(1.0, 0.1, min(shape))
            x = (u * s) @ vt
        else:
            x = x / max(np.linalg.norm(x), 1e-300) * b * rng.uniform(0.3, 1.0)
    if "symmetric" in quals:
        x = (x + x.T) / 2
    return x
