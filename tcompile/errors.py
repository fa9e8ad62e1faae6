"""Errors a user can cause, and how they are shown.

Every problem that stems from the user's program, parameters or data is a `TcompileError`,
so the CLI can print it without a traceback and exit with status 1. Errors about a program
carry a `SourceLocation`, and `format()` renders the compiler convention
``FILE:LINE:COL: error: message`` followed by the offending line, a caret under the column,
and (when known) what was expected there.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SourceLocation:
    file: str
    line: int
    column: int
    # where the construct ends (exclusive), when the parser knows: lets a message quote a
    # sub-expression as written (source_text). Not part of equality: a location is its start.
    end_line: int | None = field(default=None, compare=False)
    end_column: int | None = field(default=None, compare=False)

    def source_text(self, source: str | None) -> str | None:
        """The construct's text as written, where it lies on one line (None otherwise)."""
        if source is None or self.end_line != self.line or self.end_column is None:
            return None
        lines = source.splitlines()
        if not 0 < self.line <= len(lines):
            return None
        text = lines[self.line - 1][self.column - 1:self.end_column - 1]
        return text or None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class TcompileError(Exception):
    """Base class of every error caused by user input (program, parameters, data, files)."""

    def __init__(self, message: str, loc: SourceLocation | None = None,
                 expected: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.expected = expected
        self.source = source

    @property
    def file(self) -> str | None:
        """The program file the error is in (None for errors about data or files)."""
        return self.loc.file if self.loc else None

    @property
    def line(self) -> int | None:
        """The error's line in the program, from 1 (None without a location)."""
        return self.loc.line if self.loc else None

    @property
    def column(self) -> int | None:
        """The error's column in the program, from 1 (None without a location)."""
        return self.loc.column if self.loc else None

    def format(self, label: str = "error: ") -> str:
        """The error as the CLI prints it: ``FILE:LINE:COL: error: message``, the source line,
        a caret under the column and what was expected (`label` is the word after the
        location; `str(err)` leaves it out, since Python already prints the class name)."""
        head = f"{self.loc}: {label}{self.message}" if self.loc else f"{label}{self.message}"
        lines = [head]
        if self.loc and self.source is not None:
            src_lines = self.source.split("\n")
            if 1 <= self.loc.line <= len(src_lines):
                text = src_lines[self.loc.line - 1].expandtabs(1)
                lines.append(f"    {text}")
                lines.append("    " + " " * max(self.loc.column - 1, 0) + "^")
        if self.expected:
            lines.append(f"  expected: {self.expected}")
        return "\n".join(lines)

    def __str__(self) -> str:
        """``FILE:LINE:COL: message`` with the source line and caret, without the word
        "error": a traceback already says `InputError: ...`, and `print(err)` in a user's
        `except` block should not read "error: error: ..."."""
        return self.format(label="")


class ProgramSyntaxError(TcompileError):
    """The text is not a program of the language (reported by the parser)."""


class ProgramError(TcompileError):
    """The program parses but is not valid: names, shapes, arity, domains, unsupported forms."""


class ParamError(TcompileError):
    """A `-p NAME=VALUE` / `params={...}` override names no param or has a bad value."""


class InputError(TcompileError):
    """Input data does not match the program's declarations (missing, shape, NaN, assumption)."""


class ApproxError(TcompileError):
    """A scalar function cannot be approximated as asked (bad domain, too many neurons).

    `reason` says which, for the hint the lowering adds (one of the constants below, or None):
    the fit needs more ReLUs than allowed; its budget is below the float64 rounding of values
    up to `largest`; the function is not finite on the domain."""

    TOO_MANY_NEURONS, BELOW_ROUNDING, NOT_FINITE = "too_many_neurons", "below_rounding", "not_finite"

    def __init__(self, message: str, loc: SourceLocation | None = None,
                 expected: str | None = None, source: str | None = None, *,
                 reason: str | None = None, largest: float | None = None):
        super().__init__(message, loc, expected, source)
        self.reason, self.largest = reason, largest


class CompileError(TcompileError):
    """The program is valid but the back end cannot map it onto the target machine."""


class ArtifactError(TcompileError):
    """A saved artifact is missing, corrupt, truncated, or inconsistent with its manifest."""


class DomainError(TcompileError):
    """At run time a fitted MLP piece saw values outside the domain it was fitted on (it clamps
    there, so the result is wrong): raised by `run` after the run (runtime/domain_guard.py)."""


class TcompileWarning(UserWarning):
    """Base class of the warnings a run gives about its results (the CLI prints them)."""


class NonFiniteOutputWarning(TcompileWarning):
    """An output holds NaN or infinity: the computation overflowed (e.g. data near 1e308)."""


class NotConvergedWarning(TcompileWarning):
    """A halting run (`until=`) reached its step limit before a problem's variable settled."""
