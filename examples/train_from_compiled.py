"""Training from a compiled initialisation: in-context least squares (Giannou et al. 2024, Sec. 6).

Each task is a regression problem shown in context: A (n x d, rows of norm <= 1), y = A w* + noise,
and a query a_test; the target is y_test = a_test . w* + noise. Every model here has one
architecture -- the shared build of programs/least_squares.tp: a prologue of 2 blocks, ONE body
block applied in a loop (weights tied across iterations), an epilogue of 2 blocks; linear
attention only (this program compiles to no MLP units) -- and is trained with Adam on the same
batches, with the same learning-rate schedule:

  compiled         every parameter starts at the compiled weights (Newton-Schulz on S = A^T A / n)
  random           every parameter replaced by dense N(0, init_std^2) noise (same shapes)
  compiled_sparse  compiled start; only the compiled weights' nonzero entries are trained
  random_sparse    N(0, init_std^2) noise on the compiled nonzero entries only, the rest 0 and
                   kept 0 (the compiled sparsity pattern without the compiled values)

All parameters (prologue, body and epilogue) are trained: a random model cannot learn least
squares through a frozen random prologue (which must form A^T A / n and A^T y / n) and readout,
and training the same parameter set everywhere keeps the comparison fair. The loss is the MSE of
y_hat against the noisy target y_test (what a learner sees); test errors are reported both
against y_test and against numpy's exact least-squares prediction a_test . w_lstsq (the oracle).
Afterwards the trained models and the untrained compiled one are run at other loop counts K
than the one they were trained at: the compiled weights are an iteration that keeps converging
(Newton-Schulz, quadratically); a model fitted at one depth need not be.

    python examples/train_from_compiled.py [--steps 300] [--seed 0] [--out DIR] [--depth 4] [--lr 1e-3]
    torchrun --nproc_per_node 2 examples/train_from_compiled.py ...     # data parallel (DDP)

Writes DIR/train_from_compiled.json (all numbers) and DIR/train_from_compiled.png (two panels),
prints each model's progress as it trains (test error every --eval-every steps, seconds so far)
and then a table and the total time. float64 throughout; one CPU thread per process (these
tensors are tiny).

Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel: every process draws
the same global batch of --batch tasks and takes its own 1/WORLD_SIZE share, DDP averages the
gradients, so each step is the single-process step (same seed, same global batch: the same
numbers up to the order of a sum). gloo on CPU, NCCL with --device cuda (one GPU per process,
LOCAL_RANK). Only rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tcompile  # noqa: E402

PROGRAM = ROOT / "programs" / "least_squares.tp"
MODELS = ("compiled", "random", "compiled_sparse", "random_sparse")


# ---- data -------------------------------------------------------------------------------------

def make_tasks(rng: np.random.Generator, count: int, n: int, d: int, noise: float) -> dict:
    """`count` in-context regression tasks. Rows of A and a_test ~ N(0, I/d), each projected onto
    the unit ball (row norm <= 1, the program's `assume`); w* ~ N(0, I); y = A w* + noise,
    y_test = a_test . w* + noise (noise ~ N(0, noise^2))."""
    def rows(*shape):
        v = rng.standard_normal(shape + (d,)) / math.sqrt(d)
        return v / np.maximum(1.0, np.linalg.norm(v, axis=-1, keepdims=True))
    A, a_test = rows(count, n), rows(count)
    w_star = rng.standard_normal((count, d))
    y = np.einsum("bnd,bd->bn", A, w_star) + noise * rng.standard_normal((count, n))
    y_test = np.einsum("bd,bd->b", a_test, w_star) + noise * rng.standard_normal(count)
    return {"A": A, "y": y, "a_test": a_test, "y_test": y_test, "w_star": w_star}


def oracle(tasks: dict) -> np.ndarray:
    """numpy's exact least-squares prediction a_test . w_lstsq for every task."""
    w = np.stack([np.linalg.lstsq(A, y, rcond=None)[0] for A, y in zip(tasks["A"], tasks["y"])])
    return np.einsum("bd,bd->b", tasks["a_test"], w)


# ---- models -----------------------------------------------------------------------------------

def compile_program(d: int, depth: int, loops: str | None = "shared"):
    """least_squares.tp with `depth` Newton steps: the shared (looped) build, or with
    loops=None the unrolled one (one stored Block per layer)."""
    params = {"d": d, "steps": depth}
    if loops is None:
        return tcompile.compile_file(PROGRAM, params)
    return tcompile.compile_file(PROGRAM, params, loops=loops)


def trainable_copy(prog) -> torch.nn.Module:
    """A float64 copy of the compiled module with every parameter trainable (modules are built
    with requires_grad False; the program's own cached module is left as built)."""
    model = copy.deepcopy(prog.module_for("float64"))
    model.requires_grad_(True)
    return model


def sparsity_masks(model: torch.nn.Module) -> list[torch.Tensor]:
    """1 where a parameter entry is nonzero, per parameter (in model.parameters() order)."""
    return [(p != 0).to(p.dtype) for p in model.parameters()]


def randomised(model: torch.nn.Module, std: float, seed: int, masks=None) -> torch.nn.Module:
    """The same architecture with every parameter replaced by N(0, std^2) noise: dense, or
    only where `masks` is 1 (zeros elsewhere)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, p in enumerate(out.parameters()):
            noise = std * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
            p.copy_(noise if masks is None else noise * masks[i])
    out.requires_grad_(True)
    return out


def readout(prog, h: torch.Tensor) -> torch.Tensor:
    """y_hat (batch,) read differentiably from the final residual h (batch, n, D): the layout's
    output block for y_hat is a 1 x 1 value in one row at token column 0 (prog.decode reads the
    same entry, detached)."""
    blk = prog.layout.output_block("y_hat")
    assert tuple(blk.cshape) == (1, 1) and len(blk.rows) == 1, blk
    return h[:, 0, blk.rows[0]]


def predict(model, prog, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """y_hat for encoded tasks x; `steps` = the loop count K at run time (shared builds only)."""
    h = model(x) if steps is None else model(x, steps=steps)
    return readout(prog, h)


def encode(prog, tasks: dict) -> torch.Tensor:
    return prog.encode(A=tasks["A"], y=tasks["y"], a_test=tasks["a_test"])


# ---- processes (torchrun) ----------------------------------------------------------------------

class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    def __init__(self, device: str = "cpu"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist
            if device == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device == "cuda" else "gloo")
        elif device == "cuda":
            self.device = torch.device("cuda")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This process's share of a global batch (equal shares: the batch must divide)."""
        if len(idx) % self.world:
            raise SystemExit(f"--batch {len(idx)} does not divide among {self.world} processes")
        per = len(idx) // self.world
        return idx[self.rank * per:(self.rank + 1) * per]

    def mean(self, loss: torch.Tensor) -> float:
        """A batch's loss over the global batch (each process holds its share's mean)."""
        value = loss.detach().clone()
        if self.world > 1:
            import torch.distributed as dist
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    def wrap(self, model):
        """DDP around the model when there are several processes (the model itself else)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=None if self.device.type == "cpu"
                                       else [self.device.index])

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()

    @classmethod
    def single(cls) -> "Dist":
        """One process on the CPU, whatever the environment says (what `run` uses by default)."""
        out = cls.__new__(cls)
        out.world, out.rank, out.device = 1, 0, torch.device("cpu")
        return out


SINGLE = Dist.single()


# ---- training -----------------------------------------------------------------------------------

def mse(a, b) -> float:
    """Mean squared difference; inf when it overflows (a diverged model)."""
    with np.errstate(over="ignore", invalid="ignore"):
        v = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return v if math.isfinite(v) else float("inf")


def evaluate(model, prog, x, tasks, y_oracle, steps=None) -> dict:
    """Test MSE against the noisy target y_test and against the lstsq oracle's prediction
    (inf where the model's output overflowed or is nan)."""
    with torch.no_grad():
        y_hat = predict(model, prog, x, steps).cpu().numpy()
    return {"mse_target": mse(y_hat, tasks["y_test"]), "mse_oracle": mse(y_hat, y_oracle)}


def train(model, prog, x_train, y_train, x_test, test, y_oracle, *, steps: int, lr: float,
          batch: int, seed: int, eval_every: int, masks=None, clip: float = 1.0,
          warmup: float = 0.1, dist: Dist = SINGLE, progress=None) -> list[dict]:
    """Adam on the MSE of y_hat vs the noisy y_test; lr: linear warmup over `warmup` of the
    steps, then cosine to 0; gradient norm clipped at `clip`; `masks` (optional) zero the
    gradient outside the given entries, which then stay exactly where they started (Adam's
    update of an entry whose gradient is always 0 is 0). The batch order depends only on
    `seed`, so every model sees the same batches. Returns the test errors at step 0, every
    `eval_every` steps and at the end. With several processes (`dist`) each takes its share of
    every global batch and DDP averages the gradients; `progress(record)` is called at each
    evaluation."""
    net = dist.wrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_warm = max(1, round(warmup * steps))

    def schedule(s):
        if s < n_warm:
            return (s + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (s - n_warm) / max(1, steps - n_warm)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    order = np.random.default_rng(seed)
    y_train = torch.as_tensor(y_train, device=x_train.device)
    history = [{"step": 0, "train_loss": None, **evaluate(model, prog, x_test, test, y_oracle)}]
    if progress:
        progress(history[-1])
    for step in range(1, steps + 1):
        idx = torch.as_tensor(dist.share(order.choice(len(x_train), batch, replace=False)))
        loss = torch.mean((predict(net, prog, x_train[idx]) - y_train[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if masks is not None:
            for p, m in zip(model.parameters(), masks):
                p.grad.mul_(m)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if torch.isfinite(loss):                 # a non-finite batch is skipped, not applied
            opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, "train_loss": dist.mean(loss),
                            **evaluate(model, prog, x_test, test, y_oracle)})
            if progress:
                progress(history[-1])
    return history


def depth_sweep(model, prog, x_test, test, y_oracle, counts) -> list[dict]:
    """Test error at each run-time loop count K (`steps`, Newton steps; the body block is
    applied K - body.offset times, the other iterations live in the prologue/epilogue)."""
    offset = prog.module.body.offset
    return [{"K": k, "body_applications": k - offset,
             **evaluate(model, prog, x_test, test, y_oracle, steps=k)} for k in counts]


# ---- the experiment ----------------------------------------------------------------------------

def run(*, steps=300, seed=0, d=4, n=32, depth=4, n_train=4096, n_test=512, noise=0.1, lr=1e-3,
        batch=64, init_std=0.02, eval_every=20, max_k=None, models=MODELS, dist: Dist = SINGLE,
        verbose=False) -> dict:
    """The whole experiment; returns the numbers the JSON holds. `verbose`: print each model's
    progress (rank 0 only)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_set = make_tasks(rng, n_train, n, d, noise)       # fixed split, one seeded rng
    test = make_tasks(rng, n_test, n, d, noise)
    y_oracle = oracle(test)

    prog = compile_program(d, depth)
    x_train, x_test = encode(prog, train_set).to(dist.device), encode(prog, test).to(dist.device)
    untrained = trainable_copy(prog).to(dist.device)
    masks = sparsity_masks(untrained)
    init = {"compiled": (lambda: copy.deepcopy(untrained), None),
            "random": (lambda: randomised(untrained, init_std, seed + 1), None),
            "compiled_sparse": (lambda: copy.deepcopy(untrained), masks),
            "random_sparse": (lambda: randomised(untrained, init_std, seed + 1, masks), masks)}

    min_k = prog.loops.loops[0].min_count
    counts = list(range(min_k, (max_k or 3 * depth) + 1))
    hist, sweeps, seconds = {}, {}, {}
    sweeps["compiled_untrained"] = depth_sweep(untrained, prog, x_test, test, y_oracle, counts)
    for name in models:
        make, mask = init[name]
        model = make()
        t0 = time.perf_counter()

        def show(rec, name=name, t0=t0):
            print(f"  [{name}] step {rec['step']:>4d}/{steps}  test MSE vs lstsq "
                  f"{rec['mse_oracle']:.3e}  ({time.perf_counter() - t0:.1f} s)", flush=True)
        hist[name] = train(model, prog, x_train, train_set["y_test"], x_test, test, y_oracle,
                           steps=steps, lr=lr, batch=batch, seed=seed + 2, eval_every=eval_every,
                           masks=mask, dist=dist, progress=show if verbose and dist.main else None)
        seconds[name] = time.perf_counter() - t0
        sweeps[name + "_trained"] = depth_sweep(model, prog, x_test, test, y_oracle, counts)
    return {
        "config": {"d": d, "n": n, "depth": depth, "n_train": n_train, "n_test": n_test,
                   "noise": noise, "train_steps": steps, "lr": lr,
                   "lr_schedule": "linear warmup 10%, cosine to 0", "batch": batch,
                   "optimizer": "Adam", "grad_clip": 1.0, "init_std": init_std, "seed": seed,
                   "processes": dist.world,
                   "dtype": "float64", "trained": "all parameters (prologue, body, epilogue)",
                   "loss": "MSE(y_hat, noisy y_test)",
                   "random_init": ("N(0, init_std^2): dense (random) or on the compiled "
                                   "nonzeros only (random_sparse)")},
        "model": {"width": prog.width, "layers_at_depth": prog.module.n_layers(steps=depth),
                  "body_offset": prog.module.body.offset, "min_K": min_k,
                  "parameters": sum(p.numel() for p in untrained.parameters()),
                  "compiled_nonzeros": int(sum(m.sum() for m in masks))},
        "baselines": {"oracle_lstsq_mse_target": mse(y_oracle, test["y_test"]),
                      "zero_predictor_mse_target": mse(0.0, test["y_test"]),
                      "zero_predictor_mse_oracle": mse(0.0, y_oracle)},
        "history": hist,
        "depth_sweep": sweeps,
        "train_seconds": seconds,
    }


STYLE = {"compiled": ("C0", "-", "o"), "random": ("C3", "-", "^"),
         "compiled_sparse": ("C2", "--", "s"), "random_sparse": ("C1", "--", "v"),
         "compiled_untrained": ("k", ":", "x")}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, hist in result["history"].items():
        c, ls, _ = STYLE[name]
        ax1.semilogy([h["step"] for h in hist], [h["mse_oracle"] for h in hist], color=c, ls=ls,
                     label=f"{name} init")
    base = result["baselines"]
    ax1.axhline(base["zero_predictor_mse_oracle"], color="grey", lw=0.8, ls="-.",
                label="predict 0")
    ax1.set_xlabel("Adam step")
    ax1.set_ylabel("test MSE vs lstsq prediction")
    cfg = result["config"]
    ax1.set_title(f"training at K = {cfg['depth']} Newton steps (lr {cfg['lr']:g})")
    ax1.legend(fontsize=8)

    for name, sweep in result["depth_sweep"].items():
        key = name.removesuffix("_trained")
        c, ls, m = STYLE[key]
        vals = [min(max(r["mse_oracle"], 1e-32), 1e6) for r in sweep]     # clipped for display
        ax2.semilogy([r["K"] for r in sweep], vals, color=c, ls=ls, marker=m, ms=4,
                     label=name.replace("_", " "))
    ax2.axvline(cfg["depth"], color="k", lw=0.8, ls=":")
    ax2.set_ylim(1e-32, 1e6)
    ax2.set_xlabel(f"loop count K (Newton steps; body block applied "
                   f"K − {result['model']['body_offset']} times)")
    ax2.set_ylabel("test MSE vs lstsq prediction (clipped to 1e6)")
    ax2.set_title(f"other loop counts than trained (dotted: K = {cfg['depth']})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> str:
    h, b = result["history"], result["baselines"]
    lines = [f"test MSE over {result['config']['n_test']} tasks      vs noisy y_test   vs lstsq",
             f"  lstsq oracle                   {b['oracle_lstsq_mse_target']:>12.3e}   {0.0:>9.3e}",
             (f"  predict 0                      {b['zero_predictor_mse_target']:>12.3e}   "
              f"{b['zero_predictor_mse_oracle']:>9.3e}")]
    for name, hist in h.items():
        for rec in (hist[0], hist[-1]):
            took = (f"   ({result['train_seconds'][name]:.1f} s)" if rec is hist[-1]
                    and name in result.get("train_seconds", {}) else "")
            lines.append(f"  {name + ' init':21s} step {rec['step']:<4d}{rec['mse_target']:>12.3e}   "
                         f"{rec['mse_oracle']:>9.3e}{took}")
    sweeps = result["depth_sweep"]
    names = list(sweeps)
    lines.append(f"test MSE vs lstsq at loop count K (trained at K = {result['config']['depth']}; "
                 f"body applied K - {result['model']['body_offset']} times):")
    lines.append("   K " + "".join(f"{s.replace('_trained', ''):>19s}" for s in names))
    for i, r in enumerate(sweeps[names[0]]):
        lines.append(f"  {r['K']:>2d} " + "".join(f"{sweeps[s][i]['mse_oracle']:>19.3e}" for s in names))
    return "\n".join(lines)


def _json_safe(v):
    """inf/nan (diverged models) as null: strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_outputs(result: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    png, js = out / "train_from_compiled.png", out / "train_from_compiled.json"
    plot(result, png)
    js.write_text(json.dumps(_json_safe(result), indent=1) + "\n")
    return png, js


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="Adam steps for each model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "out", help="output directory")
    ap.add_argument("--depth", type=int, default=4, help="Newton steps K the models are trained at")
    ap.add_argument("--d", type=int, default=4)
    ap.add_argument("--n", "--tokens", type=int, default=32, dest="n",
                    help="in-context examples (tokens) per task (--tokens under torchrun, whose "
                         "own parser takes --n for an abbreviation of its options)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (all models)")
    ap.add_argument("--init-std", type=float, default=0.02, help="std of the random inits")
    ap.add_argument("--batch", type=int, default=64, help="global batch (split among processes)")
    ap.add_argument("--n-train", type=int, default=4096, help="training tasks")
    ap.add_argument("--n-test", type=int, default=512, help="test tasks")
    ap.add_argument("--eval-every", type=int, default=20, help="steps between test evaluations")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated inits to train (default: {','.join(MODELS)})")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: NCCL under torchrun, one GPU per process (LOCAL_RANK)")
    ap.add_argument("--no-plot", action="store_true", help="write the JSON only")
    args = ap.parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    if not models or set(models) - set(MODELS):
        ap.error(f"--models: choose among {', '.join(MODELS)}")

    torch.set_num_threads(1)        # tiny tensors: threads only add overhead (7x under load)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")
    dist = Dist(args.device)
    t0 = time.perf_counter()
    if dist.main:
        print(f"training {', '.join(models)} for {args.steps} steps each"
              + (f" on {dist.world} processes" if dist.world > 1 else ""), flush=True)
    try:
        result = run(steps=args.steps, seed=args.seed, d=args.d, n=args.n, depth=args.depth,
                     lr=args.lr, init_std=args.init_std, batch=args.batch, n_train=args.n_train,
                     n_test=args.n_test, eval_every=args.eval_every, models=models, dist=dist,
                     verbose=True)
    finally:
        dist.close()
    result["total_seconds"] = time.perf_counter() - t0
    if not dist.main:
        return result
    if args.no_plot:
        args.out.mkdir(parents=True, exist_ok=True)
        js = args.out / "train_from_compiled.json"
        js.write_text(json.dumps(_json_safe(result), indent=1) + "\n")
        print(table(result))
        print(f"wrote {js} (total {result['total_seconds']:.1f} s)")
        return result
    png, js = write_outputs(result, args.out)
    print(table(result))
    print(f"wrote {png} and {js.name} (total {result['total_seconds']:.1f} s)")
    return result


if __name__ == "__main__":
    main()
