"""Pictures of the weights: one overview of every layer as a block diagram (what each head and
the MLP read and write, by the user's names, flows.py), and one layer's matrices as heatmaps
cut to their nonzero rows and columns, with colour bars and named axes.

Layers are counted from 0, as in the report, the trace and the hooks (runtime/card.py says why).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime import clock
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
    columns and rows, flows.py); consecutive identical layers are one diagram
    (`merged_layers`). One axes in inch coordinates holds everything, with one text
    per list, so even 73 layers draw in a few seconds."""
    from matplotlib.collections import LineCollection
    from .flows import all_units, display_names
    plt = _plt()
    all_layer_units = all_units(prog)
    names = display_names(prog, all_layer_units)
    panels = merged_layers(all_layer_units, names)
    units = [u for _, _, u in panels]
    ncols = min(4, max(len(panels), 1))
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
    for i, (first, last, layer_units) in enumerate(panels):
        x0 = PANEL_W * (i % ncols)
        y0 = title_h + sum(row_h[:i // ncols])
        title = (f"layer {first}" if first == last else
                 f"layers {first}-{last} ({last - first + 1} identical)")
        segments += _draw_diagram(ax, x0, y0, title, layer_units, names)
    ax.add_collection(LineCollection(segments, colors="0.5", linewidths=0.7))
    return _save(fig, out / f"{prog.name}_weights", dpi=80, tight=False)


def merged_layers(units: list[list], names: dict[str, str]) -> list[tuple[int, int, list]]:
    """Runs of consecutive layers whose diagrams are identical (the same heads and MLP, each
    reading and writing the same named values), as (first layer, last layer, units): drawn
    once, as the model card merges identical consecutive layers."""
    def diagram(layer_units):
        return tuple((u.name, u.size, tuple(names.get(k, k) for k in u.reads),
                      tuple(names.get(k, k) for k in u.writes)) for u in layer_units)
    out: list[tuple[int, int, list]] = []
    for L, layer_units in enumerate(units):
        if out and diagram(out[-1][2]) == diagram(layer_units):
            out[-1] = (out[-1][0], L, out[-1][2])
        else:
            out.append((L, L, layer_units))
    return out


def _diagram_height(units) -> float:
    return LINE * (2 + sum(max(len(u.reads), len(u.writes), 2) + 0.6 for u in units))


def _draw_diagram(ax, x0: float, y0: float, title: str, units, names: dict[str, str]) -> list:
    """One layer's (or a run of identical layers') block diagram at (x0, y0) inches; returns
    the connecting segments."""
    ax.text(x0 + 0.1, y0 + LINE, title, fontsize=9, weight="bold", va="center")
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


TICK_FONT = 7                        # points, tick labels of the matrix panels
TICK_PITCH = 1.45 * TICK_FONT / 72   # inches between two tick labels that do not overlap
LABEL_CHARS = 40                     # longer tick labels are cut (…)
PANEL_PLOT_W = 3.6                   # inches of matrix per panel


def plot_layer_matrices(prog, L: int, out: Path) -> list[Path]:
    return _save(layer_figure(prog, L), out / f"{prog.name}_weights_layer{L:03d}", dpi=90)


def layer_figure(prog, L: int):
    """Layer L's matrices, cut to the rows and columns they use, with colour bars and the
    user's names on the axes: one row of panels per head (W_K, W_Q, W_V) and one for the MLP
    (W_1 transposed, so its inputs run down the rows, and W_2).

    Laid out in inches, not by a layout engine: each panel row gets the room its rotated
    column labels need below it, so no label reaches the next panel; tick labels are thinned
    to what the axis has room for (a 1,801-neuron MLP gets a dozen, not 1,801); a matrix whose
    entries span orders of magnitude (an MLP's W_2: many 1e-4, a few 1) gets a symmetric log
    colour scale, so its small entries are not drawn white."""
    from .flows import display_names
    plt = _plt()
    panels = _matrix_panels(prog, L, display_names(prog))
    title_h, top, gap = 0.35, 0.9, 0.25
    label_w = [max([_label_inches(p[2]) for row in panels for p in row[c:c + 1]] or [0.5])
               for c in range(3)]
    col_w = [label_w[c] + PANEL_PLOT_W + 1.1 for c in range(3)]          # + colour bar
    heights = [_row_height(r) for r in panels]
    below = [max(_label_inches(p[3]) for p in row) + 0.15 for row in panels]
    fig_w = sum(col_w) + 0.4
    fig_h = top + sum(title_h + h + b + gap for h, b in zip(heights, below)) + 0.2
    fig = plt.figure(figsize=(fig_w, max(fig_h, 2.5)))
    fig_h = fig.get_figheight()
    y = top
    for row, h, b in zip(panels, heights, below):
        y += title_h
        x = 0.2
        for c, panel in enumerate(row):
            left = x + label_w[c]
            ax = fig.add_axes((left / fig_w, 1 - (y + h) / fig_h, PANEL_PLOT_W / fig_w, h / fig_h))
            cax = fig.add_axes(((left + PANEL_PLOT_W + 0.1) / fig_w, 1 - (y + h) / fig_h,
                                0.15 / fig_w, h / fig_h))
            _draw_matrix(fig, ax, cax, *panel, size=(PANEL_PLOT_W, h))
            x += col_w[c]
        y += h + b + gap
    if not panels:
        fig.text(0.05, 0.5, f"layer {L} has no heads and no MLP: it passes the stream through",
                 fontsize=11, va="center")
    fig.suptitle(f"{prog.name} layer {L} (module.blocks[{L}]), nonzero rows and columns only: "
                 f"columns are what a matrix reads, rows what it writes (value[i] = row i of a "
                 f"stored value, ᵀ: stored transposed)", fontsize=11, x=0.01, ha="left",
                 y=1 - 0.3 / fig_h)
    return fig


def _row_height(row) -> float:
    """Inches for a row of panels: room for its row labels (thinned beyond 6.5 inches)."""
    return min(max(max(len(p[2]) for p in row) * 0.16, 1.2), 6.5)


def _label_inches(labels: list[str]) -> float:
    """The length of the longest (cut) tick label, in inches at TICK_FONT."""
    longest = max((len(_cut_label(t)) for t in labels), default=1)
    return 0.6 * TICK_FONT / 72 * longest + 0.1


def _cut_label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _matrix_panels(prog, L: int, names: dict[str, str]) -> list[list[tuple]]:
    """Rows of (matrix, title, row labels, column labels), each cut to its nonzero support."""
    from .flows import _owners
    w, lay = prog.layers[L], prog.layout
    before, mid, after = (_owners(lay, t) for t in (clock.before_layer(L), clock.attention_time(L), clock.mlp_time(L)))
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


def _draw_matrix(fig, ax, cax, mat: np.ndarray, title: str, ylabels: list, xlabels: list,
                 size: tuple[float, float]) -> None:
    from matplotlib.colors import SymLogNorm
    nonzero = np.abs(mat[mat != 0])
    lim = float(nonzero.max()) if nonzero.size else 1.0
    norm = None
    if nonzero.size and lim > 30 * float(np.median(nonzero)):       # spans orders of magnitude
        thresh = float(np.percentile(nonzero, 10))
        norm = SymLogNorm(linthresh=thresh, vmin=-lim, vmax=lim, base=10)
        title += "  (log colour scale)"
    im = ax.imshow(mat, cmap="RdBu_r", aspect="auto", interpolation="nearest",
                   **({"norm": norm} if norm else {"vmin": -lim, "vmax": lim}))
    fig.colorbar(im, cax=cax)
    cax.tick_params(labelsize=TICK_FONT)
    ax.set_title(title, fontsize=9)
    width, height = size
    for setter, labels, room in ((ax.set_yticks, ylabels, height), (ax.set_xticks, xlabels, width)):
        idx = thinned(len(labels), room)
        setter(idx, [_cut_label(labels[i]) for i in idx], fontsize=TICK_FONT)
    ax.tick_params(axis="x", labelrotation=90)
    if mat.size <= 64:                                   # small: print the numbers as well
        for (i, j), v in np.ndenumerate(mat):
            if v != 0:
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 * lim else "black")


def thinned(n: int, inches: float) -> list[int]:
    """Which of n tick labels an axis of this length shows: all if they fit at TICK_PITCH,
    else every k-th, k a round number (1, 2, 5, 10, 20, 50, ...) so that they fit."""
    fit = max(1, int(inches / TICK_PITCH))
    if n <= fit:
        return list(range(n))
    step = next(k * 10 ** e for e in range(12) for k in (1, 2, 5) if -(-n // (k * 10 ** e)) <= fit)
    return list(range(0, n, step))


__all__ = ["plot_weights", "plot_weights_overview", "plot_layer_matrices", "layer_figure",
           "merged_layers", "thinned"]
