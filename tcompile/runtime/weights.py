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
        return int(self.W_1.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The five matrices by name (the order of WEIGHT_NAMES)."""
        return {name: getattr(self, name) for name in WEIGHT_NAMES}


__all__ = ["LayerWeights", "WEIGHT_NAMES"]
