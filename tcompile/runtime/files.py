"""Reading and writing files safely: bounded reads of regular files only; writes that a reader
sees whole (the old file or the new one), never through onto a device.

Every file tcompile reads (programs, artifacts, inputs) is opened through `open_regular` /
`read_regular`: opened without blocking (a FIFO with no writer would hang an ordinary open),
checked to be a regular file (a FIFO, a device such as /dev/zero — directly or through a
symlink — or a socket is refused before one byte is read), and read up to a size limit (a
program or a header can never grow memory without bound). Both raise OSError subclasses, so
callers that already turn an OSError into a clear error need nothing new.

Every file tcompile writes (artifacts, their JSON copies, `run -o` results, pictures) goes
through `atomic_open` / `atomic_write_bytes`:

- the bytes go to a fresh temporary in the target's own directory (same file system, so the
  final rename is atomic), are flushed and fsync'ed, and only then renamed over the target;
- the temporary is created with `os.open(..., 0o666)`, so the kernel applies the umask, as for
  any file a program creates (mkstemp's 0600 would leak into the artifact);
- on any exception (KeyboardInterrupt included) the temporary is removed and the target is
  left as it was;
- `deferred_signals()` holds SIGINT, SIGTERM and SIGHUP while a commit (one or several
  renames) runs, so `kill` or Ctrl-C during a save lands after it, never between two renames.
  Only SIGKILL or a power cut can interrupt a save; even then the target is the old or the new
  file, and at most a `.NAME.*.tmp` file is left beside it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import stat
import threading
from pathlib import Path

_HELD = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class NotRegularFileError(OSError):
    """A path that names a FIFO, a device or a socket where a regular file is needed."""


class FileTooLargeError(OSError):
    """A regular file larger than the reader's limit."""


def _kind(mode: int) -> str:
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
            stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a directory" if stat.S_ISDIR(mode) else "not a regular file")


def open_regular(path, limit: int | None = None):
    """A binary file object of the regular file at `path` (symlinks followed), opened without
    blocking; NotRegularFileError for a FIFO, device, socket or directory, FileTooLargeError
    if it holds more than `limit` bytes, other OSErrors as the system reports them."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode, size = os.fstat(fd).st_mode, os.fstat(fd).st_size
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"it is {_kind(mode)}, not a regular file",
                                      str(path))
        if limit is not None and size > limit:
            raise FileTooLargeError(errno.EFBIG, f"it holds {size:,} bytes, more than the "
                                    f"{limit:,} this reader accepts", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, limit: int) -> bytes:
    """All bytes of the regular file at `path`, at most `limit` (see `open_regular`); a file
    that grows past the limit while it is read is refused too."""
    with open_regular(path, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(errno.EFBIG, f"it holds more than the {limit:,} bytes this "
                                "reader accepts", str(path))
    return data


def refuse_special(path) -> None:
    """NotRegularFileError if `path` exists and is neither a regular file nor a directory (a
    device, FIFO or socket, directly or through a symlink): a write would rename a regular file
    over a device node such as /dev/null. Directories are the callers' own message."""
    try:
        mode = os.stat(path).st_mode
    except OSError:                      # nothing there (yet), or not reachable: the write says
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise NotRegularFileError(errno.EINVAL, f"it is {_kind(mode)}: tcompile replaces only "
                                  "regular files", str(path))


def _temp_path(path: Path) -> tuple[Path, int]:
    """A new, exclusively created temporary beside `path`: (its path, an open descriptor)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {str(path)!r}")


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (main thread only; elsewhere a no-op).
    A signal that arrives meanwhile is delivered, with its usual effect, when the block exits."""
    if threading.current_thread() is not threading.main_thread() or \
            not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def atomic_open(path):
    """`with atomic_open(p) as f: f.write(...)`: a binary file that replaces `p` when the block
    ends without an exception, and vanishes otherwise. Refuses a directory (IsADirectoryError)
    before anything is written; any exception leaves no temporary behind. For content produced
    while the block runs (a picture being drawn); signals are not held here, so SIGTERM in the
    middle can leave the temporary (never a truncated target)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory")
    refuse_special(path)
    tmp, fd = _temp_path(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace `path` by `data` atomically, signals held throughout (the bytes are already in
    memory, so this is quick): an interrupt leaves the old file and no temporary."""
    with deferred_signals(), atomic_open(path) as f:
        f.write(data)


def atomic_write_many(files: list[tuple[Path, bytes]]) -> None:
    """Write several files as one step: every temporary is written and fsync'ed first (a
    failure there — a full disk, a directory in the way — removes them all and changes
    nothing), then they are renamed in order with signals held, so an interrupt lands before
    the first rename or after the last. (SIGKILL can still fall between two renames; callers
    put the file readers trust first.)"""
    with deferred_signals():
        temps: list[Path] = []
        try:
            for path, data in files:
                path = Path(path)
                if path.is_dir():
                    raise IsADirectoryError(21, "is a directory", str(path))
                refuse_special(path)
                tmp, fd = _temp_path(path)
                temps.append(tmp)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            for tmp, (path, _) in zip(temps, files):
                os.replace(tmp, path)
        except BaseException:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise
    for directory in {Path(path).parent for path, _ in files}:
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (where the platform lets a directory be fsync'ed)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_many", "deferred_signals",
           "open_regular", "read_regular", "refuse_special", "NotRegularFileError",
           "FileTooLargeError"]
