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


def run_counts(params: list[str]) -> dict[str, int]:
    """`-p NAME=COUNT` options → a shared build's run-time counts (whole numbers; the build
    says which names it takes)."""
    counts = {}
    for name, text in parse_param_overrides(params).items():
        try:
            counts[name] = int(text)
        except ValueError:
            raise UsageError(f"-p {name}={text}: a run-time count is a whole number") from None
    return counts


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (`check --batch 0` would check nothing and pass)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


INT64_MAX = 2 ** 63 - 1


def step_count(text: str) -> int:
    """argparse type: a whole number from 1 to 2**63 - 1 (`--max-steps`: a step count has to
    fit the int64 the run reports it in)."""
    value = positive_int(text)
    if value > INT64_MAX:
        raise argparse.ArgumentTypeError(f"expected at most {INT64_MAX:,}, got {text}")
    return value


def seed(text: str) -> int:
    """argparse type: a whole number >= 0 (what numpy's random generators accept as a seed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def tolerance(text: str) -> float:
    """argparse type of --tol: a number strictly between 0 and 1 (an approximation's error
    budget; the compiler refuses any other, so the command line does too, as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), e.g. 1e-6, got {text}")
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
           "parse_param_overrides", "positive_int", "positive_float", "step_count", "seed",
           "tolerance", "INT64_MAX"]
