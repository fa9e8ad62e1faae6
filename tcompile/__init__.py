"""tcompile: compile iterative numerical algorithms into linear-attention transformer weights.

    prog = tcompile.compile_file("programs/least_squares.tp", params={"steps": 20})
    prog.run(A=A, y=y, a_test=a)        # -> {"w": ..., "y_hat": ...}
    tcompile.interpret("programs/least_squares.tp", A=A, y=y, a_test=a)   # the float64 oracle
    print(tcompile.report_text(prog))   # the model card
    tcompile.trace(prog, A=A, y=y, a_test=a)   # every stored value against the interpreter

The stages are subpackages, in pipeline order: language (grammar, parser, checker,
interpreter, input validation), compiler (dataflow → lowering → depth → plan → emit), runtime
(layout, codec, model, compiled program, artifacts; imports no compiler module and no
inspection module), inspection (report, trace, domains, labels, plots, sampling: functions
that take the program, `tcompile.trace(prog, ...)`) and cli on top.
"""
from .version import __version__  # noqa: F401

from .errors import (ApproxError, ArtifactError, CompileError, InputError,
                     ParamError, ProgramError, ProgramSyntaxError, TcompileError)

_COMPILER = ("compile_file", "compile_program", "compile_source")
_INTERPRETER = ("interpret", "interpret_program")


def __getattr__(name):
    """Each stage is imported on first use: the compiler and runtime import torch, and a
    program that only loads and runs an artifact never imports the compiler or interpreter
    (tests/test_runtime_boundary.py), nor pays for them."""
    if name in _COMPILER:
        from .compiler import pipeline
        return getattr(pipeline, name)
    if name in _INTERPRETER:
        from .language import interpreter
        return getattr(interpreter, name)
    # the inspection tools users call on a program (the runtime does not import them)
    if name == "probe":
        from .inspection.probe import probe
        return probe
    if name == "report_text":
        from .inspection.report import report_text
        return report_text
    if name == "trace":
        from .inspection.trace import trace
        return trace
    if name == "check_domains":
        from .inspection.domains import check_domains
        return check_domains
    if name == "residual_labels":
        from .inspection.labels import residual_labels
        return residual_labels
    if name == "CompiledProgram":
        from .runtime.program import CompiledProgram
        return CompiledProgram
    raise AttributeError(f"module 'tcompile' has no attribute {name!r}")


def load(path):
    """Load an artifact written by `CompiledProgram.save` (PATH, PATH.json or PATH.safetensors).
    Only the runtime is imported: loading and running an artifact never imports the compiler."""
    from .runtime.program import load as load_program
    return load_program(path)


__all__ = ["compile_file", "compile_program", "compile_source", "interpret", "interpret_program",
           "load", "probe", "report_text", "trace", "check_domains", "residual_labels",
           "CompiledProgram", "TcompileError", "ProgramSyntaxError", "ProgramError",
           "ParamError", "InputError", "ApproxError", "CompileError", "ArtifactError"]
