"""Command line: `tcompile build|run|check|report|trace|plot|labels|export ...` (also
`python -m tcompile`).

Exit codes: 0 ok, 1 program/data/artifact error, 2 usage error, 3 `check` out of tolerance.
User errors are printed as `FILE:LINE:COL: error: ...` with the source line and a caret; no
traceback ever reaches the terminal for them.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import TcompileError
from .outputs import MAX_MEMORY_HELP, memory_size
from . import research
from .common import (EXIT_ERROR, EXIT_OK, EXIT_USAGE, UsageError, positive_float, positive_int,
                     seed, step_count, tolerance)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with a short message, as argparse does
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


LOOPS_HELP = ("unrolled (default): every iteration its own layers; shared: each repeat body "
              "stored once and run as a loop, its count settable at run time")
PARAM_HELP = "set a param or dim of the program (repeatable), e.g. -p d=8 -p steps=20"
TOL_HELP = ("error budget of the approximated functions no statement sets, in (0, 1) "
            "(default: the program's, else 1e-6)")
KEEP_HELP = ("store every value of this variable in rows of its own (repeat it for more), "
             "where the build would fold it into the sums that read it: trace, probes and "
             "until then see it; costs rows, sometimes a layer")
ARTIFACT_HELP = "a built artifact: DIR/NAME, or DIR/NAME.safetensors (e.g. build/least_squares)"
INPUTS_HELP = "an .npz archive of the named inputs, e.g. numpy.savez('in.npz', A=A, y=y)"


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser; every option has a help text (tests/test_first_hour.py)."""
    p = _Parser(prog="tcompile", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = sub.add_parser("build", help="compile a .tp program into DIR/NAME.safetensors + DIR/NAME.json")
    b.add_argument("file", help="the program, a .tp file")
    b.add_argument("-o", "--out", default="build", help="output directory (default: build/)")
    b.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help=PARAM_HELP)
    b.add_argument("--tol", type=tolerance, default=None, help=TOL_HELP)
    b.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE", help=MAX_MEMORY_HELP)
    b.add_argument("--loops", default="unrolled", choices=["unrolled", "shared"], help=LOOPS_HELP)
    b.add_argument("--keep", action="append", default=[], metavar="VAR", help=KEEP_HELP)
    research.add_build_options(b)
    c = sub.add_parser("check", help="compile, run on random valid inputs, compare with the interpreter")
    c.add_argument("file", help="the program, a .tp file")
    c.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help=PARAM_HELP)
    c.add_argument("--tol", type=tolerance, default=None, help=TOL_HELP)
    c.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE", help=MAX_MEMORY_HELP)
    c.add_argument("--seed", type=seed, default=0,
                   help="seed of the random problems, a whole number >= 0 (default 0)")
    c.add_argument("--batch", type=positive_int, default=8, help="random problems (default 8)")
    c.add_argument("--n", type=positive_int, default=None,
                   help="token count of the random inputs, at least the program's minimum "
                        "(default: 16 or twice the minimum)")
    c.add_argument("--rtol", type=positive_float, default=None,
                   help="tolerance on the relative error (default: the trace's policy)")
    c.add_argument("--loops", default="unrolled", choices=["unrolled", "shared"], help=LOOPS_HELP)
    c.add_argument("--keep", action="append", default=[], metavar="VAR", help=KEEP_HELP)
    r = sub.add_parser("run", help="run a built artifact on inputs from an .npz file")
    r.add_argument("artifact", help=ARTIFACT_HELP)
    r.add_argument("--inputs", required=True, metavar="FILE.npz", help=INPUTS_HELP)
    r.add_argument("-o", "--out", default=None, metavar="FILE.npz",
                   help="also write the outputs to this .npz file (replaced whole, atomically)")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the model runs (default: cpu)")
    r.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="the model's number type (default: float64)")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=COUNT",
                   help="a shared build's run-time repeat count (e.g. -p steps=50)")
    r.add_argument("--until", default=None, metavar="VAR=TOL",
                   help="shared builds: stop each problem once loop variable VAR moves less "
                        "than TOL (max abs change) in an iteration; prints the steps taken, "
                        "and a warning naming the problems still moving at the limit")
    r.add_argument("--max-steps", type=step_count, default=None, metavar="N",
                   help="with --until: the most iterations (default: the built count)")
    r.add_argument("--domains", default="raise", choices=["raise", "warn", "off"],
                   help="a fitted piece seeing values outside its domain: an error (exit 1, "
                        "the default), a warning, or not watched")
    rep = sub.add_parser("report", help="print the model card of a built artifact (given a .tp "
                                        "program: build it first, then print its card)")
    rep.add_argument("artifact", help=ARTIFACT_HELP + ", or a .tp program to build and report")
    rep.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="with a .tp program: " + PARAM_HELP)
    rep.add_argument("-o", "--out", default="build",
                     help="with a .tp program: where the build goes (default: build/)")
    t = sub.add_parser("trace", help="layer-by-layer comparison with the interpreter")
    t.add_argument("artifact", help=ARTIFACT_HELP)
    t.add_argument("--inputs", required=True, metavar="FILE.npz", help=INPUTS_HELP)
    t.add_argument("-o", "--out", default=None, help="write the table as CSV (.csv) or JSON (.json)")
    t.add_argument("--var", default=None, metavar="NAME",
                   help="only the values of program variable NAME (x: every x@k; x@3; an input)")
    t.add_argument("--failing", action="store_true", help="only the rows over tolerance")
    t.add_argument("-p", "--param", action="append", default=[], metavar="NAME=COUNT",
                   help="a shared build's run-time repeat count (e.g. -p steps=50): every "
                        "iteration at that count is traced")
    t.add_argument("--all", dest="every", action="store_true",
                   help="every value after every sublayer (default: each value where it first "
                        "appears and wherever its error changes)")
    pl = sub.add_parser("plot", help="draw layout / weights / convergence pictures")
    pl.add_argument("artifact", help=ARTIFACT_HELP)
    pl.add_argument("--what", required=True, choices=["layout", "weights", "convergence"],
                    help="layout: which rows hold what; weights: the weight matrices; "
                         "convergence: the error per layer on --inputs")
    pl.add_argument("--inputs", default=None, help="inputs .npz (needed by --what convergence)")
    pl.add_argument("--layer", type=int, default=None, metavar="L",
                    help="with --what weights: one layer's matrices (layer L, counted from 0)")
    pl.add_argument("-p", "--param", action="append", default=[], metavar="NAME=COUNT",
                    help="with --what convergence: a shared build's run-time repeat count "
                         "(e.g. -p steps=60)")
    pl.add_argument("-o", "--out", default="plots", help="output directory (default: plots/)")
    research.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if any("\x00" in str(a) for a in (argv if argv is not None else sys.argv[1:])):
        parser.error("an argument contains a NUL byte")   # no path can: refuse before using it
    args = parser.parse_args(argv)
    from . import commands          # here, not above: `tcompile --help` stays quick (no numpy)
    try:
        handler = research if args.command in research.COMMANDS else commands
        return getattr(handler, f"cmd_{args.command}")(args)
    except UsageError as e:
        _subparser(parser, args.command).print_usage(sys.stderr)
        print(f"tcompile {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TcompileError as e:
        print(e.format(), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # `tcompile build ... | head`: the reader left, not an error
        sys.stderr.close()
        return EXIT_OK


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand, to print its usage (as argparse does for its own errors)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command, parser)
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
