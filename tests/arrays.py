"""Array helpers several test files share: the norm-free relative error they assert on, and
random matrices with chosen singular values (for a chosen condition number)."""
from __future__ import annotations

import numpy as np


def rel(got, want) -> float:
    """max |got − want| / max |want| (shapes must agree; an all-zero `want` divides by 1e-300)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def with_singular_values(rng, rows, cols, sv):
    """A random NON-symmetric rows x cols matrix U diag(sv) V^T, U and V random orthogonal."""
    u, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    return (u * np.asarray(sv)) @ v.T
