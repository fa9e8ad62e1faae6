"""Program points: `name@k` names the value of variable `name` after its k-th top-level
assignment (k from 0, counted once per executed assignment, every loop iteration included).
Stored blocks, the trace, labels, plots and the model card all name values so; the walker
(checker.Walker.program_point) is the one place they are counted, and this module the one
place the spelling is made and read."""
from __future__ import annotations


def program_point(name: str, k: int) -> str:
    """The point of `name` after its k-th assignment."""
    return f"{name}@{k}"


def point_variable(point: str) -> str:
    """`x@3` → `x`; a key that is not a program point (an input, a constant) is returned whole."""
    return point.partition("@")[0]


def point_count(point: str) -> int:
    """`x@3` → 3: which assignment of its variable the point follows."""
    return int(point.partition("@")[2])
