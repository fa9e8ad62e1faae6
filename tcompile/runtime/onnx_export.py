"""ONNX export: the compiled forward pass as a standard graph any ONNX runtime can run.

The graph takes the encoded embedding and gives back the final residual stream and every
output of the program, decoded:

    input   x                 (batch, n, D)  what `prog.encode(**inputs)` returns
    output  residual_stream   (batch, n, D)  the module's output
    output  output.<name>     each program output, in the program's shape with a batch axis
                              (what `prog.run` returns): the decoder's row and token slices

The encoder stays outside the graph (it writes inputs and constants that depend on n into
rows; `prog.encode`, or codec.py's numpy `encode` with the layout stored in the model's
metadata, does it); the layout, params and run-time counts are in the model's metadata_props
(`tcompile.manifest`, `tcompile.counts`), so the file alone says how to feed it.

The export is generic over the module's layers: it runs the model once on a zero input of
the smallest size with a forward hook on every model.py `Block`, and writes the blocks in the
order they ran — an unrolled build's layers, or a shared build's stored layers expanded at the
given counts (a stored layer's weights are one initializer however often it runs). Each block
is the paper's layer exactly as model.py computes it, in the same bracketing:
x + Σ_h q_h (k_hᵀ v_h), then x + W_2 ReLU(W_1 x). onnx is needed to write the file, onnxruntime
only to run it (the `export` extra installs both).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError, TcompileError
from .dispatch import split_counts

OPSET = 17
IR_VERSION = 8                    # onnx 1.10+ readers and every current onnxruntime load it
RESIDUAL = "residual_stream"
OUTPUT = "output."                # program output w is the graph output "output.w"


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise TcompileError("ONNX export needs the onnx package: pip install 'tcompile[export]' "
                            "(or pip install onnx onnxruntime)") from None
    return onnx, helper, numpy_helper


def blocks_in_run_order(module, width: int, min_tokens: int, params: dict) -> list:
    """The model.py Blocks of `module` in the order a forward pass runs them (a Block that runs
    several times appears several times): one pass on zeros, a hook on every Block."""
    import torch

    from .model import Block
    order: list = []
    handles = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
               for m in module.modules() if isinstance(m, Block)]
    dtype = next(module.parameters()).dtype
    try:
        with torch.no_grad():
            x = torch.zeros((1, min_tokens, width), dtype=dtype)
            module(x, **params) if params else module(x)
    finally:
        for h in handles:
            h.remove()
    return order


class _Graph:
    """Nodes and initializers under construction, with fresh names."""

    def __init__(self, helper, numpy_helper, np_dtype):
        self.helper, self.numpy_helper, self.np_dtype = helper, numpy_helper, np_dtype
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, array, dtype=None) -> str:
        name = self.name(stem)
        a = np.asarray(array, dtype=dtype or self.np_dtype)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def op(self, kind: str, inputs: list[str], stem: str | None = None, out: str | None = None,
           **attrs) -> str:
        out = out or self.name(stem or kind.lower())
        self.nodes.append(self.helper.make_node(kind, inputs, [out], **attrs))
        return out


class _Axes(dict):
    """Axis constants (int64 initializers), made on first use."""

    _VALUES = {"one": [1], "two": [2], "one_two": [1, 2]}

    def __init__(self, g: _Graph):
        super().__init__()
        self.g = g

    def __missing__(self, key: str) -> str:
        self[key] = self.g.const(f"axes_{key}", self._VALUES[key], np.int64)
        return self[key]


def _block_weights(block) -> dict[str, np.ndarray]:
    return {"W_K": block.attn.W_K, "W_Q": block.attn.W_Q, "W_V": block.attn.W_V,
            "W_1": block.mlp.W_1, "W_2": block.mlp.W_2}


def _stored(g: _Graph, j: int, block) -> dict[str, str]:
    """Initializers of one distinct block, in the shapes the graph multiplies by:
    K, Q: (D, heads·dk) = W_Kᵀ per head side by side; V: (D, heads·D); W1T (D, hidden);
    W2T (hidden, D)."""
    w = {k: v.detach().cpu().numpy().astype(g.np_dtype) for k, v in _block_weights(block).items()}
    h, dk, D = w["W_K"].shape
    cat = lambda W: np.concatenate([W[i].T for i in range(h)], axis=1) if h else np.zeros((D, 0))  # noqa: E731
    out = {"heads": h, "dk": dk, "D": D, "hidden": w["W_1"].shape[0]}
    if h and dk:
        out.update(K=g.const(f"layer{j}.W_K", cat(w["W_K"])), Q=g.const(f"layer{j}.W_Q", cat(w["W_Q"])),
                   V=g.const(f"layer{j}.W_V", cat(w["W_V"])),
                   shape_k=g.const(f"layer{j}.shape_k", [0, 0, h, dk], np.int64),
                   shape_v=g.const(f"layer{j}.shape_v", [0, 0, h, D], np.int64))
    if out["hidden"]:
        out.update(W1T=g.const(f"layer{j}.W_1", w["W_1"].T), W2T=g.const(f"layer{j}.W_2", w["W_2"].T))
    return out


def _attention(g: _Graph, x: str, s: dict, axis1: str) -> str:
    def heads(W: str, shape: str) -> str:                      # (b, n, D) → (b, heads, n, ·)
        flat = g.op("MatMul", [x, W])
        return g.op("Transpose", [g.op("Reshape", [flat, shape])], perm=[0, 2, 1, 3])
    k, q, v = heads(s["K"], s["shape_k"]), heads(s["Q"], s["shape_k"]), heads(s["V"], s["shape_v"])
    kv = g.op("MatMul", [g.op("Transpose", [k], perm=[0, 1, 3, 2]), v])   # (b, h, dk, D)
    per_head = g.op("MatMul", [q, kv])                                    # (b, h, n, D)
    return g.op("Add", [x, g.op("ReduceSum", [per_head, axis1], keepdims=0)])


def _mlp(g: _Graph, x: str, s: dict) -> str:
    return g.op("Add", [x, g.op("MatMul", [g.op("Relu", [g.op("MatMul", [x, s["W1T"]])]),
                                           s["W2T"]])])


def _decode(g: _Graph, h: str, blk, shape, out: str, axes: dict) -> None:
    """The decoder's read of one output (codec.read_block) as graph nodes."""
    rows = g.op("Gather", [h, g.const("rows", list(blk.rows), np.int64)], axis=2)   # (b, n, r)
    cols = blk.storage_ext
    if cols != "n":
        rows = g.op("Slice", [rows, g.const("start", [0], np.int64),
                              g.const("end", [int(cols)], np.int64), axes["one"]])
    value = rows if blk.transposed else g.op("Transpose", [rows], perm=[0, 2, 1])
    if len(shape) == 0:
        g.op("Squeeze", [value, axes["one_two"]], out=out)
    elif len(shape) == 1:
        g.op("Squeeze", [value, axes["two"]], out=out)
    else:
        g.op("Identity", [value], out=out)


def onnx_model(prog, dtype="float64", **counts):
    """The onnx.ModelProto of `prog`'s forward pass (and decoder) at these run-time counts."""
    onnx, helper, numpy_helper = _onnx()
    import torch
    if str(dtype).replace("torch.", "") not in ("float64", "float32"):
        raise InputError(f"export dtype must be float64 or float32, got {dtype!r}")
    tdtype = getattr(torch, str(dtype).replace("torch.", ""))
    given, rest = split_counts(prog, counts)
    if rest:
        raise InputError(f"export_onnx takes run-time counts only (a shared build's, e.g. "
                         f"steps=50), not {', '.join(sorted(rest))}")
    resolved = prog.loops.counts(given) if prog.loops is not None else {}
    module = prog.module_for(tdtype, "cpu")
    order = blocks_in_run_order(module, prog.width, prog.layout.min_tokens, given)
    np_dtype = np.float64 if tdtype == torch.float64 else np.float32
    elem = onnx.TensorProto.DOUBLE if np_dtype is np.float64 else onnx.TensorProto.FLOAT
    g = _Graph(helper, numpy_helper, np_dtype)
    axes = _Axes(g)
    stored: dict[int, dict] = {}
    x = "x"
    for block in order:
        if id(block) not in stored:
            stored[id(block)] = _stored(g, len(stored), block)
        s = stored[id(block)]
        if "K" in s:
            x = _attention(g, x, s, axes["one"])
        if "W1T" in s:
            x = _mlp(g, x, s)
    g.op("Identity", [x], out=RESIDUAL)
    blocks = prog.output_blocks(**given)       # where these counts leave the outputs
    for spec in prog.layout.outputs:
        _decode(g, RESIDUAL, blocks[spec.name], spec.shape, OUTPUT + spec.name, axes)

    D = prog.width
    inputs = [helper.make_tensor_value_info("x", elem, ["batch", "n", D])]
    outputs = [helper.make_tensor_value_info(RESIDUAL, elem, ["batch", "n", D])]
    for spec in prog.layout.outputs:
        dims = ["batch"] + [("n" if d == "n" else int(d)) for d in spec.shape]
        outputs.append(helper.make_tensor_value_info(OUTPUT + spec.name, elem, dims))
    graph = helper.make_graph(g.nodes, prog.name, inputs, outputs, g.inits,
                              doc_string=_doc(prog, len(order), resolved))
    model = helper.make_model(graph, producer_name="tcompile",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    from . import artifact
    meta = {"tcompile.program": prog.name, "tcompile.params": json.dumps(prog.info.params),
            "tcompile.counts": json.dumps(prog.loops.run_params(resolved)
                                          if prog.loops is not None else {}),
            "tcompile.layers_run": str(len(order)),
            "tcompile.manifest": json.dumps(artifact.manifest_to_json(prog.typed_manifest))}
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def _doc(prog, layers: int, counts: dict) -> str:
    at = f" at counts {counts}" if counts else ""
    return (f"tcompile program {prog.name!r}{at}: {layers} layers of linear attention "
            f"(x + sum_h q_h (k_h^T v_h)) and a ReLU MLP, width {prog.width}. Input x is "
            "prog.encode(**inputs) (batch, n, D); outputs: the final residual stream and each "
            "program output, decoded (output.NAME). metadata_props['tcompile.manifest'] holds the layout.")


def export_onnx(prog, path, dtype="float64", **counts) -> Path:
    """Write `prog`'s forward pass as ONNX to `path` (atomically); see the module docstring."""
    from .files import atomic_write_bytes
    model = onnx_model(prog, dtype, **counts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, model.SerializeToString())
    return path


__all__ = ["export_onnx", "onnx_model", "blocks_in_run_order", "RESIDUAL", "OUTPUT", "OPSET"]
