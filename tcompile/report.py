"""The model card: what was built (layers, width, heads, MLP sizes, parameters, approximations)
and how it compares with the paper's construction for the same program."""
from __future__ import annotations

import numpy as np


def build_report(manifest: dict, layers) -> dict:
    per_layer = []
    total_params = nonzero = 0
    for i, (spec, w) in enumerate(zip(manifest["layers"], layers), start=1):
        params = sum(a.size for a in (w.W_K, w.W_Q, w.W_V, w.W_1, w.W_2))
        nz = sum(int(np.count_nonzero(a)) for a in (w.W_K, w.W_Q, w.W_V, w.W_1, w.W_2))
        total_params += params
        nonzero += nz
        per_layer.append({"layer": i, "heads": spec["heads"], "dk": spec["dk"],
                          "mlp_hidden": spec["mlp_hidden"], "parameters": int(params), "nonzero": nz})
    return {
        "program": manifest["program"],
        "params": manifest["params"],
        "layers": manifest["n_layers"],
        "width": manifest["width"],
        "min_tokens": manifest["min_tokens"],
        "heads_total": sum(p["heads"] for p in per_layer),
        "heads_per_layer": [p["heads"] for p in per_layer],
        "mlp_hidden_per_layer": [p["mlp_hidden"] for p in per_layer],
        "mlp_hidden_max": max((p["mlp_hidden"] for p in per_layer), default=0),
        "mlp_hidden_total": sum(p["mlp_hidden"] for p in per_layer),
        "parameters": int(total_params),
        "nonzero_parameters": int(nonzero),
        "per_layer": per_layer,
        "approximations": manifest.get("approximations", []),
    }


def format_report(rep: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in rep["params"].items())
    lines = [f"program {rep['program']} ({params})",
             f"  layers {rep['layers']}   width D = {rep['width']}   heads {rep['heads_total']}   "
             f"MLP hidden max {rep['mlp_hidden_max']} (total {rep['mlp_hidden_total']})",
             f"  parameters {rep['parameters']:,} ({rep['nonzero_parameters']:,} nonzero)   "
             f"needs n >= {rep['min_tokens']} tokens",
             "",
             "  layer  heads  dk  mlp_hidden  parameters  nonzero"]
    for p in rep["per_layer"]:
        lines.append(f"  {p['layer']:>5}  {p['heads']:>5}  {p['dk']:>2}  {p['mlp_hidden']:>10}  "
                     f"{p['parameters']:>10,}  {p['nonzero']:>7,}")
    if rep["approximations"]:
        lines += ["", "  approximated function (leaf names)" + " " * 24 + "domain            ReLUs x uses"
                  "    max error      tol"]
        for a in rep["approximations"]:
            uses = a.get("entries", 1)
            lines.append(f"  {a['name'][:56]:<56}  [{a['lo']:.4g}, {a['hi']:.4g}]".ljust(78) +
                         f"{a.get('neurons_per_entry', a['neurons']):>6} x {uses:<4}"
                         f"   {a['max_error']:.2e}   {a['tol']:.0e}")
    return "\n".join(lines)
