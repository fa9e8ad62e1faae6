"""Where an expression too big for the recursive front end is, and what is too big about it.

The parser and the checker walk expressions recursively, so Python's recursion limit caps both
the nesting depth (`((((a))))`, `- - - a`) and the length of a flat chain (`a + a + ... + a`
is a left-leaning tree as deep as it is long). When that limit is hit the exception says
nothing about where; this module scans the source text itself (comments skipped, statements
split at newlines outside brackets) for the statement with the deepest nesting or the longest
operator chain, and builds an error that points at its expression and calls it by the right
name: "nested too deeply" for depth, "too long" for a flat chain.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProgramError, SourceLocation

_OPEN, _CLOSE = "([", ")]"           # braces delimit blocks, not expressions
_OPERATORS = "+-*/@"


@dataclass
class _Statement:
    line: int                  # where its expression starts (1-based)
    column: int
    depth: int = 0             # deepest bracket or unary-operator nesting
    operators: int = 0         # binary operators in the whole statement


def _statements(source: str) -> list[_Statement]:
    """Every statement of the source with its expression's start, depth and operator count."""
    scan = _Scan()
    for lineno, text in enumerate(source.split("\n"), start=1):
        code = text.split("#", 1)[0]
        for col, ch in enumerate(code, start=1):
            if not ch.isspace():
                scan.char(ch, lineno, col, code)
        scan.end_of_line()
    return scan.out


class _Scan:
    """The scan's state between characters: brackets open, signs in a row, the statement."""

    def __init__(self):
        self.out: list[_Statement] = []
        self.cur: _Statement | None = None
        self.depth = self.unary = 0
        self.prev = ""                         # last significant character ("" = start)

    def char(self, ch: str, lineno: int, col: int, code: str) -> None:
        """One significant (non-space) character at (lineno, col) of the line `code`."""
        if self.cur is None:
            self.cur, self.prev = _Statement(lineno, col), ""
            self.out.append(self.cur)
        if ch == "=" and self.depth == 0 and self.prev not in "<>=!":
            self.cur.line, self.cur.column = lineno, _expression_column(code, col)
            self.prev = "="
            return
        if ch in _OPEN:
            self.depth += 1
        elif ch in _CLOSE:
            self.depth = max(self.depth - 1, 0)
        elif ch in _OPERATORS:
            if self.prev == "" or self.prev in _OPERATORS + _OPEN + "=,":
                self.unary += 1                # a sign: nests like a bracket
            else:
                self.cur.operators += 1
        if ch not in _OPERATORS and ch not in _OPEN:
            self.unary = 0
        self.cur.depth = max(self.cur.depth, self.depth + self.unary)
        self.prev = ch

    def end_of_line(self) -> None:
        """A newline outside brackets ends the statement."""
        if self.depth == 0:
            self.cur, self.unary = None, 0


def _expression_column(code: str, col: int) -> int:
    """The column (1-based) where the expression after the `=` at column `col` begins: past
    the `=` and any spaces."""
    i = col
    while i < len(code) and code[i].isspace():
        i += 1
    return i + 1


def too_deep(file: str, source: str) -> ProgramError:
    """The error for an expression the recursive walk could not handle, at that expression."""
    stmts = _statements(source)
    if not stmts:
        return ProgramError("the program is too deeply nested to read", SourceLocation(file, 1, 1),
                            source=source)
    worst = max(stmts, key=lambda s: max(s.depth, s.operators))
    loc = SourceLocation(file, worst.line, worst.column)
    if worst.depth >= worst.operators:
        return ProgramError(f"this expression is nested too deeply ({worst.depth} levels of "
                            f"brackets or signs)", loc,
                            expected="less nesting: name inner parts in earlier statements",
                            source=source)
    return ProgramError(f"this expression is too long ({worst.operators} operators in one "
                        f"statement)", loc,
                        expected="shorter expressions: sum parts in separate statements "
                                 "(s1 = a + b ... then s = s1 + s2)", source=source)


__all__ = ["too_deep"]
