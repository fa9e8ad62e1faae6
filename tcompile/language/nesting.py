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
    out: list[_Statement] = []
    cur: _Statement | None = None
    depth = unary = 0
    prev = ""                                  # last significant character ("" = start)
    for lineno, text in enumerate(source.split("\n"), start=1):
        code = text.split("#", 1)[0]
        for col, ch in enumerate(code, start=1):
            if ch.isspace():
                continue
            if cur is None:
                cur, prev = _Statement(lineno, col), ""
                out.append(cur)
            if ch == "=" and depth == 0 and prev not in "<>=!":
                cur.line, cur.column, prev = lineno, col + 1, "="
                _skip_to_expression(cur, code, col)
                continue
            if ch in _OPEN:
                depth += 1
            elif ch in _CLOSE:
                depth = max(depth - 1, 0)
            elif ch in _OPERATORS:
                if prev == "" or prev in _OPERATORS + _OPEN + "=,":
                    unary += 1                # a sign: nests like a bracket
                else:
                    cur.operators += 1
            if ch not in _OPERATORS:
                unary = 0 if ch not in _OPEN else unary
            cur.depth = max(cur.depth, depth + unary)
            prev = ch
        if depth == 0:
            cur, unary = None, 0
    return out


def _skip_to_expression(stmt: _Statement, code: str, col: int) -> None:
    """Move the statement's column past `=` and spaces to where its expression begins."""
    i = col
    while i < len(code) and code[i].isspace():
        i += 1
    stmt.column = i + 1


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
