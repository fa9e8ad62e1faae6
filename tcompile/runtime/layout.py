"""The layout of a compiled model: which rows of the embedding hold which value, and when.

This is the contract between the compiler and the runtime. The emitter fills it in; the
encoder and decoder (codec.py), the report, the trace and the plots read it; artifact.py is
the only place that turns it into JSON and back. Time is counted in sublayers: 0 is the
encoder, 2L+1 the attention of layer L (counted from 0, as module.blocks[L]), 2L+2 its MLP.

A value is stored as a *block*: token data [n, k] as k rows whose columns are the tokens; a
small r×c value C as r rows holding C in their first c columns, or transposed (c rows holding
Cᵀ in their first r columns). Shapes are canonical 2-D (a [k] vector is k×1, a scalar 1×1)
with TOKENS standing for the token axis.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from . import clock

TOKENS = "n"           # the token axis in a canonical shape
LIVE_TO_END = -1       # Block.last_read of a value that must survive to the output


def _dim(d):
    return d if isinstance(d, str) else int(d)


@dataclass(frozen=True)
class Block:
    """A stored block: `rows` of the embedding hold C (or Cᵀ when `transposed`) of a value."""
    key: str               # unique name, e.g. "X@3" or "input:A" or "const:eye"
    kind: str              # input | const | attn | mlp
    rows: tuple[int, ...]
    transposed: bool
    cshape: tuple          # canonical (rows, cols) of the value, TOKENS for the token axis
    written: int           # sublayer that writes it (0 = encoder)
    last_read: int         # last sublayer that reads it; LIVE_TO_END for an output
    vars: tuple[str, ...] = ()     # program variables it is (name@assignment)
    name: str | None = None        # input or output name
    const: str | None = None       # which constant the encoder writes (const blocks)
    # a compiler temporary (no vars): the program text it computes, as written (`X @ w`), and
    # that text's line, for labels and probes; None where it is not one expression on one line
    expr: str | None = None
    line: int | None = None

    def __post_init__(self):
        # The emitter builds blocks from lists and numpy integers; store plain immutable values.
        object.__setattr__(self, "rows", tuple(int(r) for r in self.rows))
        object.__setattr__(self, "cshape", tuple(_dim(d) for d in self.cshape))
        object.__setattr__(self, "vars", tuple(self.vars))
        object.__setattr__(self, "transposed", bool(self.transposed))

    @property
    def label(self) -> str:
        """The program variable it holds last (with .T when transposed), else its key."""
        if self.vars:
            return self.vars[-1] + (".T" if self.transposed else "")
        return self.key

    @property
    def has_tokens(self) -> bool:
        return TOKENS in self.cshape

    @property
    def storage_ext(self):
        """The columns (tokens) of its rows the block occupies: an int, or TOKENS for all n."""
        return self.cshape[0] if self.transposed else self.cshape[1]

    def storage_cols(self, n: int) -> int:
        """How many columns (tokens) of its rows the block occupies when there are n tokens."""
        return n if self.storage_ext == TOKENS else self.storage_ext

    def live_until(self, n_sublayers: int) -> int:
        """The last sublayer it is live in; an output lives to the end (`n_sublayers`)."""
        return n_sublayers if self.last_read == LIVE_TO_END else self.last_read


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple           # the program's shape, TOKENS for the token axis


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple
    block: str             # key of the block the decoder reads it from


@dataclass(frozen=True)
class LayerSpec:
    """A layer's sizes as the artifact promises them (the weights must match)."""
    heads: int
    dk: int
    mlp_hidden: int
    head_labels: tuple[str, ...] = ()

    @classmethod
    def of(cls, weights) -> "LayerSpec":
        """The spec of emitted LayerWeights."""
        return cls(weights.heads, weights.dk, weights.mlp_hidden, tuple(weights.head_labels))


@dataclass(frozen=True)
class RowUse:
    """One tenancy of a row: which block, which element of its value, over which sublayers."""
    block: str
    element: str           # "X@3[2, :]": a row of the value, or "[:, 2]" when stored transposed
    written: int
    last_read: int


@dataclass(frozen=True)
class Layout:
    width: int
    n_layers: int
    min_tokens: int
    max_small_dim: int
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    blocks: tuple[Block, ...]
    layers: tuple[LayerSpec, ...]

    @property
    def n_sublayers(self) -> int:
        return clock.n_times(self.n_layers)

    @cached_property
    def _by_key(self) -> dict[str, Block]:
        return {b.key: b for b in self.blocks}

    @cached_property
    def _by_written(self) -> dict[int, list[Block]]:
        out: dict[int, list[Block]] = {}
        for b in self.blocks:
            out.setdefault(b.written, []).append(b)
        return out

    def written_at(self, t: int) -> list[Block]:
        """The blocks sublayer t writes (0: the encoder's), in layout order."""
        return self._by_written.get(t, [])

    def block(self, key: str) -> Block:
        """The block named `key` (KeyError if there is none)."""
        return self._by_key[key]

    def output_block(self, name: str) -> Block:
        """The block the decoder reads output `name` from."""
        spec = next(o for o in self.outputs if o.name == name)
        return self.block(spec.block)

    def output_blocks(self, where: dict | None = None) -> dict[str, Block]:
        """Every output's block, by name; `where` ({name: (rows, transposed)}, a shared
        build's `LoopProgram.output_rows` at a run's counts) moves those it names to the rows
        the run leaves them in."""
        out = {}
        for spec in self.outputs:
            blk = self.block(spec.block)
            if where and spec.name in where:
                rows, transposed = where[spec.name]
                blk = replace(blk, rows=tuple(rows), transposed=transposed)
            out[spec.name] = blk
        return out

    def input_blocks(self) -> list[Block]:
        """The blocks the encoder writes (inputs and constants), in layout order."""
        return [b for b in self.blocks if b.written == 0]

    @cached_property
    def row_map(self) -> tuple[tuple[RowUse, ...], ...]:
        """For every row of the embedding, what it holds over time: which value, which element
        of it (a row of the value, or a column when the value is stored transposed), and the
        sublayers it is live (written .. last read; last read -1: kept to the end)."""
        rows: list[list[RowUse]] = [[] for _ in range(self.width)]
        for b in sorted(self.blocks, key=lambda b: b.written):
            what = b.vars[-1] if b.vars else b.key
            for i, r in enumerate(b.rows):
                element = f"{what}[:, {i}]" if b.transposed else f"{what}[{i}, :]"
                rows[r].append(RowUse(b.key, element, b.written, b.last_read))
        return tuple(tuple(uses) for uses in rows)

    def occupants(self, t: int) -> list[str]:
        """Name of the value in each row just after sublayer t (0: the encoder's input)."""
        names = [""] * self.width
        for blk in sorted(self.blocks, key=lambda b: b.written):
            if blk.written <= t:
                for i, r in enumerate(blk.rows):
                    names[r] = f"{blk.label}[{i}]"
        return names

    def readable_at(self, t: int) -> list[Block]:
        """The blocks whose value can be read after sublayer t: written by then, not yet dead,
        and not overwritten in t by a newer value reusing their rows."""
        overwritten = {r for b in self.blocks if b.written == t for r in b.rows}
        return [b for b in self.blocks
                if b.written <= t <= b.live_until(self.n_sublayers)
                and not (b.written < t and overwritten & set(b.rows))]

    def validate(self) -> None:
        """Refuse a layout the encoder and decoder cannot follow (ValueError): rows outside the
        width, shapes that are not 2-D, an output in no block, no positive token minimum."""
        if not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            raise ValueError(f"min_tokens must be a positive integer, got {self.min_tokens!r}")
        for blk in self.blocks:
            if not blk.rows or any(not 0 <= r < self.width for r in blk.rows):
                raise ValueError(f"block {blk.key!r} has rows outside the width {self.width}")
            if len(blk.cshape) != 2:
                raise ValueError(f"block {blk.key!r} has a bad shape {list(blk.cshape)!r}")
        for spec in self.outputs:
            if spec.block not in self._by_key:
                raise ValueError(f"output {spec.name!r} lives in no block ({spec.block!r})")


def max_small_dim(blocks) -> int:
    """The largest non-token dimension of any stored value (1 if there is none)."""
    return max((c for b in blocks for c in b.cshape if c != TOKENS), default=1)


__all__ = ["TOKENS", "LIVE_TO_END", "Block", "InputSpec", "OutputSpec", "LayerSpec", "RowUse",
           "Layout", "max_small_dim"]
