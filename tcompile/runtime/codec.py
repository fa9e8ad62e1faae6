"""Encoder and decoder: named arrays ↔ the embedding, following a Layout.

The encoder writes inputs and constants into an all-zero x of shape (batch, n, D) with
x[b] = Hᵀ: a block's rows are columns of x, its storage (C, or Cᵀ when transposed) runs along
the token axis from token 0. The decoder reads a block back into the program's shape. Both are
pure numpy; only the caller turns x into a tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import Block, Layout


@dataclass(frozen=True)
class ValidatedInputs:
    """Inputs checked against the program's declarations (language/inputs.py) and the
    layout's token minimum: float64 arrays, each with a leading batch axis."""
    arrays: dict[str, np.ndarray]
    batch: int | None      # the caller's batch size; None when no input had a batch axis
    n: int                 # tokens

    @property
    def size(self) -> int:
        """The batch size of the arrays (1 when the caller gave none)."""
        return next(iter(self.arrays.values())).shape[0] if self.arrays else 1

    def unbatch(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Drop the batch axis from per-problem results if the caller gave none."""
        return out if self.batch is not None else {k: v[0] for k, v in out.items()}


def canonical(arr: np.ndarray) -> np.ndarray:
    """Batched input (B, *shape) → canonical 2-D per problem (B, r, c)."""
    if arr.ndim == 1:
        return arr[:, None, None]
    if arr.ndim == 2:
        return arr[:, :, None]
    return arr


PATTERN = "pattern:"
NUMBER = "number:"       # `number:0.45`: a number the encoder writes as a 1×1 value (a loop's
                         # compile-time number a shared build carries as loop state)


def pattern_name(cshape, entries) -> str:
    """The constant name of a 0/1 pattern block: `pattern:RxC:i.j,i.j,...` (C may be n)."""
    r, c = cshape
    return f"{PATTERN}{r}x{c}:" + ",".join(f"{i}.{j}" for i, j in entries)


def _pattern(name: str, n: int) -> np.ndarray:
    """A pattern's canonical value. Over the token axis its columns are tokens; the program
    needs more tokens than its largest column (`pattern_min_tokens`), which the runtime
    enforces, so a column past n (only when validating a layout) is left out."""
    shape, _, entries = name[len(PATTERN):].partition(":")
    r, c = shape.split("x")
    cols = n if c == "n" else int(c)
    out = np.zeros((int(r), cols))
    for e in filter(None, entries.split(",")):
        i, j = (int(v) for v in e.split("."))
        if j < cols:
            out[i, j] = 1.0
    return out


def pattern_min_tokens(name: str | None) -> int:
    """The tokens a token-axis pattern reaches (0 for any other constant)."""
    if not name or not name.startswith(PATTERN):
        return 0
    if not name[len(PATTERN):].split(":")[0].endswith("xn"):       # a small pattern
        return 0
    entries = name.split(":")[2]
    return max((int(e.split(".")[1]) + 1 for e in filter(None, entries.split(","))), default=0)


def constant_value(op: str, k: int, n: int) -> np.ndarray:
    """The canonical value of an encoder-written constant block of k rows, with n tokens."""
    if isinstance(op, str) and op.startswith(PATTERN):
        try:
            return _pattern(op, n)
        except ValueError:
            raise KeyError(op) from None
    if isinstance(op, str) and op.startswith(NUMBER):
        try:
            return np.full((1, 1), float(op[len(NUMBER):]))
        except ValueError:
            raise KeyError(op) from None
    return {"eye": lambda: np.eye(k),
            "eye_inv_n": lambda: np.eye(k) / n,
            "ones": lambda: np.ones((n, 1)),
            "ones_inv_n": lambda: np.full((1, n), 1.0 / n),
            "inv_n": lambda: np.full((1, 1), 1.0 / n),
            "n": lambda: np.full((1, 1), float(n))}[op]()


def constant_storage(blk: Block, n: int) -> np.ndarray:
    """What the encoder writes into a constant block's rows with n tokens: (rows, cols)."""
    C = constant_value(blk.const, len(blk.rows), n)
    return C.T if blk.transposed else C


def storage_at_input(blk: Block, inputs: ValidatedInputs) -> np.ndarray:
    """What the encoder writes for an input or constant block: (B, rows, cols)."""
    if blk.kind != "input":
        st = constant_storage(blk, inputs.n)
        return np.broadcast_to(st, (inputs.size, *st.shape))
    C = canonical(inputs.arrays[blk.name])
    return np.swapaxes(C, 1, 2) if blk.transposed else C


def value_at_input(blk: Block, inputs: ValidatedInputs) -> np.ndarray:
    """An encoder-written block's canonical value (B, r, c), as the encoder wrote it."""
    storage = storage_at_input(blk, inputs)
    return np.swapaxes(storage, 1, 2) if blk.transposed else np.asarray(storage)


def encode(layout: Layout, inputs: ValidatedInputs) -> np.ndarray:
    """The embedding x (B, n, D) holding the inputs and constants, zeros elsewhere."""
    x = np.zeros((inputs.size, inputs.n, layout.width))
    for blk in layout.input_blocks():
        storage = storage_at_input(blk, inputs)                 # (B, rows, cols)
        x[:, :storage.shape[2], list(blk.rows)] = np.swapaxes(storage, 1, 2)
    return x


def read_block(h: np.ndarray, blk: Block, shape) -> np.ndarray:
    """The value a block holds in the embedding h (batch, n, D), in the program's `shape`
    (only its rank matters: scalars come back (B,), vectors (B, k), matrices (B, r, c))."""
    cols = blk.storage_cols(h.shape[1])
    storage = np.swapaxes(h[:, :cols, list(blk.rows)], 1, 2)     # (B, rows, cols)
    return in_shape(np.swapaxes(storage, 1, 2) if blk.transposed else storage, shape)


def in_shape(C, shape):
    """Canonical values C (B, r, c), numpy or torch, in the rank of the program's `shape`:
    scalars (B,), vectors (B, k), matrices as they are."""
    if len(shape) == 0:
        return C[:, 0, 0]
    if len(shape) == 1:
        return C[:, :, 0]
    return C


def decode(layout: Layout, h: np.ndarray, where: dict | None = None) -> dict[str, np.ndarray]:
    """Every output, read from its block, each with a leading batch axis; `where` moves
    outputs to the rows a run left them in (Layout.output_blocks)."""
    blocks = layout.output_blocks(where)
    return {spec.name: read_block(h, blocks[spec.name], spec.shape) for spec in layout.outputs}


def non_finite_message(out: dict) -> str | None:
    """What to tell the caller when outputs hold NaN or infinity (None when all are finite):
    each such output by name, with how many of its entries. A float64 computation leaves its
    range when the data is near it (y = 1e308 squares to infinity), and a NaN must not pass
    for a result."""
    bad = []
    for name, value in out.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad.append(f"'{name}' ({int(np.count_nonzero(~np.isfinite(arr)))} of {arr.size} "
                       "entries)")
    if not bad:
        return None
    return (f"output{'s' * (len(bad) > 1)} {', '.join(bad)} not finite (NaN or infinity): the "
            "computation left the range of its number type — data as large as 1e308 overflows "
            "on the way; scale the inputs down (or use float64 if this ran in float32)")


__all__ = ["NUMBER", "ValidatedInputs", "non_finite_message", "canonical", "constant_value", "pattern_name",
           "pattern_min_tokens", "constant_storage",
           "storage_at_input", "value_at_input", "encode", "read_block", "in_shape", "decode"]
