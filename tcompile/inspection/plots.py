"""Pictures of a compiled model (matplotlib, Agg; PNG and SVG).

- layout: rows × sublayers, which value occupies which rows when (the allocator's work);
- weights: one overview, every layer as a block diagram of what each head and the MLP read
  and write, by the user's names (flows.py); with a layer, that layer's W_K / W_Q / W_V per
  head and the MLP's W_1 / W_2 as heatmaps cut to their nonzero rows and columns, with colour
  bars and named axes;
- convergence: error to the exact answer vs layer, the compiled model's iterates beside the
  exact algorithm's (the interpreter's), for each output.

Layers are counted from 0, as in the report, the trace and the hooks (report.py says why).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.files import atomic_open


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"     # SVG text stays text: searchable, smaller
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path, dpi: int = 110, tight: bool = True) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".svg"):
        p = path.with_suffix(ext)
        with atomic_open(p) as f:            # an interrupted plot leaves the old file or none
            fig.savefig(f, format=ext[1:], dpi=dpi, bbox_inches="tight" if tight else None)
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


def plot_weights(prog, out: Path, layers: list[int] | None = None) -> list[Path]:
    """The weights overview (one picture), or with `layers` (0-based) each of those layers'
    matrices in a picture of its own."""
    if layers is None:
        return plot_weights_overview(prog, out)
    paths = []
    for L in layers:
        paths += plot_layer_matrices(prog, L, out)
    return paths


LINE = 0.16          # inches per text line in the overview (7 pt type)
PANEL_W = 4.8        # inches per layer column


def plot_weights_overview(prog, out: Path) -> list[Path]:
    """Every layer as a small block diagram: for each head and the MLP, a box with the list of
    named values it reads on its left and writes on its right (read off the weights' nonzero
    columns and rows, flows.py). One axes in inch coordinates holds everything, with one text
    per list, so even 73 layers draw in a few seconds."""
    from matplotlib.collections import LineCollection
    from .flows import all_units, display_names
    plt = _plt()
    units = all_units(prog)
    names = display_names(prog, units)
    ncols = min(4, max(prog.n_layers, 1))
    heights = [_diagram_height(u) for u in units]
    row_h = [max(heights[i:i + ncols]) for i in range(0, len(heights), ncols)]
    title_h = 0.6
    fig = plt.figure(figsize=(PANEL_W * ncols, title_h + sum(row_h) + 0.2))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, PANEL_W * ncols)
    ax.set_ylim(fig.get_figheight(), 0)
    ax.axis("off")
    ax.text(0.15, 0.3, f"{prog.name}: what each head and the MLP read (left) and write (right), "
            f"layer by layer. Layer L is module.blocks[L]; `tcompile plot ARTIFACT --what weights "
            f"--layer L` draws its matrices.", fontsize=10, va="center")
    segments = []
    for L, layer_units in enumerate(units):
        x0 = PANEL_W * (L % ncols)
        y0 = title_h + sum(row_h[:L // ncols])
        segments += _draw_diagram(ax, x0, y0, L, layer_units, names)
    ax.add_collection(LineCollection(segments, colors="0.5", linewidths=0.7))
    return _save(fig, out / f"{prog.name}_weights", dpi=80, tight=False)


def _diagram_height(units) -> float:
    return LINE * (2 + sum(max(len(u.reads), len(u.writes), 2) + 0.6 for u in units))


def _draw_diagram(ax, x0: float, y0: float, L: int, units, names: dict[str, str]) -> list:
    """One layer's block diagram at (x0, y0) inches; returns the connecting segments."""
    ax.text(x0 + 0.1, y0 + LINE, f"layer {L}", fontsize=9, weight="bold", va="center")
    segments, y = [], y0 + 2 * LINE
    xr, xb, xw = x0 + 1.95, x0 + 2.4, x0 + 2.85
    if not units:
        ax.text(x0 + 0.3, y + LINE, "no heads, no MLP: passes the stream through", fontsize=7,
                va="center", style="italic")
    for u in units:
        rows = max(len(u.reads), len(u.writes), 2)
        mid = y + LINE * rows / 2
        colour = "#fde2c8" if u.name == "MLP" else "#d6e6f5"
        ax.text(xb, mid, f"{u.name}\n{u.size}", ha="center", va="center", fontsize=6.5,
                bbox={"boxstyle": "round,pad=0.2", "fc": colour, "ec": "0.4", "lw": 0.6})
        if u.reads:
            ax.text(xr - 0.05, mid, "\n".join(names.get(k, k) for k in u.reads), ha="right",
                    va="center", fontsize=7, linespacing=1.25)
            segments.append([(xr - 0.02, mid), (xb - 0.28, mid)])
        if u.writes:
            ax.text(xw + 0.05, mid, "\n".join(names.get(k, k) for k in u.writes), ha="left",
                    va="center", fontsize=7, linespacing=1.25)
            segments.append([(xb + 0.28, mid), (xw + 0.02, mid)])
        y += LINE * (rows + 0.6)
    return segments


def plot_layer_matrices(prog, L: int, out: Path) -> list[Path]:
    """Layer L's matrices, cut to the rows and columns they use, with colour bars and the
    user's names on the axes: one row of panels per head (W_K, W_Q, W_V) and one for the MLP
    (W_1 transposed, so its inputs run down the rows, and W_2)."""
    from .flows import display_names
    plt = _plt()
    panels = _matrix_panels(prog, L, display_names(prog))
    nrows = len(panels) or 1
    heights = [_row_height(r) for r in panels] or [1.0]
    label_h = 1.7                         # inches under each row for its rotated column labels
    total = sum(heights) + label_h * nrows + 1.0
    fig, axes = plt.subplots(nrows, 3, figsize=(19, total), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    # fixed margins, not constrained layout: as readable, and seconds faster on big layers
    fig.subplots_adjust(left=0.12, right=0.97, top=1 - 1.0 / total, bottom=label_h / total,
                        wspace=0.75, hspace=label_h * nrows / max(sum(heights), 1e-9))
    for row_axes, row in zip(axes, panels):
        for ax, panel in zip(row_axes, row):
            _draw_matrix(fig, ax, *panel)
        for ax in row_axes[len(row):]:
            ax.axis("off")
    if not panels:
        for ax in axes.flat:
            ax.axis("off")
        axes[0][0].text(0, 0.5, f"layer {L} has no heads and no MLP: it passes the stream through",
                        fontsize=11, va="center")
    fig.suptitle(f"{prog.name} layer {L} (module.blocks[{L}]), nonzero rows and columns only: "
                 f"columns are what a matrix reads, rows what it writes (value[i] = row i of a "
                 f"stored value, ᵀ: stored transposed)", fontsize=11, y=1 - 0.3 / total)
    return _save(fig, out / f"{prog.name}_weights_layer{L:03d}", dpi=90)


def _row_height(row) -> float:
    """Inches for a row of panels: room for its row labels (at most 40 are drawn)."""
    return min(max(max(len(p[2]) for p in row) * 0.16, 1.2), 6.5)


def _matrix_panels(prog, L: int, names: dict[str, str]) -> list[list[tuple]]:
    """Rows of (matrix, title, row labels, column labels), each cut to its nonzero support."""
    from .flows import _owners
    w, lay = prog.layers[L], prog.layout
    before, mid, after = (_owners(lay, t) for t in (2 * L, 2 * L + 1, 2 * L + 2))
    label = lambda owners, r: _row_label(names, owners, r, lay)  # noqa: E731
    rows = []
    for h in range(w.heads):
        rows.append([_cut(w.W_K[h], f"head {h}  W_K", lambda i: f"key {i}", lambda r: label(before, r)),
                     _cut(w.W_Q[h], f"head {h}  W_Q", lambda i: f"query {i}", lambda r: label(before, r)),
                     _cut(w.W_V[h], f"head {h}  W_V", lambda r: label(mid, r), lambda r: label(before, r))])
    if w.mlp_hidden:
        rows.append([_cut(w.W_1.T, f"MLP  W_1ᵀ ({w.mlp_hidden:,} ReLUs)", lambda r: label(mid, r),
                          lambda i: str(i)),
                     _cut(w.W_2, "MLP  W_2", lambda r: label(after, r), lambda i: str(i))])
    return rows


def _row_label(names: dict[str, str], owners: dict[int, str], r: int, lay) -> str:
    key = owners.get(int(r))
    if key is None:
        return f"row {r} (free)"
    blk = lay.block(key)
    return f"{names.get(key, key)}[{blk.rows.index(int(r))}]  (row {r})"


def _cut(mat: np.ndarray, title: str, row_name, col_name) -> tuple:
    rows = np.flatnonzero(np.any(mat != 0, axis=1))
    cols = np.flatnonzero(np.any(mat != 0, axis=0))
    if not len(rows) or not len(cols):
        return (np.zeros((1, 1)), title + " (all zero)", [""], [""])
    return (mat[np.ix_(rows, cols)], title, [row_name(r) for r in rows], [col_name(c) for c in cols])


def _draw_matrix(fig, ax, mat: np.ndarray, title: str, ylabels: list, xlabels: list) -> None:
    lim = float(np.abs(mat).max()) or 1.0
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    ax.set_title(title, fontsize=9)
    for setter, ticks, labels in ((ax.set_yticks, len(ylabels), ylabels), (ax.set_xticks, len(xlabels), xlabels)):
        step = max(1, -(-ticks // 40))                  # at most 40 labels on an axis
        setter(range(0, ticks, step), labels[::step], fontsize=7)
    ax.tick_params(axis="x", labelrotation=90)
    if mat.size <= 64:                                   # small: print the numbers as well
        for (i, j), v in np.ndenumerate(mat):
            if v != 0:
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 * lim else "black")


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
