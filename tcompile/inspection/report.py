"""The model card as printed: `report_text(prog)` (what `tcompile build` and `tcompile report`
print), with what each layer writes and where each approximation comes from named in the
program's own words, and `summary_line` (what `tcompile check` prints).

The card's data, the dict `prog.report`, is the runtime's (runtime/card.py: the artifact's
JSON copy embeds it); this module only reads it. Layers are numbered from 0 as there.
"""
from __future__ import annotations

import numpy as np

from ..runtime.loops import layer_paths


GAP_NOTE = ("a heuristic, not a bound: 10 x the largest approximation error (1e-10 with none; "
            "at least 10 ulps times the steepest exact ramp), "
            "errors are not propagated through the program; `tcompile check` measures the "
            "real gap on random inputs")

COLUMNS = ("columns: layer = L of module.blocks[L] and of the hooks blocks.L.* (counted from 0); "
           "heads = attention heads; dk = width of each head's keys and queries; mlp_hidden = "
           "ReLU neurons of the layer's MLP (0: it has none); parameters = entries of W_K, W_Q, "
           "W_V, W_1, W_2 (zeros included); nonzero = those that are not 0")


def summary_line(rep: dict) -> str:
    """The card in one line (what `check` prints; `report` prints the whole card)."""
    params = ", ".join(f"{k}={v:g}" for k, v in rep["params"].items())
    layers = (f"{rep['layers']} stored layers run as {rep['loops']['layers_run']}" if "loops" in rep
              else f"{rep['layers']} layers")
    return (f"{rep['program']} ({params}): {layers}, width D = {rep['width']}, "
            f"{rep['heads_total']} heads, {rep['mlp_hidden_total']:,} MLP ReLUs, "
            f"{rep['parameters']:,} parameters ({rep['nonzero_parameters']:,} nonzero)")


def report_text(prog) -> str:
    """The model card of a compiled program as text (`tcompile.report_text(prog)`; what
    `tcompile build` and `tcompile report` print), with what each layer writes and where each
    approximation comes from named in the program's own words."""
    return format_report(prog.report, prog.program, layer_writes(prog))


def layer_writes(prog) -> list[str]:
    """Per layer, the values its heads and MLP write, named as the user would (flows.py):
    "z (line 39), part of g (line 42)"."""
    if prog.loops is not None:
        return _shared_writes(prog)
    from .flows import all_units, display_names
    units = all_units(prog)
    names = display_names(prog, units)
    out = []
    for layer in units:
        seen: list[str] = []
        for key in (k for u in layer for k in u.writes):
            name = names.get(key, key).rstrip("ᵀ")
            if name not in seen:
                seen.append(name)
        seen.sort(key=lambda n: (n.startswith("part of "), n.lower()))   # stable: runs merge
        out.append(", ".join(seen))
    return out


def _shared_writes(prog) -> list[str]:
    """A shared build's layers: where each sits in the looped module, and which loop state it
    writes (the state is pinned to the same rows in every iteration of its loop, so a body
    layer's written rows name it; any other rows it writes hold temporaries)."""
    paths = layer_paths(prog.loops)
    state = {}
    for spec in prog.loops.loops:
        for var, key, *_ in spec.state:
            for r in prog.layout.block(key).rows:
                state[r] = var
    out = []
    for path, w in zip(paths, prog.layers):
        rows = set(np.flatnonzero(np.abs(w.W_V).sum(axis=(0, 2)))) | \
            set(np.flatnonzero(np.abs(w.W_2).sum(axis=1)))
        in_loop = "{" in path
        names = sorted({state[r] for r in rows if in_loop and r in state})
        extra = ["temporaries"] if any(not in_loop or r not in state for r in rows) else []
        out.append(f"{path}: " + ", ".join(names + extra) if rows else path)
    return out


SHARED_COLUMNS = ("columns: layer = L of prog.layers[L], a stored layer (the looped module runs "
                  "it where `writes` says: body.{i}.0 = the body's layer 0 at iteration i; "
                  "hooks carry the same names); heads, dk, mlp_hidden, parameters, nonzero as "
                  "for an unrolled build; writes = the loop state its heads and MLP write")


def format_report(rep: dict, program=None, writes: list[str] | None = None) -> str:
    """The printed model card. With the program's AST, approximations are named by the source
    statements they come from (inspection/naming.py) instead of compiler temporaries; with
    `writes` (layer_writes), each row of the layer table says what that layer computes."""
    columns = SHARED_COLUMNS if "loops" in rep else \
        COLUMNS + ("; writes = the values the layer's heads and MLP write" if writes else "")
    lines = _header(rep) + [""] + _layer_table(rep["per_layer"], writes) + _wrap(columns, "  ")
    if rep["depth_per_iteration"] and "loops" not in rep:     # a shared build: per loop below
        lines.append("")
        for name, depth in rep["depth_per_iteration"].items():
            line = f"  depth per loop iteration ({name}): {depth:g} layers"
            if rep.get("paper_depth"):
                line += (f"   paper: {rep['paper_depth']['per_iteration']} "
                         f"({rep['paper_depth']['formula']})")
            lines.append(line)
    if "loops" in rep:
        lines += [""] + _loop_lines(rep)
    if rep["approximations"]:
        lines += ["", "  approximated functions (piecewise-linear ReLU pieces in the MLPs; 'from' "
                  "the statements that apply each):"]
        for i, group in enumerate(group_approximations(rep["approximations"]), start=1):
            lines += (_approximation(i, group[0], program) if len(group) == 1
                      else _approximation_group(i, group, program))
    return "\n".join(lines)


def group_approximations(approximations: list[dict]) -> list[list[dict]]:
    """The card's approximation entries: records that would print the same are one entry.
    Exact pieces (relu, -relu, clip: no error) applied by the same statements to as many rows,
    chosen for the same reason, are one entry whatever their names (a projection in a loop leaves dozens of them);
    approximated ones merge only when everything printed agrees. In first-appearance order."""
    from .naming import readable
    groups: dict[tuple, list[dict]] = {}
    for a in approximations:
        per, uses = a.get("neurons_per_entry", a["neurons"]), a.get("entries", 1)
        if a.get("exact"):
            key = ("exact", tuple(a.get("lines", ())), per, uses, a.get("choice", ""))
        else:
            key = (readable(a["name"]), tuple(a.get("lines", ())), a["lo"], a["hi"], per, uses,
                   a["max_error"], a["tol"], a.get("choice", ""))
        groups.setdefault(key, []).append(a)
    return list(groups.values())


def _approximation_group(i: int, group: list[dict], program) -> list[str]:
    """One entry for several records that print the same (group_approximations)."""
    from collections import Counter
    from .naming import readable, source_lines
    a = group[0]
    names = Counter(readable(g["name"]) for g in group)
    head = f"  {i}. " + ", ".join(f"{n} ×{k}" for n, k in names.items()) + \
        f"  ({len(group)} identical {'exact pieces' if a.get('exact') else 'records'})"
    sources = source_lines(program, a.get("lines", ())) if program is not None else []
    per, uses = a.get("neurons_per_entry", a["neurons"]), a.get("entries", 1)
    dom = "all of R (exact)" if a["lo"] is None else f"[{a['lo']:.4g}, {a['hi']:.4g}]"
    total = sum(g["neurons"] for g in group)
    cost = (f"each on {dom}: {per:,} ReLU{'s' * (per != 1)} for each of {uses} row{'s' * (uses != 1)} it is "
            f"applied to ({total:,} in all over the {len(group)}); max error "
            f"{max(g['max_error'] for g in group):.2e}, budget {a['tol']:.0e}")
    choice = a.get("choice", "")
    return [head] + [f"       from {s}" for s in sources] + _wrap(cost, "       ") + \
        (_wrap(f"chosen: {choice}", "       ") if choice else [])


def _kernel_formula(lp: dict) -> str:
    """Layers run at K by a kernel loop: one formula where every residue's tail keeps the
    per-iteration rate (power_iteration: 283 + 7 (K − 40)), else one per residue."""
    p, per, every = lp["param"], lp["layers_per_iteration"], lp["every"]
    (K0, L0), *rest = lp["layers_by_residue"]
    if per % every == 0 and all(L == L0 + per // every * (K - K0) for K, L in rest):
        return f"layers run at {p} = K: {L0} + {per // every} (K − {K0})"
    parts = [f"{L} + {per} per {every} more iterations (K − {K}) for K ≡ {K % every} "
             f"(mod {every})" for K, L in lp["layers_by_residue"]]
    return f"layers run at {p} = K: " + "; ".join(parts)


def _growing(lp: dict) -> str:
    """Why a loop's count is limited, naming the variables to declare where known."""
    names = lp.get("growing")
    if not names:
        return "its domains grow"
    return f"the bounds of {', '.join(names)} grow"


def _loop_lines(rep: dict) -> list[str]:
    loops = rep["loops"]
    run = loops["layers_run"]
    lines = [f"  loops (shared build: each body stored once; {run} layer{'s' * (run != 1)} run "
             "at the built counts):"]
    if not loops["loops"] and not loops["kept_unrolled"]:
        lines.append("    none: the program has no repeat, so each layer is stored once and "
                     "runs once, as unrolled")
    for lp in loops["loops"]:
        count = (f"{lp['param']} = {lp['count']}, run-time: {lp['min_count']} or more"
                 + (f", at most {lp['max_count']} ({_growing(lp)} with the count)"
                    if lp["max_count"] is not None else "")
                 if lp["param"] else f"{lp['count']} (fixed)")
        nested = ("  (nested in the source, hoisted out of its loop: runs once)"
                  if lp.get("hoisted") else "  (nested)" if lp["depth"] else "")
        every = lp.get("every", 1)
        per = "iteration" if every == 1 else f"{every} iterations (a kernel of {every})"
        lines.append(f"    line {lp['line']:<4} repeat {count}   {lp['layers_per_iteration']} "
                     f"layer{'s' * (lp['layers_per_iteration'] != 1)} per {per}{nested}")
        if lp.get("declared_fails") and lp["param"]:
            lines += _wrap(f"the declared bounds do not lift the limit: {lp['declared_fails']}",
                           "              ")
        if lp["param"] and not lp["depth"] and every != 1 and lp.get("layers_by_residue"):
            lines += _wrap(_kernel_formula(lp), "              ")
        elif lp["param"] and not lp["depth"]:
            lines.append(f"              layers run at {lp['param']} = K: {loops['layers_run']} + "
                         f"{lp['layers_per_iteration']} (K − {lp['count']})")
        if not lp["depth"] and rep.get("paper_depth"):
            lines.append(f"              paper: {rep['paper_depth']['per_iteration']} per "
                         f"iteration ({rep['paper_depth']['formula']})")
        if lp.get("until"):
            lines.append(f"              until may watch: {', '.join(lp['until'])}")
        if lp.get("labels"):
            lab = lp["labels"]
            near = " or ".join(map(str, lab["near"]))
            lines += _wrap(f"labels (tcompile labels) at counts of residue {lab['residue']} "
                           f"(mod {lab['every']}) only, not the built {lp['count']}"
                           + (f": {lp['param']} = {near}" if near else "")
                           + f" (the layout is the unrolling at {lab['layout_count']})",
                           "              ")
        if lp.get("residue_outputs"):
            lines += _wrap(f"outputs {', '.join(lp['residue_outputs'])} end in other rows at "
                           f"each residue of K mod {every}; a run reads them from its own",
                           "              ")
    for lp in loops["kept_unrolled"]:
        lines += _wrap(f"line {lp['line']}: repeat {lp['count']} kept unrolled: {lp['why']} "
                       "(its count is fixed at build time; `until` cannot stop it)", "    ")
    return lines


def _header(rep: dict) -> list[str]:
    params = ", ".join(f"{k}={v:g}" for k, v in rep["params"].items())
    last = rep["layers"] - 1
    stored = (f"  stored layers {rep['layers']} (numbered 0 to {last}; "
              f"{rep['loops']['layers_run']} run)" if "loops" in rep
              else f"  layers {rep['layers']} (numbered 0 to {last})")
    kept = (f"   kept in rows of their own: {', '.join(rep['keep'])}" if rep.get("keep")
            else "")
    return [f"program {rep['program']} ({params}){kept}",
            f"{stored}   width D = {rep['width']} rows   "
            f"heads {rep['heads_total']}   MLP hidden max {rep['mlp_hidden_max']:,} "
            f"(total {rep['mlp_hidden_total']:,} ReLUs)",
            f"  parameters {rep['parameters']:,} ({rep['nonzero_parameters']:,} nonzero)   "
            f"needs n >= {rep['min_tokens']} tokens",
            f"  estimated gap to the interpreter (relative, float64): {rep['predicted_rtol']:.1e}"]\
        + _wrap(f"({GAP_NOTE})", "    ")


def _layer_table(per_layer: list[dict], writes: list[str] | None = None) -> list[str]:
    """One row per run of identical consecutive layers (`3-8`: layers 3 to 8, each so)."""
    lines = ["  layer     heads  dk  mlp_hidden  parameters  nonzero" + ("          writes" if writes else "")]
    key = lambda L: (tuple(per_layer[L][k] for k in ("heads", "dk", "mlp_hidden", "parameters",  # noqa: E731
                                                     "nonzero")), writes[L] if writes else "")
    i = 0
    while i < len(per_layer):
        j = i
        while j + 1 < len(per_layer) and key(j + 1) == key(i):
            j += 1
        p = per_layer[i]
        span = f"{i}" if i == j else f"{i}-{j}"
        row = (f"  {span:<8}  {p['heads']:>5}  {p['dk']:>2}  {p['mlp_hidden']:>10,}  "
               f"{p['parameters']:>10,}  {p['nonzero']:>7,}")
        row += "   each" if j > i else "       "
        lines.append((row + f"  {writes[i]}") if writes else row.rstrip())
        i = j + 1
    return lines


def _approximation(i: int, a: dict, program) -> list[str]:
    """Two or more lines per approximated function: where in the source, then what it costs."""
    from .naming import readable, source_lines
    sources = source_lines(program, a.get("lines", ())) if program is not None else []
    head = f"  {i}. {readable(a['name'])}"
    where = [f"       from {s}" for s in sources]
    dom = "all of R (exact)" if a["lo"] is None else f"[{a['lo']:.4g}, {a['hi']:.4g}]"
    per, uses = a.get("neurons_per_entry", a["neurons"]), a.get("entries", 1)
    choice = a.get("choice", "")
    # a refined value's error is the bound the seed's measured error implies after the
    # Newton steps (refine.py), not a measurement of the refined value itself
    how = ("bound implied by the seed's measured error" if choice.startswith("refined")
           else "measured on the domain")
    cost = (f"on {dom}: {per:,} ReLU{'s' * (per != 1)} for each of {uses} row{'s' * (uses != 1)} it is "
            f"applied to ({a['neurons']:,} in all); max error {a['max_error']:.2e} ({how}), "
            f"budget {a['tol']:.0e}")
    lines = [head] + where + _wrap(cost, "       ")
    return lines + (_wrap(f"chosen: {choice}", "       ") if choice else [])


def _wrap(text: str, indent: str, width: int = 96) -> list[str]:
    import textwrap
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent)
