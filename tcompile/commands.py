"""The CLI's subcommands, each a function of the parsed arguments returning an exit code."""
from __future__ import annotations

import sys

from .cli import EXIT_OK, parse_param_overrides
from .errors import CompileError


def cmd_build(args) -> int:
    from .compiler import compile_file
    prog = compile_file(args.file, params=parse_param_overrides(args.param))
    paths = prog.save_to_dir(args.out)
    print(prog.report_text())
    for p in paths:
        print(f"wrote {p}")
    return EXIT_OK


def _unsupported(args) -> int:
    raise CompileError(f"'{args.command}' is not available yet")


cmd_run = cmd_check = cmd_report = cmd_trace = cmd_plot = _unsupported
