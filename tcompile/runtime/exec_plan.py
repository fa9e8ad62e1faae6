"""The structured executor's plan: where every stored value lives, and what each sublayer reads.

Derived from the compiled LayerWeights and the Layout only, once per program, before n, the
dtype or the device are known. The dense model keeps one (B, n, D) stream; here every stored
value (a layout Block, or an anonymous group of rows a sublayer writes outside any block) is a
*slot*: its own contiguous (B, rows, ext) tensor, ext being the token columns it occupies
(layout.py: [d, d], [d] and scalars live on the first columns, only [n]-shaped values on all n).
Extents stay symbolic (an int, or TOKENS = n) until the executor resolves them for an n.

A `Read` names the rows an operand takes and which slot (and position in it) holds each, as
of the sublayer reading it. Everything downstream (executor.py, pl_tables.py) works on reads,
so no product ever touches a row it does not need or a token column where its operand is zero.

Soundness: a row written in a sublayer belongs afterwards to the block the layout says is
written there (the compiler clears what it overwrites; its clearing heads are computed like
any other head and restricted to the new block's extent), or, when no block claims it, to an
anonymous slot whose extent is the widest of its old contents and everything written to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layout import TOKENS, Layout


def emax(a, b):
    """The wider of two extents (TOKENS = n is at least every small extent)."""
    return TOKENS if TOKENS in (a, b) else max(a, b)


def emin(a, b):
    """The narrower of two extents (n >= min_tokens >= every small extent)."""
    if a == TOKENS:
        return b
    if b == TOKENS:
        return a
    return min(a, b)


def concrete(e, n: int) -> int:
    return n if e == TOKENS else int(e)


@dataclass(frozen=True)
class Slot:
    key: str
    rows: tuple[int, ...]
    ext: object                   # int, or TOKENS
    const: str | None = None      # encoder constant it holds (depends on n only), else None


@dataclass(frozen=True)
class Segment:
    """Consecutive operand rows held by one slot (key None: rows that are zero)."""
    key: str | None
    positions: tuple[int, ...]    # rows of the slot, in operand order (len = rows taken)


@dataclass(frozen=True)
class Read:
    rows: tuple[int, ...]
    segments: tuple[Segment, ...]
    ext: object                   # widest extent among the slots read (0: all zero)
    const: bool                   # every row is an encoder constant or zero

    @property
    def zero(self) -> bool:
        return all(s.key is None for s in self.segments)

    def owner_of(self, i: int) -> str | None:
        """The slot holding operand row i (None: the row is zero)."""
        for seg in self.segments:
            if i < len(seg.positions):
                return seg.key
            i -= len(seg.positions)
        raise IndexError(i)


def sub_read(read: Read, idx, slots: dict) -> Read:
    """The read of operand rows `idx` (positions in `read`, any order, repeats allowed)."""
    owners = [(seg.key, p) for seg in read.segments for p in seg.positions]
    segs: list[Segment] = []
    ext, const = 0, True
    for i in idx:
        key, pos = owners[i]
        if key is not None:
            ext = emax(ext, slots[key].ext)
            const = const and slots[key].const is not None
        if segs and segs[-1].key == key:
            segs[-1] = Segment(key, segs[-1].positions + (pos,))
        else:
            segs.append(Segment(key, (pos,)))
    return Read(tuple(read.rows[i] for i in idx), tuple(segs), ext, const)


@dataclass
class Occupancy:
    """Which slot (and position in it) holds each row, at one point in time."""
    slots: dict[str, Slot] = field(default_factory=dict)
    owner: dict[int, tuple[str, int]] = field(default_factory=dict)

    def read(self, rows) -> Read:
        segs: list[Segment] = []
        ext, const = 0, True
        for r in rows:
            key, pos = self.owner.get(int(r), (None, -1))
            if key is not None:
                slot = self.slots[key]
                ext = emax(ext, slot.ext)
                const = const and slot.const is not None
            if segs and segs[-1].key == key:
                segs[-1] = Segment(key, segs[-1].positions + (pos,))
            else:
                segs.append(Segment(key, (pos,)))
        return Read(tuple(int(r) for r in rows), tuple(segs), ext, const)

    def place(self, slot: Slot) -> None:
        self.slots[slot.key] = slot
        for i, r in enumerate(slot.rows):
            self.owner[r] = (slot.key, i)

    def copy(self) -> "Occupancy":
        return Occupancy(dict(self.slots), dict(self.owner))


def initial_occupancy(layout: Layout) -> Occupancy:
    """The slots the encoder fills: inputs and constants."""
    occ = Occupancy()
    for blk in layout.input_blocks():
        occ.place(Slot(blk.key, blk.rows, blk.storage_ext,
                       blk.const if blk.kind == "const" else None))
    return occ


def new_slots(layout: Layout, t: int, occ: Occupancy, written: dict[int, object]) -> list[Slot]:
    """The slots holding the rows written in sublayer t afterwards. `written` maps every row a
    contribution writes to the widest extent written to it. Blocks the layout says sublayer t
    writes take their rows; rows written outside them form one anonymous slot."""
    slots, claimed = [], set()
    for blk in layout.written_at(t):
        if claimed & set(blk.rows):
            raise ValueError(f"blocks written in sublayer {t} share rows ({blk.key!r})")
        claimed |= set(blk.rows)
        slots.append(Slot(blk.key, blk.rows, blk.storage_ext))
    rest = tuple(sorted(r for r in written if r not in claimed))
    if rest:
        ext = 0
        for r in rest:
            ext = emax(ext, emax(written[r], occ.read((r,)).ext))
        # named by the time and the extent: a stored layer that runs in several places of a
        # shared build (a body layer stored once and also run after the loop) may widen its
        # anonymous rows differently in each; one name per shape keeps the slots apart
        slots.append(Slot(f"~{t}:{ext}", rest, ext))
    return slots


def nonzero_rows(W: np.ndarray) -> np.ndarray:
    """Indices of the rows of W that have a nonzero entry."""
    return np.flatnonzero(np.any(W != 0, axis=1))


def nonzero_cols(W: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.any(W != 0, axis=0))


# numpy's set routines (np.unique, np.intersect1d) check for masked arrays, which imports
# numpy.ma: 1.2 MiB resident that a run would carry for nothing. Planning uses these two.

def common(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The entries of both a and b, each sorted without repeats (as nonzero_rows gives them)."""
    if not len(a) or not len(b):
        return a[:0]
    pos = np.minimum(np.searchsorted(b, a), len(b) - 1)
    return a[b[pos] == a]


def sorted_distinct(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(t, return_inverse=True) for a 1-D float array without NaN: the distinct
    values ascending, and each entry's index among them."""
    order = np.argsort(t, kind="stable")
    s = t[order]
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    rank = np.empty(len(t), dtype=np.intp)
    rank[order] = np.cumsum(first) - 1
    return s[first], rank


__all__ = ["emax", "emin", "concrete", "Slot", "Segment", "Read", "sub_read", "Occupancy",
           "initial_occupancy", "new_slots", "nonzero_rows", "nonzero_cols", "common",
           "sorted_distinct"]
