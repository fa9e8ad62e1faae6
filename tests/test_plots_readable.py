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
