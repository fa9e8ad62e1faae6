"""What the CLI's commands produce and may spend: output files (`run -o`), checked before any
work and written atomically, and the memory a build may use (`--max-memory SIZE`).

A result file (`run -o`, `trace -o`) is checked before the model runs (so a mistake costs
nothing): it must not be a directory, nor a device, FIFO or socket (a write renames a new
file into place, which would replace /dev/null itself), and must not be the `--inputs` file it would silently overwrite (the same path, or
another name for the same file). It is then written through runtime/files.py: the old file or
the new one, never a truncated one, never a temporary left behind. A write that fails (a path
through a file, no permission, a full disk) is a TcompileError naming the target (`writing`,
also what `trace -o` and `plot` write under).
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path

from .common import UsageError
from ..errors import TcompileError
from ..runtime.files import atomic_write_bytes, refuse_special


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:                      # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def output_file(out, inputs=None) -> Path:
    """The checked `-o` path (UsageError for a directory or for the --inputs file)."""
    path = Path(out)
    if not str(out).strip():
        raise UsageError("-o is empty: give a file name such as out.npz")
    if path.is_dir():
        raise UsageError(f"-o {str(out)!r} is a directory; give a file name such as "
                         f"{str(path / 'out.npz')!r}")
    try:
        refuse_special(path)
    except OSError as e:
        raise UsageError(f"-o {str(out)!r}: {e.strerror}; give a file name such as "
                         "out.npz") from None
    if inputs is not None and _same_file(path, Path(inputs)):
        raise UsageError(f"-o {str(out)!r} is the --inputs file; it would be overwritten by the "
                         "results: give another name")
    return path


def memory_size(text: str) -> float:
    """argparse type of --max-memory: '8G', '512M', '2e9', 'none' → bytes (usage error else)."""
    import argparse
    from ..runtime.resources import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


MAX_MEMORY_HELP = ("refuse to build a model whose dense weights exceed SIZE (e.g. 8G, 512M, "
                   "none); default: half the memory available now")


@contextmanager
def writing(target):
    """An OSError while writing output (a path through a file, no permission, a full disk) is
    the user's to fix: say which target and why, without a traceback."""
    try:
        yield
    except OSError as e:
        raise TcompileError(f"cannot write {str(target)!r}: {e.strerror or e}") from None


def write_npz(path: Path, arrays: dict) -> None:
    """Write an .npz of the arrays at exactly `path` (numpy would append .npz), atomically."""
    import numpy as np                   # here: `tcompile --help` imports this module
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())


__all__ = ["output_file", "writing", "write_npz", "memory_size", "MAX_MEMORY_HELP"]
