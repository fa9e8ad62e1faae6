"""Pictures of the weights: one overview of every layer as a block diagram (what each head and
the MLP read and write, by the user's names, flows.py), and one layer's matrices as heatmaps
cut to their nonzero rows and columns, with colour bars and named axes.

Layers are counted from 0, as in the report, the trace and the hooks (report.py says why).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import _plt, _save


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
    from .flows import _nonzero                 # the rows and columns flows.py reads off too
    rows, cols = _nonzero(mat, 1), _nonzero(mat, 0)
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


__all__ = ["plot_weights", "plot_weights_overview", "plot_layer_matrices"]
