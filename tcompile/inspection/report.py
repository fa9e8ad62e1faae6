"""The model card: what was built (layers, width, heads, MLP sizes, parameters, approximations)
and how it compares with the paper's construction for the same program."""
from __future__ import annotations

import numpy as np

from ..runtime.artifact import approximation_to_json
from ..runtime.layout import Layout
from ..runtime.manifest import Manifest, ProgramInfo


# The paper's depth for the same computation (Giannou et al. 2024): layers per loop iteration.
PAPER_DEPTH = {
    "newton_inverse": ("2 per step (Lemma 4.1; 1 if A is symmetric)", lambda p: 2),
    "least_squares": ("T + 3 in all (Theorem 4.2): 1 per step", lambda p: 1),
    "newton_logistic": ("2k + 11 per damped Newton step (Theorem 5.2), k = inv_steps",
                        lambda p: 2 * int(p.get("inv_steps", 1)) + 11),
}


def depth_per_iteration(layout: Layout) -> dict[str, float]:
    """Layers between successive stored iterates of each output variable (its loop's depth)."""
    out = {}
    for spec in layout.outputs:
        name = spec.name
        written = sorted({(b.written + 1) // 2 for b in layout.blocks
                          for v in b.vars if v.split("@")[0] == name and b.written > 0})
        gaps = np.diff(written)
        if len(gaps):
            out[name] = float(np.median(gaps))
    return out


def predicted_rtol(approximations) -> float:
    """How far (relative, max over outputs) the compiled model may be from the interpreter in
    float64: rounding alone when nothing is approximated, else 10x the largest approximation
    error. A heuristic, not a proof: errors are not propagated analytically through the
    program (measured gaps are 1e-7..1e-5 of the largest error's scale; tests check it)."""
    if not approximations:
        return 1e-10
    return max(1e-10, 10 * max(a.max_error for a in approximations))


def build_report(manifest: Manifest, layers) -> dict:
    """The model card as a plain dict (`prog.report`; the artifact embeds it)."""
    lay, info = manifest.layout, manifest.program
    per_layer = []
    total_params = nonzero = 0
    for i, (spec, w) in enumerate(zip(lay.layers, layers), start=1):
        arrays = list(w.arrays().values())
        params = sum(a.size for a in arrays)
        nz = sum(int(np.count_nonzero(a)) for a in arrays)
        total_params += params
        nonzero += nz
        per_layer.append({"layer": i, "heads": spec.heads, "dk": spec.dk,
                          "mlp_hidden": spec.mlp_hidden, "parameters": int(params), "nonzero": nz})
    return {
        "program": info.name,
        "params": dict(info.params),
        "layers": lay.n_layers,
        "width": lay.width,
        "min_tokens": lay.min_tokens,
        "heads_total": sum(p["heads"] for p in per_layer),
        "heads_per_layer": [p["heads"] for p in per_layer],
        "mlp_hidden_per_layer": [p["mlp_hidden"] for p in per_layer],
        "mlp_hidden_max": max((p["mlp_hidden"] for p in per_layer), default=0),
        "mlp_hidden_total": sum(p["mlp_hidden"] for p in per_layer),
        "parameters": int(total_params),
        "nonzero_parameters": int(nonzero),
        "per_layer": per_layer,
        "approximations": [approximation_to_json(a) for a in manifest.approximations],
        "depth_per_iteration": depth_per_iteration(lay),
        "predicted_rtol": predicted_rtol(manifest.approximations),
        "paper_depth": _paper(info),
    }


def _paper(info: ProgramInfo) -> dict | None:
    entry = PAPER_DEPTH.get(info.name)
    if entry is None:
        return None
    text, per_iteration = entry
    return {"formula": text, "per_iteration": per_iteration(info.params)}


def format_report(rep: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in rep["params"].items())
    lines = [f"program {rep['program']} ({params})",
             f"  layers {rep['layers']}   width D = {rep['width']}   heads {rep['heads_total']}   "
             f"MLP hidden max {rep['mlp_hidden_max']} (total {rep['mlp_hidden_total']})",
             f"  parameters {rep['parameters']:,} ({rep['nonzero_parameters']:,} nonzero)   "
             f"needs n >= {rep['min_tokens']} tokens",
             f"  predicted gap to the interpreter (relative, float64): <= {rep['predicted_rtol']:.1e}",
             "",
             "  layer  heads  dk  mlp_hidden  parameters  nonzero"]
    for p in rep["per_layer"]:
        lines.append(f"  {p['layer']:>5}  {p['heads']:>5}  {p['dk']:>2}  {p['mlp_hidden']:>10}  "
                     f"{p['parameters']:>10,}  {p['nonzero']:>7,}")
    if rep["depth_per_iteration"]:
        lines.append("")
        for name, depth in rep["depth_per_iteration"].items():
            line = f"  depth per loop iteration ({name}): {depth:g} layers"
            if rep.get("paper_depth"):
                line += (f"   paper: {rep['paper_depth']['per_iteration']} "
                         f"({rep['paper_depth']['formula']})")
            lines.append(line)
    if rep["approximations"]:
        lines += ["", "  approximated function (leaf names)" + " " * 24 + "domain            ReLUs x uses"
                  "    max error      tol"]
        for a in rep["approximations"]:
            uses = a.get("entries", 1)
            dom = "R (exact)" if a["lo"] is None else f"[{a['lo']:.4g}, {a['hi']:.4g}]"
            lines.append(f"  {a['name'][:56]:<56}  {dom}".ljust(78) +
                         f"{a.get('neurons_per_entry', a['neurons']):>6} x {uses:<4}"
                         f"   {a['max_error']:.2e}   {a['tol']:.0e}")
    return "\n".join(lines)
