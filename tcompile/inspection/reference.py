"""The interpreter's value of every assignment: what trace, plots and the tolerance policy
compare the compiled model's stored values with (`X@3` is the fourth assignment to X)."""
from __future__ import annotations

import numpy as np

from ..language.checker import Val
from ..language.interpreter import NumpyWalker


class RecordingWalker(NumpyWalker):
    """The interpreter, keeping every top-level assignment as `name@k`."""

    def __init__(self, program, params, n):
        super().__init__(program, params, n)
        self.record: dict[str, np.ndarray] = {}

    def _assign(self, stmt, env):
        super()._assign(stmt, env)
        point = self.program_point(stmt)
        if point is not None and env[stmt.target].ty.shape is not None:   # unsized c·I: never stored
            self.record[point] = np.asarray(env[stmt.target].data, dtype=np.float64)


def interpreter_assignments(program, params, arrays: dict, n) -> dict[str, np.ndarray]:
    """Every assignment's value for each problem of the (batched) inputs: name@k → (B, ...)."""
    size = next(iter(arrays.values())).shape[0] if arrays else 1
    per_problem = []
    for b in range(size):
        walker = RecordingWalker(program, params, n)
        walker.inputs = set(arrays)
        env = {d.name: Val(walker.input_type(d), arrays[d.name][b]) for d in program.inputs}
        walker.run(env)
        per_problem.append(walker.record)
    return {k: np.stack([r[k] for r in per_problem]) for k in per_problem[0]}


def relative_error(got, ref) -> float:
    """max |got − ref| / max |ref| (0 for empty values; a zero reference divides by 1e-300)."""
    if not np.size(ref):
        return 0.0
    return float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), 1e-300)


__all__ = ["RecordingWalker", "interpreter_assignments", "relative_error"]
