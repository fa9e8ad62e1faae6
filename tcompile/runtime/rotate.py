"""Rotated builds: the same model in a random orthogonal basis of the residual stream.

A compiled residual stream is axis-aligned (one value per row), which flatters every
interpretability method that looks at single neurons or rows. `prog.rotated(seed)` gives the
same mechanism with the basis changed by a random orthogonal Q (D × D): the stream H becomes
H' = Q H (in PyTorch's layout x' = x Qᵀ), and every map that reads or writes it follows
(DESIGN §10):

    W_V' = Q W_V Qᵀ     W_K' = W_K Qᵀ     W_Q' = W_Q Qᵀ     W_1' = W_1 Qᵀ     W_2' = Q W_2

so that Att'(QH) = Q Att(H) and MLP'(QH) = Q MLP(H): the rotated model computes Q times what
the original computes, to rounding. The encoder writes x and rotates it; the decoder rotates
back (x' Q) and reads as before. The ground truth stays known: row r of the original stream is
the direction Q[:, r] of the rotated one (value = x' · Q[:, r]), which is how a rotated build's
labels are given (`directions`).

`keep_io=True` leaves the rows the encoder writes (inputs, constants) and the rows the
outputs are read from as they were (Q is the identity there and a random rotation on the rest):
the plain encoder and decoder then work unchanged, and only the model's internal rows are mixed.

The rotated weights are dense, so a rotated build runs through the paper-form module (the
structured executor exploits the sparsity the rotation removes). It is a research object: it is
not saved as an artifact (the artifact format stores the axis-aligned build); `save_rotated`
writes its weights as a safetensors state dict of the module, with Q beside them.

This module is the arithmetic; the program that encodes and decodes through Q is
`program.RotatedProgram` (a CompiledProgram subclass, so it lives beside its base class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .weights import LayerWeights


def random_orthogonal(m: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random m × m orthogonal matrix (QR of a Gaussian, signs fixed by R's diagonal)."""
    if m == 0:
        return np.zeros((0, 0))
    q, r = np.linalg.qr(rng.standard_normal((m, m)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def io_rows(prog) -> list[int]:
    """The rows the encoder writes (inputs, constants) and the decoder reads (outputs)."""
    rows = {r for b in prog.layout.input_blocks() for r in b.rows}
    rows |= {r for spec in prog.layout.outputs for r in prog.layout.block(spec.block).rows}
    item = prog.loops.residue_loop() if prog.loops is not None else None
    if item is not None:         # a kernel loop's residues leave outputs in rows of their own
        rows |= {r for residue in item.outputs for _, where, _ in residue for r in where}
    return sorted(rows)


def rotation_matrix(width: int, seed: int, fixed_rows=()) -> np.ndarray:
    """Q: the identity on `fixed_rows`, a random orthogonal matrix (from `seed`) on the rest."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"the rotation seed must be a whole number >= 0, got {seed!r}")
    fixed = sorted(set(int(r) for r in fixed_rows))
    free = [r for r in range(width) if r not in set(fixed)]
    Q = np.eye(width)
    Q[np.ix_(free, free)] = random_orthogonal(len(free), np.random.default_rng(int(seed)))
    return Q


def rotate_layer(w: LayerWeights, Q: np.ndarray) -> LayerWeights:
    """One layer's weights in the basis H' = Q H."""
    return LayerWeights(W_K=w.W_K @ Q.T, W_Q=w.W_Q @ Q.T, W_V=Q @ w.W_V @ Q.T,
                        W_1=w.W_1 @ Q.T, W_2=Q @ w.W_2, head_labels=list(w.head_labels))


def write_rotated(path, state_dict: dict, Q: np.ndarray, meta: dict, labels_json: str | None
                  ) -> list[Path]:
    """PATH.safetensors: a rotated module's state dict (float64) plus `rotation.Q`, string
    metadata `meta`; PATH.labels.json beside it when `labels_json` is given. Atomic writes."""
    from safetensors.numpy import save as st_save

    from .files import atomic_write_bytes
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    tensors = {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}
    tensors["rotation.Q"] = np.ascontiguousarray(Q)
    st = base.with_name(base.name + ".safetensors")
    st.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(st, st_save(tensors, metadata={k: str(v) for k, v in meta.items()}))
    out = [st]
    if labels_json is not None:
        lab = base.with_name(base.name + ".labels.json")
        atomic_write_bytes(lab, labels_json.encode())
        out.append(lab)
    return out


__all__ = ["rotation_matrix", "random_orthogonal", "rotate_layer", "io_rows", "write_rotated"]
