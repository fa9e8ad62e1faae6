"""Artifacts on disk: NAME.safetensors (weights) + NAME.json (manifest). Never pickle.

The manifest carries the program source, params, compiler version, the layout (blocks) and
the report, plus the SHA-256 of the weights file: loading refuses a weights file that is not
the one the manifest was written with (corrupt, truncated, or from another build). Both files
are written to temporaries in the target directory and renamed into place, the manifest last,
so an interrupted save never leaves a manifest pointing at partial weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..compiler.emit import LayerWeights
from ..errors import ArtifactError

WEIGHT_NAMES = ("W_K", "W_Q", "W_V", "W_1", "W_2")


def _tensor_name(layer: int, weight: str) -> str:
    part = "attn" if weight in ("W_K", "W_Q", "W_V") else "mlp"
    return f"layers.{layer}.{part}.{weight}"


def artifact_paths(path) -> tuple[Path, Path]:
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


def save_artifact(prog, path) -> list[Path]:
    from safetensors.numpy import save as st_save
    weights_path, manifest_path = artifact_paths(path)
    try:
        weights_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot create directory {str(weights_path.parent)!r}: {e}") from None
    tensors = {_tensor_name(i, w): np.ascontiguousarray(getattr(layer, w), dtype=np.float64)
               for i, layer in enumerate(prog.layers) for w in WEIGHT_NAMES}
    blob = st_save(tensors)
    manifest = dict(prog.manifest)
    manifest["weights_file"] = weights_path.name
    manifest["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    manifest["report"] = prog.report
    text = json.dumps(manifest, indent=1, sort_keys=False, default=_jsonable) + "\n"
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


def load_artifact(path):
    import safetensors
    from safetensors.numpy import load as st_load
    SafetensorError = getattr(safetensors, "SafetensorError", Exception)

    from .program import CompiledProgram
    weights_path, manifest_path = artifact_paths(path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no artifact manifest at {str(manifest_path)!r}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"manifest {str(manifest_path)!r} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "tcompile-artifact":
        raise ArtifactError(f"{str(manifest_path)!r} is not a tcompile artifact manifest")
    if manifest.get("format_version") != 1:
        raise ArtifactError(f"{str(manifest_path)!r} has format version "
                            f"{manifest.get('format_version')!r}; this tcompile reads version 1")
    try:
        blob = weights_path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read weights {str(weights_path)!r}: {e}") from None
    if hashlib.sha256(blob).hexdigest() != manifest.get("weights_sha256"):
        raise ArtifactError(f"weights {str(weights_path)!r} do not match the manifest's checksum "
                            "(corrupt, truncated, or from another build)")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise ArtifactError(f"weights {str(weights_path)!r} cannot be read: {e}") from None
    try:
        layers = _layers_from_tensors(manifest, tensors)
        _check_layout(manifest)
    except KeyError as e:
        raise ArtifactError(f"artifact {str(manifest_path)!r} is inconsistent: missing {e}") from None
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"artifact {str(manifest_path)!r} is inconsistent: {e}") from None
    return CompiledProgram(manifest, layers)


def _check_layout(manifest: dict) -> None:
    """The layout the encoder/decoder follow must fit the weights and the program source."""
    if hashlib.sha256(manifest["source"].encode()).hexdigest() != manifest["source_sha256"]:
        raise ValueError("the program source does not match its checksum")
    D = int(manifest["width"])
    if not isinstance(manifest["min_tokens"], int) or manifest["min_tokens"] < 1:
        raise ValueError(f"min_tokens must be a positive integer, got {manifest['min_tokens']!r}")
    keys = set()
    for blk in manifest["blocks"]:
        rows = blk["rows"]
        if not rows or any(not isinstance(r, int) or not 0 <= r < D for r in rows):
            raise ValueError(f"block {blk['key']!r} has rows outside the width {D}")
        if len(blk["cshape"]) != 2:
            raise ValueError(f"block {blk['key']!r} has a bad shape {blk['cshape']!r}")
        keys.add(blk["key"])
    for spec in manifest["outputs"]:
        if spec["block"] not in keys:
            raise ValueError(f"output {spec['name']!r} lives in no block ({spec['block']!r})")


def _layers_from_tensors(manifest: dict, tensors: dict) -> list[LayerWeights]:
    D = int(manifest["width"])
    layers = []
    for i, spec in enumerate(manifest["layers"]):
        missing = [_tensor_name(i, w) for w in WEIGHT_NAMES if _tensor_name(i, w) not in tensors]
        if missing:
            raise ValueError(f"missing tensor {missing[0]}")
        arrs = {w: tensors[_tensor_name(i, w)] for w in WEIGHT_NAMES}
        for w, a in arrs.items():
            if a.dtype != np.float64 or not np.all(np.isfinite(a)):
                raise ValueError(f"{_tensor_name(i, w)} must hold finite float64 values")
        h, dk, hid = spec["heads"], spec["dk"], spec["mlp_hidden"]
        expected = {"W_K": (h, dk, D), "W_Q": (h, dk, D), "W_V": (h, D, D), "W_1": (hid, D), "W_2": (D, hid)}
        for w, shape in expected.items():
            if tuple(arrs[w].shape) != shape:
                raise ValueError(f"{_tensor_name(i, w)} has shape {list(arrs[w].shape)}, the manifest "
                                 f"says {list(shape)}")
        layers.append(LayerWeights(**arrs, head_labels=spec.get("head_labels", [])))
    extra = set(tensors) - {_tensor_name(i, w) for i in range(len(layers)) for w in WEIGHT_NAMES}
    if extra:
        raise ValueError(f"unexpected tensors {sorted(extra)[:3]}")
    if len(layers) != manifest["n_layers"]:
        raise ValueError(f"{len(layers)} layers of weights, the manifest says {manifest['n_layers']}")
    return layers
