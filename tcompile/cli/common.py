"""What the CLI's entry point (main.py) and its subcommands (commands.py) share: exit codes,
the usage error, and `-p NAME=VALUE` parsing. It sits below both so neither imports the other
back (main dispatches to commands; commands never reach main)."""
from __future__ import annotations

import argparse
import math

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED = 0, 1, 2, 3


class UsageError(Exception):
    """A command line that parsed but cannot be used; main prints usage and exits 2."""


def parse_param_overrides(items: list[str]) -> dict[str, str]:
    """`-p NAME=VALUE` options → {NAME: VALUE} (values stay text: the checker converts them)."""
    params = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"-p expects NAME=VALUE, got {item!r}")
        params[name.strip()] = value.strip()
    return params


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (`check --batch 0` would check nothing and pass)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CHECK_FAILED", "UsageError",
           "parse_param_overrides", "positive_int", "positive_float"]
