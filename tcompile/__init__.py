"""tcompile: compile iterative numerical algorithms into linear-attention transformer weights."""
from .errors import (ApproxError, ArtifactError, CompileError, InputError, ParamError,
                     ProgramError, ProgramSyntaxError, TcompileError)

__version__ = "0.1.0"

from .api import compile_file, interpret, interpret_program  # noqa: E402
