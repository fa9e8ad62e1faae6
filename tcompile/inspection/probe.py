"""Probing: does a model's layer hold an algorithm's iterate? Held-out linear probes for a program.

`probe(activations, prog, inputs)` takes the per-layer hidden states of ANY model on a batch of
problems (a trained transformer's, or a compiled one's) and the same problems as the program's
inputs; the interpreter (float64, exact) gives every iterate of every program variable on them
(`x@k`: the k-th assignment to x). For each layer and each iterate it fits a ridge regression
(closed form) from the layer's features to the iterate's entries on a training split of the
problems and reports R² on the held-out rest:

    R² = 1 − Σ (Y − Ŷ)² / Σ (Y − mean_train(Y))²     (summed over the iterate's entries)

so 1 means the iterate is a linear read-out of the layer, 0 no better than its mean. The result
is a layer × iteration table per variable (`ProbeResult.r2[name]`) and a heatmap.

Features: each layer's states (batch, n, D) restricted to `tokens` (an index, a list of
indices, or None for all tokens) and flattened per problem; a 2-D (batch, features) array is
taken as it is. The ridge penalty is `alpha` times the mean diagonal of the training Gram matrix
(scale-free), solved in the primal or the dual, whichever is smaller, after centring.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..language.points import point_count, point_variable
from ..errors import InputError
from ..runtime import clock
from ..runtime.dispatch import split_counts


@dataclass
class ProbeResult:
    """Held-out R² of a probe from every layer to every iterate of every probed variable."""
    layers: list[str]                          # layer names, in the order given
    points: dict[str, list[str]]               # variable → its iterates x@k, in program order
    r2: dict[str, np.ndarray]                  # variable → (layers, iterates) held-out R²
    n_train: int
    n_test: int
    alpha: float
    best_layer: dict[str, list[int]] = field(default_factory=dict)   # per iterate: argmax layer

    def table(self, name: str) -> str:
        """One variable's R² table as text (layers down, iterates across)."""
        pts = self.points[name]
        head = f"{'layer':>12s} " + "".join(f"{p:>9s}" for p in pts)
        rows = [f"{lay:>12s} " + "".join(f"{v:9.3f}" for v in self.r2[name][i])
                for i, lay in enumerate(self.layers)]
        return "\n".join([f"held-out R² of ridge probes for {name} "
                          f"({self.n_train} train / {self.n_test} test problems)", head, *rows])

    def as_dict(self) -> dict:
        return {"layers": self.layers, "points": self.points, "n_train": self.n_train,
                "n_test": self.n_test, "alpha": self.alpha,
                "r2": {k: v.tolist() for k, v in self.r2.items()},
                "best_layer": self.best_layer}

    def heatmap(self, path, names=None, title: str | None = None) -> Path:
        """A heatmap per variable (layers × iterates, R² from 0 to 1) written to `path` (PNG)."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(names or self.r2)
        fig, axes = plt.subplots(1, len(names), figsize=(1.2 + 0.45 * max(len(self.points[n]) for n in names)
                                                         * len(names) + 2.5 * len(names),
                                                         1.5 + 0.32 * len(self.layers)), squeeze=False)
        for ax, name in zip(axes[0], names):
            im = ax.imshow(np.clip(self.r2[name], 0, 1), vmin=0, vmax=1, cmap="viridis",
                           aspect="auto", origin="upper")
            ax.set_xticks(range(len(self.points[name])))
            ax.set_xticklabels([str(point_count(p)) for p in self.points[name]], fontsize=7)
            ax.set_yticks(range(len(self.layers)))
            ax.set_yticklabels(self.layers, fontsize=7)
            ax.set_xlabel(f"iterate k of {name} (the k-th assignment, {name}@k)")
            ax.set_ylabel("layer")
            ax.set_title(f"{name}: held-out R²", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def features(states, tokens=None) -> np.ndarray:
    """(batch, n, D) states → (batch, features): the chosen tokens, flattened per problem."""
    a = states.detach().cpu().numpy() if hasattr(states, "detach") else np.asarray(states)
    a = a.astype(np.float64, copy=False)
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise InputError(f"activations: each layer must be (batch, n, D) or (batch, features), "
                         f"got shape {list(a.shape)}")
    if tokens is not None:
        a = a[:, [tokens] if isinstance(tokens, int) else list(tokens), :]
    return a.reshape(a.shape[0], -1)


def ridge_r2(X_train, Y_train, X_test, Y_test, alpha: float) -> float:
    """Held-out R² of a ridge regression fitted in closed form on centred training data."""
    mx, my = X_train.mean(0), Y_train.mean(0)
    Xc, Yc = X_train - mx, Y_train - my
    m, p = Xc.shape
    if p <= m:
        G = Xc.T @ Xc
        lam = alpha * max(np.trace(G) / p, 1e-300)
        W = np.linalg.solve(G + lam * np.eye(p), Xc.T @ Yc)
    else:                                           # dual: fewer problems than features
        K = Xc @ Xc.T
        lam = alpha * max(np.trace(K) / p, 1e-300)
        W = Xc.T @ np.linalg.solve(K + lam * np.eye(m), Yc)
    pred = (X_test - mx) @ W + my
    total = float(np.sum((Y_test - my) ** 2))
    if total == 0.0:
        return float("nan")                         # a constant iterate: nothing to explain
    return 1.0 - float(np.sum((Y_test - pred) ** 2)) / total


def iterates(prog, inputs: dict) -> tuple[dict[str, np.ndarray], int]:
    """The interpreter's value of every assignment (`x@k` → (batch, ...)) on these inputs
    (checked as prog.run checks them; a shared build's run-time counts may be among them,
    `steps=50`), and the batch size."""
    from .reference import interpreter_assignments
    counts, inputs = split_counts(prog, inputs)
    prepared = prog.prepare_inputs(inputs)
    if prepared.batch is None:
        raise InputError("probe needs a batch of problems: give the inputs a leading batch axis")
    return interpreter_assignments(prog.program, prog.interpreter_params(counts),
                                   prepared.arrays, prepared.n), prepared.size


def probe(activations, prog, inputs: dict, variables=None, *, tokens=None, alpha: float = 1e-6,
          test_fraction: float = 0.25, seed: int = 0) -> ProbeResult:
    """Held-out ridge probes from each layer of `activations` to each iterate of each variable
    of `prog`'s program, on the problems `inputs` (a batch; see the module docstring).

    activations: a list of per-layer arrays or tensors (layer i named str(i)) or a dict
    name → array, each (batch, n, D) or (batch, features), the batch in the order of `inputs`.
    variables: program variable names (default: every assigned variable with more than one
    iterate). tokens: which token positions to read (None: all)."""
    if isinstance(activations, dict):
        names, layers = [str(k) for k in activations], list(activations.values())
    else:
        layers = list(activations)
        names = [str(i) for i in range(len(layers))]
    if not layers:
        raise InputError("activations: no layers given")
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not alpha > 0:
        raise InputError(f"alpha must be > 0, got {alpha!r}")
    want, batch = iterates(prog, inputs)
    by_var: dict[str, list[str]] = {}
    for point in sorted(want, key=lambda p: (point_variable(p), point_count(p))):
        by_var.setdefault(point_variable(point), []).append(point)
    if variables is None:
        variables = [v for v, pts in by_var.items() if len(pts) > 1]
    unknown = [v for v in variables if v not in by_var]
    if unknown:
        raise InputError(f"variables: {', '.join(map(repr, unknown))} not assigned by "
                         f"{prog.name} (its variables: {', '.join(sorted(by_var))})")
    feats = [features(a, tokens) for a in layers]
    for name, f in zip(names, feats):
        if f.shape[0] != batch:
            raise InputError(f"activations[{name!r}] has {f.shape[0]} problems; the inputs have {batch}")
    order = np.random.default_rng(seed).permutation(batch)
    n_test = max(1, int(round(test_fraction * batch)))
    if batch - n_test < 2:
        raise InputError(f"probe needs at least 3 problems (2 to fit, 1 to test), got {batch}")
    test, train = order[:n_test], order[n_test:]
    r2 = {}
    for var in variables:
        table = np.empty((len(feats), len(by_var[var])))
        for j, point in enumerate(by_var[var]):
            Y = want[point].reshape(batch, -1)
            for i, X in enumerate(feats):
                table[i, j] = ridge_r2(X[train], Y[train], X[test], Y[test], alpha)
        r2[var] = table
    best = {v: [int(np.nanargmax(t[:, j])) if np.any(np.isfinite(t[:, j])) else -1
                for j in range(t.shape[1])] for v, t in r2.items()}
    return ProbeResult(names, {v: by_var[v] for v in variables}, r2, len(train), len(test),
                       float(alpha), best)


def compiled_activations(prog, inputs: dict) -> dict[str, np.ndarray]:
    """A compiled model's own hidden states on `inputs`, named like a trained model's: "embed"
    (the encoder's x) and "L" (after layer L's MLP: blocks.L.hook_resid_post). A shared build's
    at its run-time counts, given among the inputs (`{**inputs, "steps": 50}`; the built ones
    by default): "L" is the L-th layer it runs, counted from 0 in run order."""
    counts, inputs = split_counts(prog, inputs)
    states = prog.sublayer_states(prog.prepare_inputs(inputs), **counts)
    layers = (len(states) - 1) // 2
    return {"embed": states[0], **{str(L): states[clock.mlp_time(L)] for L in range(layers)}}


def written_layer(prog, /, **counts) -> dict[str, str]:
    """For a compiled model: the activation name (compiled_activations) after which each
    stored iterate `x@k` first appears — the layer a probe should find it in; a shared
    build's at its run-time counts (`steps=50`), in the layout of that run (run_layout.py)."""
    from .run_layout import run_layout
    out = {}
    for blk in sorted(run_layout(prog, **counts)[0].blocks, key=lambda b: b.written):
        for point in blk.vars:
            out.setdefault(point, "embed" if blk.written == clock.ENCODER else str(clock.layer_of(blk.written)))
    return out


__all__ = ["probe", "ProbeResult", "ridge_r2", "features", "iterates", "compiled_activations",
           "written_layer"]
