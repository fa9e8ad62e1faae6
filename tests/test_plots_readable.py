"""`plot --what weights` (issue 12 §5): one overview picture whose block diagrams name, by the
user's words, what each head and MLP reads and writes, and `--layer L` for one layer's matrices.
Oracles: the weights themselves (which rows a head's matrices touch) and the layout (which
block holds those rows then)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tcompile.cli.main import main
from tcompile.inspection.flows import all_units, display_names

ROOT = Path(__file__).resolve().parents[1]
LEAST_SQUARES = ROOT / "programs" / "least_squares.tp"


@pytest.fixture(scope="module")
def prog():
    from tcompile.compiler.pipeline import compile_file
    return compile_file(LEAST_SQUARES, params={"d": 3, "steps": 3})


@pytest.fixture(scope="module")
def artifact(prog, tmp_path_factory):
    base = tmp_path_factory.mktemp("plots") / "ls"
    prog.save(base)
    return base


def rows_of(prog, keys):
    return {r for k in keys for r in prog.layout.block(k).rows}


def test_units_read_and_write_exactly_the_rows_the_weights_touch(prog):
    for L, units in enumerate(all_units(prog)):
        w = prog.layers[L]
        for h in range(w.heads):
            u = units[h]
            touched = {int(c) for m in (w.W_K[h], w.W_Q[h], w.W_V[h])
                       for c in np.flatnonzero(np.any(m != 0, axis=0))}
            written = {int(r) for r in np.flatnonzero(np.any(w.W_V[h] != 0, axis=1))}
            assert touched <= rows_of(prog, u.reads), (L, h)
            assert written <= rows_of(prog, u.writes), (L, h)
            # and every block named was live then: read ones written before, written ones now
            assert all(prog.layout.block(k).written <= 2 * L for k in u.reads)
            assert all(prog.layout.block(k).written <= 2 * L + 1 for k in u.writes)


def test_names_are_the_users(prog):
    names = display_names(prog)
    source = LEAST_SQUARES.read_text().split("\n")
    for key, name in names.items():
        assert not re.search(r"\btmp\d+", name), (key, name)
        m = re.match(r"(?:part of )?(\w+) \(line (\d+)\)", name)
        if m:                                   # "w (line 17)": line 17 assigns w
            assert re.match(rf"\s*{m.group(1)}\s*=", source[int(m.group(2)) - 1]), name


def test_cli_overview_is_one_picture_naming_the_values(artifact, prog, tmp_path, capsys):
    assert main(["plot", str(artifact), "--what", "weights", "-o", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["least_squares_weights.png", "least_squares_weights.svg"]
    svg = (tmp_path / "least_squares_weights.svg").read_text()
    for L in range(prog.n_layers):
        assert f">layer {L}<" in svg
    assert "w (line" in svg and "A (input)" in svg and not re.search(r"tmp\d", svg)


def test_cli_one_layer_draws_its_matrices(artifact, prog, tmp_path, capsys):
    L = prog.n_layers - 1
    assert main(["plot", str(artifact), "--what", "weights", "--layer", str(L),
                 "-o", str(tmp_path)]) == 0
    stem = f"least_squares_weights_layer{L:03d}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.png", f"{stem}.svg"]
    svg = (tmp_path / f"{stem}.svg").read_text()
    assert f"layer {L} (module.blocks[{L}])" in svg and "head 0  W_V" in svg
    assert "(row " in svg                                    # rows named by value and row


@pytest.mark.parametrize("args, words", [
    (["--layer", "99"], "--layer 99: least_squares has layers 0 to"),
    (["--layer", "-1"], "--layer -1"),
])
def test_cli_layer_out_of_range_is_a_usage_error(artifact, tmp_path, capsys, args, words):
    assert main(["plot", str(artifact), "--what", "weights", *args, "-o", str(tmp_path / "o")]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_plot_into_an_existing_file_is_a_usage_error(artifact, tmp_path, capsys):
    target = tmp_path / "taken.png"
    target.write_bytes(b"mine")
    assert main(["plot", str(artifact), "--what", "layout", "-o", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_bytes() == b"mine"


def test_a_layer_with_nothing_to_do_says_so(tmp_path):
    from tcompile.compiler.pipeline import compile_source
    from tcompile.inspection import plots
    prog = compile_source("program p\ninput a : [n]\noutput b\nb = a\n", "p.tp")
    assert prog.layers[0].heads == 0 and prog.layers[0].mlp_hidden == 0
    for layers in (None, [0]):
        svg = next(p for p in plots.plot_weights(prog, tmp_path, layers) if p.suffix == ".svg")
        assert "passes the stream through" in svg.read_text()


# ---- readable pictures (issue 16 §5): measured on the drawn figures -------------------------

LOGISTIC = ROOT / "programs" / "newton_logistic.tp"


@pytest.fixture(scope="module")
def logistic():
    from tcompile.compiler.pipeline import compile_file
    return compile_file(LOGISTIC, params={"d": 3, "steps": 3, "inv_steps": 3})


def extents(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def overlapping(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j]) and boxes[i].width and boxes[j].width]


def test_layout_labels_fit_their_bars_and_a_legend_names_every_colour(logistic):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from tcompile.inspection.plots import layout_figure
    fig = layout_figure(logistic)
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = [t for t in ax.texts if t.get_text()]
        assert len(labels) >= 10
        boxes = extents(fig, labels)
        assert overlapping(boxes) == []
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        bar_boxes = extents(fig, bars)
        for t, box in zip(labels, boxes):               # every label inside one bar
            assert any(b.x0 - 0.5 <= box.x0 and box.x1 <= b.x1 + 0.5 and b.y0 - 0.5 <= box.y0
                       and box.y1 <= b.y1 + 0.5 for b in bar_boxes), t.get_text()
        legend = ax.get_legend()
        assert legend is not None
        entries = [t.get_text() for t in legend.get_texts()]
        for var in ("x", "z", "g", "H"):                 # the program's variables, with lines
            assert any(re.fullmatch(rf"{var} \(lines? [\d, ]+\)", e) for e in entries), (var, entries)
        assert "A (input)" in entries and "y (input)" in entries
        assert any("temporary" in e for e in entries)
    finally:
        plt.close(fig)


def test_weights_overview_merges_identical_consecutive_layers(logistic, tmp_path):
    from tcompile.inspection.weight_plots import merged_layers, plot_weights_overview
    units = all_units(logistic)
    names = display_names(logistic, units)
    panels = merged_layers(units, names)
    assert sum(last - first + 1 for first, last, _ in panels) == logistic.n_layers
    runs = [(a, b) for a, b, _ in panels if b > a]
    assert runs, "no identical layers merged"

    def named(L):                                        # oracle: each layer's own diagram
        return [(u.name, u.size, [names[k] for k in u.reads], [names[k] for k in u.writes])
                for u in units[L]]
    for first, last, _ in panels:
        assert all(named(L) == named(first) for L in range(first, last + 1))
        if last + 1 < logistic.n_layers:
            assert named(last + 1) != named(first)       # runs are maximal
    svg = next(p for p in plot_weights_overview(logistic, tmp_path) if p.suffix == ".svg").read_text()
    a, b = runs[0]
    assert f">layers {a}-{b} ({b - a + 1} identical)<" in svg
    assert f">layer {a + 1}<" not in svg


def test_one_layer_picture_thins_ticks_scales_w2_and_keeps_labels_off_other_panels(logistic):
    import matplotlib.pyplot as plt
    from tcompile.inspection.weight_plots import TICK_PITCH, layer_figure
    L = int(np.argmax([w.mlp_hidden for w in logistic.layers]))
    hidden = logistic.layers[L].mlp_hidden
    assert hidden > 500
    fig = layer_figure(logistic, L)
    try:
        fig.canvas.draw()
        panels = [ax for ax in fig.axes if ax.get_title()]
        dpi = fig.dpi
        for ax in panels:
            box = ax.get_window_extent()
            for ticks, length in ((ax.get_xticklabels(), box.width), (ax.get_yticklabels(), box.height)):
                shown = [t for t in ticks if t.get_text()]
                assert len(shown) <= max(1, length / dpi / TICK_PITCH) + 1, (ax.get_title(), len(shown))
                assert overlapping(extents(fig, shown)) == [], ax.get_title()
        mlp = [ax for ax in panels if ax.get_title().startswith("MLP")]
        assert len(mlp) == 2 and len([t for t in mlp[0].get_yticklabels() if t.get_text()]) >= 1
        assert 5 <= len([t for t in mlp[0].get_xticklabels() if t.get_text()]) <= 40 < hidden
        # no tick label of one panel reaches into another panel
        for ax in panels:
            labels = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
            for other in panels:
                if other is not ax:
                    obox = other.get_window_extent()
                    assert not any(b.overlaps(obox) for b in extents(fig, labels)), \
                        (ax.get_title(), other.get_title())
        # W_2: most of its nonzero entries are visibly coloured, not white
        w2 = next(ax for ax in mlp if "W_2" in ax.get_title())
        im = w2.images[0]
        mat = np.asarray(im.get_array())
        rgba = im.cmap(im.norm(mat[mat != 0]))
        coloured = np.abs(rgba[:, :3] - 1).max(axis=1) > 0.1
        assert coloured.mean() > 0.9, coloured.mean()
    finally:
        plt.close(fig)


def test_thinned_ticks_are_round_steps_that_fit():
    from tcompile.inspection.weight_plots import TICK_PITCH, thinned
    assert thinned(5, 10.0) == [0, 1, 2, 3, 4]
    ticks = thinned(1801, 3.6)
    assert len(ticks) <= 3.6 / TICK_PITCH and ticks[1] - ticks[0] in (100, 200, 500)
    assert ticks[0] == 0 and ticks[-1] > 1801 - (ticks[1] - ticks[0]) - 1


def test_convergence_says_what_the_star_is_and_counts_whole_layers(logistic):
    import matplotlib.pyplot as plt
    from tcompile.inspection.plots import convergence_figure
    from tcompile.inspection.sampling import sample_inputs
    inputs = sample_inputs(logistic.program, {"d": 3, "steps": 3, "inv_steps": 3}, n=8, batch=2, seed=1)
    fig = convergence_figure(logistic, inputs)
    try:
        fig.canvas.draw()
        caption = " ".join(t.get_text() for t in fig.texts)
        assert "x*: the exact answer, taken as the interpreter's x after 16 steps" in caption
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
            assert "x*" in ax.get_ylabel()
    finally:
        plt.close(fig)
