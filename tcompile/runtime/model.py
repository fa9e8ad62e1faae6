"""The target machine in PyTorch: linear attention and a ReLU MLP, residual, nothing else.

Paper (Giannou et al. 2024, Sec. 3.1), with H ∈ R^{D×n} one column per token:

    Att(H) = H + Σ_h W_V^h H (W_K^h H)ᵀ (W_Q^h H)
    TF(H)  = Att(H) + W_2 ReLU(W_1 Att(H))

No softmax, no mask, no biases, no normalisation, no 1/n. Here, as everywhere in PyTorch,
x has shape (batch, n, D) with x[b] = Hᵀ; one head's contribution is then
q (kᵀ v) with k = x W_Kᵀ, q = x W_Qᵀ, v = x W_Vᵀ, which is (W_V H Kᵀ Q)ᵀ computed in O(n).
W_K^h and W_Q^h are stored as dk×D (the paper's D×D with its zero rows dropped).

Hook points carry TransformerLens names (blocks.{i}.hook_resid_pre, .attn.hook_result,
.hook_attn_out, .hook_resid_mid, .mlp.hook_pre, .mlp.hook_post, .hook_mlp_out,
.hook_resid_post), so `run_with_cache` and forward hooks read like TransformerLens code.
TransformerLens itself hard-codes softmax attention and cannot load these models.

Layers are counted from 0 here and everywhere else (model card, trace rows, plots): the layer
the card calls "layer L" is `blocks[L]`, hooked as `blocks.L.*`, built from
`CompiledProgram.layers[L]`. The hook names fix 0 (TransformerLens tooling expects
`blocks.0`), so the human-facing tools follow them rather than the reverse.

TF32 is switched off inside `forward` (and restored after): Newton–Schulz loses about three
digits to TF32 matmuls on NVIDIA GPUs, so the float32 path is true float32 whatever the
caller's global setting.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class HookPoint(nn.Module):
    """Identity; a named place to read (or, with a forward hook, edit) an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class LinearAttention(nn.Module):
    def __init__(self, W_K: torch.Tensor, W_Q: torch.Tensor, W_V: torch.Tensor):
        super().__init__()
        self.W_K = nn.Parameter(W_K)      # (heads, dk, D)
        self.W_Q = nn.Parameter(W_Q)      # (heads, dk, D)
        self.W_V = nn.Parameter(W_V)      # (heads, D, D)
        self.hook_result = HookPoint()    # each head's contribution, (batch, heads, n, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.einsum("bnd,hkd->bhnk", x, self.W_K)
        q = torch.einsum("bnd,hkd->bhnk", x, self.W_Q)
        v = torch.einsum("bnd,hed->bhne", x, self.W_V)
        heads = self.hook_result(q @ (k.transpose(-1, -2) @ v))
        return heads.sum(dim=1)


class MLP(nn.Module):
    def __init__(self, W_1: torch.Tensor, W_2: torch.Tensor):
        super().__init__()
        self.W_1 = nn.Parameter(W_1)      # (hidden, D)
        self.W_2 = nn.Parameter(W_2)      # (D, hidden)
        self.hook_pre = HookPoint()       # W_1 x, (batch, n, hidden)
        self.hook_post = HookPoint()      # ReLU(W_1 x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_post(torch.relu(self.hook_pre(x @ self.W_1.T))) @ self.W_2.T


class Block(nn.Module):
    def __init__(self, attn: LinearAttention, mlp: MLP):
        super().__init__()
        self.attn = attn
        self.mlp = mlp
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
                     "hook_resid_post"):
            setattr(self, name, HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(x)))


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


def blocks_from_arrays(arrays: list, dtype=torch.float64, device="cpu") -> list[Block]:
    """One Block per LayerWeights, its weights as tensors of this dtype on this device."""
    def t(a):
        return torch.as_tensor(a, dtype=dtype, device=device)
    return [Block(LinearAttention(t(w.W_K), t(w.W_Q), t(w.W_V)), MLP(t(w.W_1), t(w.W_2)))
            for w in arrays]


class CompiledTransformer(nn.Module):
    """A stack of `Block`s; `forward(x)` maps the encoded embedding to the final residual."""

    def __init__(self, blocks: list[Block], width: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.width = width

    @property
    def layers(self) -> nn.ModuleList:
        return self.blocks

    @classmethod
    def from_arrays(cls, arrays: list, width: int, dtype=torch.float64, device="cpu"):
        model = cls(blocks_from_arrays(arrays, dtype, device), width)
        model.requires_grad_(False)
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with exact_float32():
            for block in self.blocks:
                x = block(x)
        return x

    def hook_points(self) -> dict[str, HookPoint]:
        return {name: m for name, m in self.named_modules() if isinstance(m, HookPoint)}

    def run_with_cache(self, x: torch.Tensor, names=None) -> tuple[torch.Tensor, dict]:
        """Like TransformerLens: (output, {hook name: activation}) for every (or the named) hook."""
        cache: dict[str, torch.Tensor] = {}
        handles = []
        for name, hp in self.hook_points().items():
            if names is None or name in names:
                handles.append(hp.register_forward_hook(
                    lambda _m, _i, out, name=name: cache.__setitem__(name, out.detach())))
        try:
            with torch.no_grad():
                out = self(x)
        finally:
            for h in handles:
                h.remove()
        return out, cache
