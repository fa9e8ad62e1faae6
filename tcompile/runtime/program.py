"""A compiled program: weights + typed manifest, with the encoder, decoder and runner users call.

The manifest (manifest.py) names the program and its params; its layout (layout.py) says which
rows hold what: for every stored value its rows, whether it is stored transposed, its
canonical shape, the sublayer that writes it and the last that reads it. The encoder writes
inputs and constants into an all-zero x of shape (batch, n, D) with x[b] = Hᵀ; the decoder
reads the output blocks back (codec.py).

The runtime stands alone: nothing here imports the compiler, the interpreter or the
inspection tools, so a saved artifact loads, runs and saves with the front end's parser and
input checks only. The tools that read a program (trace, check_domains, the printed card,
labels) are inspection's functions of it (`tcompile.trace(prog, ...)`); MOVED says where the
methods they replaced went.
"""
from __future__ import annotations

import functools
import warnings
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import artifact, card, codec, dispatch
from .codec import ValidatedInputs
from .layout import Block, Layout
from .loops import LoopProgram, kept_unrolled
from .manifest import Manifest, ProgramInfo
from .run_budget import RunEstimate, check_run, estimate_run, whole_count
from .weights import LayerWeights
from ..errors import InputError, NonFiniteOutputWarning
from ..language.inputs import validate_inputs

if TYPE_CHECKING:       # torch is imported on first use: building and saving never need it
    import torch

    from .model import CompiledTransformer

def _warning_on_non_finite(run):
    """`run`, plus a NonFiniteOutputWarning naming every output that holds NaN or infinity
    (codec.non_finite_message): the values are returned as computed, never silently."""
    @functools.wraps(run)
    def checked(self, *args, **kwargs):
        out = run(self, *args, **kwargs)
        message = codec.non_finite_message(out)
        if message is not None:
            warnings.warn(NonFiniteOutputWarning(message), stacklevel=2)
        return out
    return checked


class CompiledProgram:
    """The weights (one LayerWeights per layer) and the typed manifest they were built with."""

    def __init__(self, manifest: Manifest, layers: list[LayerWeights]):
        self.typed_manifest = manifest
        self.layers = layers
        self._modules: dict = {}          # (dtype, device) → nn.Module (module_for)
        self._executors: dict = {}        # kind → structured/compiled executor (executor_for)

    @classmethod
    def load(cls, path) -> "CompiledProgram":
        """Load an artifact written by `save` (PATH, PATH.json or PATH.safetensors)."""
        return cls(*artifact.read_artifact(path))

    # ---- properties ------------------------------------------------------------------------
    @property
    def info(self) -> ProgramInfo:
        """The program it was compiled from: name, file, source, params, compiler version."""
        return self.typed_manifest.program

    @property
    def layout(self) -> Layout:
        """Which rows of the embedding hold what, and every layer's sizes (layout.py)."""
        return self.typed_manifest.layout

    @property
    def name(self) -> str:
        """The program's name (its `program NAME` line): the artifact's default file name."""
        return self.info.name

    @property
    def width(self) -> int:
        """The embedding width D (rows of H)."""
        return self.layout.width

    @property
    def n_layers(self) -> int:
        """Layers stored (a shared build runs its loop bodies more often than this)."""
        return self.layout.n_layers

    def __repr__(self) -> str:
        """What it is at a glance: `<CompiledProgram least_squares: 26 layers, width 18,
        params d=4 steps=24, unrolled>` (the model card is `tcompile.report_text(prog)`)."""
        params = " ".join(f"{k}={v}" for k, v in self.info.params.items())
        loops = ("unrolled" if self.loops is None else
                 "shared, run-time counts " + (", ".join(self.loops.params) or "none"))
        return (f"<CompiledProgram {self.name}: {self.n_layers} layer"
                f"{'s' * (self.n_layers != 1)}, width {self.width}"
                f"{', params ' + params if params else ''}, {loops}>")

    @property
    def manifest(self) -> dict:
        """The manifest as the artifact's JSON has it (a fresh dict; editing it changes nothing)."""
        return artifact.manifest_to_json(self.typed_manifest)

    @cached_property
    def program(self):
        """The program's AST, parsed from the source the manifest carries."""
        from ..language.parser import parse_source
        return parse_source(self.info.source, self.info.file)

    @property
    def module(self) -> CompiledTransformer:
        """The model as a torch.nn.Module (float64, CPU)."""
        return self.module_for("float64", "cpu")

    def module_for(self, dtype="float64", device="cpu") -> CompiledTransformer:
        """The model in this dtype (a torch dtype or its name) on this device (built once per
        pair, then reused): a CompiledTransformer, or for a shared build a LoopedTransformer."""
        from .model import CompiledTransformer
        dtype = _torch_dtype(dtype)
        key = (dtype, str(device))
        if key not in self._modules:
            if self.loops is not None:
                from .looped import LoopedTransformer
                self._modules[key] = LoopedTransformer.from_arrays(
                    self.layers, self.width, self.loops, dtype, device)
            else:
                self._modules[key] = CompiledTransformer.from_arrays(self.layers, self.width,
                                                                     dtype, device)
        return self._modules[key]

    @property
    def loops(self) -> LoopProgram | None:
        """A shared build's loops (loops.py); None for an unrolled build."""
        return self.typed_manifest.loops

    @property
    def report(self) -> dict:
        """The model card's data (card.py): layers, width, heads, MLP sizes, approximations,
        loops; the artifact's JSON copy embeds it. `tcompile.report_text(prog)` prints it."""
        return card.build_report(self.typed_manifest, self.layers)

    def predicted_rtol(self) -> float:
        """Relative gap to the interpreter the report predicts (card.predicted_rtol)."""
        return card.predicted_rtol(self.typed_manifest.approximations)

    def __getattr__(self, name: str):
        """A method that moved into the inspection layer (MOVED) says where it went: the
        runtime never imports inspection, so the tools that read a program take it as their
        first argument instead."""
        if name in MOVED:
            raise AttributeError(f"{type(self).__name__}.{name} moved: call {MOVED[name]} "
                                 "(the inspection tools take the program; the runtime does "
                                 "not import them)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- encode / decode -------------------------------------------------------------------
    def prepare_inputs(self, inputs: dict) -> ValidatedInputs:
        """Check named inputs against the program's declarations and this model's token
        minimum (InputError if they fail); the result is what `encode_inputs` takes. Tools
        that need both the encoded model input and the arrays (trace, plots, check) call this
        once and pass it on."""
        arrays, batch, n = validate_inputs(self.program, self.info.float_params(), inputs)
        min_tokens = self.layout.min_tokens
        if n is None:
            n = min_tokens
        if n < min_tokens:
            from ..language.token_reads import tokens_read      # only on this error path
            reach = tokens_read(self.program, self.info.float_params())
            why = (f"a subscript on the token axis reads token {reach - 1}" if reach == min_tokens
                   else "its identity blocks and small matrices live in the first columns")
            raise InputError(f"this compiled program needs at least {min_tokens} "
                             f"tokens ({why}), got n = {n}")
        return ValidatedInputs(arrays, batch, n)

    def encode(self, dtype="float64", device="cpu", **inputs) -> torch.Tensor:
        """Named inputs → x of shape (batch, n, D); a batch axis of 1 is added if none was given."""
        dtype, device = dispatch.run_options(dtype, device, "encode")
        return self.encode_inputs(self.prepare_inputs(inputs), dtype, device)

    def encode_inputs(self, inputs: ValidatedInputs, dtype="float64", device="cpu") -> torch.Tensor:
        """Prepared inputs (`prepare_inputs`) → x of shape (batch, n, D)."""
        import torch
        return torch.as_tensor(codec.encode(self.layout, inputs), dtype=_torch_dtype(dtype),
                               device=device)

    def value_at_input(self, block: Block | str, inputs: ValidatedInputs) -> np.ndarray:
        """The canonical value (batch, r, c) the encoder writes into an input or constant block."""
        return codec.value_at_input(self._block(block), inputs)

    def decode(self, x: torch.Tensor, **counts) -> dict[str, np.ndarray]:
        """x (batch, n, D) → outputs, each with a leading batch axis, float64 numpy. A shared
        build takes the run-time counts x was run with (`steps=41`): a kernel loop may leave
        the outputs in other rows at one residue of its count than at another."""
        return codec.decode(self.layout, x.detach().to("cpu", _torch_dtype("float64")).numpy(),
                            self.output_rows(counts))

    def resolve_counts(self, counts: dict) -> dict[str, int]:
        """Every loop's count of a run at these run-time counts, by param name (loops.py
        `LoopProgram.counts`; InputError for a count the build cannot take); {} for an
        unrolled build, which takes none (InputError if some are given)."""
        if self.loops is None:
            if counts:
                raise InputError(f"{', '.join(sorted(counts))}: an unrolled build takes no "
                                 "run-time counts (its counts are fixed at build time)")
            return {}
        # a count that is no run-time param is refused by LoopProgram.counts; where it counts
        # a loop kept unrolled, say so (the program's repeats are read only on that path)
        unknown = set(counts) - set(self.loops.params)
        for line, _names, param, why in kept_unrolled(self.program, self.loops) if unknown else ():
            if param in unknown:
                raise InputError(f"{param} counts the loop at line {line}, which this build "
                                 f"keeps unrolled ({why}): its count is fixed at build time; "
                                 f"build again with {param} = {counts[param]} for that count")
        return self.loops.counts(counts)

    def interpreter_params(self, counts: dict) -> dict[str, float]:
        """The params the reference interpreter takes for a run at these run-time counts (by
        param name, `steps=50`; the built ones where not given): the program's, the loops'
        run-time params at the run's counts (InputError for a count the build cannot take)."""
        resolved = self.resolve_counts(counts)
        run = self.loops.run_params(resolved) if self.loops is not None else {}
        return {**self.info.float_params(), **{k: float(v) for k, v in run.items()}}

    def output_rows(self, counts: dict) -> dict:
        """{output: (rows, transposed)} for those a run at these run-time counts leaves in other
        rows than the layout's output blocks (loops.py `LoopProgram.output_rows`); {} for an
        unrolled build."""
        resolved = self.resolve_counts(counts)
        return {} if self.loops is None else self.loops.output_rows(resolved)

    def output_blocks(self, **counts) -> dict[str, Block]:
        """Every output's block at these run-time counts (the rows a run leaves it in)."""
        return self.layout.output_blocks(self.output_rows(counts))

    def read_block(self, h: np.ndarray, block: Block | str | dict, shape) -> np.ndarray:
        """The value a block holds in the embedding h (batch, n, D), in the program's shape.
        `block` is a layout Block, its key, or (for older callers) its manifest dict."""
        return codec.read_block(h, self._block(block), shape)

    def _block(self, block: Block | str | dict) -> Block:
        if isinstance(block, Block):
            return block
        return self.layout.block(block["key"] if isinstance(block, dict) else block)

    # ---- run -------------------------------------------------------------------------------
    @_warning_on_non_finite
    def run(self, dtype="float64", device="cpu", executor=None, until=None, max_steps=None,
            domains="raise", **inputs) -> dict[str, np.ndarray]:
        """Encode, run the transformer, decode. A leading batch axis on the inputs is optional.
        executor: "structured" (executor.py: the same weights, only the work they define; the
        default), "module" (the paper-form nn.Module, the reference; a shared build's looped
        module) or "compiled" (torch.compile of the structured executor; unrolled builds). A
        shared build also takes its run-time counts by name (`steps=50`) and may halt:
        `until=("x", tol)` stops each problem of the batch once the loop variable x moves less
        than tol (max abs change) in one iteration, at most `max_steps` iterations; the result then has "steps", the count each problem ran, and "converged",
        False where the variable still moved by more than tol at the last step allowed.
        domains: "raise" (the default) raises a DomainError after the run when a fitted MLP
        piece saw a value outside its domain (where it clamps: the result is wrong), "warn"
        warns, "off" does not watch (domain_guard.py)."""
        from .domain_guard import check_mode, enforce
        mode = check_mode(domains)
        out, ranges = dispatch.run_watched(self, dtype, device, executor, until, max_steps,
                                           mode != "off", inputs)
        enforce(self, ranges, mode)
        return out

    def check_run_cost(self, batch: int, n: int, dtype="float64", until=None, max_steps=None,
                       **counts) -> RunEstimate:
        """The memory and time a run of `batch` problems of `n` tokens will take, estimated
        from sizes before anything runs (run_budget.py); InputError when it would not fit in
        memory or certainly takes longer than run_budget.MAX_RUN_SECONDS. `run` calls it; `tcompile
        check` calls it before drawing its random problems."""
        itemsize = 4 if str(dtype).endswith("float32") else 8
        layer_runs, what, expanded = self.n_layers, "the built layers", False
        if self.loops is not None:
            counts = {name: whole_count(value, name, lo=0) for name, value in counts.items()}
            if until is not None:                 # at most the iterations halting may run
                from .halting import step_limit
                if max_steps is not None:
                    max_steps = whole_count(max_steps, "max_steps")
                *_, spec, limit = step_limit(self, counts, until, max_steps)
                counts = {**counts, spec.param: limit}
            layer_runs = self.loops.n_layers(self.loops.counts(counts))
            what = ", ".join(f"{k} = {v:,}" for k, v in counts.items()) or "the built counts"
            expanded = until is None
        return check_run(estimate_run(self.layout, batch, n, layer_runs, itemsize, expanded), what)

    def forward_states(self, x: torch.Tensor, dtype="float64", device="cpu", **counts):
        """The residual stream after every sublayer: [input, attn 0, mlp 0, attn 1, ...]. A
        shared build takes run-time counts (`steps=50`) and gives the states of every layer it
        runs, in the order it runs them (a stored layer once per run)."""
        if self.loops is not None:
            return self._looped_states(x, dtype, device, counts)
        module = self.module_for(dtype, device)
        names = [f"blocks.{i}.{h}" for i in range(len(module.blocks))
                 for h in ("hook_resid_mid", "hook_resid_post")]
        _, cache = module.run_with_cache(x, names=set(names))
        return [x] + [cache[name] for name in names]

    def _looped_states(self, x, dtype, device, counts: dict) -> list:
        import torch
        module = self.module_for(dtype, device)
        states = [x]
        hooks = [hp.register_forward_hook(lambda _m, _i, out: states.append(out.detach()))
                 for name, hp in module.hook_points().items()
                 if name.endswith(("hook_resid_mid", "hook_resid_post"))]
        try:
            with torch.no_grad():
                module(x, counts)
        finally:
            for h in hooks:
                h.remove()
        return states

    def sublayer_states(self, inputs: ValidatedInputs, **counts) -> list[np.ndarray]:
        """`forward_states` of prepared inputs in float64 on the CPU, as numpy arrays: entry t
        is the embedding after sublayer t (0: the encoder's), what trace and plots decode
        against the layout's sublayer times. A shared build's at its run-time counts
        (`steps=50`; the built ones by default): one state per sublayer it runs, in run order,
        the times of the layout of that run (inspection/run_layout.py, which the labels read)."""
        self.resolve_counts(counts)         # counts this build cannot take: said before the run
        states = self.forward_states(self.encode_inputs(inputs, "float64", "cpu"), **counts)
        return [s.numpy() for s in states]

    # ---- research: rotations, export -------------------------------------------------------
    def rotated(self, seed: int, keep_io: bool = False) -> "RotatedProgram":
        """The same model in a random orthogonal residual basis (runtime/rotate.py): outputs
        equal to rounding, weights dense; keep_io leaves input and output rows unrotated."""
        return RotatedProgram(self, seed, keep_io)

    def export_onnx(self, path, dtype="float64", **counts) -> Path:
        """Write the forward pass (encoded x → residual stream and decoded outputs) as ONNX
        (runtime/onnx_export.py); a shared build at these run-time counts (`steps=50`)."""
        from .onnx_export import export_onnx
        return export_onnx(self, path, dtype, **counts)

    # ---- files -----------------------------------------------------------------------------
    def save(self, path) -> list[Path]:
        """Write PATH.safetensors and PATH.json (PATH may end in either suffix or none)."""
        return artifact.write_artifact(path, self.typed_manifest, self.layers, self.report)

    def save_to_dir(self, directory) -> list[Path]:
        """Save as DIRECTORY/NAME.safetensors and DIRECTORY/NAME.json (NAME: the program's)."""
        return self.save(Path(directory) / self.name)


class RotatedProgram(CompiledProgram):
    """A CompiledProgram whose residual basis is rotated by Q (runtime/rotate.py says how).

    Encoding rotates (x' = x Qᵀ), decoding and `read_block` rotate back (x = x' Q), so `run`,
    `trace`, `forward_states` and the module's hooks all work, the hooks seeing the rotated
    stream. `original` is the axis-aligned build; `directions[:, r]` is where its row r went."""

    def __init__(self, original: CompiledProgram, seed: int, keep_io: bool = False):
        from .rotate import io_rows, rotate_layer, rotation_matrix
        if isinstance(original, RotatedProgram):
            raise InputError("this build is rotated already: rotate prog.original instead")
        Q = rotation_matrix(original.width, seed, io_rows(original) if keep_io else ())
        super().__init__(original.typed_manifest, [rotate_layer(w, Q) for w in original.layers])
        self.original = original
        self.seed = int(seed)
        self.keep_io = bool(keep_io)
        self.Q = Q

    def __repr__(self) -> str:
        return (f"<RotatedProgram {self.name!r}: seed {self.seed}"
                f"{', inputs and outputs unrotated' if self.keep_io else ''}, "
                f"{self.n_layers} layers, width {self.width}>")

    @property
    def directions(self) -> np.ndarray:
        """D × D: column r is the direction of the rotated stream that holds original row r."""
        return self.Q

    def rotate_state(self, x):
        """An original-basis stream (..., D), numpy or torch, in the rotated basis: x Qᵀ."""
        return x @ self._Q_like(x).T

    def unrotate_state(self, x):
        """A rotated stream (..., D), numpy or torch, in the original basis: x Q."""
        return x @ self._Q_like(x)

    def _Q_like(self, x):
        if isinstance(x, np.ndarray):
            return self.Q
        import torch
        return torch.as_tensor(self.Q, dtype=x.dtype, device=x.device)

    # encode / decode through Q ------------------------------------------------------------------
    def encode_inputs(self, inputs: ValidatedInputs, dtype="float64", device="cpu"):
        x = super().encode_inputs(inputs, "float64", "cpu")      # rotate in float64, then cast
        return self.rotate_state(x).to(device=device, dtype=_torch_dtype(dtype))

    def decode(self, x, **counts) -> dict[str, np.ndarray]:
        import torch
        return super().decode(self.unrotate_state(x.detach().to("cpu", torch.float64)), **counts)

    def read_block(self, h: np.ndarray, block: Block | str | dict, shape) -> np.ndarray:
        return super().read_block(self.unrotate_state(np.asarray(h)), block, shape)

    # running: the module only ---------------------------------------------------------------------
    def run(self, dtype="float64", device="cpu", executor=None, until=None, max_steps=None,
            domains="raise", **inputs) -> dict[str, np.ndarray]:
        """As CompiledProgram.run, through the module (the rotated weights are dense; the
        structured executor's shortcuts assume the axis-aligned layout). No halting (`until`
        reads the loop state's rows, which a rotation mixes). The domain guard reads each
        checked block along its directions (the stream rotated back) and enforces as run does."""
        from .domain_guard import check_mode, enforce, settle, watch_module
        if executor not in (None, "module"):
            raise InputError(f"executor={executor!r}: a rotated build runs through its module "
                             "(executor='module', the default here)")
        if until is not None or max_steps is not None:
            raise InputError("until/max_steps: halting reads the loop state's rows, which a "
                             "rotated build mixes; run the original build (prog.original)")
        mode = check_mode(domains)
        module = self.module_for(*dispatch.run_options(dtype, device, "run"))
        with watch_module(self, module, mode != "off", read=self.unrotate_state) as seen:
            out = super().run(dtype=dtype, device=device, executor="module", domains="off",
                              **inputs)
        enforce(self, settle(seen), mode)
        return out

    # files ------------------------------------------------------------------------------------
    def save(self, path) -> list[Path]:
        raise InputError("a rotated build is not an artifact (the artifact format stores the "
                         "axis-aligned build): save the original and call .rotated(seed) after "
                         "loading, or write the rotated weights with save_rotated(path)")

    def save_rotated(self, path, labels_json: str | None = None) -> list[Path]:
        """PATH.safetensors: the rotated module's state dict (float64, names as
        `prog.module.state_dict()`, so `module.load_state_dict` takes them) plus `rotation.Q`;
        PATH.labels.json beside it when `labels_json` is given (the labels with their
        directions: inspection.labels.labels_json(rotated), which `tcompile build --rotate`
        passes for an unrolled build)."""
        import json

        from .rotate import write_rotated
        meta = {"format": "tcompile-rotated", "program": self.name, "seed": self.seed,
                "keep_io": json.dumps(self.keep_io), "params": json.dumps(self.info.params)}
        return write_rotated(path, self.module.state_dict(), self.Q, meta, labels_json)


def _torch_dtype(dtype) -> torch.dtype:
    """A torch dtype given itself or its name ("float64", "float32")."""
    import torch
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def load(path) -> CompiledProgram:
    """Load an artifact written by `CompiledProgram.save` (PATH, PATH.json or PATH.safetensors)."""
    return CompiledProgram.load(path)


# Methods that moved into the inspection layer → what to call instead (CompiledProgram.__getattr__).
MOVED = {"report_text": "tcompile.report_text(prog)",
         "trace": "tcompile.trace(prog, **inputs)",
         "check_domains": "tcompile.check_domains(prog, **inputs)",
         "residual_labels": "tcompile.residual_labels(prog)",
         "labels_json": "tcompile.inspection.labels.labels_json(prog)"}


__all__ = ["CompiledProgram", "RotatedProgram", "load", "MOVED"]
