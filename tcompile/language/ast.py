"""The program as the user wrote it: plain dataclasses, every node with its source location.

The parser builds these; the checker, the reference interpreter and the dataflow builder all
walk them (through `checker.Walker`), so they agree on what a program means.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import SourceLocation


# ---- expressions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    value: float
    loc: SourceLocation


@dataclass(frozen=True)
class Name:
    id: str
    loc: SourceLocation


@dataclass(frozen=True)
class BinOp:
    op: str            # one of + - * / @ **
    left: "Expr"
    right: "Expr"
    loc: SourceLocation
    domain: "Interval | None" = None   # `a / b on [lo, hi]`: the interval the divisor b lives in
    tol: "Expr | None" = None          # `a / b on [..] tol eps`: the reciprocal's error budget
    tol_rel: bool = False              # `tol rel eps`: that budget is relative (|err| <= eps |1/b|)


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    loc: SourceLocation


@dataclass(frozen=True)
class Transpose:
    operand: "Expr"
    loc: SourceLocation


@dataclass(frozen=True)
class Slice:
    """`start:stop:step` in a subscript, numpy's meaning; a part left out is None."""
    start: "Expr | None"
    stop: "Expr | None"
    step: "Expr | None"
    loc: SourceLocation


@dataclass(frozen=True)
class Index:
    """`value[s0, s1, ...]`: each subscript a compile-time integer (the axis is dropped) or a
    Slice (the axis is kept), numpy's basic indexing on at most two axes."""
    value: "Expr"
    subscripts: tuple["Expr | Slice", ...]
    loc: SourceLocation


@dataclass(frozen=True)
class Bound:
    """`(expr) on [lo, hi]`: the user's word that every entry of expr lies in [lo, hi] — a
    bound the checker uses like an input assumption, and the compiled model checks where a
    piece reads the value (`check_domains`). A trailing `tol` is the statement's, or, on a
    divisor, the reciprocal's (the parser moves it there)."""
    operand: "Expr"
    domain: "Interval"
    loc: SourceLocation
    tol: "Expr | None" = None
    tol_rel: bool = False


@dataclass(frozen=True)
class Interval:
    lo: "Expr"
    hi: "Expr"
    loc: SourceLocation


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    loc: SourceLocation
    domain: Interval | None = None     # `on [lo, hi]`: where an approximated function is used
    tol: "Expr | None" = None          # `tol 1e-6`: its error budget
    tol_rel: bool = False              # `tol rel 1e-6`: the budget is relative, |err| <= eps |f|
    # which value of a def that returns several (`return a, b`): set by multi_assign.py for
    # `x, y = f(...)`, which becomes one call per value; None for a def of one value
    part: int | None = None


Expr = Number | Name | BinOp | Neg | Transpose | Call | Index


# ---- statements ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Assign:
    target: str
    value: Expr
    loc: SourceLocation
    tol: "Expr | None" = None          # `x = ... tol 1e-4`: default budget of its approximations
    tol_rel: bool = False              # `x = ... tol rel 1e-4`: that default budget is relative


@dataclass(frozen=True)
class Repeat:
    count: Expr
    body: tuple["Stmt", ...]
    loc: SourceLocation


@dataclass(frozen=True)
class Return:
    values: tuple[Expr, ...]           # `return a, b` returns two; a call takes one (Call.part)
    loc: SourceLocation


@dataclass(frozen=True)
class MultiAssign:
    """`x, y = e1, e2` or `x, y = f(...)`: the parser's record of it, which multi_assign.py
    turns into plain Assigns before any other pass sees the program."""
    targets: tuple[str, ...]
    target_locs: tuple[SourceLocation, ...]
    values: tuple[Expr, ...]
    loc: SourceLocation
    tol: "Expr | None" = None
    tol_rel: bool = False


Stmt = Assign | Repeat | Return


# ---- declarations --------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    value: Expr
    loc: SourceLocation


@dataclass(frozen=True)
class Dim:
    name: str
    value: Expr
    loc: SourceLocation


@dataclass(frozen=True)
class ShapeDim:
    """One axis of a declared shape: the token axis `n`, a dim name, or an integer."""
    value: str | int
    loc: SourceLocation


@dataclass(frozen=True)
class Qualifier:
    """An assumption on an input: sign, flag, symmetric, range, row_norm, norm, spectrum."""
    kind: str
    loc: SourceLocation
    bound: Expr | None = None          # row_norm / norm
    interval: Interval | None = None   # range / spectrum


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple[ShapeDim, ...]
    qualifiers: tuple[Qualifier, ...]
    loc: SourceLocation


@dataclass(frozen=True)
class Output:
    name: str
    loc: SourceLocation


@dataclass(frozen=True)
class FuncDef:
    name: str
    params: tuple[str, ...]
    body: tuple[Stmt, ...]
    loc: SourceLocation
    param_locs: tuple[SourceLocation, ...] = ()     # where each parameter is named


@dataclass
class Program:
    name: str
    loc: SourceLocation
    source: str
    file: str
    params: list[Param] = field(default_factory=list)
    dims: list[Dim] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    functions: dict[str, FuncDef] = field(default_factory=dict)
    body: list[Stmt] = field(default_factory=list)
    # a build option, not program text (compile_program(keep=...)): variables whose every
    # value the model stores in rows of its own, for trace, probes and `until`
    keep: tuple[str, ...] = ()


def walk(node, parent=None):
    """Every AST node under `node` with its parent (dataclass fields, tuples, lists, dicts;
    not locations or the source text): for the analyses that read the program's syntax
    rather than walking it as the checker does (run_params.py's run-time counts, the
    checker's test of whether an expression reads a variable)."""
    if isinstance(node, (list, tuple)):
        for item in node:
            yield from walk(item, parent)
        return
    if isinstance(node, dict):
        for item in node.values():
            yield from walk(item, parent)
        return
    if not dataclasses.is_dataclass(node):
        return
    yield node, parent
    for f in dataclasses.fields(node):
        if f.name in ("loc", "source", "file"):
            continue
        yield from walk(getattr(node, f.name), node)
