"""Names a user recognises for what the compiler stored: source lines instead of temporaries.

The layout names stored values `x@3` (the fourth assignment to x) and, for values no program
variable holds, compiler temporaries (`tmp72`); approximated functions are named by their leaf
expression (`reciprocal(sqrt((gᵀ@t72@g)) + 0.632456)`). The model card, plots and trace show
instead the user's own text: `x@3` is "x (line 38)", found by re-walking the program's
assignments with the checker; an approximation is the source statements that apply it, at the
lines the compiler recorded for it in the manifest (`source_lines`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..language.points import point_variable
from ..language import ast
from ..language.checker import Walker


@dataclass(frozen=True)
class SourceLine:
    line: int
    text: str                      # the statement as written, trimmed

    def __str__(self) -> str:
        return f"line {self.line}: {self.text}"


class _AssignmentLines(Walker):
    """The checker's walk, keeping the source line of every top-level assignment (`x@k`)."""
    types_only = False          # names every iteration's assignments: walks them all

    def __init__(self, program, params):
        super().__init__(program, params)
        self.lines: dict[str, int] = {}

    def _assign(self, stmt, env):
        super()._assign(stmt, env)
        point = self.program_point(stmt)
        if point is not None:
            self.lines[point] = stmt.loc.line


def assignment_lines(program: ast.Program, params: dict[str, float]) -> dict[str, int]:
    """`name@k` → the line of the statement that made the k-th assignment to name."""
    walker = _AssignmentLines(program, params)
    walker.run()
    return walker.lines


_TEMP = re.compile(r"\b(?:tmp|t)\d+\b")


def readable(expr: str) -> str:
    """A compiler expression with its temporaries (`t72`, `tmp75`) shown as `(…)`: an
    intermediate value the program never named."""
    return _TEMP.sub("(…)", expr)


def value_name(var: str, lines: dict[str, int]) -> str:
    """`x@3` → "x (line 38)"; an input or constant key → its name; a temporary stays."""
    base = point_variable(var)
    if var in lines:
        return f"{base} (line {lines[var]})"
    if var.startswith("input:"):
        return f"{var[6:]} (input)"
    if var.startswith("const:"):
        return constant_name(var)
    return var


_CONSTANTS = {"const:eye": "I", "const:eye_inv_n": "I/n", "const:ones": "ones",
              "const:ones_inv_n": "ones/n", "const:inv_n": "1/n", "const:n": "n"}


def constant_name(key: str) -> str:
    """An encoder constant's block key as a reader writes it: `const:eye` → "I",
    `const:number:0.8` (a loop's number carried as a runtime value) → "0.8", a pattern by its
    key."""
    if key.startswith("const:number:"):
        return key[len("const:number:"):]
    return _CONSTANTS.get(key, key[6:])


def block_name(blk, lines: dict[str, int]) -> str:
    """A layout Block as the user would call it (the variable it holds last, or its key)."""
    if blk.vars:
        return value_name(blk.vars[-1], lines) + ("ᵀ" if blk.transposed else "")
    key = blk.key[:-2] if blk.key.endswith(".T") else blk.key
    return value_name(key, lines) + ("ᵀ" if blk.transposed else "")


def source_lines(program: ast.Program, lines) -> list[SourceLine]:
    """The statements at these lines, as written (comments trimmed): the compiler records, for
    each approximation, the lines of the statements that apply it."""
    source = program.source.split("\n")
    return [SourceLine(n, source[n - 1].split("#")[0].strip()) for n in lines
            if 0 < n <= len(source)]


__all__ = ["readable", "SourceLine", "assignment_lines", "value_name", "constant_name", "block_name",
           "source_lines"]
