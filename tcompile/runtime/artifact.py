"""Artifacts on disk: ONE file, NAME.safetensors, holding the weights and the manifest.

Format version 3 (this module is the only one that knows it):

- three tensors, `weights.index`, `weights.values`, `weights.counts`: every weight matrix
  (layer by layer, in WEIGHT_NAMES order) as its nonzeros (sparse.py `pack`), so the file grows
  with the program, not with D²; shapes come from the manifest's layer specs;
- the safetensors string metadata: `format`, `format_version`, `manifest` (the manifest as
  compact JSON: program source, params, compiler version, layout with its blocks and layers as
  tables; not the report or the row map, which are derived on load) and `sha256`, a digest of
  the manifest text and of every tensor's name, dtype, shape and bytes. Everything the runtime
  reads is under that digest: an edited layout, params, output map or weight is an
  ArtifactError, not a model that runs and answers wrongly. (A digest guards against damage
  and careless edits, not against someone who recomputes it.)
- NAME.json beside it is a readable copy of the manifest for people and tools (with the row
  map and the model card), plus the sha256 of the .safetensors it was written with; tcompile
  never reads it back.

One file means one atomic rename (files.py): a reader sees the old artifact or the new one,
never new weights with an old manifest. The JSON copy is renamed after it, with signals held
across both. Older artifacts (format 1: two files, manifest in the JSON; format 2: the manifest's
blocks and layers not yet as tables) get a clear error asking for a rebuild. The manifest
JSON is written key by key in a fixed order, so the same build always gives the same bytes.

It returns and takes typed objects only; building a `CompiledProgram` from them is
program.py's business (program imports this module, never the reverse).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .layout import Block, InputSpec, LayerSpec, Layout, OutputSpec, RowUse
from .loops import LoopItem, LoopProgram, LoopSpec
from .resources import available_memory, format_bytes
from .manifest import (FORMAT, FORMAT_VERSION, ApproxRecord, DomainCheck, Manifest,
                       ProgramInfo)
from .codec import constant_value
from .files import atomic_write_many, read_regular
from .sparse import SparseMatrix, pack, unpack
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
        **({"keep": list(info.keep)} if info.keep else {}),
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
        "domains": [{"label": d.label, "block": d.block, "lo": d.lo, "hi": d.hi, "layer": d.layer,
                     **({"implied": d.implied} if d.implied else {}),
                     **({"lines": list(d.lines)} if d.lines else {})} for d in m.domains],
        **({"loops": loops_to_json(m.loops)} if m.loops is not None else {}),
    }


def block_to_json(b: Block) -> dict:
    return {"key": b.key, "kind": b.kind, "rows": list(b.rows), "transposed": b.transposed,
            "cshape": list(b.cshape), "written": b.written, "last_read": b.last_read,
            "vars": list(b.vars), "name": b.name, "const": b.const, "expr": b.expr,
            "line": b.line}


def _row_use_to_json(u: RowUse) -> dict:
    return {"block": u.block, "element": u.element, "written": u.written, "last_read": u.last_read}


def approximation_to_json(a: ApproxRecord) -> dict:
    """One row of the approximations table (also the report's, which embeds it)."""
    return {"name": a.name, "lo": a.lo, "hi": a.hi, "neurons": a.neurons,
            "neurons_per_entry": a.neurons_per_entry, "max_error": a.max_error, "tol": a.tol,
            "exact": a.exact, "entries": a.entries, **({"choice": a.choice} if a.choice else {}),
            **({"lines": list(a.lines)} if a.lines else {}),
            **({"steepest": a.steepest} if a.steepest else {})}


def loops_to_json(p: LoopProgram) -> dict:
    return {"loops": [{"key": s.key, "line": s.line, "count": s.count, "param": s.param,
                       "min_count": s.min_count, "max_count": s.max_count,
                       "layers_per_iteration": s.layers_per_iteration, "depth": s.depth,
                       "state": [list(x) for x in s.state],
                       **({"every": s.every} if s.every != 1 else {}),
                       **({"watch": [list(w) for w in s.watch]} if s.watch else {}),
                       **({"growing": list(s.growing)} if s.growing else {}),
                       **({"declared_fails": s.declared_fails} if s.declared_fails else {})}
                      for s in p.loops],
            "sequence": _seq_to_json(p.sequence),
            "base_counts": [list(x) for x in p.base_counts],
            "unrolled": [list(x) for x in p.unrolled]}


def _seq_to_json(seq) -> list:
    return [{"loop": i.loop, "offset": i.offset, "body": _seq_to_json(i.body),
             **({"every": i.every, "tails": [_seq_to_json(t) for t in i.tails],
                 "offsets": list(i.offsets)}
                if i.every != 1 else {}),
             **({"outputs": [[[name, list(rows), t] for name, rows, t in residue]
                             for residue in i.outputs]} if i.outputs else {})}
            if isinstance(i, LoopItem) else i for i in seq]


# ---- JSON → typed manifest -------------------------------------------------------------------

def manifest_from_json(d: dict) -> Manifest:
    """Read a manifest dict back (KeyError, TypeError or ValueError where it is malformed).
    `row_map` is not read: it is derived from the blocks. The layout is validated here."""
    if hashlib.sha256(d["source"].encode()).hexdigest() != d["source_sha256"]:
        raise ValueError("the program source does not match its checksum")
    params = d["params"]
    if not isinstance(params, dict) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in params.values()):
        raise ValueError(f"params must map names to numbers, got {params!r}")
    info = ProgramInfo(name=d["program"], file=d["file"], source=d["source"], params=params,
                       default_tol=d["default_tol"], compiler_version=d["compiler_version"],
                       keep=tuple(str(k) for k in d.get("keep", [])))
    layout = Layout(
        width=_whole(d["width"], "width"), n_layers=d["n_layers"], min_tokens=d["min_tokens"],
        max_small_dim=d["max_small_dim"],
        inputs=tuple(InputSpec(s["name"], tuple(s["shape"])) for s in d["inputs"]),
        outputs=tuple(OutputSpec(s["name"], tuple(s["shape"]), s["block"]) for s in d["outputs"]),
        blocks=tuple(_block_from_json(b) for b in d["blocks"]),
        layers=tuple(LayerSpec(s["heads"], s["dk"], s["mlp_hidden"],
                               tuple(s.get("head_labels", []))) for s in d["layers"]))
    layout.validate()
    _check_encoder_blocks(layout)
    for i, spec in enumerate(layout.layers):
        if len(spec.head_labels) != spec.heads:
            raise ValueError(f"layer {i} has {spec.heads} heads and {len(spec.head_labels)} "
                             "head labels")
    approximations = tuple(
        ApproxRecord(**{k: a[k] for k in _APPROX_KEYS}, choice=a.get("choice", ""),
                     lines=tuple(int(x) for x in a.get("lines", ())),
                     steepest=float(a.get("steepest", 0.0)))
        for a in d.get("approximations", []))
    domains = tuple(DomainCheck(c["label"], c["block"], c["lo"], c["hi"], c["layer"],
                                str(c.get("implied", "")),
                                tuple(_index(x) for x in c.get("lines", [])))
                    for c in d.get("domains", []))
    loops = loops_from_json(d["loops"], layout.n_layers) if "loops" in d else None
    if loops is not None:
        _check_residue_outputs(loops, layout)
        _check_watch(loops, layout)
    return Manifest(info, layout, approximations, domains, loops)


def _check_residue_outputs(loops: LoopProgram, layout: Layout) -> None:
    """Rows a kernel loop's residue leaves the outputs in (LoopItem.outputs) name every output
    once, as many rows as its block has stored that way (a residue may leave it transposed:
    a loop whose orientation alternates), each inside the residual stream."""
    item = loops.residue_loop()
    if item is None:
        return
    blocks = layout.output_blocks()
    for residue in item.outputs:
        if sorted(name for name, _, _ in residue) != sorted(blocks):
            raise ValueError(f"loop {item.loop!r}: its outputs per residue do not name the "
                             "program's outputs")
        for name, rows, transposed in residue:
            shape = blocks[name].cshape
            if len(rows) != shape[1 if transposed else 0] or \
                    any(not 0 <= r < layout.width for r in rows):
                raise ValueError(f"loop {item.loop!r}: output {name!r} has bad rows {rows!r}")


def _check_watch(loops: LoopProgram, layout: Layout) -> None:
    """A watch point (LoopSpec.watch) names a block of the layout, an item of its loop's body
    that is a stored layer, and sublayer 1 or 2: halting reads the rows there."""
    keys = {b.key for b in layout.blocks}
    for spec in loops.loops:
        for var, block, pos, sub, _count in spec.watch:
            item = loops.item(spec.key)
            if block not in keys or sub not in (1, 2) or item is None or \
                    not (pos < len(item.body) and isinstance(item.body[pos], int)):
                raise ValueError(f"loop {spec.key!r}: bad watch point for {var!r}")


def _whole(value, what: str) -> int:
    """A count from the manifest: an int (1e400, read by JSON as infinity, or 3.5 is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return value


_APPROX_KEYS = ("name", "lo", "hi", "neurons", "neurons_per_entry", "max_error", "tol", "exact",
                "entries")


def _block_from_json(b: dict) -> Block:
    rows = b["rows"]
    if not isinstance(rows, list) or any(not isinstance(r, int) for r in rows):
        raise ValueError(f"block {b['key']!r} has rows that are not integers: {rows!r}")
    if not (b.get("expr") is None or isinstance(b["expr"], str)) or \
            not (b.get("line") is None or type(b["line"]) is int):
        raise ValueError(f"block {b['key']!r} has an expr that is not text or a line that is "
                         "not an integer")
    return Block(key=b["key"], kind=b["kind"], rows=rows, transposed=b["transposed"],
                 cshape=b["cshape"], written=b["written"], last_read=b["last_read"],
                 vars=b.get("vars", []), name=b.get("name"), const=b.get("const"),
                 expr=b.get("expr"), line=b.get("line"))


def _check_encoder_blocks(layout: Layout) -> None:
    """What the encoder will look up must exist: every input block names a declared input,
    every declared input has a block, every constant block a constant the encoder knows."""
    declared = {s.name for s in layout.inputs}
    for b in layout.input_blocks():
        if b.kind == "input" and b.name not in declared:
            raise ValueError(f"block {b.key!r} holds input {b.name!r}, which the program does "
                             f"not declare (inputs: {sorted(declared)})")
        if b.kind == "const":
            try:
                constant_value(b.const, 1, 1)
            except (KeyError, TypeError):
                raise ValueError(f"block {b.key!r} holds an unknown constant {b.const!r}") from None
        elif b.kind != "input":
            raise ValueError(f"block {b.key!r} ({b.kind}) is written by the encoder")


def loops_from_json(d: dict, n_layers: int) -> LoopProgram:
    """Read it back (KeyError, TypeError, ValueError where malformed)."""
    loops = tuple(LoopSpec(str(s["key"]), int(s["line"]), int(s["count"]), s["param"],
                           int(s["min_count"]), None if s["max_count"] is None else int(s["max_count"]),
                           int(s["layers_per_iteration"]), int(s["depth"]),
                           tuple((str(a), str(b), int(c), int(e)) for a, b, c, e in s["state"]),
                           _every(s.get("every", 1)),
                           tuple((str(a), str(b), _index(c), _index(e), _index(f))
                                 for a, b, c, e, f in s.get("watch", [])),
                           tuple(str(v) for v in s.get("growing", [])),
                           str(s.get("declared_fails", "")))
                  for s in d["loops"])
    keys = {s.key for s in loops}
    prog = LoopProgram(loops, _seq_from_json(d["sequence"], keys, n_layers),
                       tuple((str(k), int(v)) for k, v in d["base_counts"]),
                       tuple((int(a), int(b), str(c)) for a, b, c in d.get("unrolled", [])))
    return prog


def _index(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"a loop's watch point needs whole numbers >= 0, got {v!r}")
    return v


def _every(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"a loop's kernel must be a whole number >= 1, got {v!r}")
    return v


def _flag(v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"an output's transposed flag must be true or false, got {v!r}")
    return v


def _seq_from_json(seq, keys, n_layers) -> tuple:
    out = []
    for i in seq:
        if isinstance(i, dict):
            if i["loop"] not in keys:
                raise ValueError(f"the loop sequence names an unknown loop {i['loop']!r}")
            every = _every(i.get("every", 1))
            tails = tuple(_seq_from_json(t, keys, n_layers) for t in i.get("tails", []))
            offsets = tuple(int(o) for o in i.get("offsets", []))
            if every > 1 and not (len(tails) == len(offsets) == every
                                  and offsets[0] == int(i["offset"])):
                raise ValueError(f"loop {i['loop']!r}: a kernel of {every} needs a tail and an "
                                 "offset per residue")
            outputs = tuple(tuple((str(name), tuple(int(r) for r in rows), _flag(t))
                                  for name, rows, t in residue) for residue in i.get("outputs", []))
            if outputs and len(outputs) != every:
                raise ValueError(f"loop {i['loop']!r}: a kernel of {every} needs its outputs' "
                                 "rows per residue")
            out.append(LoopItem(i["loop"], int(i["offset"]), _seq_from_json(i["body"], keys, n_layers),
                                every, tails, offsets, outputs))
        elif isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layers:
            out.append(i)
        else:
            raise ValueError(f"the loop sequence has a bad layer index {i!r}")
    return tuple(out)


# ---- the file --------------------------------------------------------------------------------

MIN_READ_LIMIT = 2 ** 30            # an artifact may always be this large, whatever memory says
MAX_OLD_MANIFEST_BYTES = 2 ** 28    # a format-1 manifest beside an artifact, read to name it
_PARTS = {"W_K": "attn", "W_Q": "attn", "W_V": "attn", "W_1": "mlp", "W_2": "mlp"}
_DIGEST_TAG = b"tcompile-artifact-digest/2\0"
_TENSORS = ("weights.index", "weights.values", "weights.counts")


def _tensor_name(layer: int, weight: str) -> str:
    return f"layers.{layer}.{_PARTS[weight]}.{weight}"


def artifact_paths(path) -> tuple[Path, Path]:
    """(PATH.safetensors, PATH.json) for PATH given with either suffix or none."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _expected_shapes(layout: Layout, i: int) -> dict[str, tuple[int, ...]]:
    spec, D = layout.layers[i], layout.width
    h, dk, hid = spec.heads, spec.dk, spec.mlp_hidden
    return {"W_K": (h, dk, D), "W_Q": (h, dk, D), "W_V": (h, D, D), "W_1": (hid, D),
            "W_2": (D, hid)}


def _weight_list(layout: Layout, layers: list[LayerWeights]) -> list[np.ndarray]:
    """Every weight matrix in file order (layer, then WEIGHT_NAMES), checked against the
    layout and for finiteness (ArtifactError), before anything is written."""
    if len(layers) != layout.n_layers:
        raise ArtifactError(f"{len(layers)} layers of weights, the layout says {layout.n_layers}")
    out = []
    for i, layer in enumerate(layers):
        for w, shape in _expected_shapes(layout, i).items():
            a = layer.matrix(w) if hasattr(layer, "matrix") else getattr(layer, w)
            finite = np.all(np.isfinite(a.values if isinstance(a, SparseMatrix) else a))
            if tuple(a.shape) != shape or not finite:
                raise ArtifactError(f"cannot save {_tensor_name(i, w)}: it must be finite with "
                                    f"shape {list(shape)}, got shape {list(a.shape)}")
            out.append(a)
    return out


def content_sha256(manifest_text: str, tensors: dict[str, np.ndarray]) -> str:
    """The digest stored in the file: the manifest text, then every tensor (sorted by name)
    with its dtype and shape, each length-prefixed so no two contents hash alike."""
    h = hashlib.sha256(_DIGEST_TAG)

    def put(b: bytes):
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    put(manifest_text.encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        put(name.encode())
        put(f"{a.dtype.str}{list(a.shape)}".encode())
        put(a.tobytes())
    return h.hexdigest()


def write_artifact(path, manifest: Manifest, layers: list[LayerWeights], report: dict) -> list[Path]:
    """Write PATH.safetensors (the artifact) and PATH.json (a readable copy of its manifest);
    return both paths, the artifact first. A failure writes nothing."""
    st_path, json_path = artifact_paths(path)
    tensors = dict(zip(_TENSORS, pack(_weight_list(manifest.layout, layers))))
    doc = manifest_to_json(manifest)
    text = json.dumps(_compact(doc), separators=(",", ":"), ensure_ascii=False,
                      default=_jsonable)
    blob = safetensors_bytes(tensors, {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "manifest": text,
        "sha256": content_sha256(text, tensors)})
    doc["report"] = report
    copy = {"note": f"a readable copy of the manifest inside {st_path.name}; tcompile reads "
                    "only that file", "artifact_file": st_path.name,
            "artifact_sha256": hashlib.sha256(blob).hexdigest(), **doc}
    copy_text = json.dumps(copy, indent=1, sort_keys=False, default=_jsonable) + "\n"
    try:
        st_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_many([(st_path, blob), (json_path, copy_text.encode())])
    except OSError as e:
        raise ArtifactError(f"cannot write artifact {str(st_path)!r}: "
                            f"{e.strerror or e}") from None
    return [st_path, json_path]


_TABLES = {"blocks": ("key", "kind", "rows", "transposed", "cshape", "written", "last_read",
                      "vars", "name", "const", "expr", "line"),
           "layers": ("heads", "dk", "mlp_hidden", "head_labels")}
# tables an earlier compiler wrote, still read (the fields it lacks are None): blocks without
# a temporary's text (`expr`, `line`), as written before temporaries were named in labels
_EARLIER_FIELDS = {"blocks": [_TABLES["blocks"][:-2]]}


def _compact(doc: dict) -> dict:
    """The manifest as embedded: the blocks and layers as tables (field names once, then one
    row of values per block or layer) and without the row map, which is derived from the
    blocks: about half the bytes of the readable form, which the JSON copy keeps."""
    out = {k: v for k, v in doc.items() if k != "row_map"}
    for key, fields in _TABLES.items():
        out[key] = {"fields": list(fields), "rows": [[item[f] for f in fields] for item in doc[key]]}
    return out


def _expand(doc) -> dict:
    """`_compact` undone (ValueError or TypeError if the tables are not as written)."""
    if not isinstance(doc, dict):
        raise TypeError("the manifest is not a JSON object")
    out = dict(doc)
    for key, fields in _TABLES.items():
        table = doc[key]
        written = table.get("fields") if isinstance(table, dict) else None
        if written not in [list(fields)] + [list(f) for f in _EARLIER_FIELDS.get(key, ())] or \
                not isinstance(table.get("rows"), list):
            raise ValueError(f"the manifest's {key} table is malformed")
        if any(not isinstance(r, list) or len(r) != len(written) for r in table["rows"]):
            raise ValueError(f"a row of the manifest's {key} table has the wrong length")
        out[key] = [dict(zip(written, r)) for r in table["rows"]]
    return out


_DTYPES = {"<f8": "F64", "<i8": "I64", "<i4": "I32"}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file, written here rather than by the library because the library's
    metadata is a hash map and comes out in a different key order in every process: here the
    header's keys are sorted and the tensors laid out in the order given (8-byte aligned
    first), so the same artifact is the same bytes. The loader reads it with the library."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    data, offset = [], 0
    for name, a in sorted(tensors.items(), key=lambda kv: (-kv[1].dtype.itemsize, kv[0])):
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        header[name] = {"dtype": _DTYPES[a.dtype.str], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        data.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(data)


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_artifact(path) -> tuple[Manifest, list[LayerWeights]]:
    """Read and check an artifact (PATH, PATH.json or PATH.safetensors: the .safetensors is
    what is read); every way it can be wrong is an ArtifactError."""
    st_path, json_path = artifact_paths(path)
    blob = _read_bytes(st_path, json_path)
    meta = _metadata(blob, st_path, json_path)
    tensors = _load_tensors(blob, st_path)
    text = meta.get("manifest")
    if not isinstance(text, str) or content_sha256(text, tensors) != meta.get("sha256"):
        raise ArtifactError(f"artifact {str(st_path)!r} does not match its checksum: its "
                            "manifest or weights were damaged or edited")
    try:
        manifest = manifest_from_json(_expand(json.loads(text)))
        layers = _layers_from_tensors(manifest.layout, tensors)
    except KeyError as e:
        raise ArtifactError(f"artifact {str(st_path)!r} is inconsistent: missing {e}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise ArtifactError(f"artifact {str(st_path)!r} is inconsistent: {e}") from None
    except RecursionError:
        raise ArtifactError(f"artifact {str(st_path)!r} is inconsistent: its manifest is nested "
                            "too deep to be one tcompile wrote") from None
    return manifest, layers


def _read_bytes(st_path: Path, json_path: Path) -> bytes:
    """The artifact's bytes: a regular file only (a FIFO or /dev/zero is refused before one
    byte is read), no larger than the memory available (files.py reads it, bounded)."""
    try:
        return read_regular(st_path, max(available_memory() or 0, MIN_READ_LIMIT))
    except FileNotFoundError:
        where = f" (only {str(json_path)!r}, a readable copy, is there)" if json_path.exists() else ""
        raise ArtifactError(f"no artifact at {str(st_path)!r}{where}") from None
    except OSError as e:
        raise ArtifactError(f"cannot read artifact {str(st_path)!r}: {e.strerror or e}") from None


def _metadata(blob: bytes, st_path: Path, json_path: Path) -> dict:
    """The safetensors header's string metadata, checked to be a tcompile artifact of this
    format version."""
    header = None
    if len(blob) >= 8:
        (n,) = struct.unpack("<Q", blob[:8])
        if 8 + n <= len(blob):
            try:
                header = json.loads(blob[8:8 + n])
            except (UnicodeDecodeError, ValueError, RecursionError):
                header = None         # RecursionError: a header nested thousands deep
    if not isinstance(header, dict):
        raise ArtifactError(f"{str(st_path)!r} cannot be read: not a safetensors file "
                            "(damaged or truncated)")
    meta = header.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("format") != FORMAT:
        if _old_format(json_path):
            raise ArtifactError(f"{str(st_path)!r} is a format-1 artifact (an older tcompile); "
                                f"this tcompile reads format {FORMAT_VERSION}: rebuild it from "
                                "its source with `tcompile build`")
        raise ArtifactError(f"{str(st_path)!r} is not a tcompile artifact (no tcompile "
                            "manifest inside)")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        older = isinstance(version, str) and version.isdigit() and int(version) < FORMAT_VERSION
        raise ArtifactError(f"{str(st_path)!r} has artifact format version {version!r}; this "
                            f"tcompile reads version {FORMAT_VERSION}" +
                            (": rebuild it from its source with `tcompile build`" if older else ""))
    return meta


def _old_format(json_path: Path) -> bool:
    """Is there a format-1 manifest beside (a two-file artifact of an older tcompile)?"""
    try:
        doc = json.loads(read_regular(json_path, MAX_OLD_MANIFEST_BYTES).decode())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("format_version") == 1


def _load_tensors(blob: bytes, st_path: Path) -> dict:
    import safetensors
    from safetensors.numpy import load as st_load
    safetensor_error = getattr(safetensors, "SafetensorError", Exception)
    try:
        return st_load(blob)
    except (safetensor_error, ValueError, TypeError) as e:
        raise ArtifactError(f"{str(st_path)!r} cannot be read: {e}") from None


def _layers_from_tensors(layout: Layout, tensors: dict) -> list[LayerWeights]:
    """The dense weights, rebuilt from their nonzeros and checked against the layer specs."""
    if len(layout.layers) != layout.n_layers:
        raise ValueError(f"{len(layout.layers)} layer specs, the manifest says {layout.n_layers} "
                         "layers")
    if set(tensors) != set(_TENSORS):
        raise ValueError(f"the file holds tensors {sorted(tensors)}, expected {list(_TENSORS)}")
    shapes = [shape for i in range(layout.n_layers) for shape in _expected_shapes(layout, i).values()]
    need, avail = 8 * sum(math.prod(s) for s in shapes), available_memory()
    if avail is not None and need > avail:
        raise ValueError(f"its dense weights need {format_bytes(need)}, more than the "
                         f"{format_bytes(avail)} of memory available")
    dense = unpack(shapes, *(tensors[t] for t in _TENSORS))
    per = len(WEIGHT_NAMES)
    return [LayerWeights(**dict(zip(WEIGHT_NAMES, dense[i * per:(i + 1) * per])),
                         head_labels=list(spec.head_labels))
            for i, spec in enumerate(layout.layers)]


__all__ = ["artifact_paths", "write_artifact", "read_artifact", "manifest_to_json",
           "manifest_from_json", "block_to_json", "approximation_to_json", "content_sha256"]
