"""The scalar functions of the language, exact, in numpy float64 (the interpreter's truth)."""
from __future__ import annotations

import numpy as np


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))            # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softplus(x):
    x = np.asarray(x, dtype=np.float64)
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


EXACT = {
    "sigmoid": sigmoid,
    "sqrt": np.sqrt,
    "reciprocal": lambda x: 1.0 / np.asarray(x, dtype=np.float64),
    "exp": np.exp,
    "log": np.log,
    "softplus": softplus,
    "tanh": np.tanh,
    "sin": np.sin,
    "cos": np.cos,
    "abs": np.abs,
    "relu": lambda x: np.maximum(x, 0.0),
    "square": np.square,
}


def clip(x, lo, hi):
    return np.clip(x, lo, hi)
