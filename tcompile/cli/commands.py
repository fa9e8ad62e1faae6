"""The CLI's subcommands, each a function of the parsed arguments returning an exit code.

Commands that read an artifact go through the runtime only (`CompiledProgram.load`); `build`
and `check` compile, so they import the compiler, inside the function."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import EXIT_CHECK_FAILED, EXIT_OK, parse_param_overrides
from ..errors import InputError, TcompileError
from ..runtime.program import CompiledProgram


def cmd_build(args) -> int:
    from ..compiler.pipeline import compile_file
    prog = compile_file(args.file, params=parse_param_overrides(args.param), tol=args.tol)
    paths = prog.save_to_dir(args.out)
    print(prog.report_text())
    for p in paths:
        print(f"wrote {p}")
    return EXIT_OK


def load_npz(path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"no inputs file {str(path)!r}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read inputs {str(path)!r} (an .npz written by numpy.savez is "
                         f"expected): {e}") from None


def cmd_run(args) -> int:
    import torch

    prog = CompiledProgram.load(args.artifact)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TcompileError("--device cuda was asked for, but no CUDA device is available")
    out = prog.run(dtype=args.dtype, device=args.device, **load_npz(args.inputs))
    for name, value in out.items():
        print(f"{name} = {np.array2string(np.asarray(value), precision=10)}")
    if args.out:
        _save_npz(Path(args.out), out)
        print(f"wrote {args.out}")
    return EXIT_OK


def _save_npz(path: Path, arrays: dict) -> None:
    import io
    import os
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def cmd_check(args) -> int:
    from ..compiler.pipeline import compile_file
    from ..inspection.sampling import sample_inputs
    from ..language.interpreter import interpret_program
    params = parse_param_overrides(args.param)
    prog = compile_file(args.file, params=params, tol=args.tol)
    n = args.n or max(16, 2 * prog.layout.min_tokens)
    inputs = sample_inputs(prog.program, params, n=n, batch=args.batch, seed=args.seed)
    got = prog.run(**inputs)
    want = interpret_program(prog.program, params, **inputs)
    rtol = args.rtol if args.rtol is not None else _check_tolerance(prog, inputs, want)
    print(prog.report_text())
    print(f"\ncompiled (float64) vs interpreter on {args.batch} random problems, n = {n}, "
          f"seed {args.seed}; tolerance {rtol:.1e} (relative, max over the batch)")
    print("  output        max abs err    rel err      ok")
    ok = True
    for name in want:
        err = float(np.max(np.abs(got[name] - want[name])))
        rel = err / max(float(np.max(np.abs(want[name]))), 1e-300)
        good = bool(rel <= rtol)
        ok &= good
        print(f"  {name:<12}  {err:11.3e}  {rel:11.3e}   {'yes' if good else 'NO'}")
    return EXIT_OK if ok else EXIT_CHECK_FAILED


def _check_tolerance(prog, inputs: dict, want: dict) -> float:
    """The default --rtol: the policy `trace` applies (inspection/tolerance.py), loosest over
    every assignment to the outputs compared."""
    from ..inspection.tolerance import tolerances
    return tolerances(prog, prog.prepare_inputs(inputs)).for_outputs(want)


def cmd_report(args) -> int:
    prog = CompiledProgram.load(args.artifact)
    print(prog.report_text())
    return EXIT_OK


def cmd_trace(args) -> int:
    from ..inspection.trace import format_trace, write_trace
    prog = CompiledProgram.load(args.artifact)
    rows = prog.trace(**load_npz(args.inputs))
    print(format_trace(rows))
    if args.out:
        write_trace(rows, Path(args.out))
        print(f"wrote {args.out}")
    return EXIT_OK


def cmd_plot(args) -> int:
    from ..inspection.plots import plot
    prog = CompiledProgram.load(args.artifact)
    inputs = load_npz(args.inputs) if args.inputs else None
    for p in plot(prog, args.what, Path(args.out), inputs):
        print(f"wrote {p}")
    return EXIT_OK


__all__ = ["cmd_build", "cmd_run", "cmd_check", "cmd_report", "cmd_trace", "cmd_plot"]
