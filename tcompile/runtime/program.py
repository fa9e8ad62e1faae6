"""A compiled program: weights + manifest, with the encoder, decoder and runner users call.

The manifest's `blocks` say which rows hold what: for every stored value its rows, whether it
is stored transposed, its canonical shape (a [k] vector is k×1, token data [n, k] is n×k),
the sublayer that writes it and the last that reads it. The encoder writes inputs and
constants into an all-zero x of shape (batch, n, D) with x[b] = Hᵀ; the decoder reads the
output blocks back.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..errors import InputError
from ..compiler.emit import LayerWeights
from .model import CompiledTransformer


class CompiledProgram:
    def __init__(self, manifest: dict, layers: list[LayerWeights]):
        self.manifest = manifest
        self.layers = layers
        self._modules: dict = {}

    # ---- properties ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest["program"]

    @property
    def width(self) -> int:
        return self.manifest["width"]

    @property
    def n_layers(self) -> int:
        return self.manifest["n_layers"]

    @cached_property
    def program(self):
        from ..language.parser import parse_source
        return parse_source(self.manifest["source"], self.manifest["file"])

    @property
    def module(self) -> CompiledTransformer:
        """The model as a torch.nn.Module (float64, CPU)."""
        return self.module_for(torch.float64, "cpu")

    def module_for(self, dtype=torch.float64, device="cpu") -> CompiledTransformer:
        key = (dtype, str(device))
        if key not in self._modules:
            self._modules[key] = CompiledTransformer.from_arrays(self.layers, self.width, dtype, device)
        return self._modules[key]

    @property
    def report(self) -> dict:
        from ..inspection.report import build_report
        return build_report(self.manifest, self.layers)

    def predicted_rtol(self) -> float:
        """Relative gap to the interpreter the report predicts (report.predicted_rtol)."""
        from ..inspection.report import predicted_rtol
        return predicted_rtol(self.manifest)

    def report_text(self) -> str:
        from ..inspection.report import format_report
        return format_report(self.report)

    # ---- encode / decode -------------------------------------------------------------------
    def _validated(self, inputs: dict):
        from ..language.interpreter import validate_inputs
        params = {k: float(v) for k, v in self.manifest["params"].items()}
        arrays, batch, n = validate_inputs(self.program, params, inputs)
        if n is None:
            n = self.manifest["min_tokens"]
        if n < self.manifest["min_tokens"]:
            raise InputError(f"this compiled program needs at least {self.manifest['min_tokens']} "
                             f"tokens (its identity blocks and small matrices live in the first "
                             f"columns), got n = {n}")
        return arrays, batch, n

    def encode(self, dtype=torch.float64, device="cpu", **inputs) -> torch.Tensor:
        """Named inputs → x of shape (batch, n, D); a batch axis of 1 is added if none was given."""
        arrays, _batch, n = self._validated(inputs)
        return self._encode_arrays(arrays, n, dtype, device)

    def _encode_arrays(self, arrays, n, dtype, device) -> torch.Tensor:
        B = next(iter(arrays.values())).shape[0] if arrays else 1
        x = np.zeros((B, n, self.width))
        for blk in self.manifest["blocks"]:
            if blk["written"] != 0:
                continue
            storage = self._storage_at_input(blk, arrays, B, n)    # (B, rows, cols)
            x[:, :storage.shape[2], blk["rows"]] = np.swapaxes(storage, 1, 2)
        return torch.as_tensor(x, dtype=dtype, device=device)

    def _storage_at_input(self, blk, arrays, B, n) -> np.ndarray:
        if blk["kind"] == "input":
            C = _canonical(arrays[blk["name"]])
        else:
            op = blk["const"]
            k = len(blk["rows"])
            C = {"eye": lambda: np.eye(k),
                 "eye_inv_n": lambda: np.eye(k) / n,
                 "ones": lambda: np.ones((n, 1)),
                 "inv_n": lambda: np.full((1, 1), 1.0 / n),
                 "n": lambda: np.full((1, 1), float(n))}[op]()
            C = np.broadcast_to(C, (B, *C.shape))
        return np.swapaxes(C, 1, 2) if blk["transposed"] else C

    def decode(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """x (batch, n, D) → outputs, each with a leading batch axis, float64 numpy."""
        h = x.detach().to("cpu", torch.float64).numpy()
        blocks = {b["key"]: b for b in self.manifest["blocks"]}
        return {spec["name"]: self.read_block(h, blocks[spec["block"]], spec["shape"])
                for spec in self.manifest["outputs"]}

    def read_block(self, h: np.ndarray, blk: dict, shape) -> np.ndarray:
        """The value a block holds in the embedding h (batch, n, D), in the program's shape."""
        n = h.shape[1]
        r, c = (n if d == "n" else d for d in blk["cshape"])
        cols = r if blk["transposed"] else c
        storage = np.swapaxes(h[:, :cols, blk["rows"]], 1, 2)      # (B, rows, cols)
        C = np.swapaxes(storage, 1, 2) if blk["transposed"] else storage
        if len(shape) == 0:
            return C[:, 0, 0]
        if len(shape) == 1:
            return C[:, :, 0]
        return C

    # ---- run -------------------------------------------------------------------------------
    def run(self, dtype="float64", device="cpu", **inputs) -> dict[str, np.ndarray]:
        """Encode, run the transformer, decode. A leading batch axis on the inputs is optional."""
        tdtype = {"float64": torch.float64, "float32": torch.float32}[str(dtype).replace("torch.", "")]
        arrays, batch, n = self._validated(inputs)
        x = self._encode_arrays(arrays, n, tdtype, device)
        with torch.no_grad():
            y = self.module_for(tdtype, device)(x)
        out = self.decode(y)
        return out if batch is not None else {k: v[0] for k, v in out.items()}

    def forward_states(self, x: torch.Tensor, dtype=torch.float64, device="cpu"):
        """The residual stream after every sublayer: [input, attn 1, mlp 1, attn 2, ...]."""
        module = self.module_for(dtype, device)
        names = [f"blocks.{i}.{h}" for i in range(len(module.blocks))
                 for h in ("hook_resid_mid", "hook_resid_post")]
        _, cache = module.run_with_cache(x, names=set(names))
        return [x] + [cache[name] for name in names]

    def check_domains(self, **inputs) -> list[dict]:
        """For every MLP piece: the range of values its real input took on these inputs, and
        whether any fell outside the domain it was fitted on (there it is clamped, i.e. wrong)."""
        arrays, _batch, n = self._validated(inputs)
        states = self.forward_states(self._encode_arrays(arrays, n, torch.float64, "cpu"))
        blocks = {b["key"]: b for b in self.manifest["blocks"]}
        out = []
        for chk in self.manifest.get("domains", []):
            h = states[2 * chk["layer"] - 1].numpy()          # after attention of that layer
            blk = blocks[chk["block"]]
            vals = self.read_block(h, blk, [0, 0])
            lo, hi = float(vals.min()), float(vals.max())
            slack = 1e-9 * max(1.0, abs(chk["lo"]), abs(chk["hi"]))
            out.append({**chk, "min": lo, "max": hi,
                        "outside": bool(lo < chk["lo"] - slack or hi > chk["hi"] + slack)})
        return out

    def trace(self, **inputs) -> list[dict]:
        """Layer-by-layer comparison with the interpreter (see trace.py)."""
        from ..inspection.trace import trace_program
        return trace_program(self, **inputs)

    # ---- files -----------------------------------------------------------------------------
    def save(self, path) -> list:
        """Write PATH.safetensors and PATH.json (PATH may end in either suffix or none)."""
        from .artifact import save_artifact
        return save_artifact(self, path)

    def save_to_dir(self, directory) -> list:
        from pathlib import Path
        return self.save(Path(directory) / self.name)


def _canonical(arr: np.ndarray) -> np.ndarray:
    """Batched input (B, *shape) → canonical 2-D per problem (B, r, c)."""
    if arr.ndim == 1:
        return arr[:, None, None]
    if arr.ndim == 2:
        return arr[:, :, None]
    return arr
