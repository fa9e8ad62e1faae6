"""Pictures of a compiled model (matplotlib, Agg; PNG and SVG).

- layout: rows × sublayers, which value occupies which rows when (the allocator's work);
- weights (weight_plots.py): one overview, every layer as a block diagram of what each head
  and the MLP read and write, by the user's names; with a layer, that layer's matrices;
- convergence: error to the exact answer vs layer, the compiled model's iterates beside the
  exact algorithm's (the interpreter's), for each output.

Layers are counted from 0, as in the report, the trace and the hooks (report.py says why).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import _plt, _save
from .weight_plots import plot_weights


def _base(blk) -> str:
    """The program variable (or input/constant name) a block belongs to: one colour each."""
    return blk.label.split("@")[0].split(":")[-1]


def plot_layout(prog, out: Path) -> list[Path]:
    if prog.loops is not None:
        from ..errors import InputError
        raise InputError("the layout picture draws an unrolled build's rows over every "
                         "sublayer; this is a shared build, whose stored layers run many times "
                         "(its card names each one's place in the loop): draw the unrolled "
                         "build, or --what weights")
    plt = _plt()
    lay = prog.layout
    T = lay.n_sublayers
    fig, ax = plt.subplots(figsize=(min(4 + 0.25 * T, 40), 2 + 0.28 * lay.width))
    cmap = plt.get_cmap("tab20")
    colour = {b: cmap(i % 20) for i, b in enumerate(sorted({_base(b) for b in lay.blocks}))}
    from .flows import display_names
    names = display_names(prog)
    for blk in lay.blocks:
        end = blk.live_until(T)
        for r in blk.rows:
            ax.barh(r, max(end - blk.written, 0.6), left=blk.written, height=0.85,
                    color=colour[_base(blk)], edgecolor="black", linewidth=0.3)
        ax.text(blk.written + 0.1, min(blk.rows), names.get(blk.key, blk.label), va="center",
                fontsize=7)
    ax.set_xlabel("sublayer (0 = the input; 2L+1 = attention of layer L, 2L+2 = its MLP; "
                  "layers counted from 0, as module.blocks[L])")
    ax.set_ylabel("row of the embedding")
    ax.set_ylim(lay.width - 0.5, -0.5)
    ax.set_xlim(-0.5, T + 0.5)
    ax.set_title(f"{prog.name}: row allocation ({lay.n_layers} layers, width {lay.width})")
    return _save(fig, out / f"{prog.name}_layout")


def convergence_data(prog, inputs: dict, reference: dict | None = None) -> dict:
    """Per output: [(layers applied, error)] for the compiled model and for the exact iterates
    (a count, not a layer index: k layers applied is after layer k - 1; 0 is the input).

    The exact answer is `reference` if given, else the interpreter run with twice the
    program's `steps` param (plus 10), else the interpreter's final output.
    """
    from ..language.interpreter import interpret_program
    from .reference import interpreter_assignments
    params = prog.info.float_params()
    prepared = prog.prepare_inputs(inputs)
    if reference is None:
        more = dict(params)
        if "steps" in more:
            more["steps"] = 2 * more["steps"] + 10
        reference = interpret_program(prog.program, more, **prepared.arrays)
    exact = interpreter_assignments(prog.program, params, prepared.arrays, prepared.n)
    states = prog.sublayer_states(prepared)
    return {spec.name: _convergence(prog, spec, states, exact, reference[spec.name])
            for spec in prog.layout.outputs}


def _convergence(prog, spec, states, exact: dict, reference) -> dict:
    """One output's error per layer, compiled (its latest stored block after each layer) and
    exact (each stored iterate of the interpreter, at the layer that writes it)."""
    name = spec.name
    ref = np.asarray(reference)
    ref = ref.reshape((-1, *ref.shape[-len(spec.shape):])) if spec.shape else ref.reshape(-1)
    blocks = [b for b in prog.layout.blocks if any(v.split("@")[0] == name for v in b.vars)]
    iterates = []
    for b in blocks:
        var = max((v for v in b.vars if v.split("@")[0] == name), key=lambda v: int(v.split("@")[1]))
        if var in exact:
            iterates.append(((b.written + 1) // 2, _err(exact[var], ref), var))
    compiled = []
    for ell in range(1, prog.n_layers + 1):
        live = [b for b in blocks if b.written <= 2 * ell]
        if live:
            latest = max(live, key=lambda b: b.written)
            compiled.append((ell, _err(prog.read_block(states[2 * ell], latest, spec.shape), ref)))
    return {"compiled": compiled, "exact": sorted(iterates)}


def _err(x, ref) -> float:
    x, ref = np.asarray(x), np.asarray(ref)
    return float(np.max(np.linalg.norm((x - ref).reshape(len(x), -1), axis=1)))


def plot_convergence(prog, out: Path, inputs: dict, reference: dict | None = None) -> list[Path]:
    plt = _plt()
    data = convergence_data(prog, inputs, reference)
    iterated = {k: v for k, v in data.items() if len(v["exact"]) > 1}   # loop variables
    data = iterated or data
    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 4.2), squeeze=False)
    for ax, (name, d) in zip(axes[0], data.items()):
        if d["compiled"]:
            ls, es = zip(*d["compiled"])
            ax.semilogy(ls, np.maximum(es, 1e-17), "o-", ms=3, label="compiled transformer")
        if d["exact"]:
            ls, es, _ = zip(*d["exact"])
            ax.semilogy(ls, np.maximum(es, 1e-17), "x--", ms=5, label="exact algorithm (interpreter)")
        ax.set_xlabel("layers applied (0 = the input; after layer L of module.blocks: L + 1)")
        ax.set_ylabel(f"‖{name} − {name}*‖ (max over the batch)")
        ax.set_title(f"{prog.name}: {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / f"{prog.name}_convergence")


def plot(prog, what: str, out: Path, inputs: dict | None = None, layer: int | None = None) -> list[Path]:
    """`tcompile plot`: layout, weights (the overview, or layer `layer`'s matrices), convergence."""
    if what == "layout":
        return plot_layout(prog, out)
    if what == "weights":
        return plot_weights(prog, out, None if layer is None else [layer])
    if inputs is None:
        from ..errors import InputError
        raise InputError("--what convergence needs --inputs FILE.npz")
    return plot_convergence(prog, out, inputs)
