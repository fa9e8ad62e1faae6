"""What an artifact says besides its weights, as typed records.

The compiler fills a `Manifest` in; `CompiledProgram` holds it; artifact.py alone converts it
to and from the JSON file (so the file format is written down in one place, and everything
else reads attributes, not string keys).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .layout import Layout
from .loops import LoopProgram

FORMAT = "tcompile-artifact"
FORMAT_VERSION = 3          # 2: one .safetensors, sparse weights; 3: its manifest's tables compact


@dataclass(frozen=True)
class ProgramInfo:
    """The program the model was compiled from, and how."""
    name: str
    file: str              # the source file's name (no directory)
    source: str
    params: dict           # resolved params and dims (ints where integral); do not mutate
    default_tol: float     # the error budget of approximations nothing else sets
    compiler_version: str
    keep: tuple[str, ...] = ()   # variables the build was asked to store (compile_program)

    @property
    def source_sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def float_params(self) -> dict[str, float]:
        """The params as the checker and interpreter take them (floats)."""
        return {k: float(v) for k, v in self.params.items()}


@dataclass(frozen=True)
class ApproxRecord:
    """One distinct piecewise-linear function in the model, with how much of it is used."""
    name: str              # the approximated function, by leaf names
    lo: float | None       # fitted domain; None for a piece exact on all of R
    hi: float | None
    neurons: int           # ReLUs over all its uses
    neurons_per_entry: int
    max_error: float       # measured on its domain
    tol: float             # the budget it was fitted to
    exact: bool
    entries: int           # how many entries (rows of values) use it
    choice: str = ""       # how the compiler chose to compute it and why (a scalar division or
                           #   root: direct fit or seed + Newton in heads, compiler/refine.py)
    lines: tuple[int, ...] = ()   # the source lines of the statements that apply it
    steepest: float = 0.0  # an exact piece's largest |slope|, where >= 1e3 (pieces.steep_ramp)


@dataclass(frozen=True)
class DomainCheck:
    """Where an MLP piece reads its real input, and the domain it was fitted on: outside it the
    piece clamps, i.e. is wrong, so run's domain guard and `check_domains` (inspection/
    domains.py) look there."""
    label: str
    block: str             # key of the block holding the piece's input
    lo: float
    hi: float
    layer: int             # the input is read after this layer's attention (from 0)
    # why `run`'s guard need not read it ("" where it must): the input is the output of a
    # fitted piece whose own input is checked, and the piece's values on its domain lie inside
    # this one (compiler/backend.py `_implied`); check_domains still reads every check
    implied: str = ""
    # the source lines of the statements this piece applies (one fit may serve several
    # statements, each its own piece: the message names the statement whose value left)
    lines: tuple[int, ...] = ()


@dataclass(frozen=True)
class Manifest:
    program: ProgramInfo
    layout: Layout
    approximations: tuple[ApproxRecord, ...]
    domains: tuple[DomainCheck, ...]
    loops: LoopProgram | None = None       # a shared build's loops (loops.py); None: unrolled


__all__ = ["FORMAT", "FORMAT_VERSION", "ProgramInfo", "ApproxRecord", "DomainCheck", "Manifest"]
