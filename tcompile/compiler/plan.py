"""Planning: how each atom is stored, when it is computed, and which rows hold it.

    orient.py    whether each small matrix is stored as M or Mᵀ (a local search on rows)
    schedule.py  the layer each block is written in (ASAP, then ALAP at the same depth)
    rows.py      rows with liveness; writers subtract the dead values under them

`plan_program` runs the three and returns the finished `Plan` the emitter reads. Both the
ASAP and the ALAP schedule are allocated and the narrower is kept (ALAP lets a loop variable
die where its successor is written, ASAP sometimes packs better).
"""
from __future__ import annotations

from dataclasses import dataclass

from .heads import HeadTerm
from .orient import HeadOptions, Pair, mlp_input_pair
from .orient_search import choose_orientations
from .poly import AtomTable
from .rows import Slot, allocate
from .schedule import AsapScheduler, Pace, delay, paced_release


@dataclass(frozen=True)
class Plan:
    """Everything the emitter needs: every stored block's orientation, write time and rows,
    and the heads and MLP clears that write them. Time is in sublayers (schedule.py)."""
    atoms: AtomTable                    # the program's atoms + the identity pseudo atoms (rows.py)
    orient: dict[int, bool]
    pairs: set[Pair]                    # stored blocks (atom, transposed)
    write_time: dict[Pair, int]
    terms: dict[Pair, list[HeadTerm]]   # attention-written blocks: their heads
    clear_terms: dict[int, list]        # MLP sublayer → (dead block, row indices, writer)
    slots: dict[Pair, Slot]
    width: int
    n_layers: int
    identity_size: int                  # rows of the [I 0] block (0: none)
    inv_n_identity_size: int            # rows of the [I/n 0] block (0: none)
    ones_inv_n_size: int                # 1 where heads read the 1 × n row of 1/n, else 0

    def mlp_input(self, arg: int, mlp_atom: int) -> Pair:
        """The block an MLP piece reads its input `arg` from (orient.mlp_input_pair)."""
        return mlp_input_pair(self.atoms, arg, mlp_atom, self.orient)


def plan_program(atoms: AtomTable, outputs: dict[str, int],
                 pace: dict[str, Pace] | None = None, min_width: int = 0) -> Plan:
    """Orient, schedule (ASAP and ALAP, same depth) and allocate; keep the narrower plan.
    `pace` (shared builds: loop key → how): those loops' iterations are released one every
    so many layers (schedule.paced_release). `min_width` (shared builds): the residual width
    at least, the rows past the allocation's left empty, so that unrollings whose
    allocations differ only in how many rows their ends need give layers of one shape."""
    options = HeadOptions(atoms)
    orient = choose_orientations(atoms, options)
    schedule = AsapScheduler(atoms, options, outputs)
    if pace:
        schedule = AsapScheduler(atoms, options, outputs,
                                 paced_release(atoms, schedule(orient), pace))
    best = None
    for late in (False, True):
        s = schedule(orient)
        if late:
            delay(atoms, s, outputs)
        al = allocate(atoms, s, outputs)
        if best is None or al.width < best[0].width:
            best = al, s
    al, s = best
    return Plan(al.atoms, s.orient, al.pairs, al.write_time, al.terms, al.clear_terms,
                al.slots, max(al.width, min_width), s.n_layers, *al.identity_sizes)
