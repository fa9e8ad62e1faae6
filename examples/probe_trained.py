"""Probing a trained transformer for an algorithm's iterates (Fu et al.'s question, any program).

A small standard transformer (softmax attention, LayerNorm, GELU MLP, no weight sharing) is
trained from scratch on the in-context least-squares task of examples/train_from_compiled.py:
tokens (a_i, y_i) for i < n and a query token (a_test, 0), the target y_test = a_test · w* +
noise read from the query token's output. Then every layer's hidden state at the query token
is probed (tcompile.probe: ridge regression in closed form, R² on held-out problems) for

  * the Newton–Schulz iterates w@k of programs/least_squares.tp (w@0 = Aᵀy/n, quadratic
    convergence to the least-squares solution), and
  * the gradient-descent iterates w@k of programs/gd_least_squares.tp (w@0 = 0, step 1,
    linear convergence),

both from the float64 interpreter on the same problems. A layer that computes iterate k of an
algorithm shows as a bright cell (layer, k); the compiled model itself, probed the same way,
gives the diagonal (tests/test_probe.py). Writes DIR/probe_trained.json and
DIR/probe_trained.png (the two heatmaps) and prints both tables.

    python examples/probe_trained.py [--steps 1500] [--layers 4] [--seed 0] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tcompile  # noqa: E402
from tcompile.inspection.probe import probe  # noqa: E402

sys.path.insert(0, str(ROOT / "examples"))
from train_from_compiled import make_tasks, oracle  # noqa: E402


class Transformer(nn.Module):
    """A pre-LayerNorm transformer encoder (no mask: the context is a set) with a linear read-in
    of each token (a, y, is_query) and a linear read-out of the query token."""

    def __init__(self, d: int, width: int, layers: int, heads: int):
        super().__init__()
        self.read_in = nn.Linear(d + 2, width)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.read_out = nn.Linear(width, 1)

    def forward(self, tokens: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        h = self.read_in(tokens)
        if keep is not None:
            keep.append(h[:, -1])
        for block in self.blocks:
            h = block(h)
            if keep is not None:
                keep.append(h[:, -1])
        return self.read_out(self.norm(h[:, -1]))[:, 0]


def tokens_of(tasks: dict) -> torch.Tensor:
    """(batch, n + 1, d + 2): rows (a_i, y_i, 0), then the query (a_test, 0, 1)."""
    A, y, a = tasks["A"], tasks["y"], tasks["a_test"]
    B, n, d = A.shape
    ctx = np.concatenate([A, y[..., None], np.zeros((B, n, 1))], axis=-1)
    query = np.concatenate([a, np.zeros((B, 1)), np.ones((B, 1))], axis=-1)[:, None]
    return torch.as_tensor(np.concatenate([ctx, query], axis=1), dtype=torch.float32)


def train(model, tasks, *, steps: int, batch: int, lr: float, seed: int, log_every: int) -> list:
    """Adam with warmup and cosine decay on the MSE of y_hat vs the noisy y_test."""
    x, target = tokens_of(tasks), torch.as_tensor(tasks["y_test"], dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))))
    rng = np.random.default_rng(seed)
    log, t0, running = [], time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        idx = torch.as_tensor(rng.choice(len(x), batch, replace=False))
        loss = torch.mean((model(x[idx]) - target[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            log.append({"step": step, "train_mse": running / k})
            print(f"  step {step:>5d}/{steps}  train MSE {running / k:.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            running = 0.0
    return log


def hidden_states(model, tasks: dict) -> dict[str, np.ndarray]:
    """The query token's hidden state after the read-in ("embed") and after each block."""
    keep: list = []
    with torch.no_grad():
        model(tokens_of(tasks), keep)
    return {("embed" if i == 0 else str(i - 1)): h.double().numpy() for i, h in enumerate(keep)}


def run(*, steps=1500, layers=4, width=32, heads=4, d=4, n=16, noise=0.1, n_train=8000,
        n_probe=1200, batch=64, lr=2e-3, newton_steps=6, gd_steps=12, alpha=1e-3,
        seed=0, log_every=250) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_set, probe_set = make_tasks(rng, n_train, n, d, noise), make_tasks(rng, n_probe, n, d, noise)
    model = Transformer(d, width, layers, heads)
    newton = tcompile.compile_file(ROOT / "programs" / "least_squares.tp",
                                   {"d": d, "steps": newton_steps})
    gd = tcompile.compile_file(ROOT / "programs" / "gd_least_squares.tp", {"d": d, "steps": gd_steps})
    ls_inputs = {k: probe_set[k] for k in ("A", "y", "a_test")}
    gd_inputs = {k: probe_set[k] for k in ("A", "y")}

    def probes(m):
        acts = hidden_states(m, probe_set)
        return (probe(acts, newton, ls_inputs, variables=["w"], alpha=alpha, seed=seed),
                probe(acts, gd, gd_inputs, variables=["w"], alpha=alpha, seed=seed))
    control = probes(model)                 # the same architecture untrained: the baseline
    t0 = time.perf_counter()
    log = train(model, train_set, steps=steps, batch=batch, lr=lr, seed=seed + 1,
                log_every=log_every)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        y_hat = model(tokens_of(probe_set)).double().numpy()
    y_lstsq = oracle(probe_set)

    res_newton, res_gd = probes(model)
    return {
        "config": {"layers": layers, "width": width, "heads": heads, "d": d, "n": n,
                   "noise": noise, "n_train": n_train, "n_probe": n_probe, "steps": steps,
                   "batch": batch, "lr": lr, "seed": seed, "ridge_alpha": alpha,
                   "probe_token": "query (last)", "newton_steps": newton_steps,
                   "gd_steps": gd_steps},
        "train_log": log, "train_seconds": seconds,
        "test": {"mse_vs_target": float(np.mean((y_hat - probe_set["y_test"]) ** 2)),
                 "mse_vs_lstsq": float(np.mean((y_hat - y_lstsq) ** 2)),
                 "lstsq_mse_vs_target": float(np.mean((y_lstsq - probe_set["y_test"]) ** 2)),
                 "zero_mse_vs_lstsq": float(np.mean(y_lstsq ** 2))},
        "newton": res_newton.as_dict(), "gd": res_gd.as_dict(),
        "untrained": {"newton": control[0].as_dict(), "gd": control[1].as_dict()},
        "_results": (res_newton, res_gd, *control),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, title in ((axes[0], "newton", "least_squares.tp (Newton–Schulz) w@k"),
                           (axes[1], "gd", "gd_least_squares.tp (gradient descent) w@k")):
        r = result[key]
        grid = np.clip(np.array(r["r2"]["w"], dtype=float), 0, 1)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(r["points"]["w"])))
        ax.set_xticklabels([p.split("@")[1] for p in r["points"]["w"]])
        ax.set_yticks(range(len(r["layers"])))
        ax.set_yticklabels(r["layers"])
        ax.set_xlabel("iterate k")
        ax.set_ylabel("layer (query token's hidden state)")
        ax.set_title(f"held-out R² of probes for {title}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print(f"training a {args.layers}-layer transformer for {args.steps} steps", flush=True)
    result = run(steps=args.steps, layers=args.layers, seed=args.seed)
    newton, gd, newton0, gd0 = result.pop("_results")
    t = result["test"]
    print(f"test MSE vs noisy y_test {t['mse_vs_target']:.4f} (lstsq {t['lstsq_mse_vs_target']:.4f}); "
          f"vs the lstsq prediction {t['mse_vs_lstsq']:.4f} (predicting 0: {t['zero_mse_vs_lstsq']:.4f})")
    print(newton.table("w").replace("for w", "for least_squares' Newton iterates w"))
    print(gd.table("w").replace("for w", "for gd_least_squares' GD iterates w"))
    print("the same architecture untrained (the baseline a probe must beat):")
    print(newton0.table("w").replace("for w", "for Newton iterates w, untrained"))
    print(gd0.table("w").replace("for w", "for GD iterates w, untrained"))
    args.out.mkdir(parents=True, exist_ok=True)
    png, js = args.out / "probe_trained.png", args.out / "probe_trained.json"
    plot(result, png)
    result["total_seconds"] = time.perf_counter() - t0
    js.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {png} and {js.name} (total {result['total_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
