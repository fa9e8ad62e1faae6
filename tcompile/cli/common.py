"""What the CLI's entry point (main.py) and its subcommands (commands.py) share: exit codes,
the usage error, and `-p NAME=VALUE` parsing. It sits below both so neither imports the other
back (main dispatches to commands; commands never reach main)."""
from __future__ import annotations

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


__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CHECK_FAILED", "UsageError",
           "parse_param_overrides"]
