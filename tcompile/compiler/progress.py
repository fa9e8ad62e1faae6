"""Progress of a long build on stderr: which stage, which layer of how many.

Quiet for the builds that take a moment (almost all): nothing is printed until `after`
seconds have passed. From then on each stage is announced once — when it begins, or, for a
stage that began earlier and is still running, by a heartbeat thread as soon as `after` has
passed — and emission prints a line per layer at most every `every` seconds (and the last one),
so `-p steps=20000` or a slow plan shows it is alive without flooding a log. The CLI's build
and check pass one; the API is quiet unless given `progress=True` (or a Progress).
"""
from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, stream=None, after: float = 2.0, every: float = 1.0, clock=time.monotonic,
                 heartbeat: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.after, self.every, self.clock = after, every, clock
        self.start = clock()
        self.current, self.announced = None, False
        self.last_print = None             # when the last line was printed (None: none yet)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = None
        if heartbeat:
            self._beat = threading.Thread(target=self._heartbeat, name="tcompile-progress",
                                          daemon=True)
            self._beat.start()

    def _elapsed(self) -> float:
        return self.clock() - self.start

    def _say(self, text: str) -> None:
        try:
            print(f"tcompile: {text} ({self._elapsed():.1f} s)", file=self.stream, flush=True)
        except (OSError, ValueError):      # a closed stderr stops progress, not the build
            self.stream = None
        self.last_print = self.clock()

    def _announce(self) -> None:
        if self.current and not self.announced and self.stream is not None and \
                self._elapsed() >= self.after:
            self._say(self.current)
            self.announced = True

    def _heartbeat(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                self._announce()

    def stage(self, name: str) -> None:
        """A new stage begins (announced once the build has run for `after` seconds)."""
        with self._lock:
            self.current, self.announced = name, False
            self._announce()

    def layer(self, i: int, n: int) -> None:
        """Layer i of n is being emitted."""
        with self._lock:
            if self.stream is None or self._elapsed() < self.after:
                return
            if i == n or self.last_print is None or self.clock() - self.last_print >= self.every:
                self._say(f"{self.current or 'emit'}: {i}/{n} layers")

    def finish(self, ok: bool = True) -> None:
        """Stop the heartbeat; say 'done' if anything was shown (and the build succeeded)."""
        self._stop.set()
        with self._lock:
            if ok and self.last_print is not None and self.stream is not None:
                self._say("done")


def resolve(progress) -> Progress | None:
    """The `progress=` argument: None/False quiet, True a stderr Progress, or a Progress."""
    if progress is None or progress is False:
        return None
    return Progress() if progress is True else progress


__all__ = ["Progress", "resolve"]
