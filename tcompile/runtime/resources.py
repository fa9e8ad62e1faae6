"""How much memory there is, and sizes as people write them.

A build's dense weights grow with D² per head (D the width), so `-p d=20000` asks for tens of
GiB. The compiler estimates the size before allocating anything and compares it with a limit
(compiler/budget.py); by default that limit is a fraction of the memory *available* now:
MemAvailable from /proc/meminfo, lowered by a cgroup (container) limit when there is one, and
os.sysconf's free pages where /proc is missing. It lives in the runtime because loading an
artifact (which rebuilds the dense weights) can use the same probe.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

DEFAULT_FRACTION = 0.5          # of the available memory, the default limit of a build
_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def available_memory() -> int | None:
    """Bytes of memory this process can still use, or None if the platform does not say."""
    candidates = [_meminfo_available(), _cgroup_headroom()]
    if candidates[0] is None:
        try:
            candidates[0] = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    known = [c for c in candidates if c is not None and c > 0]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _cgroup_headroom() -> int | None:
    """limit − usage of the cgroup v2 (or v1) this process runs in, if it has a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:
            return max(int(limit) - usage, 0)
    return None


def default_memory_limit() -> float:
    """DEFAULT_FRACTION of the available memory (no limit if it cannot be known)."""
    avail = available_memory()
    return DEFAULT_FRACTION * avail if avail else float("inf")


def parse_size(text: str) -> float:
    """'4G', '512M', '1.5GiB', '2e9', 'none' → bytes (float('inf') for none); ValueError
    otherwise. K/M/G/T are powers of 1024, with or without a trailing B or iB."""
    t = str(text).strip()
    if t.lower() in ("none", "unlimited", "inf"):
        return float("inf")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTkmgt]?)(?:i?[Bb])?", t)
    if not m:
        raise ValueError(f"not a size: {text!r} (write e.g. 8G, 512M, 2e9 or none)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value <= 0:
        raise ValueError(f"a memory limit must be positive, got {text!r}")
    return value


def format_count(n) -> str:
    """A count as '3e+40' style text, also for an int too large for a float (10**616)."""
    if isinstance(n, int) and abs(n).bit_length() > 1000:
        return f"about 1e{int(math.log10(abs(n)))}"
    return f"{n:.3g}"


def format_bytes(n: float) -> str:
    """1536 → '1.5 KiB'; 4.8e10 → '44.7 GiB'; an int too large for a float (the size of
    `-p d=1e308`'s weights) → 'about 1e616 B'."""
    if n == float("inf"):
        return "unlimited"
    if isinstance(n, int) and abs(n).bit_length() > 1000:
        return f"{format_count(n)} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.{3 if n >= 1e4 else 1}{'g' if n >= 1e4 else 'f'}} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


__all__ = ["DEFAULT_FRACTION", "available_memory", "default_memory_limit", "parse_size",
           "format_bytes", "format_count"]
