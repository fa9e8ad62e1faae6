"""Independent reference functions for the tests: numpy / scipy, never tcompile's own table
(tcompile.language.functions is what the PL pieces are fitted to, so a mistake there would
hide in both the fit and its check)."""
import numpy as np
from scipy.special import expit

REFERENCE = {
    "sigmoid": expit,
    "sqrt": np.sqrt,
    "reciprocal": np.reciprocal,
    "exp": np.exp,
    "log": np.log,
    "softplus": lambda x: np.logaddexp(0.0, x),
    "square": lambda x: x * x,
    "tanh": lambda x: 1.0 - 2.0 / (np.exp(2.0 * np.asarray(x, dtype=float)) + 1.0),
    "sin": lambda x: np.imag(np.exp(1j * np.asarray(x, dtype=float))),
    "cos": lambda x: np.real(np.exp(1j * np.asarray(x, dtype=float))),
}
