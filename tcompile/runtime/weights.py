"""The weights of one layer of the paper's machine, as numpy arrays.

They live in the runtime, not in the emitter that fills them, because the model, the artifact
reader and the report all need them without the compiler: the emitter imports this type, and
nothing here imports the emitter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WEIGHT_NAMES = ("W_K", "W_Q", "W_V", "W_1", "W_2")


@dataclass
class LayerWeights:
    """One layer: attention adds Σ_h W_V^h H (W_K^h H)ᵀ (W_Q^h H), the MLP W_2 ReLU(W_1 h)."""
    W_K: np.ndarray        # (heads, dk, D)
    W_Q: np.ndarray        # (heads, dk, D)
    W_V: np.ndarray        # (heads, D, D)
    W_1: np.ndarray        # (hidden, D)
    W_2: np.ndarray        # (D, hidden)
    head_labels: list[str] = field(default_factory=list)

    @property
    def heads(self) -> int:
        return int(self.W_K.shape[0])

    @property
    def dk(self) -> int:
        return int(self.W_K.shape[1])

    @property
    def mlp_hidden(self) -> int:
        return int(self.shape_of("W_1")[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The five matrices by name (the order of WEIGHT_NAMES)."""
        return {name: getattr(self, name) for name in WEIGHT_NAMES}

    # ---- matrices held as their nonzeros until read -----------------------------------------
    @classmethod
    def with_sparse(cls, W_K, W_Q, W_V, sparse: dict, head_labels=None) -> "LayerWeights":
        """A layer whose matrices named in `sparse` (W_1, W_2: sparse.SparseMatrix) stay
        nonzeros until something reads them as arrays (`layer.W_1` builds and keeps the dense
        array); saving, the report and the shapes never need the dense form."""
        dense = {name: None for name in ("W_1", "W_2")}
        layer = cls(W_K, W_Q, W_V, dense["W_1"], dense["W_2"], list(head_labels or []))
        for name in sparse:
            del layer.__dict__[name]
        layer.__dict__["_sparse"] = dict(sparse)
        return layer

    def __getattr__(self, name):        # only reached for a matrix not built yet
        held = self.__dict__.get("_sparse")
        if held is not None and name in held:
            self.__dict__[name] = held[name].dense()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _held(self, name: str):
        """The SparseMatrix of `name` while no dense array has been built from it."""
        held = self.__dict__.get("_sparse")
        if name in self.__dict__ or held is None:
            return None
        return held.get(name)

    def shape_of(self, name: str) -> tuple[int, ...]:
        held = self._held(name)
        return held.shape if held is not None else tuple(getattr(self, name).shape)

    def matrix(self, name: str):
        """The matrix as saving reads it: its SparseMatrix while held so, else the array."""
        held = self._held(name)
        return held if held is not None else getattr(self, name)

    def nonzero_count(self, name: str) -> int:
        held = self._held(name)
        return held.nnz if held is not None else int(np.count_nonzero(getattr(self, name)))


__all__ = ["LayerWeights", "WEIGHT_NAMES"]
