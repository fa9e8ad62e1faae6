"""Lemma 4.1 (Giannou et al. 2024): one transformer layer performs one Newton–Schulz step

    X_{t+1} = 2 X_t - X_t A X_t        (X_0 = A^T / ||A||^2 bound, converging to A^-1)

Compiles programs/newton_inverse.tp, runs it on a non-symmetric A, reads X before and after
every layer out of the residual stream (run_with_cache, decoded with the manifest's layout) and
checks the layer's output against numpy's step applied to the decoded input. Then plots
||X_t - A^-1|| against the layer, compiled and exact, beside the one-layer mapping error.

    python examples/lemma41_newton_inverse.py [--out DIR] [--steps T] [--kappa K] [--seed S]
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


def random_matrix(d: int, kappa: float, rng) -> np.ndarray:
    """Non-symmetric A = U diag(s) V^T with ||A||_2 = 1 and condition number kappa."""
    U, _ = np.linalg.qr(rng.standard_normal((d, d)))
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (U * np.geomspace(1.0, 1.0 / kappa, d)) @ V.T


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "out")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--kappa", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    A = random_matrix(4, args.kappa, rng)
    A_inv = np.linalg.inv(A)
    prog = tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp",
                                 params={"steps": args.steps, "norm_bound": 1})
    print(f"A (4x4): ||A||_2 = {np.linalg.norm(A, 2):.3f}, condition number {np.linalg.cond(A):.2f}, "
          f"||A - A^T|| = {np.linalg.norm(A - A.T):.3f} (not symmetric)")
    rep = prog.report
    print(f"compiled: {prog.n_layers} layers for {args.steps} steps, width {prog.width}, "
          f"heads per layer {rep['heads_per_layer'][0]}, no MLP; "
          f"{rep['depth_per_iteration']['X']:g} layer per step (paper: {rep['paper_depth']['per_iteration']} "
          f"for a non-symmetric A)")
    for label in prog.layers[1].head_labels:
        print(f"  layer 2 head: {label}")

    x = prog.encode(A=A)
    _out, cache = prog.module.run_with_cache(x)
    blocks = {v: b for b in prog.manifest["blocks"] for v in b["vars"]}
    a_block = next(b for b in prog.manifest["blocks"] if b["key"] == "input:A")

    def X_at(k: int, hook: str) -> np.ndarray:
        h = cache[hook].numpy()
        if f"X@{k}" in blocks:
            return prog.read_block(h, blocks[f"X@{k}"], [4, 4])[0]
        assert k == 0                      # X_0 = A^T is the input block itself, read transposed
        return prog.read_block(h, a_block, [4, 4])[0].T

    X_exact = A.T.copy()                   # numpy's Newton–Schulz from the same X_0
    rows = [(0, np.linalg.norm(X_at(0, "blocks.0.hook_resid_pre") - A_inv, 2),
             np.linalg.norm(X_exact - A_inv, 2), np.nan)]
    print("\n layer   ||X_t - A^-1|| compiled   exact (numpy)   max|compiled - exact|   "
          "max|X_t - (2X - XAX)(X_{t-1} decoded)|")
    print(f" {0:>5}   {rows[0][1]:22.3e}   {rows[0][2]:13.3e}   {0.0:20.2e}   {'(input)':>12}")
    for ell in range(1, prog.n_layers + 1):
        before = X_at(ell - 1, f"blocks.{ell - 1}.hook_resid_pre")
        after = X_at(ell, f"blocks.{ell - 1}.hook_resid_post")
        step_err = float(np.max(np.abs(after - (2 * before - before @ A @ before))))
        X_exact = 2 * X_exact - X_exact @ A @ X_exact
        rows.append((ell, np.linalg.norm(after - A_inv, 2), np.linalg.norm(X_exact - A_inv, 2), step_err))
        print(f" {ell:>5}   {rows[-1][1]:22.3e}   {rows[-1][2]:13.3e}   "
              f"{np.max(np.abs(after - X_exact)):20.2e}   {step_err:12.2e}")
    final = prog.run(A=A)["X"]
    print(f"\nfinal X vs np.linalg.inv(A): max abs difference {np.max(np.abs(final - A_inv)):.2e}")
    worst = max(r[3] for r in rows[1:])
    print(f"every layer maps X_t to 2X_t - X_t A X_t up to {worst:.1e} (float64 rounding)")

    layers, compiled, exact, step = (np.array(c) for c in zip(*rows))
    s_min = 1.0 / args.kappa
    bound = (1 - s_min ** 2) ** (2.0 ** layers) / s_min      # ||X_t - A^-1|| <= ||I - X_t A|| ||A^-1||
    floor = 1e-17
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.semilogy(layers, np.maximum(compiled, floor), "o-", ms=5, label="compiled transformer (decoded X)")
    ax1.semilogy(layers, np.maximum(exact, floor), "x--", ms=7, label="exact Newton–Schulz (numpy)")
    ax1.semilogy(layers, bound, ":", color="gray", label=r"bound $(1-\sigma_{\min}^2)^{2^t}/\sigma_{\min}$")
    ax1.set_ylim(1e-17, 1e2)
    ax1.set_xlabel("layer ℓ  (= Newton–Schulz step t)")
    ax1.set_ylabel(r"$\|X_t - A^{-1}\|_2$")
    ax1.set_title(f"error to the inverse (non-symmetric A, κ = {args.kappa:g})", fontsize=10)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.semilogy(layers[1:], np.maximum(step[1:], floor), "s-", ms=4, color="C2")
    ax2.axhline(np.finfo(float).eps, color="gray", ls=":", label="float64 machine ε")
    ax2.set_ylim(1e-18, 1e-12)
    ax2.set_xlabel("layer ℓ")
    ax2.set_ylabel(r"max $|X_\ell - (2X_{\ell-1} - X_{\ell-1} A X_{\ell-1})|$")
    ax2.set_title("layer output vs numpy's step on the layer input (decoded via hooks)", fontsize=10)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"Lemma 4.1: programs/newton_inverse.tp compiled to {prog.n_layers} layers, "
                 f"1 layer per Newton–Schulz step (paper: 2 for non-symmetric A)", fontsize=11)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lemma41_newton_inverse.png"
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
