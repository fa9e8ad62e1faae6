"""Figure 7 (Giannou et al. 2024): the loss of regularised logistic regression along the layers
of a transformer that runs damped Newton, d = 5, n = 26, mu = 0.1.

Compiles programs/newton_logistic.tp (sigmoid, sqrt and 1/x as ReLU pieces, H^-1 by k
Newton–Schulz steps) and reads every iterate x_t out of the residual stream. Plots
f(x_t) - f(x*) against the layer that wrote x_t, for the compiled weights, for the exact
iterates of the same algorithm (the reference interpreter: exact functions, float64), and
for textbook damped Newton with an exact inverse Hessian (numpy).

    python examples/figure7_logistic.py [--out DIR] [--problems B] [--steps T] [--seed S]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tcompile  # noqa: E402
from tcompile.inspection.trace import interpreter_assignments  # noqa: E402

D, N, MU = 5, 26, 0.1


def problems(B: int, rng):
    """Labels from a logistic model on unit-bounded features; x0 = 0."""
    a = rng.standard_normal((B, N, D))
    A = a / np.linalg.norm(a, axis=2, keepdims=True) * rng.uniform(0.3, 1.0, (B, N, 1))
    x_true = 3 * rng.standard_normal((B, D)) / np.sqrt(D)
    p = 1 / (1 + np.exp(-np.einsum("bnd,bd->bn", A, x_true)))
    y = np.where(rng.random((B, N)) < p, 1.0, -1.0)
    return dict(A=A, y=y, x0=np.zeros((B, D)))


def loss(x, A, y):
    """f(x) = 1/n sum log(1 + exp(-y a^T x)) + mu/2 ||x||^2, for a batch of x (B, d)."""
    m = -y * np.einsum("bnd,bd->bn", A, x)
    return np.logaddexp(0, m).mean(axis=1) + MU / 2 * np.sum(x * x, axis=1)


def damped_newton(A, y, x, steps):
    """Textbook damped Newton with exact H^-1 (numpy): [x_0, x_1, ...], each (B, d)."""
    out = [x]
    for _ in range(steps):
        z = np.einsum("bnd,bd->bn", A, x)
        p = 1 / (1 + np.exp(y * z))
        g = MU * x - np.einsum("bnd,bn->bd", A, y * p) / N
        H = np.einsum("bni,bn,bnj->bij", A, p * (1 - p), A) / N + MU * np.eye(D)
        v = np.linalg.solve(H, g[..., None])[..., 0]
        lam = np.sqrt(np.einsum("bd,bd->b", g, v))
        x = x - (2 * np.sqrt(MU) / (2 * np.sqrt(MU) + lam))[:, None] * v
        out.append(x)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "out")
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--steps", type=int, default=8, help="damped Newton steps")
    ap.add_argument("--inv-steps", type=int, default=6, help="Newton–Schulz steps for H^-1 (k)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    params = {"steps": args.steps, "inv_steps": args.inv_steps, "mu": MU}
    prog = tcompile.compile_file(ROOT / "programs" / "newton_logistic.tp", params=params)
    rep = prog.report
    k = args.inv_steps
    per_step = rep["depth_per_iteration"]["x"]
    print(f"newton_logistic.tp (d = {D}, n = {N}, mu = {MU}, k = {k}): {prog.n_layers} layers, "
          f"{per_step:g} per damped Newton step (paper: 2k + 11 = {rep['paper_depth']['per_iteration']}), "
          f"width {prog.width}, {rep['mlp_hidden_total']} ReLUs in all")

    inputs = problems(args.problems, np.random.default_rng(args.seed))
    A, y = inputs["A"], inputs["y"]

    # the compiled iterates: x_t decoded where the layer that computes it wrote it
    states = prog.forward_states(prog.encode(**inputs))
    compiled = {}                                           # t -> (layer, x_t (B, d))
    for blk in prog.manifest["blocks"]:
        for var in blk["vars"]:
            name, t = var.split("@")
            if name == "x" and int(t) not in compiled:
                compiled[int(t)] = ((blk["written"] + 1) // 2,
                                    prog.read_block(states[blk["written"]].numpy(), blk, [D]))
    for t in range(1, args.steps + 1):
        if t not in compiled:   # not kept in the stream: the model compiled for t steps outputs it
            short = tcompile.compile_file(ROOT / "programs" / "newton_logistic.tp", params=dict(params, steps=t))
            compiled[t] = (short.n_layers, short.run(**inputs)["x"])
    steps = sorted(compiled)
    layers = np.array([compiled[t][0] for t in steps])
    # the same algorithm, exact functions, float64 (the reference interpreter)
    exact = interpreter_assignments(prog.program, {k_: float(v) for k_, v in prog.manifest["params"].items()},
                                    inputs, N)
    newton = damped_newton(A, y, inputs["x0"], max(steps) + 40)
    x_star = newton[-1]
    f_star = loss(x_star, A, y)
    g_star = MU * x_star - np.einsum("bnd,bn->bd", A, y / (1 + np.exp(y * np.einsum("bnd,bd->bn", A, x_star)))) / N
    assert np.abs(g_star).max() < 1e-14, "x* is not converged"

    def gap(x):
        return loss(x, A, y) - f_star                        # (B,)

    gaps = {"compiled": np.stack([gap(compiled[t][1]) for t in steps]),
            "interpreter": np.stack([gap(exact[f"x@{t}"]) for t in steps]),
            "numpy": np.stack([gap(newton[t]) for t in steps])}
    dist = np.stack([np.linalg.norm(compiled[t][1] - exact[f"x@{t}"], axis=1) for t in steps])

    print(f"{args.problems} problems; f(x) - f(x*) (median over the problems), x* by {len(newton) - 1} "
          f"exact damped Newton steps (gradient <= {np.abs(g_star).max():.0e})")
    print(" step  layer   compiled      interpreter   numpy exact H^-1   max ||x_compiled - x_interp||")
    for i, t in enumerate(steps):
        print(f" {t:>4}  {layers[i]:>5}   {np.median(gaps['compiled'][i]):11.3e}   "
              f"{np.median(gaps['interpreter'][i]):11.3e}   {np.median(gaps['numpy'][i]):16.3e}   {dist[i].max():.2e}")
    print(f"final: max f - f* compiled {gaps['compiled'][-1].max():.2e}, interpreter "
          f"{gaps['interpreter'][-1].max():.2e}; max ||x - x*|| compiled "
          f"{np.linalg.norm(compiled[steps[-1]][1] - x_star, axis=1).max():.2e}")

    floor = 1e-17
    paper_layers = np.array(steps) * rep["paper_depth"]["per_iteration"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"compiled": ("o-", "compiled transformer"),
              "interpreter": ("x--", "interpreter (same algorithm, exact functions)"),
              "numpy": (":", "damped Newton, exact H⁻¹ (numpy)")}
    for key, (fmt, label) in styles.items():
        ax1.semilogy(layers, np.maximum(gaps[key][:, 0], floor), fmt, ms=6, label=label)
    ax1.set_title("one problem", fontsize=10)
    for key, (fmt, label) in styles.items():
        med = np.maximum(np.median(gaps[key], axis=1), floor)
        line, = ax2.semilogy(layers, med, fmt, ms=6, label=f"{label.split(' (')[0]}: median")
        if key == "compiled":
            ax2.fill_between(layers, np.maximum(gaps[key].min(axis=1), floor),
                             np.maximum(gaps[key].max(axis=1), floor), color=line.get_color(), alpha=0.2,
                             label="compiled: min–max")
    ax2.semilogy(paper_layers, np.maximum(np.median(gaps["interpreter"], axis=1), floor), "^", ms=5,
                 color="gray", alpha=0.7,
                 label=f"interpreter at the paper's depth\n({rep['paper_depth']['per_iteration']} layers per step)")
    ax2.set_title(f"{args.problems} problems", fontsize=10)
    resolution = np.finfo(float).eps * float(np.median(f_star))
    for ax in (ax1, ax2):
        ax.axhline(resolution, color="gray", ls="-.", lw=0.8, label="float64 resolution of f (ε·f*)")
        ax.set_xlabel(f"layer  (one damped Newton step = {per_step:g} layers)")
        ax.set_ylabel(r"$f(x_t) - f(x^*)$   (exact 0 drawn at $10^{-17}$)")
        ax.set_ylim(3e-18, 10)
        ax.set_xlim(-3, paper_layers[-1] + 5)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7, loc="upper right")
    ax2.legend(fontsize=7, loc="center right")
    fig.suptitle(f"Figure 7: μ-regularised logistic regression (d = {D}, n = {N}, μ = {MU}), "
                 f"newton_logistic.tp compiled to {prog.n_layers} layers", fontsize=11)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "figure7_logistic.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
