"""The CLI's research subcommands: `labels` (the labelled residual stream) and `export` (ONNX),
and the options of `build --rotate SEED` (commands.cmd_build writes the rotated weights beside
the artifact). They read artifacts through the runtime only, like commands.py, and write every
file atomically."""
from __future__ import annotations


from .common import EXIT_OK, UsageError, run_counts, seed
from .outputs import output_file, writing

COMMANDS = ("labels", "export")


def add_parsers(sub) -> None:
    """The research subcommands' parsers (main.build_parser calls this)."""
    lab = sub.add_parser("labels", help="which variable every residual row holds after every "
                         "sublayer (ground truth for probing), as CSV or JSON")
    lab.add_argument("artifact", help="a built artifact (DIR/NAME)")
    lab.add_argument("-o", "--out", required=True, metavar="FILE.csv|FILE.json",
                     help="where to write the labels (.csv or .json)")
    lab.add_argument("-p", "--param", action="append", default=[], metavar="NAME=COUNT",
                     help="a shared build's run-time repeat count to label the run at "
                          "(e.g. -p steps=50; the built counts by default)")
    lab.add_argument("--rotate", type=seed, default=None, metavar="SEED",
                     help="label the build rotated with this seed: JSON gains each row's "
                          "direction in the rotated stream")
    ex = sub.add_parser("export", help="write the forward pass as an ONNX graph")
    ex.add_argument("artifact", help="a built artifact (DIR/NAME)")
    ex.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    ex.add_argument("-p", "--param", action="append", default=[], metavar="NAME=COUNT",
                    help="a shared build's run-time repeat count to unroll at (e.g. -p steps=50)")
    ex.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                    help="the graph's float type (default float64)")


def add_build_options(build) -> None:
    """`build --rotate SEED [--rotate-keep-io]`."""
    build.add_argument("--rotate", type=seed, default=None, metavar="SEED",
                       help="also write the model in a random orthogonal residual basis: "
                            "DIR/NAME.rotated.safetensors (its module's state dict and Q) and "
                            "DIR/NAME.rotated.labels.json (labels as directions)")
    build.add_argument("--rotate-keep-io", action="store_true",
                       help="with --rotate: leave the input and output rows unrotated")


def cmd_labels(args) -> int:
    from ..inspection.labels import labels_json, labels_text, residual_labels
    from .commands import load_artifact
    path = output_file(args.out)
    if path.suffix not in (".csv", ".json"):
        raise UsageError(f"-o {args.out!r}: labels are written as FILE.csv or FILE.json")
    counts = run_counts(args.param)
    prog = load_artifact(args.artifact)
    if args.rotate is not None:
        if path.suffix != ".json":
            raise UsageError("--rotate writes directions, which only JSON holds: use -o FILE.json")
        text = labels_json(prog.rotated(args.rotate), **counts)
    else:
        text = labels_text(residual_labels(prog, **counts), path)
    from ..runtime.files import atomic_write_bytes
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode())
    print(f"wrote {path}")
    return EXIT_OK


def cmd_export(args) -> int:
    from .commands import load_artifact
    path = output_file(args.onnx)
    counts = run_counts(args.param)
    prog = load_artifact(args.artifact)
    with writing(path):
        prog.export_onnx(path, dtype=args.dtype, **counts)
    print(f"wrote {path}")
    return EXIT_OK


__all__ = ["COMMANDS", "add_parsers", "add_build_options", "cmd_labels", "cmd_export"]
