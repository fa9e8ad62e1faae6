"""The target machine in PyTorch: linear attention and a ReLU MLP, residual, nothing else.

Paper (Giannou et al. 2024, Sec. 3.1), with H ∈ R^{D×n} one column per token:

    Att(H) = H + Σ_h W_V^h H (W_K^h H)ᵀ (W_Q^h H)
    TF(H)  = Att(H) + W_2 ReLU(W_1 Att(H))

No softmax, no mask, no biases, no normalisation, no 1/n. Here, as everywhere in PyTorch,
x has shape (batch, n, D) with x[b] = Hᵀ; one head's contribution is then
q (kᵀ v) with k = x W_Kᵀ, q = x W_Qᵀ, v = x W_Vᵀ, which is (W_V H Kᵀ Q)ᵀ computed in O(n).
W_K^h and W_Q^h are stored as dk×D (the paper's D×D with its zero rows dropped).

TF32 is switched off inside `forward` (and restored after): Newton–Schulz loses about three
digits to TF32 matmuls on NVIDIA GPUs, so the float32 path is true float32 whatever the
caller's global setting.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class LinearAttention(nn.Module):
    def __init__(self, W_K: torch.Tensor, W_Q: torch.Tensor, W_V: torch.Tensor):
        super().__init__()
        self.W_K = nn.Parameter(W_K)      # (heads, dk, D)
        self.W_Q = nn.Parameter(W_Q)      # (heads, dk, D)
        self.W_V = nn.Parameter(W_V)      # (heads, D, D)

    def head_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Each head's additive contribution, (batch, heads, n, D)."""
        k = torch.einsum("bnd,hkd->bhnk", x, self.W_K)
        q = torch.einsum("bnd,hkd->bhnk", x, self.W_Q)
        v = torch.einsum("bnd,hed->bhne", x, self.W_V)
        return q @ (k.transpose(-1, -2) @ v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.W_K.shape[0] == 0:
            return torch.zeros_like(x)
        return self.head_outputs(x).sum(dim=1)


class MLP(nn.Module):
    def __init__(self, W_1: torch.Tensor, W_2: torch.Tensor):
        super().__init__()
        self.W_1 = nn.Parameter(W_1)      # (hidden, D)
        self.W_2 = nn.Parameter(W_2)      # (D, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.W_1.shape[0] == 0:
            return torch.zeros_like(x)
        return torch.relu(x @ self.W_1.T) @ self.W_2.T


class Layer(nn.Module):
    def __init__(self, attn: LinearAttention, mlp: MLP):
        super().__init__()
        self.attn = attn
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


@contextlib.contextmanager
def exact_float32():
    """Disable TF32 for the duration (restoring the caller's settings)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class CompiledTransformer(nn.Module):
    """A stack of `Layer`s; `forward(x)` maps the encoded embedding to the final residual."""

    def __init__(self, layers: list[Layer], width: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.width = width

    @classmethod
    def from_arrays(cls, arrays: list, width: int, dtype=torch.float64, device="cpu"):
        def t(a):
            return torch.as_tensor(a, dtype=dtype, device=device)
        layers = [Layer(LinearAttention(t(w.W_K), t(w.W_Q), t(w.W_V)), MLP(t(w.W_1), t(w.W_2)))
                  for w in arrays]
        model = cls(layers, width)
        model.requires_grad_(False)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with exact_float32():
            for layer in self.layers:
                x = layer(x)
        return x
