"""The honest direct-torch references the back-end benchmark divides by.

Each shipped program's iteration written the way one would write it by hand for speed in
batched PyTorch: every product a `torch.bmm`, every "residual + α · product" one
`torch.baddbmm`, elementwise updates in place or into buffers allocated once per
configuration (`make_direct` allocates, the returned callable only computes), no Python loop
over the problems of a batch (the loops left are the programs' own iterations). On this kind
of CPU `torch.bmm` is 2–3× cheaper than `@` on small 3-D tensors and one `baddbmm` replaces a
product, a scale and a subtraction, so a reference written with `@` flattered the executor.

The functions are exact (sigmoid, sqrt): the references reproduce the float64 interpreter
(`tcompile.interpret`) to rounding, which `check_against_interpreter` measures (bench_backend.py
runs it for every configuration and records the gap; tests/test_bench_reference.py runs it on
small problems). The outputs are views of the buffers: the next call overwrites them.
"""
from __future__ import annotations

import math

import torch


def make_direct(name: str, tin: dict, params: dict):
    """A callable () → {output: tensor} for program `name` on the batched inputs `tin`
    (tensors, batch axis first, all of one dtype and device), its buffers allocated here."""
    if name == "newton_inverse":
        return _newton_inverse(tin["A"], int(params["steps"]),
                               float(params.get("norm_bound", 1.0)))
    if name == "least_squares":
        return _least_squares(tin["A"], tin["y"], tin["a_test"], int(params["steps"]))
    if name == "newton_logistic":
        return _newton_logistic(tin["A"], tin["y"], tin["x0"], float(params["mu"]),
                                int(params["steps"]), int(params["inv_steps"]))
    raise KeyError(name)


def _newton_inverse(A, steps: int, norm_bound: float):
    """X0 = Aᵀ / bound², X ← 2X − X (A X): one bmm and one baddbmm per step."""
    X0 = A.mT.contiguous()
    bufs = (torch.empty_like(X0), torch.empty_like(X0))
    T = torch.empty_like(X0)
    scale = 1.0 / norm_bound ** 2

    def run():
        X, Y = bufs
        torch.mul(X0, scale, out=X)
        for _ in range(steps):
            torch.bmm(A, X, out=T)
            torch.baddbmm(X, X, T, beta=2.0, alpha=-1.0, out=Y)
            X, Y = Y, X
        return {"X": X}
    return run


def _least_squares(A, y, a_test, steps: int):
    """S = AᵀA/n, w = Aᵀy/n, X = I; w ← 2w − X (S w), X ← 2X − X (S X); ŷ = a_testᵀ w."""
    B, n, d = A.shape
    At = A.mT
    yc = y.unsqueeze(-1)
    at = a_test.unsqueeze(-2)
    S = A.new_empty((B, d, d))
    Xs = (A.new_empty((B, d, d)), A.new_empty((B, d, d)))
    ws = (A.new_empty((B, d, 1)), A.new_empty((B, d, 1)))
    T, t = A.new_empty((B, d, d)), A.new_empty((B, d, 1))
    yh = A.new_empty((B, 1, 1))
    eye = torch.eye(d, dtype=A.dtype, device=A.device)

    def run():
        (X, X2), (w, w2) = Xs, ws
        torch.bmm(At, A, out=S).div_(n)
        torch.bmm(At, yc, out=w).div_(n)
        X.copy_(eye)
        for _ in range(steps):
            torch.bmm(S, w, out=t)
            torch.baddbmm(w, X, t, beta=2.0, alpha=-1.0, out=w2)
            torch.bmm(S, X, out=T)
            torch.baddbmm(X, X, T, beta=2.0, alpha=-1.0, out=X2)
            X, X2, w, w2 = X2, X, w2, w
        torch.bmm(at, w, out=yh)
        return {"w": w[..., 0], "y_hat": yh[:, 0, 0]}
    return run


def _newton_logistic(A, y, x0, mu: float, steps: int, inv_steps: int):
    """programs/newton_logistic.tp with exact functions: damped Newton on the regularised
    logistic loss, the Hessian inverted by inv_steps Newton–Schulz steps from 2/(lo + hi) I
    (lo = mu, hi = mu + 1/4), z = A x carried beside x."""
    B, n, d = A.shape
    At = A.mT
    yc = y.unsqueeze(-1)
    new = A.new_empty
    x, z = new((B, d, 1)), new((B, n, 1))
    p, q, yp = new((B, n, 1)), new((B, n, 1)), new((B, n, 1))
    WA = new((B, n, d))
    g, v, Av = new((B, d, 1)), new((B, d, 1)), new((B, n, 1))
    H, T = new((B, d, d)), new((B, d, d))
    Xs = (new((B, d, d)), new((B, d, d)))
    lam, eta = new((B, 1, 1)), new((B, 1, 1))
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    mu_eye = (mu * eye).unsqueeze(0)
    x_init = 2.0 / (mu + mu + 0.25) * eye
    two_sqrt_mu = 2.0 * math.sqrt(mu)

    def run():
        x.copy_(x0.unsqueeze(-1))
        torch.bmm(A, x, out=z)
        for _ in range(steps):
            torch.mul(yc, z, out=p).neg_().sigmoid_()                   # p = σ(−y z)
            torch.mul(yc, p, out=yp)
            torch.baddbmm(x, At, yp, beta=mu, alpha=-1.0 / n, out=g)   # g = mu x − Aᵀ(y p)/n
            torch.mul(p, p, out=q)
            torch.sub(p, q, out=q)                                     # p (1 − p)
            torch.mul(q, A, out=WA)
            torch.baddbmm(mu_eye, At, WA, alpha=1.0 / n, out=H)        # AᵀWA/n + mu I
            X, X2 = Xs
            X.copy_(x_init)
            for _ in range(inv_steps):
                torch.bmm(H, X, out=T)
                torch.baddbmm(X, X, T, beta=2.0, alpha=-1.0, out=X2)
                X, X2 = X2, X
            torch.bmm(X, g, out=v)
            torch.bmm(g.mT, v, out=lam).sqrt_()
            torch.add(lam, two_sqrt_mu, out=eta).reciprocal_().mul_(two_sqrt_mu)
            x.addcmul_(eta, v, value=-1.0)
            torch.bmm(A, v, out=Av)
            z.addcmul_(eta, Av, value=-1.0)
        return {"x": x[..., 0]}
    return run


def check_against_interpreter(name: str, path, params: dict, inputs: dict, problems=(0,)) -> float:
    """Worst relative gap (max|ref − interp| / max|interp|, per output) between the float64
    reference and the interpreter on the given problems of the batch `inputs` (numpy)."""
    import numpy as np

    import tcompile
    tin = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    got = {k: v.detach().numpy().copy() for k, v in make_direct(name, tin, params)().items()}
    worst = 0.0
    for b in problems:
        want = tcompile.interpret(path, params, **{k: v[b] for k, v in inputs.items()})
        for k, w in want.items():
            den = float(np.max(np.abs(w))) or 1.0
            worst = max(worst, float(np.max(np.abs(got[k][b] - w))) / den)
    return worst


__all__ = ["make_direct", "check_against_interpreter"]
