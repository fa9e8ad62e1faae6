"""The model card's data: what was built (layers, width, heads, MLP sizes, parameters,
approximations, loops) and the paper's depth for the same program, as the plain dict
`prog.report` gives and the artifact's readable JSON copy embeds (artifact.write_artifact).

It is derived from the manifest and the weights alone, so saving an artifact needs nothing
above the runtime; inspection/report.py prints it (the card as `tcompile report` shows it, the
layers named in the program's words).

Layers are numbered from 0 everywhere (card, trace, plots, hooks): layer L is `module.blocks[L]`,
`prog.layers[L]` and the hooks `blocks.L.*`, so a number read in the card indexes the model as is.
"""
from __future__ import annotations

import math

import numpy as np

from ..language.points import point_variable
from . import clock
from .artifact import approximation_to_json
from .layout import Layout
from .loops import layer_paths
from .manifest import Manifest, ProgramInfo
from .weights import WEIGHT_NAMES


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
        written = sorted({clock.layer_of(b.written) + 1 for b in layout.blocks
                          for v in b.vars if point_variable(v) == name and b.written > 0})
        gaps = np.diff(written)
        if len(gaps):
            out[name] = float(np.median(gaps))
    return out


ULP = 2.0 ** -52


def predicted_rtol(approximations) -> float:
    """How far (relative, max over outputs) the compiled model may be from the interpreter in
    float64: rounding alone when nothing is approximated, else 10x the largest approximation
    error, and at least 10 ulps times the steepest exact ramp (a perceptron's
    clip(1 - 1e6 * m, 0, 1) turns m's last bits into 1e6 times as much: 2.2e-9). A
    heuristic, not a proof: errors are not propagated analytically through the program
    (measured gaps are 1e-7..1e-5 of the largest error's scale; tests check it)."""
    if not approximations:
        return 1e-10
    return max(1e-10, 10 * max(a.max_error for a in approximations),
               10 * ULP * max(a.steepest for a in approximations))


def build_report(manifest: Manifest, layers) -> dict:
    """The model card as a plain dict (`prog.report`; the artifact embeds it)."""
    lay, info = manifest.layout, manifest.program
    per_layer = []
    total_params = nonzero = 0
    for i, (spec, w) in enumerate(zip(lay.layers, layers)):       # layer i = module.blocks[i]
        if hasattr(w, "shape_of"):       # LayerWeights: MLP matrices may be held as nonzeros
            params = sum(math.prod(w.shape_of(n)) for n in WEIGHT_NAMES)
            nz = sum(w.nonzero_count(n) for n in WEIGHT_NAMES)
        else:
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
        **({"keep": list(info.keep)} if info.keep else {}),
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
        "depth_per_iteration": (depth_per_iteration(lay) if manifest.loops is None
                                else _loop_depths(manifest.loops, lay)),
        "predicted_rtol": predicted_rtol(manifest.approximations),
        "paper_depth": _paper(info),
        **({"loops": _loops(manifest.loops)} if manifest.loops is not None else {}),
    }


def _loop_depths(program, layout: Layout) -> dict[str, float]:
    """A shared build's depth per iteration of each output a top-level loop carries: its
    loop's layers per iteration — the one figure the card gives per loop (the base
    unrolling's blocks would give the pipelined fill and drain too)."""
    outputs = {o.name for o in layout.outputs}
    return {var: s.layers_per_iteration / s.every for s in program.loops if s.depth == 0
            for var, *_ in s.state if var in outputs}


def _loops(program) -> dict:
    """A shared build's loops: what the card says about them (layers per iteration, the layers
    a forward pass runs at the built counts, the counts a run may ask for)."""
    halts = program.until_loops()
    return {
        "layers_run": program.n_layers(program.counts()),
        "paths": layer_paths(program),
        "loops": [{"line": s.line, "param": s.param, "count": s.count, "depth": s.depth,
                   "layers_per_iteration": s.layers_per_iteration, "min_count": s.min_count,
                   "max_count": s.max_count,
                   **({"growing": list(s.growing)} if s.growing else {}),
                   **({"declared_fails": s.declared_fails} if s.declared_fails else {}),
                   # halting varies the count: a loop whose count is fixed is not one `until`
                   # may stop (halting.resolve_until refuses it, saying so)
                   "until": [v for v in s.watchable if halts[v] == s.key] if s.param else [],
                   **({"hoisted": True} if program.hoisted(s.key) else {}),
                   **({"every": s.every, "layers_by_residue": _by_residue(program, s)}
                      if s.every != 1 else {}),
                   **({"residue_outputs": _residue_outputs(program.item(s.key))}
                      if s.depth == 0 and program.item(s.key).outputs else {}),
                   **_labelled_counts(program, s)}
                  for s in program.loops],
        "kept_unrolled": [{"line": line, "count": count, "why": why}
                          for line, count, why in program.unrolled],
    }


def _labelled_counts(program, spec) -> dict:
    """Where a kernel loop's built count is not of the residue its layout's unrolling is, the
    counts its labels (and a run's layout) can be given at, which `tcompile labels` at the
    built counts refuses: {"labels": {"residue", "every", "layout_count", "near"}}; else {}."""
    near = program.labelled_counts_near(spec.key, spec.count) if spec.param else None
    if near is None:
        return {}
    item, at = program.item(spec.key), dict(program.base_counts)[spec.key]
    return {"labels": {"residue": item.residue(at), "every": item.every, "layout_count": at,
                       "near": near}}


def _by_residue(program, spec) -> list[list[int]] | None:
    """A kernel loop's layers run, one count of each residue mod its kernel: [[K, layers at
    K], ...] (the tails differ by residue, so no one formula from the built count says it);
    None for a nested loop or one without a run-time count."""
    if spec.depth or not spec.param:
        return None
    out = []
    for r in range(spec.every):
        K = spec.count + r
        if spec.max_count is not None and K > spec.max_count:
            K -= spec.every
        if K >= spec.min_count:
            out.append([K, program.n_layers(program.counts({spec.param: K}))])
    return out


def _residue_outputs(item) -> list[str]:
    """The outputs a kernel loop's residue leaves in rows of their own (loops.py
    `LoopItem.outputs`): those whose rows or orientation differ from one residue to another."""
    where = [dict((name, (rows, t)) for name, rows, t in residue) for residue in item.outputs]
    return sorted(name for name in where[0] if len({w[name] for w in where}) > 1)


def _paper(info: ProgramInfo) -> dict | None:
    entry = PAPER_DEPTH.get(info.name)
    if entry is None:
        return None
    text, per_iteration = entry
    return {"formula": text, "per_iteration": per_iteration(info.params)}


__all__ = ["PAPER_DEPTH", "depth_per_iteration", "predicted_rtol", "build_report"]
