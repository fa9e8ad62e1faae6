"""How far a compiled model may be from the interpreter before `trace` and `check` call it
wrong: one policy for both.

A value is within tolerance if its relative gap is at most the larger of
- the report's predicted gap (runtime/card.py predicted_rtol: rounding alone, or 10x the largest
  approximation error), and
- ROUNDING_FACTOR times what float64 rounding alone moves it on these inputs, measured by
  nudging the inputs by about one ulp (ill-conditioned problems amplify rounding, which a fixed
  tolerance cannot know), and
- FIT_FACTOR times what the fits move it on these inputs: the model compiled again with every
  fitted function off by its own measured error, all up and all down (`what_if_builds`). The
  card's estimate is one number for the whole program, but a loop applies a fit once per
  iteration and a value downstream of several fits gathers their errors (ten RK2 steps whose
  right-hand side is fitted within 1e-6 leave the state 6e-6 off, 1.4 times the estimate).
  This term costs two more compiles, so `check` and `trace` compute it only where the other
  two would call a value wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..language.points import point_variable
from ..errors import TcompileError
from .reference import interpreter_assignments, relative_error

ROUNDING_PROBE = 1e-15        # relative input perturbation that stands in for float64 rounding
ROUNDING_FACTOR = 100.0       # how much worse than the interpreter's own rounding is tolerated
# how much more than the what-if builds' move is tolerated: measured gaps were 0.14 to 1.74
# times the move on eleven fitted outputs of shipped and user programs (a shift in one
# direction partly cancels where fits feed both sides of a difference, as in a log-sum-exp)
FIT_FACTOR = 3.0


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


def has_fits(prog) -> bool:
    """Whether any function in `prog` is fitted (not exact) with an error above zero: what
    the fit term needs to measure anything."""
    return any(not a.exact and a.max_error > 0 for a in prog.typed_manifest.approximations)


def what_if_builds(prog):
    """`prog` compiled again from its source and build options twice, with every fitted
    function off by its own measured error up, then down (compiler/approx.py
    `errors_shifted`): how far the two runs part is what errors of that size move a value,
    whatever `prog`'s own weights hold (a model changed after its build is not excused by its
    twins). Both have `prog`'s layout, so a value reads from the same rows of all three. None
    where `prog` fits nothing, or where a what-if build came out with another layout (a moved
    constant can cost a unit, and a unit can tip a choice); the policy then has no fit term."""
    if not has_fits(prog):
        return None
    from ..compiler.approx import errors_shifted
    from ..compiler.pipeline import compile_source
    info = prog.info
    builds = []
    for direction in (1.0, -1.0):
        try:
            with errors_shifted(direction):
                builds.append(compile_source(
                    info.source, info.file, params=info.params, tol=info.default_tol,
                    loops="unrolled" if prog.loops is None else "shared", keep=info.keep))
        except TcompileError:           # (it built once; a moved fit should not stop it)
            return None
    return tuple(builds) if all(b.layout == prog.layout for b in builds) else None


def fit_tolerance(tol: float, up, down) -> float:
    """`tol` loosened to FIT_FACTOR times how far a value moves with the fits' errors: half the
    gap between its values in the two what-if builds (`up`, `down`)."""
    return max(tol, FIT_FACTOR * relative_error(up, down) / 2)


def tolerances(prog, inputs, reference: dict | None = None) -> Tolerances:
    """The policy for compiled program `prog` on prepared inputs (`prog.prepare_inputs`);
    `reference`: the interpreter's values on them, if already computed (rounding_sensitivity)."""
    params = prog.info.float_params()
    return Tolerances(prog.predicted_rtol(),
                      rounding_sensitivity(prog.program, params, inputs.arrays, inputs.n, reference))


__all__ = ["ROUNDING_PROBE", "ROUNDING_FACTOR", "FIT_FACTOR", "rounding_sensitivity", "Tolerances",
           "tolerances", "has_fits", "what_if_builds", "fit_tolerance"]
