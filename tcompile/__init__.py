"""tcompile: compile iterative numerical algorithms into linear-attention transformer weights.

    prog = tcompile.compile_file("programs/least_squares.tp", params={"steps": 20})
    prog.run(A=A, y=y, a_test=a)        # -> {"w": ..., "y_hat": ...}
    tcompile.interpret("programs/least_squares.tp", A=A, y=y, a_test=a)   # the float64 oracle
"""
__version__ = "0.1.0"

from .errors import (ApproxError, ArtifactError, CompileError, InputError,  # noqa: E402
                     ParamError, ProgramError, ProgramSyntaxError, TcompileError)

# (the function `interpret` deliberately shadows the submodule of the same name)
from .language.interpreter import interpret, interpret_program  # noqa: E402

# torch is imported on first use of the compiler, so `tcompile --help` and error paths are quick
_LAZY = {"compile_file": "compiler.pipeline", "compile_program": "compiler.pipeline",
         "compile_source": "compiler.pipeline", "CompiledProgram": "runtime.program"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tcompile' has no attribute {name!r}")


def load(path):
    """Load an artifact written by `CompiledProgram.save` (PATH, PATH.json or PATH.safetensors)."""
    from .runtime.artifact import load_artifact
    return load_artifact(path)


__all__ = ["compile_file", "compile_program", "compile_source", "interpret", "interpret_program",
           "load", "CompiledProgram", "TcompileError", "ProgramSyntaxError", "ProgramError",
           "ParamError", "InputError", "ApproxError", "CompileError", "ArtifactError"]
