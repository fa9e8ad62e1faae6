"""How far a compiled model may be from the interpreter before `trace` and `check` call it
wrong: one policy for both.

A value is within tolerance if its relative gap is at most the larger of
- the report's predicted gap (runtime/card.py predicted_rtol: rounding alone, or 10x the largest
  approximation error), and
- ROUNDING_FACTOR times what float64 rounding alone moves it on these inputs, measured by
  nudging the inputs by about one ulp (ill-conditioned problems amplify rounding, which a fixed
  tolerance cannot know).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..language.points import point_variable
from .reference import interpreter_assignments, relative_error

ROUNDING_PROBE = 1e-15        # relative input perturbation that stands in for float64 rounding
ROUNDING_FACTOR = 100.0       # how much worse than the interpreter's own rounding is tolerated


def rounding_sensitivity(program, params, arrays: dict, n, base: dict | None = None) -> dict[str, float]:
    """How much each variable moves (relative) when the inputs move by ~1 ulp: the amount by
    which float64 rounding alone can separate two correct evaluations of this program on
    these inputs. `base`: the interpreter's values on these very inputs
    (`interpreter_assignments`), if the caller has them already (trace does)."""
    if base is None:
        base = interpreter_assignments(program, params, arrays, n)
    rng = np.random.default_rng(0)
    nudged = {k: a * (1 + ROUNDING_PROBE * rng.choice([-1.0, 1.0], size=a.shape))
              for k, a in arrays.items()}
    moved = interpreter_assignments(program, params, nudged, n)
    return {k: relative_error(moved[k], v) for k, v in base.items() if k in moved}


@dataclass(frozen=True)
class Tolerances:
    """The policy applied to one program on one set of inputs."""
    predicted: float                   # the report's predicted relative gap
    sensitivity: dict[str, float]      # rounding_sensitivity, per assignment name@k

    def for_variable(self, var: str) -> float:
        """The relative tolerance of one stored value (`name@k`; other names: the prediction)."""
        return max(self.predicted, ROUNDING_FACTOR * self.sensitivity.get(var, 0.0))

    def for_outputs(self, names) -> float:
        """One tolerance for a set of outputs (what `check` compares final values with): the
        loosest tolerance of any assignment to any of them."""
        names = set(names)
        return max([self.predicted] + [self.for_variable(k) for k in self.sensitivity
                                       if point_variable(k) in names])


def tolerances(prog, inputs, reference: dict | None = None) -> Tolerances:
    """The policy for compiled program `prog` on prepared inputs (`prog.prepare_inputs`);
    `reference`: the interpreter's values on them, if already computed (rounding_sensitivity)."""
    params = prog.info.float_params()
    return Tolerances(prog.predicted_rtol(),
                      rounding_sensitivity(prog.program, params, inputs.arrays, inputs.n, reference))


__all__ = ["ROUNDING_PROBE", "ROUNDING_FACTOR", "rounding_sensitivity", "Tolerances", "tolerances"]
