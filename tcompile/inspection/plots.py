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


def _label(blk) -> str:
    if blk["vars"]:
        return blk["vars"][-1] + (".T" if blk["transposed"] else "")
    return blk["key"]


def row_occupants(manifest, t: int) -> list[str]:
    """Name of the value in each row just after sublayer t (0: the encoder's input)."""
    names = [""] * manifest["width"]
    for blk in sorted(manifest["blocks"], key=lambda b: b["written"]):
        if blk["written"] <= t:
            for i, r in enumerate(blk["rows"]):
                names[r] = f"{_label(blk)}[{i}]"
    return names


def plot_layout(prog, out: Path) -> list[Path]:
    plt = _plt()
    m = prog.manifest
    T = 2 * m["n_layers"]
    fig, ax = plt.subplots(figsize=(min(4 + 0.25 * T, 40), 2 + 0.28 * m["width"]))
    bases = sorted({_label(b).split("@")[0].split(":")[-1] for b in m["blocks"]})
    cmap = plt.get_cmap("tab20")
    colour = {b: cmap(i % 20) for i, b in enumerate(bases)}
    for blk in m["blocks"]:
        end = blk["last_read"] if blk["last_read"] >= 0 else T
        base = _label(blk).split("@")[0].split(":")[-1]
        for r in blk["rows"]:
            ax.barh(r, max(end - blk["written"], 0.6), left=blk["written"], height=0.85,
                    color=colour[base], edgecolor="black", linewidth=0.3)
        r0 = min(blk["rows"])
        ax.text(blk["written"] + 0.1, r0, _label(blk), va="center", fontsize=6)
    ax.set_xlabel("sublayer (0 = input, 2ℓ−1 = attention of layer ℓ, 2ℓ = its MLP)")
    ax.set_ylabel("row of the embedding")
    ax.set_ylim(m["width"] - 0.5, -0.5)
    ax.set_xlim(-0.5, T + 0.5)
    ax.set_title(f"{m['program']}: row allocation ({m['n_layers']} layers, width {m['width']})")
    return _save(fig, out / f"{m['program']}_layout")


def plot_weights(prog, out: Path, layers: list[int] | None = None) -> list[Path]:
    """One figure per layer (1-based `layers`, default all)."""
    plt = _plt()
    m = prog.manifest
    paths = []
    for ell in layers or range(1, m["n_layers"] + 1):
        w = prog.layers[ell - 1]
        before, mid = row_occupants(m, 2 * ell - 2), row_occupants(m, 2 * ell - 1)
        H = w.W_K.shape[0]
        ncols = 3 * H + (2 if w.W_1.shape[0] else 0)
        fig, axes = plt.subplots(1, max(ncols, 1), figsize=(3.2 * max(ncols, 1), 0.2 * m["width"] + 2.5),
                                 squeeze=False)
        axes = axes[0]
        panels = []
        for h in range(H):
            label = w.head_labels[h] if h < len(w.head_labels) else ""
            panels += [(w.W_K[h], f"head {h} W_K", None, before),
                       (w.W_Q[h], f"head {h} W_Q", None, before),
                       (w.W_V[h], f"head {h} W_V\n{label[:60]}", mid, before)]
        if w.W_1.shape[0]:
            panels += [(w.W_1, f"MLP W_1 ({w.W_1.shape[0]} hidden)", None, mid),
                       (w.W_2, "MLP W_2", row_occupants(m, 2 * ell), None)]
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
        fig.suptitle(f"{m['program']} layer {ell}: inputs on the x axis, outputs on the y axis")
        paths += _save(fig, out / f"{m['program']}_weights_layer{ell:03d}")
    return paths


def convergence_data(prog, inputs: dict, reference: dict | None = None) -> dict:
    """Per output: [(layer, error)] for the compiled model and for the exact iterates.

    The exact answer is `reference` if given, else the interpreter run with twice the
    program's `steps` param (plus 10), else the interpreter's final output.
    """
    from ..language.interpreter import interpret_program
    from .trace import interpreter_assignments
    params = {k: float(v) for k, v in prog.manifest["params"].items()}
    arrays, _batch, n = prog._validated(inputs)
    if reference is None:
        more = dict(params)
        if "steps" in more:
            more["steps"] = 2 * more["steps"] + 10
        reference = interpret_program(prog.program, more, **{k: a for k, a in arrays.items()})
    exact = interpreter_assignments(prog.program, params, arrays, n)
    import torch
    states = prog.forward_states(prog._encode_arrays(arrays, n, torch.float64, "cpu"))
    data = {}
    for spec in prog.manifest["outputs"]:
        name = spec["name"]
        ref = np.asarray(reference[name])
        ref = ref.reshape((-1, *ref.shape[-len(spec["shape"]):])) if spec["shape"] else ref.reshape(-1)
        compiled, iterates = [], []
        blocks = [b for b in prog.manifest["blocks"] if any(v.split("@")[0] == name for v in b["vars"])]
        for b in blocks:
            var = max((v for v in b["vars"] if v.split("@")[0] == name), key=lambda v: int(v.split("@")[1]))
            if var in exact:
                iterates.append(((b["written"] + 1) // 2, _err(exact[var], ref), var))
        for ell in range(1, prog.manifest["n_layers"] + 1):
            t = 2 * ell
            live = [b for b in blocks if b["written"] <= t]
            if not live:
                continue
            latest = max(live, key=lambda b: b["written"])
            got = prog.read_block(states[t].numpy(), latest, spec["shape"])
            compiled.append((ell, _err(got, ref)))
        data[name] = {"compiled": compiled, "exact": sorted(iterates)}
    return data


def _err(x, ref) -> float:
    x, ref = np.asarray(x), np.asarray(ref)
    return float(np.max(np.linalg.norm((x - ref).reshape(len(x), -1), axis=1)))


def plot_convergence(prog, out: Path, inputs: dict, reference: dict | None = None) -> list[Path]:
    plt = _plt()
    data = convergence_data(prog, inputs, reference)
    iterated = {k: v for k, v in data.items() if len(v["exact"]) > 1}   # loop variables
    data = iterated or data
    m = prog.manifest
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
        ax.set_title(f"{m['program']}: {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / f"{m['program']}_convergence")


def plot(prog, what: str, out: Path, inputs: dict | None = None) -> list[Path]:
    if what == "layout":
        return plot_layout(prog, out)
    if what == "weights":
        return plot_weights(prog, out)
    if inputs is None:
        from ..errors import InputError
        raise InputError("--what convergence needs --inputs FILE.npz")
    return plot_convergence(prog, out, inputs)
