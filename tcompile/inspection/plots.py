"""Pictures of a compiled model (matplotlib, Agg; PNG and SVG).

- layout: rows × sublayers, which value occupies which rows when (the allocator's work);
- weights (weight_plots.py): one overview, every layer as a block diagram of what each head
  and the MLP read and write, by the user's names; with a layer, that layer's matrices;
- convergence: error to the exact answer vs layer, the compiled model's iterates beside the
  exact algorithm's (the interpreter's), for each output.

A shared build (loops run as loops) draws both: its layout at the counts its blocks come from,
its convergence after every application of a loop body.

Layers are counted from 0, as in the report, the trace and the hooks (runtime/card.py says why).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..language.points import point_count, point_variable
from ..runtime import clock
from .figures import _plt, _save
from .weight_plots import plot_weights


def _base(blk) -> str:
    """The program variable (or input/constant name) a block belongs to: one colour each."""
    return point_variable(blk.label).split(":")[-1]


LAYOUT_FONT = 7          # points, the labels inside the bars


def plot_layout(prog, out: Path) -> list[Path]:
    return _save(layout_figure(prog), out / f"{prog.name}_layout")


def layout_figure(prog):
    """Rows × sublayers: one bar per stored value over its lifetime, one colour per program
    variable (its temporaries, values the program never named, in a lighter shade of the
    variable they are computed for), a legend naming every colour by the program's words,
    and a label inside a bar only where it fits (no label overlaps another or leaves its
    bar: the legend names what is too short to label)."""
    from matplotlib.patches import Patch, Rectangle
    from .flows import display_names
    plt = _plt()
    lay, title = _drawn_layout(prog)
    T = lay.n_sublayers
    names = display_names(prog)
    owner = {blk.key: _owner(blk, names) for blk in lay.blocks}
    colours = _layout_colours(prog, owner, plt)
    fig = plt.figure(figsize=(min(5 + 0.2 * T, 40), 2.2 + 0.26 * lay.width))
    ax = fig.add_axes((0.06, 0.14, 0.74, 0.76))
    ax.set_ylim(lay.width - 0.5, -0.5)
    ax.set_xlim(-0.5, T + 0.5)
    px_x, px_y = (abs(d) for d in ax.transData.transform((1, 1)) - ax.transData.transform((0, 0)))
    char_w, char_h = 0.62 * LAYOUT_FONT * fig.dpi / 72, 1.25 * LAYOUT_FONT * fig.dpi / 72
    for blk in lay.blocks:
        start = blk.written
        length = max(blk.live_until(T) - start, 0.6)
        base, temporary = owner[blk.key]
        colour = colours[base]
        face = _lighter(colour) if temporary else colour
        for r0, n in _runs(sorted(blk.rows)):
            ax.add_patch(Rectangle((start, r0 - 0.5), length, n, facecolor=face, edgecolor="0.25",
                                   linewidth=0.3, hatch="///" if temporary else None))
            text = None if temporary else _short(blk)
            if text and len(text) * char_w + 4 <= length * px_x and char_h <= n * px_y:
                ax.text(start + length / 2, r0 - 0.5 + n / 2, text, ha="center", va="center",
                        fontsize=LAYOUT_FONT, clip_on=True)
    handles = [Patch(facecolor=colours[b], edgecolor="0.25", label=_legend_label(b, prog, names))
               for b in colours]
    handles.append(Patch(facecolor="white", edgecolor="0.25", hatch="///",
                         label="hatched, lighter: a temporary\n(unnamed) computed for that value"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              title="values (labels inside bars:\nx@k = k-th assignment to x)", title_fontsize=8,
              frameon=False)
    ax.set_xlabel("sublayer (0 = the input; 2L+1 = attention of layer L, 2L+2 = its MLP; "
                  "layers counted from 0, as module.blocks[L])")
    ax.set_ylabel("row of the embedding")
    ax.set_title(title, fontsize=10)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _drawn_layout(prog):
    """The layout the picture draws, and its title. A shared build's blocks carry the times of
    the unrolling its stored layers were folded from (loops.py `base_counts`): that run is
    drawn, layer for layer what the shared build runs at those counts; at any other count the
    loop bodies repeat in the same rows."""
    lay = prog.layout
    title = f"{prog.name}: which value occupies which rows when"
    if prog.loops is None:
        return lay, f"{title} ({lay.n_layers} layers, width {lay.width})"
    from dataclasses import replace
    base = dict(prog.loops.base_counts)
    lay = replace(lay, n_layers=len(prog.loops.expand(base)))
    runs = ", ".join(f"{s.param} = {base[s.key]}" if s.param else
                     f"line {s.line} × {base[s.key]}" for s in prog.loops.loops if s.key in base)
    return lay, (f"{title}: shared build run at {runs} ({lay.n_layers} layers of "
                 f"{prog.n_layers} stored, width {lay.width});\nmore iterations repeat the "
                 "loop bodies in the same rows")


def _owner(blk, names: dict[str, str]) -> tuple[str, bool]:
    """(the program name a block's colour is keyed by, whether it is a temporary)."""
    if blk.vars or blk.kind in ("input", "const"):
        return _base(blk), False
    shown = names.get(blk.key, "")
    if shown.startswith("part of "):
        return shown[8:].split(" (")[0], True
    return "temporaries", True


def _layout_colours(prog, owner: dict, plt) -> dict[str, tuple]:
    """One colour per program name, in order of first appearance (inputs and variables from a
    qualitative palette, constants in greys)."""
    order = []
    for blk in sorted(prog.layout.blocks, key=lambda b: (b.written, min(b.rows))):
        base = owner[blk.key][0]
        if base not in order:
            order.append(base)
    consts = {_base(b) for b in prog.layout.blocks if b.kind == "const"}
    palette = [plt.get_cmap("tab10")(i) for i in range(10)] + \
        [plt.get_cmap("Dark2")(i) for i in range(8)] + [plt.get_cmap("Set1")(i) for i in range(9)]
    out, i, g = {}, 0, 0
    for base in order:
        if base in consts or base == "temporaries":
            out[base] = (0.55 + 0.1 * (g % 4),) * 3 + (1.0,)
            g += 1
        else:
            out[base] = palette[i % len(palette)]
            i += 1
    return out


def _lighter(colour, amount: float = 0.55):
    r, g, b, a = colour
    return (r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount, a)


def _runs(rows: list[int]):
    """Contiguous runs of sorted rows as (first row, length)."""
    start = prev = rows[0]
    for r in rows[1:]:
        if r != prev + 1:
            yield start, prev - start + 1
            start = r
        prev = r
    yield start, prev - start + 1


def _short(blk) -> str:
    """The label inside a bar: `x@3` (the latest assignment it holds), an input's or a
    constant's name."""
    if blk.vars:
        return blk.vars[-1] + ("ᵀ" if blk.transposed else "")
    return {"eye": "I", "inv_n": "1/n", "eye_inv_n": "I/n",
            "ones_inv_n": "ones/n"}.get(_base(blk), _base(blk))


def _legend_label(base: str, prog, names: dict[str, str]) -> str:
    """`x (lines 45, 54)`, `A (input)`, `I` — the legend's words for one colour."""
    if base == "temporaries":
        return "temporaries"
    from .naming import assignment_lines
    lines = assignment_lines(prog.program, prog.info.float_params())
    mine = sorted({n for k, n in lines.items() if point_variable(k) == base})
    if mine:
        return f"{base} (line{'s' * (len(mine) > 1)} {', '.join(map(str, mine))})"
    blk = next(b for b in prog.layout.blocks if _base(b) == base)
    return names.get(blk.key, base).rstrip("ᵀ")


def convergence_data(prog, inputs: dict, reference: dict | None = None) -> dict:
    """Per output: [(layers applied, error)] for the compiled model and for the exact iterates
    (a count, not a layer index: k layers applied is after layer k - 1; 0 is the input).
    A shared build's run-time counts may be given among the inputs by name (`steps=60`).

    The exact answer is `reference` if given, else the interpreter run with twice the
    program's `steps` param (plus 10), else the interpreter's final output.
    """
    from ..language.interpreter import interpret_program
    from ..runtime.dispatch import split_counts
    from .reference import interpreter_assignments
    counts, inputs = split_counts(prog, inputs)
    params = prog.interpreter_params(counts)
    prepared = prog.prepare_inputs(inputs)
    if reference is None:
        more = dict(params)
        if "steps" in more:
            more["steps"] = 2 * more["steps"] + 10
        reference = interpret_program(prog.program, more, **prepared.arrays)
    exact = interpreter_assignments(prog.program, params, prepared.arrays, prepared.n)
    if prog.loops is not None:
        return _loop_convergence(prog, prepared, exact, reference,
                                 {**prog.loops.params, **counts})
    states = prog.sublayer_states(prepared)
    return {spec.name: _convergence(prog, spec, states, exact, _flat_ref(spec, reference))
            for spec in prog.layout.outputs}


def _flat_ref(spec, reference: dict) -> np.ndarray:
    ref = np.asarray(reference[spec.name])
    return ref.reshape((-1, *ref.shape[-len(spec.shape):])) if spec.shape else ref.reshape(-1)


def _loop_convergence(prog, prepared, exact: dict, reference: dict, counts: dict) -> dict:
    """A shared build's: its stored layers run many times, so the points are where a value is
    known to be — each top-level loop's state after every application of its body (read at
    the layers run so far, at the built counts), and the outputs at the end; the exact
    iterate is the interpreter's value of the same program point, at the same layer."""
    from .trace import loop_iterates
    run = loop_iterates(prog, prepared, counts, exact)
    out = {}
    for spec in prog.layout.outputs:
        ref = _flat_ref(spec, reference)
        mine = [it for it in run.iterates if point_variable(it.name) == spec.name]
        compiled = [(it.layers, _err(it.value, ref)) for it in mine if it.layers < run.layers]
        compiled += [(run.layers, _err(got, ref)) for final, (_blk, got) in run.outputs.items()
                     if point_variable(final) == spec.name]
        iterates = [(it.layers, _err(exact[it.name], ref), it.name) for it in mine]
        # the output's own program point beside the compiled output (the last iterate, where
        # no application's state holds it: a read-ahead loop's last iterations)
        seen = {it.name for it in mine}
        iterates += [(run.layers, _err(exact[final], ref), final) for final in run.outputs
                     if point_variable(final) == spec.name and final in exact and final not in seen]
        out[spec.name] = {"compiled": compiled, "exact": sorted(iterates)}
    return out


def _convergence(prog, spec, states, exact: dict, reference) -> dict:
    """One output's error per layer, compiled (its latest stored block after each layer) and
    exact (each stored iterate of the interpreter, at the layer that writes it)."""
    name, ref = spec.name, reference
    blocks = [b for b in prog.layout.blocks if any(point_variable(v) == name for v in b.vars)]
    iterates = []
    for b in blocks:
        var = max((v for v in b.vars if point_variable(v) == name), key=point_count)
        if var in exact:
            iterates.append((clock.layer_of(b.written) + 1, _err(exact[var], ref), var))
    compiled = []
    for ell in range(1, prog.n_layers + 1):
        t = clock.mlp_time(ell - 1)                 # after layer ell (counted from 1 here)
        live = [b for b in blocks if b.written <= t]
        if live:
            latest = max(live, key=lambda b: b.written)
            compiled.append((ell, _err(prog.read_block(states[t], latest, spec.shape), ref)))
    return {"compiled": compiled, "exact": sorted(iterates)}


def _err(x, ref) -> float:
    x, ref = np.asarray(x), np.asarray(ref)
    return float(np.max(np.linalg.norm((x - ref).reshape(len(x), -1), axis=1)))


def plot_convergence(prog, out: Path, inputs: dict, reference: dict | None = None) -> list[Path]:
    return _save(convergence_figure(prog, inputs, reference), out / f"{prog.name}_convergence")


def convergence_figure(prog, inputs: dict, reference: dict | None = None):
    """Per loop output, its error to x* after each layer (whole layer counts on the axis),
    compiled beside exact; the caption says what x* is (the reference `convergence_data`
    used)."""
    from matplotlib.ticker import MaxNLocator
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    steps = inputs.get("steps", prog.info.params.get("steps"))
    fig.text(0.01, 0.01, _star_caption(steps, data, reference), fontsize=8, va="bottom",
             wrap=True)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def _star_caption(steps, data: dict, reference: dict | None) -> str:
    """What the starred value is: the reference given, or the interpreter run further
    (`steps`: the run's, a run-time count or the built one)."""
    names = ", ".join(f"{n}*" for n in data)
    if reference is not None:
        return f"{names}: the reference answer given to the plot"
    if steps is not None:
        return (f"{names}: the exact answer, taken as the interpreter's {', '.join(data)} after "
                f"{2 * int(steps) + 10} steps (2 × steps + 10: the exact algorithm, float64, run "
                f"well past this run's {int(steps)}); errors are the largest over the problems "
                f"in the inputs")
    return (f"{names}: the interpreter's final {', '.join(data)} (float64, exact functions); "
            f"errors are the largest over the problems in the inputs")


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
