"""The CLI's subcommands, each a function of the parsed arguments returning an exit code.

Commands that read an artifact go through the runtime only (`CompiledProgram.load`); `build`
and `check` compile, so they import the compiler, inside the function."""
from __future__ import annotations

import sys
import warnings
from argparse import Namespace
from pathlib import Path

import numpy as np

from .common import EXIT_CHECK_FAILED, EXIT_OK, UsageError, parse_param_overrides, run_counts
from ..errors import InputError, NonFiniteOutputWarning, TcompileError, TcompileWarning
from .outputs import output_file, write_npz, writing
from ..runtime.program import CompiledProgram


def cmd_build(args) -> int:
    from ..compiler.pipeline import compile_file
    from ..compiler.progress import Progress
    rotate = getattr(args, "rotate", None)          # `report FILE.tp` builds without these
    if getattr(args, "rotate_keep_io", False) and rotate is None:
        raise UsageError("--rotate-keep-io goes with --rotate SEED")
    progress, ok, notes = Progress(), False, []
    try:
        prog = compile_file(args.file, params=parse_param_overrides(args.param), tol=args.tol,
                            max_memory=args.max_memory, progress=progress, loops=args.loops,
                            keep=getattr(args, "keep", ()))
        progress.stage("write")
        paths = prog.save_to_dir(args.out)
        if rotate is not None:              # the rotated build's files beside the artifact
            from ..inspection.labels import labels_json
            rotated = prog.rotated(rotate, keep_io=args.rotate_keep_io)
            try:                            # a shared build's: the run at its built counts
                labels = labels_json(rotated)
            except InputError as e:         # what its base unrolling cannot say (run_layout)
                labels, notes = None, [f"no rotated labels: {e}"]
            paths += rotated.save_rotated(Path(args.out) / f"{prog.name}.rotated", labels)
        ok = True
    finally:
        progress.finish(ok)
    from ..inspection.report import report_text
    print(report_text(prog))
    for p in paths:
        print(f"wrote {p}")
    for note in notes:
        print(note)
    return EXIT_OK


def load_npz(path) -> dict[str, np.ndarray]:
    """Named arrays from an .npz archive, never unpickling; anything else is an InputError
    that says what the file is instead (numpy's own message for a non-archive talks about
    pickles and `allow_pickle`, which is the wrong advice). Only a regular file is opened (a
    FIFO or a device such as /dev/zero is refused before one byte is read)."""
    from ..runtime.files import open_regular
    path = Path(path)
    if path.is_dir():
        raise InputError(f"inputs {str(path)!r} is a directory, not an .npz file")
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise InputError(f"no inputs file {str(path)!r}") from None
    except OSError as e:
        raise InputError(f"cannot read inputs {str(path)!r}: {e.strerror or e}") from None
    with f:
        magic = f.read(6)
        f.seek(0)
        if magic == b"\x93NUMPY":
            raise InputError(f"inputs {str(path)!r} is a single .npy array, not an .npz archive "
                             f"of named inputs: write one with numpy.savez(FILE, A=..., y=...)")
        if not magic.startswith(b"PK"):
            raise InputError(f"inputs {str(path)!r} is not an npz archive (numpy.savez writes "
                             f"one: numpy.savez(FILE, A=..., y=...))")
        try:
            with np.load(f, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise InputError(f"inputs {str(path)!r} holds an array of Python objects "
                                 "(dtype=object), which tcompile does not unpickle: save "
                                 "numbers, e.g. numpy.asarray(x, dtype=float)") from None
            raise InputError(f"cannot read inputs {str(path)!r} as an npz archive of numeric "
                             f"arrays: {e}") from None
        except (OSError, EOFError, KeyError) as e:
            raise InputError(f"cannot read inputs {str(path)!r} as an npz archive of numeric "
                             f"arrays: {e}") from None
        except Exception as e:                      # zipfile.BadZipFile and friends
            raise InputError(f"inputs {str(path)!r} is not a readable npz archive "
                             f"({type(e).__name__}: {e})") from None


def load_artifact(path) -> CompiledProgram:
    """`CompiledProgram.load`, with a directory explained: artifacts are DIR/NAME pairs."""
    if not str(path).strip():
        raise UsageError("the artifact path is empty: pass DIR/NAME (e.g. build/newton_logistic)")
    p = Path(path)
    if p.is_dir():
        names = sorted({q.stem for q in p.glob("*.safetensors")})
        hint = (f"; it holds {', '.join(str(p / n) for n in names[:5])}" if names
                else "; it holds no artifact (NAME.safetensors)")
        raise UsageError(f"{str(path)!r} is a directory: pass DIR/NAME, the artifact's path "
                         f"without suffix (e.g. build/newton_logistic){hint}")
    return CompiledProgram.load(path)


def cmd_run(args) -> int:
    import torch

    prog = load_artifact(args.artifact)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TcompileError("--device cuda was asked for, but no CUDA device is available")
    out_path = output_file(args.out, inputs=args.inputs) if args.out is not None else None
    counts, inputs = _counts_and_inputs(args)
    if args.max_steps is not None and args.until is None:
        raise UsageError("--max-steps goes with --until")
    until = _until(args.until) if args.until is not None else None
    with warnings.catch_warnings(record=True) as caught:   # --domains warn, halting: a line each
        warnings.simplefilter("always", RuntimeWarning)
        warnings.simplefilter("always", TcompileWarning)
        out = prog.run(dtype=args.dtype, device=args.device, until=until,
                       max_steps=args.max_steps, domains=args.domains, **counts, **inputs)
    non_finite = _print_warnings(caught)   # a DomainError (--domains raise) exits 1 through main
    for name, value in out.items():
        print(f"{name} = {np.array2string(np.asarray(value), precision=10)}")
    if until is not None:
        print(_convergence(np.atleast_1d(out["converged"]), until))
    if non_finite is not None:             # NaN must not pass for a result: exit 1, no -o file
        raise TcompileError(non_finite)
    if out_path is not None:
        write_npz(out_path, out)
        print(f"wrote {args.out}")
    return EXIT_OK


def _print_warnings(caught) -> str | None:
    """Print a run's warnings on stderr as `warning: ...`, except a NonFiniteOutputWarning,
    whose message is returned (None if there is none) for the caller to decide: `run` makes it
    an error, `check` a warning beside its FAIL."""
    non_finite = None
    for w in caught:
        if issubclass(w.category, NonFiniteOutputWarning):
            non_finite = str(w.message)
        elif issubclass(w.category, (TcompileWarning, RuntimeWarning)):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return non_finite
def _convergence(converged: np.ndarray, until) -> str:
    """One line: how many problems halted, and how many hit the step limit still moving."""
    missed = int((~converged).sum())
    if not missed:
        return f"all {converged.size} converged ({until[0]} moved by at most {until[1]:g})"
    return (f"{missed} of {converged.size} did not converge: {until[0]} still moved by more than "
            f"{until[1]:g} at the last step allowed (raise --max-steps or the tolerance)")


def _counts_and_inputs(args) -> tuple[dict[str, int], dict]:
    """`-p NAME=COUNT` and `--inputs FILE.npz` → (run-time counts, inputs: {} without the
    file); a name given both ways is refused."""
    counts = run_counts(args.param)
    inputs = load_npz(args.inputs) if args.inputs else {}
    clash = sorted(set(counts) & set(inputs))
    if clash:
        raise UsageError(f"{clash[0]!r} is given both by -p and in {args.inputs}")
    return counts, inputs


def _until(text: str) -> tuple[str, float]:
    name, sep, tol = text.partition("=")
    try:
        return name.strip(), float(tol)
    except ValueError:
        pass
    raise UsageError(f"--until expects VAR=TOL (e.g. --until w=1e-10), got {text!r}")


def cmd_check(args) -> int:
    """Compile, run on random valid inputs, compare with the interpreter; print the verdict
    and a short summary (the full model card is `tcompile report`'s job)."""
    from ..compiler.pipeline import compile_file
    from ..inspection.sampling import sample_inputs
    from ..language.interpreter import interpret_program
    params = parse_param_overrides(args.param)
    prog = compile_file(args.file, params=params, tol=args.tol, max_memory=args.max_memory,
                        progress=True, loops=args.loops, keep=args.keep)
    n = args.n or max(16, 2 * prog.layout.min_tokens)
    if n < prog.layout.min_tokens:
        raise UsageError(f"--n {n}: {prog.name} needs at least {prog.layout.min_tokens} tokens "
                         "(its identity blocks and small matrices live in the first columns)")
    prog.check_run_cost(args.batch, n)             # before drawing: --batch 100000000 is refused
    inputs = sample_inputs(prog.program, params, n=n, batch=args.batch, seed=args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TcompileWarning)
        got = prog.run(**inputs)
    non_finite = _print_warnings(caught)
    if non_finite is not None:                     # check's comparison says FAIL for it
        print(f"warning: {non_finite}", file=sys.stderr)
    want = interpret_program(prog.program, params, **inputs)
    rtol = args.rtol if args.rtol is not None else _check_tolerance(prog, inputs, want)
    rows = [_compare(name, got[name], want[name], rtol) for name in want]
    fits = None
    if args.rtol is None and not all(r[3] for r in rows):
        fits = _fit_tolerances(prog, inputs, got, rtol)
        if fits is not None:
            rows = [_compare(name, got[name], want[name], fits[name]) for name in want]
    print(_check_summary(prog, args, n, rtol, rows, fits))
    return EXIT_OK if all(r[3] for r in rows) else EXIT_CHECK_FAILED


def _fit_tolerances(prog, inputs: dict, got: dict, rtol: float) -> dict[str, float] | None:
    """Each output's tolerance with the fit term of the policy (inspection/tolerance.py): the
    what-if builds run on the same inputs. None where the model fits nothing."""
    from ..inspection.tolerance import fit_tolerance, has_fits, what_if_builds
    if has_fits(prog):
        print("tcompile: an output is over its tolerance; measuring how far the fits move it "
              "(two more builds, every fitted function off by its own error)", file=sys.stderr)
    builds = what_if_builds(prog)
    if builds is None:
        return None
    up, down = (b.run(**inputs) for b in builds)
    return {name: fit_tolerance(rtol, up[name], down[name]) for name in got if name in up}


def _compare(name: str, got, want, rtol: float) -> tuple[str, float, float, bool]:
    """One output's row: max abs error, relative error (as trace measures it), within rtol."""
    from ..inspection.reference import relative_error
    err = float(np.max(np.abs(got - want))) if np.size(want) else 0.0
    rel = relative_error(got, want)
    return name, err, rel, bool(rel <= rtol)


def _check_summary(prog, args, n: int, rtol: float, rows, fits=None) -> str:
    """The verdict and table; `fits` (output -> tolerance), where the fit term was needed."""
    from ..inspection.report import summary_line
    from ..inspection.tolerance import FIT_FACTOR
    bad = [r[0] for r in rows if not r[3]]
    worst = max((r[2] for r in rows), default=0.0)
    tol_of = (lambda name: fits.get(name, rtol)) if fits else (lambda name: rtol)
    loosest = max(tol_of(r[0]) for r in rows) if rows else rtol
    if not bad:
        verdict = (f"PASS: every output within {loosest:.1e} of the interpreter (worst "
                   f"relative error {worst:.2e})" if not fits else
                   f"PASS: every output within its tolerance (worst relative error {worst:.2e})")
    else:
        over = max(rows, key=lambda r: r[2] / tol_of(r[0]))
        verdict = (f"FAIL: {', '.join(bad)} out of tolerance (worst relative error "
                   f"{over[2]:.2e} > {tol_of(over[0]):.1e})")
    lines = [verdict, "", summary_line(prog.report),
             f"compiled (float64) vs interpreter on {args.batch} random problem"
             f"{'s' * (args.batch != 1)}, n = {n}, seed {args.seed}; tolerance {rtol:.1e} "
             f"(relative, max over the batch)"]
    if fits:
        lines.append(f"  or {FIT_FACTOR:g}x what the fits move the output (compiled again with "
                     f"every fitted function off by its own error)")
        lines.append("  output        max abs err    rel err    tolerance   ok")
        lines += [f"  {name:<12}  {err:11.3e}  {rel:11.3e}  {tol_of(name):9.1e}   "
                  f"{'yes' if ok else 'NO'}" for name, err, rel, ok in rows]
    else:
        lines.append("  output        max abs err    rel err      ok")
        lines += [f"  {name:<12}  {err:11.3e}  {rel:11.3e}   {'yes' if ok else 'NO'}"
                  for name, err, rel, ok in rows]
    lines.append(f"the model card's gap estimate (a heuristic, not a bound): "
                 f"{prog.predicted_rtol():.1e}; measured here: {worst:.1e}")
    lines.append(f"the full card: tcompile build {_build_options(args)}, then tcompile report "
                 f"build/{prog.name}")
    return "\n".join(lines)


def _build_options(args) -> str:
    """The `tcompile build` arguments that compile what `check` compiled (its -p, --tol and
    --loops), so that the card the summary points to is this build's."""
    words = [str(args.file)] + [f"-p {p}" for p in args.param or ()]
    if args.tol is not None:
        words.append(f"--tol {args.tol:g}")
    if args.loops != "unrolled":
        words.append(f"--loops {args.loops}")
    words += [f"--keep {k}" for k in args.keep]
    return " ".join(words)


def _check_tolerance(prog, inputs: dict, want: dict) -> float:
    """The default --rtol: the policy `trace` applies (inspection/tolerance.py), loosest over
    every assignment to the outputs compared."""
    from ..inspection.tolerance import tolerances
    return tolerances(prog, prog.prepare_inputs(inputs)).for_outputs(want)


def cmd_report(args) -> int:
    """The model card of an artifact; given a .tp program, build it (into -o, build/ by
    default) and print the card of what was built, as `tcompile build` does."""
    if Path(args.artifact).suffix == ".tp":
        return cmd_build(Namespace(file=args.artifact, out=args.out, param=args.param, tol=None,
                                   max_memory=None, loops="unrolled"))
    if args.param:
        raise UsageError("-p goes with a .tp program (an artifact's params are built in)")
    from ..inspection.report import report_text
    prog = load_artifact(args.artifact)
    print(report_text(prog))
    return EXIT_OK


def cmd_trace(args) -> int:
    """The trace table (compact unless --all; --var, --failing filter it); -o writes every row."""
    from ..inspection.trace import format_trace, source_lines, trace, traced_names, write_trace
    out_path = output_file(args.out, inputs=args.inputs) if args.out is not None else None
    prog = load_artifact(args.artifact)
    counts, inputs = _counts_and_inputs(args)
    rows = trace(prog, **counts, **inputs)
    names = traced_names(rows)
    if args.var is not None and args.var not in names and \
            not any(r["variable"] == args.var for r in rows):
        raise UsageError(f"--var {args.var}: {prog.name} traces no such value; it traces "
                         f"{', '.join(names)}")
    print(format_trace(rows, source_lines(prog), var=args.var, failing=args.failing,
                       every=args.every))
    if out_path is not None:
        with writing(args.out):
            write_trace(rows, out_path)
        print(f"wrote {args.out}")
    return EXIT_OK


def cmd_plot(args) -> int:
    from ..inspection.plots import plot
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {args.out!r} is a file; plot writes pictures into a directory")
    if not out.exists() and out.suffix.lower() in (".png", ".svg", ".pdf", ".jpg", ".jpeg"):
        raise UsageError(f"-o {args.out!r} looks like a picture's name; plot writes its pictures "
                         f"(.png and .svg, named for the program) into a directory: -o DIR")
    if args.what == "convergence" and not args.inputs:
        raise UsageError("--what convergence needs --inputs FILE.npz (the problems to converge on)")
    if args.layer is not None and args.what != "weights":
        raise UsageError("--layer goes with --what weights")
    if args.param and args.what != "convergence":
        raise UsageError("-p goes with --what convergence (the layout is drawn at the counts "
                         "its blocks come from)")
    prog = load_artifact(args.artifact)
    if args.layer is not None and not 0 <= args.layer < prog.n_layers:
        raise UsageError(f"--layer {args.layer}: {prog.name} has layers 0 to {prog.n_layers - 1}")
    counts, inputs = _counts_and_inputs(args)
    inputs = {**inputs, **counts} if args.inputs else None
    with writing(out):
        paths = plot(prog, args.what, out, inputs, layer=args.layer)
    for p in paths:
        print(f"wrote {p}")
    return EXIT_OK


__all__ = ["cmd_build", "cmd_run", "cmd_check", "cmd_report", "cmd_trace", "cmd_plot"]
