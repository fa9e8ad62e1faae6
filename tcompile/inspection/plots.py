"""Pictures of a compiled model (matplotlib, Agg; PNG and SVG).

- layout: rows × sublayers, which value occupies which rows when (the allocator's work);
- weights: per layer, every head's W_K / W_Q / W_V and the MLP's W_1 / W_2 as heatmaps, with
  the names of the values in the rows they read and write;
- convergence: error to the exact answer vs layer, the compiled model's iterates beside the
  exact algorithm's (the interpreter's), for each output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".svg"):
        p = path.with_suffix(ext)
        fig.savefig(p, dpi=110, bbox_inches="tight")
        out.append(p)
    _plt().close(fig)
    return out


def _base(blk) -> str:
    """The program variable (or input/constant name) a block belongs to: one colour each."""
    return blk.label.split("@")[0].split(":")[-1]


def plot_layout(prog, out: Path) -> list[Path]:
    plt = _plt()
    lay = prog.layout
    T = lay.n_sublayers
    fig, ax = plt.subplots(figsize=(min(4 + 0.25 * T, 40), 2 + 0.28 * lay.width))
    cmap = plt.get_cmap("tab20")
    colour = {b: cmap(i % 20) for i, b in enumerate(sorted({_base(b) for b in lay.blocks}))}
    for blk in lay.blocks:
        end = blk.live_until(T)
        for r in blk.rows:
            ax.barh(r, max(end - blk.written, 0.6), left=blk.written, height=0.85,
                    color=colour[_base(blk)], edgecolor="black", linewidth=0.3)
        ax.text(blk.written + 0.1, min(blk.rows), blk.label, va="center", fontsize=6)
    ax.set_xlabel("sublayer (0 = input, 2ℓ−1 = attention of layer ℓ, 2ℓ = its MLP)")
    ax.set_ylabel("row of the embedding")
    ax.set_ylim(lay.width - 0.5, -0.5)
    ax.set_xlim(-0.5, T + 0.5)
    ax.set_title(f"{prog.name}: row allocation ({lay.n_layers} layers, width {lay.width})")
    return _save(fig, out / f"{prog.name}_layout")


def plot_weights(prog, out: Path, layers: list[int] | None = None) -> list[Path]:
    """One figure per layer (1-based `layers`, default all)."""
    paths = []
    for ell in layers or range(1, prog.n_layers + 1):
        paths += _plot_layer(prog, ell, out)
    return paths


def _weight_panels(w, ell: int, lay) -> list[tuple]:
    """(matrix, title, row names, column names) for each heatmap of layer `ell`."""
    before, mid = lay.occupants(2 * ell - 2), lay.occupants(2 * ell - 1)
    panels = []
    for h in range(w.heads):
        label = w.head_labels[h] if h < len(w.head_labels) else ""
        panels += [(w.W_K[h], f"head {h} W_K", None, before),
                   (w.W_Q[h], f"head {h} W_Q", None, before),
                   (w.W_V[h], f"head {h} W_V\n{label[:60]}", mid, before)]
    if w.mlp_hidden:
        panels += [(w.W_1, f"MLP W_1 ({w.mlp_hidden} hidden)", None, mid),
                   (w.W_2, "MLP W_2", lay.occupants(2 * ell), None)]
    return panels


def _plot_layer(prog, ell: int, out: Path) -> list[Path]:
    plt = _plt()
    w = prog.layers[ell - 1]
    ncols = max(3 * w.heads + (2 if w.mlp_hidden else 0), 1)
    fig, axes = plt.subplots(1, ncols, figsize=(3.2 * ncols, 0.2 * prog.width + 2.5), squeeze=False)
    axes = axes[0]
    panels = _weight_panels(w, ell, prog.layout)
    for ax, (mat, title, ynames, xnames) in zip(axes, panels):
        lim = float(np.abs(mat).max()) or 1.0
        ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=7)
        if xnames is not None:
            ax.set_xticks(range(len(xnames)))
            ax.set_xticklabels(xnames, rotation=90, fontsize=5)
        if ynames is not None:
            ax.set_yticks(range(len(ynames)))
            ax.set_yticklabels(ynames, fontsize=5)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{prog.name} layer {ell}: inputs on the x axis, outputs on the y axis")
    return _save(fig, out / f"{prog.name}_weights_layer{ell:03d}")


def convergence_data(prog, inputs: dict, reference: dict | None = None) -> dict:
    """Per output: [(layer, error)] for the compiled model and for the exact iterates.

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
        ax.set_xlabel("layer")
        ax.set_ylabel(f"‖{name} − {name}*‖ (max over the batch)")
        ax.set_title(f"{prog.name}: {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / f"{prog.name}_convergence")


def plot(prog, what: str, out: Path, inputs: dict | None = None) -> list[Path]:
    if what == "layout":
        return plot_layout(prog, out)
    if what == "weights":
        return plot_weights(prog, out)
    if inputs is None:
        from ..errors import InputError
        raise InputError("--what convergence needs --inputs FILE.npz")
    return plot_convergence(prog, out, inputs)
