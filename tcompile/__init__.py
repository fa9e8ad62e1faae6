"""tcompile: compile iterative numerical algorithms into linear-attention transformer weights.

    prog = tcompile.compile_file("programs/least_squares.tp", params={"steps": 20})
    prog.run(A=A, y=y, a_test=a)        # -> {"w": ..., "y_hat": ...}
    tcompile.interpret("programs/least_squares.tp", A=A, y=y, a_test=a)   # the float64 oracle
"""
__version__ = "0.1.0"

from .errors import (ApproxError, ArtifactError, CompileError, InputError,  # noqa: E402
                     ParamError, ProgramError, ProgramSyntaxError, TcompileError)
from .compiler import compile_file, compile_program, compile_source  # noqa: E402
from .interpret import interpret, interpret_program  # noqa: E402
from .program import CompiledProgram  # noqa: E402


def load(path) -> CompiledProgram:
    """Load an artifact written by `CompiledProgram.save` (PATH, PATH.json or PATH.safetensors)."""
    from .artifact import load_artifact
    return load_artifact(path)


__all__ = ["compile_file", "compile_program", "compile_source", "interpret", "interpret_program",
           "load", "CompiledProgram", "TcompileError", "ProgramSyntaxError", "ProgramError",
           "ParamError", "InputError", "ApproxError", "CompileError", "ArtifactError"]
