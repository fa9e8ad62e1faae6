"""Artifacts on disk: NAME.safetensors (weights) + NAME.json (manifest). Never pickle.

This is the only module that knows the file format: it turns the typed manifest
(manifest.py, layout.py) into JSON and back, key by key, in a fixed order, so that the same
build always gives the same bytes. The manifest carries the program source, params, compiler
version, the layout and the report, plus the SHA-256 of the weights file: loading refuses a
weights file that is not the one the manifest was written with (corrupt, truncated, or from
another build). Both files are written to temporaries in the target directory and renamed into
place, the manifest last, so an interrupted save never leaves a manifest pointing at partial
weights.

It returns and takes typed objects only; building a `CompiledProgram` from them is
program.py's business (program imports this module, never the reverse).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .layout import Block, InputSpec, LayerSpec, Layout, OutputSpec, RowUse
from .manifest import (FORMAT, FORMAT_VERSION, ApproxRecord, DomainCheck, Manifest,
                       ProgramInfo)
from .weights import WEIGHT_NAMES, LayerWeights


# ---- typed manifest → JSON -------------------------------------------------------------------

def manifest_to_json(m: Manifest) -> dict:
    """The manifest as a JSON-able dict, keys in the order the file has always had them."""
    info, lay = m.program, m.layout
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "compiler_version": info.compiler_version,
        "program": info.name,
        "file": info.file,
        "source": info.source,
        "source_sha256": info.source_sha256,
        "default_tol": info.default_tol,
        "params": dict(info.params),
        "inputs": [{"name": s.name, "shape": list(s.shape)} for s in lay.inputs],
        "outputs": [{"name": s.name, "shape": list(s.shape), "block": s.block} for s in lay.outputs],
        "width": lay.width,
        "n_layers": lay.n_layers,
        "min_tokens": lay.min_tokens,
        "max_small_dim": lay.max_small_dim,
        "blocks": [block_to_json(b) for b in lay.blocks],
        "row_map": [[_row_use_to_json(u) for u in uses] for uses in lay.row_map],
        "layers": [{"heads": s.heads, "dk": s.dk, "mlp_hidden": s.mlp_hidden,
                    "head_labels": list(s.head_labels)} for s in lay.layers],
        "approximations": [approximation_to_json(a) for a in m.approximations],
        "domains": [{"label": d.label, "block": d.block, "lo": d.lo, "hi": d.hi, "layer": d.layer}
                    for d in m.domains],
    }


def block_to_json(b: Block) -> dict:
    return {"key": b.key, "kind": b.kind, "rows": list(b.rows), "transposed": b.transposed,
            "cshape": list(b.cshape), "written": b.written, "last_read": b.last_read,
            "vars": list(b.vars), "name": b.name, "const": b.const}


def _row_use_to_json(u: RowUse) -> dict:
    return {"block": u.block, "element": u.element, "written": u.written, "last_read": u.last_read}


def approximation_to_json(a: ApproxRecord) -> dict:
    """One row of the approximations table (also the report's, which embeds it)."""
    return {"name": a.name, "lo": a.lo, "hi": a.hi, "neurons": a.neurons,
            "neurons_per_entry": a.neurons_per_entry, "max_error": a.max_error, "tol": a.tol,
            "exact": a.exact, "entries": a.entries}


# ---- JSON → typed manifest -------------------------------------------------------------------

def manifest_from_json(d: dict) -> Manifest:
    """Read a manifest dict back (KeyError, TypeError or ValueError where it is malformed).
    `row_map` is not read: it is derived from the blocks. The layout is validated here."""
    if hashlib.sha256(d["source"].encode()).hexdigest() != d["source_sha256"]:
        raise ValueError("the program source does not match its checksum")
    info = ProgramInfo(name=d["program"], file=d["file"], source=d["source"], params=d["params"],
                       default_tol=d["default_tol"], compiler_version=d["compiler_version"])
    layout = Layout(
        width=int(d["width"]), n_layers=d["n_layers"], min_tokens=d["min_tokens"],
        max_small_dim=d["max_small_dim"],
        inputs=tuple(InputSpec(s["name"], tuple(s["shape"])) for s in d["inputs"]),
        outputs=tuple(OutputSpec(s["name"], tuple(s["shape"]), s["block"]) for s in d["outputs"]),
        blocks=tuple(_block_from_json(b) for b in d["blocks"]),
        layers=tuple(LayerSpec(s["heads"], s["dk"], s["mlp_hidden"],
                               tuple(s.get("head_labels", []))) for s in d["layers"]))
    layout.validate()
    approximations = tuple(ApproxRecord(**{k: a[k] for k in _APPROX_KEYS}) for a in
                           d.get("approximations", []))
    domains = tuple(DomainCheck(c["label"], c["block"], c["lo"], c["hi"], c["layer"])
                    for c in d.get("domains", []))
    return Manifest(info, layout, approximations, domains)


_APPROX_KEYS = ("name", "lo", "hi", "neurons", "neurons_per_entry", "max_error", "tol", "exact",
                "entries")


def _block_from_json(b: dict) -> Block:
    rows = b["rows"]
    if not isinstance(rows, list) or any(not isinstance(r, int) for r in rows):
        raise ValueError(f"block {b['key']!r} has rows that are not integers: {rows!r}")
    return Block(key=b["key"], kind=b["kind"], rows=rows, transposed=b["transposed"],
                 cshape=b["cshape"], written=b["written"], last_read=b["last_read"],
                 vars=b.get("vars", []), name=b.get("name"), const=b.get("const"))


# ---- files -----------------------------------------------------------------------------------

def _tensor_name(layer: int, weight: str) -> str:
    part = "attn" if weight in ("W_K", "W_Q", "W_V") else "mlp"
    return f"layers.{layer}.{part}.{weight}"


def artifact_paths(path) -> tuple[Path, Path]:
    """(PATH.safetensors, PATH.json) for PATH given with either suffix or none."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_artifact(path, manifest: Manifest, layers: list[LayerWeights], report: dict) -> list[Path]:
    """Write PATH.safetensors and PATH.json; return both paths (weights first)."""
    from safetensors.numpy import save as st_save
    weights_path, manifest_path = artifact_paths(path)
    try:
        weights_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create directory {str(weights_path.parent)!r}: {e}") from None
    tensors = {_tensor_name(i, w): np.ascontiguousarray(a, dtype=np.float64)
               for i, layer in enumerate(layers) for w, a in layer.arrays().items()}
    blob = st_save(tensors)
    doc = manifest_to_json(manifest)
    doc["weights_file"] = weights_path.name
    doc["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    doc["report"] = report
    text = json.dumps(doc, indent=1, sort_keys=False, default=_jsonable) + "\n"
    try:
        _atomic_write(weights_path, blob)
        _atomic_write(manifest_path, text.encode())
    except OSError as e:
        raise ArtifactError(f"cannot write artifact {str(manifest_path)!r}: {e}") from None
    return [weights_path, manifest_path]


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _read_manifest_json(manifest_path: Path) -> dict:
    try:
        doc = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no artifact manifest at {str(manifest_path)!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"manifest {str(manifest_path)!r} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArtifactError(f"{str(manifest_path)!r} is not a tcompile artifact manifest")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{str(manifest_path)!r} has format version "
                            f"{doc.get('format_version')!r}; this tcompile reads version "
                            f"{FORMAT_VERSION}")
    return doc


def _read_tensors(weights_path: Path, expected_sha256) -> dict:
    import safetensors
    from safetensors.numpy import load as st_load
    safetensor_error = getattr(safetensors, "SafetensorError", Exception)
    try:
        blob = weights_path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read weights {str(weights_path)!r}: {e}") from None
    if hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise ArtifactError(f"weights {str(weights_path)!r} do not match the manifest's checksum "
                            "(corrupt, truncated, or from another build)")
    try:
        return st_load(blob)
    except (safetensor_error, ValueError) as e:
        raise ArtifactError(f"weights {str(weights_path)!r} cannot be read: {e}") from None


def read_artifact(path) -> tuple[Manifest, list[LayerWeights]]:
    """Read and check an artifact; every way it can be wrong is an ArtifactError."""
    weights_path, manifest_path = artifact_paths(path)
    doc = _read_manifest_json(manifest_path)
    tensors = _read_tensors(weights_path, doc.get("weights_sha256"))
    try:
        manifest = manifest_from_json(doc)
        layers = _layers_from_tensors(manifest.layout, tensors)
    except KeyError as e:
        raise ArtifactError(f"artifact {str(manifest_path)!r} is inconsistent: missing {e}") from None
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"artifact {str(manifest_path)!r} is inconsistent: {e}") from None
    return manifest, layers


def _layers_from_tensors(layout: Layout, tensors: dict) -> list[LayerWeights]:
    """The weights, checked against the layer specs: present, float64, finite, right shapes."""
    D = layout.width
    layers = []
    for i, spec in enumerate(layout.layers):
        missing = [_tensor_name(i, w) for w in WEIGHT_NAMES if _tensor_name(i, w) not in tensors]
        if missing:
            raise ValueError(f"missing tensor {missing[0]}")
        arrs = {w: tensors[_tensor_name(i, w)] for w in WEIGHT_NAMES}
        for w, a in arrs.items():
            if a.dtype != np.float64 or not np.all(np.isfinite(a)):
                raise ValueError(f"{_tensor_name(i, w)} must hold finite float64 values")
        h, dk, hid = spec.heads, spec.dk, spec.mlp_hidden
        expected = {"W_K": (h, dk, D), "W_Q": (h, dk, D), "W_V": (h, D, D), "W_1": (hid, D),
                    "W_2": (D, hid)}
        for w, shape in expected.items():
            if tuple(arrs[w].shape) != shape:
                raise ValueError(f"{_tensor_name(i, w)} has shape {list(arrs[w].shape)}, the "
                                 f"manifest says {list(shape)}")
        layers.append(LayerWeights(**arrs, head_labels=list(spec.head_labels)))
    extra = set(tensors) - {_tensor_name(i, w) for i in range(len(layers)) for w in WEIGHT_NAMES}
    if extra:
        raise ValueError(f"unexpected tensors {sorted(extra)[:3]}")
    if len(layers) != layout.n_layers:
        raise ValueError(f"{len(layers)} layers of weights, the manifest says {layout.n_layers}")
    return layers


__all__ = ["artifact_paths", "write_artifact", "read_artifact", "manifest_to_json",
           "manifest_from_json", "block_to_json", "approximation_to_json"]
