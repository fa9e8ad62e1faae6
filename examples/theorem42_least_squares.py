"""Theorem 4.2 (Giannou et al. 2024): a transformer does least squares in context.

Compiles programs/least_squares.tp (Newton–Schulz on S = A^T A / n, X_0 = I, w_t = X_t b) and
runs it on many random problems whose condition number kappa(A) is spread over [1, 1000].
Compares the compiled prediction y_hat with numpy's a_test^T w_lstsq, and reads every iterate
w_t out of the residual stream to show the error against the number of Newton steps.

    python examples/theorem42_least_squares.py [--out DIR] [--steps T] [--problems B] [--seed S]
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

D = 4
KAPPA_BINS = [(1, 10), (10, 100), (100, 1000)]


def problems(B: int, n: int, rng):
    """B regression problems: A (n x d) with rows of norm <= 1 and kappa(A) log-uniform in [1, 1000]."""
    kappa = np.exp(rng.uniform(0, np.log(1000), B))
    A = np.empty((B, n, D))
    for b in range(B):
        U, _ = np.linalg.qr(rng.standard_normal((n, D)))
        V, _ = np.linalg.qr(rng.standard_normal((D, D)))
        M = (U * np.geomspace(1, 1 / kappa[b], D)) @ V.T
        A[b] = M / np.linalg.norm(M, axis=1).max()          # rows <= 1; kappa unchanged
    w_true = rng.standard_normal((B, D))
    y = np.einsum("bnd,bd->bn", A, w_true) + 0.1 * rng.standard_normal((B, n))
    a_test = rng.standard_normal((B, D))
    return dict(A=A, y=y, a_test=a_test), np.linalg.cond(A)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "out")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--n", type=int, default=32, help="tokens (data points) per problem")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    inputs, kappa = problems(args.problems, args.n, rng)
    prog = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params={"steps": args.steps})
    print(f"least_squares.tp, {args.steps} Newton steps: {prog.n_layers} layers (paper: T + 3 = "
          f"{args.steps + 3}), width {prog.width} (paper: 4d + 3 = {4 * D + 3})")

    # the reference: numpy's least squares, one problem at a time
    w_ls = np.stack([np.linalg.lstsq(A, y, rcond=None)[0] for A, y in zip(inputs["A"], inputs["y"])])
    y_ls = np.einsum("bd,bd->b", inputs["a_test"], w_ls)

    # one forward pass; every iterate w_t read out of the residual stream where it was written
    x = prog.encode(**inputs)
    states = prog.forward_states(x)
    y_hat = prog.decode(states[-1])["y_hat"]
    iterates = {}                                          # t -> (layer, w_t)
    for blk in prog.manifest["blocks"]:
        for var in blk["vars"]:
            name, k = var.split("@")
            if name == "w" and blk["written"] > 0:
                h = states[blk["written"]].numpy()
                iterates[int(k)] = ((blk["written"] + 1) // 2, prog.read_block(h, blk, [D]))
    for t in range(args.steps + 1):
        if t not in iterates:   # not kept in the stream: the model compiled for t steps outputs it
            short = tcompile.compile_file(ROOT / "programs" / "least_squares.tp", params={"steps": t})
            iterates[t] = (short.n_layers - 1, short.run(**inputs)["w"])
    steps = sorted(iterates)
    scale = np.maximum(np.abs(y_ls), 1.0)
    err_t = np.stack([np.abs(np.einsum("bd,bd->b", inputs["a_test"], iterates[t][1]) - y_ls) / scale
                      for t in steps])                     # (steps, B)

    err = np.abs(y_hat - y_ls) / scale
    y_int = tcompile.interpret_program(prog.program, {"steps": args.steps}, **inputs)["y_hat"]
    err_int = np.abs(y_hat - y_int) / np.maximum(np.abs(y_int), 1.0)
    print(f"{args.problems} problems, n = {args.n}, d = {D}, kappa(A) in [{kappa.min():.1f}, {kappa.max():.0f}]")
    print(f"compiled y_hat vs a_test^T w_lstsq: max |difference| / max(1, |y|) = {err.max():.2e}, "
          f"median {np.median(err):.2e}")
    err_int_ls = np.abs(y_int - y_ls) / scale
    print(f"the interpreter (the same {args.steps} steps in numpy) vs lstsq: max {err_int_ls.max():.2e}; "
          f"compiled vs interpreter: max {err_int.max():.2e}")
    print("  (both ~ 1e-16 kappa(A)^2: Newton on the normal equations, kappa(S) = kappa(A)^2, amplifies "
          "float64 rounding\n   the same way in the compiled model and in numpy)")
    print("\n kappa(A)       problems   max error   steps to reach 1e-8 (max over the problems)")
    for lo, hi in KAPPA_BINS:
        sel = (kappa >= lo) & (kappa < hi)
        reach = [next((t for t, e in zip(steps, err_t[:, b]) if e < 1e-8), None) for b in np.flatnonzero(sel)]
        need = "never" if None in reach else max(reach)
        print(f" [{lo:>4}, {hi:>4})   {sel.sum():>8}   {err[sel].max():9.2e}   {need}")
    print("\n step t  layer   median error   max error")
    for i, t in enumerate(steps):
        if t % 4 == 0 or t == steps[-1]:
            print(f" {t:>6}  {iterates[t][0]:>5}   {np.median(err_t[i]):12.2e}   {err_t[i].max():9.2e}")

    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1.2, 1, 1.1]})
    sc = ax1.scatter(y_ls, y_hat, c=np.log10(kappa), cmap="viridis", s=12)
    lim = [min(y_ls.min(), y_hat.min()), max(y_ls.max(), y_hat.max())]
    ax1.plot(lim, lim, "k--", lw=0.8, label="y = x")
    ax1.set_xlabel(r"least squares $a_{test}^T \hat w$ (numpy lstsq)")
    ax1.set_ylabel(r"compiled transformer $\hat y$")
    ax1.set_title(f"{args.problems} problems, {args.steps} steps: max rel. difference {err.max():.1e}", fontsize=10)
    ax1.set_xscale("symlog", linthresh=1)
    ax1.set_yscale("symlog", linthresh=1)
    ax1.grid(True, alpha=0.3)
    ax1.legend(loc="upper left", fontsize=8)
    ax3.loglog(kappa, np.maximum(err, 1e-17), ".", ms=4, label="compiled vs numpy lstsq")
    ax3.loglog(kappa, np.maximum(err_int_ls, 1e-17), "x", ms=3, alpha=0.6,
               label="interpreter (same algorithm, numpy) vs lstsq")
    kk = np.geomspace(1, 1000)
    ax3.loglog(kk, 1e-16 * kk ** 2, "k:", lw=1, label=r"$10^{-16}\,\kappa^2$ (rounding, normal equations)")
    ax3.set_xlabel(r"condition number $\kappa(A)$")
    ax3.set_ylabel(r"$|\hat y - a_{test}^T \hat w| \,/\, \max(1, |a_{test}^T \hat w|)$")
    ax3.set_title(f"after {args.steps} steps: difference vs κ", fontsize=10)
    ax3.set_ylim(1e-17, 1e-8)
    ax3.grid(True, which="both", alpha=0.3)
    ax3.legend(fontsize=7, loc="upper left")
    fig.colorbar(sc, ax=ax1, label=r"$\log_{10} \kappa(A)$")
    floor = 1e-17
    for (lo, hi), colour in zip(KAPPA_BINS, ("C0", "C1", "C3")):
        sel = (kappa >= lo) & (kappa < hi)
        ax2.semilogy(steps, np.maximum(np.median(err_t[:, sel], axis=1), floor), "-", color=colour,
                     label=f"κ in [{lo}, {hi}): median")
        ax2.semilogy(steps, np.maximum(err_t[:, sel].max(axis=1), floor), "--", color=colour,
                     label=f"κ in [{lo}, {hi}): max")
    ax2.set_xlabel("Newton step t (w_t is written by layer t + 1)")
    ax2.set_ylabel(r"$|a_{test}^T w_t - a_{test}^T \hat w| \,/\, \max(1, |a_{test}^T \hat w|)$")
    ax2.set_title("error of the iterate w_t read from the residual stream", fontsize=10)
    ax2.set_ylim(1e-17, 1e2)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, ncol=1)
    fig.suptitle(f"Theorem 4.2: programs/least_squares.tp compiled to {prog.n_layers} layers "
                 f"(d = {D}, n = {args.n})", fontsize=11)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "theorem42_least_squares.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
