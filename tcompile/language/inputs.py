"""Input validation: are these arrays what the program's `input` declarations promise?

Names, real numbers (complex and text are refused, not silently converted the way numpy
would), shapes (with the token axis n and an optional leading batch axis), finiteness and the
declared assumptions (sign, flag, range, row_norm, norm, symmetric, spectrum). The interpreter
and the runtime's encoder both call `validate_inputs`, so bad data is refused with the same
words whichever path it takes; it lives apart from the interpreter so that the runtime can use
it without importing the evaluator.
"""
from __future__ import annotations

import numpy as np

from . import ast
from .checker import TOKEN, Walker, fmt_shape
from ..errors import InputError

SIGN_TOL = 0.0          # a sign input must be exactly ±1
ASSUME_RTOL = 1e-9      # slack on declared bounds (row_norm, norm, range, spectrum)


def validate_inputs(program: ast.Program, params: dict[str, float],
                    inputs: dict) -> tuple[dict[str, np.ndarray], int | None, int | None]:
    """Check names, shapes, finiteness and assumptions; return (arrays, batch size, n).

    Arrays come back float64 and batched: shape (B, *declared) with the token axis filled in.
    The batch size is None when no input had a batch axis (B = 1 then, squeezed by callers);
    n is None when no input has a token axis.
    """
    walker = Walker(program, params)
    decls = {d.name: d for d in program.inputs}
    _check_names(decls, inputs, walker)
    arrays: dict[str, np.ndarray] = {}
    sizes = _Sizes()
    for name, decl in decls.items():
        arrays[name] = _checked_array(name, inputs[name], walker.input_type(decl).shape, sizes)
    for name, arr in arrays.items():
        rank = len(walker.input_type(decls[name]).shape)
        if arr.ndim == rank:
            arr = arr[None]
        if sizes.batch is not None and arr.shape[0] == 1 and sizes.batch != 1:
            arr = np.broadcast_to(arr, (sizes.batch, *arr.shape[1:]))
        arrays[name] = arr
        for q in decls[name].qualifiers:
            _check_assumption(name, arr, q, walker)
    return arrays, sizes.batch, sizes.n


def input_sizes(program: ast.Program, params: dict[str, float],
                inputs: dict) -> tuple[int | None, int | None]:
    """(batch size, n) as the inputs' shapes say, read without converting or copying anything
    (None where no input says): what a run costs can be estimated before validation copies
    the data (a broadcast view of 3,000,000 problems costs nothing until then). Best effort:
    inputs without a `.shape`, or shapes that disagree, are left to `validate_inputs`."""
    walker = Walker(program, params)
    batch = n = None
    for decl in program.inputs:
        shape = getattr(inputs.get(decl.name), "shape", None)
        if shape is None:
            continue
        want = walker.input_type(decl).shape
        core = tuple(shape)[len(shape) - len(want):] if len(shape) in (len(want), len(want) + 1) else ()
        if len(shape) == len(want) + 1:
            batch = max(batch or 0, int(shape[0]))
        for w, got in zip(want, core):
            if w == TOKEN:
                n = max(n or 0, int(got))
    return batch, n


class _Sizes:
    """The batch size and token count the inputs seen so far agree on (None: not yet known)."""

    def __init__(self):
        self.batch: int | None = None
        self.n: int | None = None


def _check_names(decls: dict, inputs: dict, walker: Walker) -> None:
    unknown = sorted(set(inputs) - set(decls))
    if unknown:
        raise InputError(f"unknown input{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                         f"the program takes: {', '.join(decls) or 'none'}")
    missing = [name for name in decls if name not in inputs]
    if missing:
        raise InputError(f"missing input{'s' * (len(missing) > 1)} {', '.join(missing)}; "
                         f"expected shapes: " + ", ".join(
                             f"{m} {fmt_shape(walker.input_type(decls[m]).shape)}" for m in missing))


def _checked_array(name: str, raw, shape: tuple, sizes: _Sizes) -> np.ndarray:
    """One input as float64, its shape checked against the declaration (a leading batch axis
    allowed) and against the batch size and n of the inputs before it; finite."""
    arr = _real_array(name, raw, shape)
    rank = len(shape)
    if arr.ndim not in (rank, rank + 1):
        raise InputError(f"input '{name}' must have shape {fmt_shape(shape)} (optionally with a "
                         f"leading batch axis), got shape {list(arr.shape)}")
    core = arr.shape
    if arr.ndim == rank + 1:
        if sizes.batch is not None and arr.shape[0] != sizes.batch:
            raise InputError(f"input '{name}' has batch size {arr.shape[0]}, but other inputs "
                             f"have batch size {sizes.batch}")
        sizes.batch = arr.shape[0]
        core = arr.shape[1:]
    for axis, (want, got) in enumerate(zip(shape, core)):
        if want == TOKEN:
            if sizes.n is not None and got != sizes.n:
                raise InputError(f"input '{name}' has {got} tokens on axis {axis}, but other "
                                 f"inputs have n = {sizes.n}")
            sizes.n = got
        elif want != got:
            raise InputError(f"input '{name}' must have shape {fmt_shape(shape)}, got shape "
                             f"{list(core)} (axis {axis} should be {want})")
    if sizes.n == 0:
        raise InputError(f"input '{name}' has no tokens (n = 0)")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"input '{name}' contains NaN or infinity")
    return arr


_REAL_KINDS = "fiub"     # numpy dtype kinds taken as real numbers (bool: 0/1 flags)


def _real_array(name: str, raw, shape: tuple) -> np.ndarray:
    """`raw` as float64, refusing what numpy would convert with a loss or a guess: complex
    numbers (numpy drops the imaginary part with only a warning) and text (numpy parses
    '1.5'). A torch tensor is read through `detach()`: `run` returns arrays, so no gradient
    could flow back anyway, and a tensor that requires grad cannot be read otherwise."""
    if hasattr(raw, "detach") and hasattr(raw, "cpu"):          # a torch tensor, any device
        raw = raw.detach().cpu()
        if getattr(raw, "is_complex", lambda: False)():
            raise _complex_error(name, str(raw.dtype).replace("torch.", ""))
        raw = raw.numpy()
    try:
        arr = np.asarray(raw)
    except (TypeError, ValueError) as e:
        raise InputError(f"input '{name}' must be numeric with shape {fmt_shape(shape)}, "
                         f"got {type(raw).__name__} ({e})") from None
    if arr.dtype.kind == "O":
        odd = [v for v in arr.ravel() if isinstance(v, (complex, np.complexfloating))
               or not isinstance(v, (int, float, np.number))][:1]
        if odd:
            odd = odd[0]
            kind = "complex" if isinstance(odd, (complex, np.complexfloating)) else type(odd).__name__
            raise InputError(f"input '{name}' must be numeric with shape {fmt_shape(shape)}, "
                             f"got an entry of type {kind}: {odd!r:.40}")
    elif arr.dtype.kind == "c":
        raise _complex_error(name, str(arr.dtype))
    elif arr.dtype.kind not in _REAL_KINDS:
        what = (type(raw).__name__ if isinstance(raw, (str, bytes)) else
                f"an array of {_kind_words(arr.dtype)} (dtype {arr.dtype.str})")
        raise InputError(f"input '{name}' must be numeric with shape {fmt_shape(shape)}, got "
                         f"{what}; convert it to numbers first, e.g. numpy.asarray(x, dtype=float)")
    try:
        return arr.astype(np.float64)
    except OverflowError:          # a Python int beyond float64 (10**400) in an object array
        big = next((v for v in arr.ravel() if isinstance(v, int) and abs(v) >= 2 ** 1024), None)
        size = f" (about 1e{int(big.bit_length() * 0.30103)})" if big is not None else ""
        raise InputError(f"input '{name}' has an entry too large for float64{size}; the "
                         "largest float64 is about 1.8e308") from None


def _complex_error(name: str, dtype: str) -> InputError:
    return InputError(f"input '{name}' is complex ({dtype}); programs compute with real numbers "
                      f"only: pass its real part (x.real) if that is what is meant")


def _kind_words(dtype: np.dtype) -> str:
    return {"U": "strings", "S": "bytes", "M": "dates", "m": "time spans",
            "V": "raw records"}.get(dtype.kind, f"{dtype.kind!r} values")


def _check_assumption(name: str, arr: np.ndarray, q: ast.Qualifier, walker: Walker):
    """One declared assumption, on the batched array. Bounds get ASSUME_RTOL of slack so data
    that meets them up to rounding is accepted; sign and flag entries must be exact."""
    _ASSUMPTIONS[q.kind](name, arr, q, walker)


def _check_sign(name, arr, q, walker):
    bad = arr[np.abs(np.abs(arr) - 1.0) > SIGN_TOL]
    if bad.size:
        raise InputError(f"input '{name}' is declared 'sign': every entry must be -1 or +1, "
                         f"got {bad.flat[0]:g}")


def _check_flag(name, arr, q, walker):
    bad = arr[(arr != 0.0) & (arr != 1.0)]
    if bad.size:
        raise InputError(f"input '{name}' is declared 'flag': every entry must be 0 or 1, "
                         f"got {bad.flat[0]:g}")


def _slack(lo: float, hi: float) -> float:
    """ASSUME_RTOL of slack on an interval [lo, hi], relative to its larger end (at least 1)."""
    return ASSUME_RTOL * max(1.0, abs(lo), abs(hi))


def _check_range(name, arr, q, walker):
    lo, hi = walker.interval_of(q)
    slack = _slack(lo, hi)
    if arr.size and (arr.min() < lo - slack or arr.max() > hi + slack):
        raise InputError(f"input '{name}' is declared in [{lo:g}, {hi:g}], got values in "
                         f"[{arr.min():g}, {arr.max():g}]")


def _check_row_norm(name, arr, q, walker):
    bound = walker.const_of(q.bound, "")
    worst = float(np.linalg.norm(arr, axis=-1).max())
    if worst > bound * (1 + ASSUME_RTOL):
        raise InputError(f"input '{name}' is declared row_norm <= {bound:g}, got a row of norm "
                         f"{worst:.6g}")


def _check_norm(name, arr, q, walker):
    bound = walker.const_of(q.bound, "")
    if arr.ndim == 2:               # a batch of vectors: each a column
        mats = arr.reshape(arr.shape[0], -1, 1)
    elif arr.ndim < 2:
        mats = arr.reshape(-1, 1, 1)
    else:
        mats = arr
    worst = float(np.linalg.norm(mats, ord=2, axis=(-2, -1)).max())
    if worst > bound * (1 + ASSUME_RTOL):
        raise InputError(f"input '{name}' is declared norm <= {bound:g}, got norm {worst:.6g}")


def _check_symmetric(name, arr, q, walker):
    asym = float(np.abs(arr - np.swapaxes(arr, -1, -2)).max())
    if asym > ASSUME_RTOL * max(1.0, float(np.abs(arr).max())):
        raise InputError(f"input '{name}' is declared {q.kind}: it must be symmetric, got "
                         f"max |M - M.T| = {asym:.3g}")


def _check_spectrum(name, arr, q, walker):
    _check_symmetric(name, arr, q, walker)
    lo, hi = walker.interval_of(q)
    eig = np.linalg.eigvalsh((arr + np.swapaxes(arr, -1, -2)) / 2)
    slack = _slack(lo, hi)
    if eig.min() < lo - slack or eig.max() > hi + slack:
        raise InputError(f"input '{name}' is declared spectrum in [{lo:g}, {hi:g}], got "
                         f"eigenvalues in [{eig.min():.6g}, {eig.max():.6g}]")


_ASSUMPTIONS = {"sign": _check_sign, "flag": _check_flag, "range": _check_range,
                "row_norm": _check_row_norm, "norm": _check_norm,
                "symmetric": _check_symmetric, "spectrum": _check_spectrum}


__all__ = ["validate_inputs", "input_sizes", "SIGN_TOL", "ASSUME_RTOL"]
