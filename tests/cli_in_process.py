"""The command line in this process (`tcompile.cli.main.main`), stdout and stderr captured: the
code `python -m tcompile` runs, without starting Python and importing torch again per command
(test_artifact_cli and test_cli_errors keep the real-process checks)."""
from __future__ import annotations

import contextlib
import io
import subprocess

from tcompile.cli.main import main


def run_in_process(argv) -> subprocess.CompletedProcess:
    """`main` on these arguments (as text), as a CompletedProcess; argparse's SystemExit (--help
    0, a usage error 2) is its return code. Any other exception escapes."""
    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
