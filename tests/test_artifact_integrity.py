"""Artifact format 3: one .safetensors file holding sparse weights and the manifest, under one
digest; the .json beside it a copy nobody trusts. Every way the file can be damaged or edited
is an ArtifactError naming it; a save is atomic (killed saves leave the old or the new
artifact, never a mix, never a temporary after SIGINT/SIGTERM); files respect the umask; a
failed save writes nothing; the file grows with the nonzeros, not with D².
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save as st_save

import tcompile
from tcompile import ArtifactError
from tcompile.runtime.artifact import _compact, _expand, content_sha256
from tcompile.runtime.sparse import to_dense, to_sparse

ROOT = Path(__file__).resolve().parents[1]
LEAST_SQUARES = ROOT / "programs" / "least_squares.tp"
WEIGHTS = ("W_K", "W_Q", "W_V", "W_1", "W_2")


@pytest.fixture(scope="module")
def progs():
    return (tcompile.compile_file(LEAST_SQUARES, params={"steps": 2}),
            tcompile.compile_file(LEAST_SQUARES, params={"steps": 3}))


@pytest.fixture()
def base(progs, tmp_path):
    progs[0].save(tmp_path / "ls")
    return tmp_path / "ls"


def read_file(base: Path):
    """(metadata, manifest dict in its readable form, tensors) of an artifact, read with the
    safetensors library."""
    with safe_open(base.with_name(base.name + ".safetensors"), "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, _expand(json.loads(meta["manifest"])), tensors


def rewrite(base: Path, doc=None, tensors=None, reseal=True, meta_edit=None, embedded_edit=None):
    """Write the artifact back with an edited manifest / tensors (`embedded_edit` edits the
    manifest in its embedded, tabular form); `reseal` recomputes the digest (an edit made with
    care), otherwise the old digest stays (an edit made by hand)."""
    meta, old_doc, old_tensors = read_file(base)
    doc = old_doc if doc is None else doc
    tensors = old_tensors if tensors is None else tensors
    embedded = _compact(dict(doc, row_map=[]))
    if embedded_edit:
        embedded_edit(embedded)
    text = json.dumps(embedded)
    meta = dict(meta, manifest=text)
    if reseal:
        meta["sha256"] = content_sha256(text, tensors)
    meta.update(meta_edit or {})
    base.with_name(base.name + ".safetensors").write_bytes(st_save(tensors, metadata=meta))


def dense_equal(a, b) -> bool:
    return all(np.array_equal(getattr(x, w), getattr(y, w)) and x.head_labels == y.head_labels
               for x, y in zip(a.layers, b.layers) for w in WEIGHTS) and len(a.layers) == len(b.layers)


# ---- the format ----------------------------------------------------------------------------

def test_one_file_holds_everything_the_json_is_an_untrusted_copy(progs, base):
    meta, doc, tensors = read_file(base)
    assert meta["format"] == "tcompile-artifact" and meta["format_version"] == "3"
    full = progs[0].manifest
    assert doc == {k: v for k, v in full.items() if k != "row_map"}    # derived, so not stored
    assert json.loads(meta["manifest"])["blocks"]["fields"][:3] == ["key", "kind", "rows"]
    copy = json.loads(base.with_name("ls.json").read_text())
    assert copy["artifact_sha256"] == hashlib.sha256(base.with_name("ls.safetensors").read_bytes()).hexdigest()
    assert {k: copy[k] for k in full} == full and copy["report"] == progs[0].report
    # the copy is never read: garbage or absence changes nothing
    base.with_name("ls.json").write_text('{"format": "tcompile-artifact", "params": {"steps": 99}}')
    assert dense_equal(tcompile.load(base), progs[0])
    base.with_name("ls.json").unlink()
    assert tcompile.load(str(base) + ".json").manifest == progs[0].manifest
    # the stored tensors are each weight's nonzeros (layer by layer, W_K W_Q W_V W_1 W_2)
    arrays = [getattr(layer, w) for layer in progs[0].layers for w in WEIGHTS]
    assert sorted(tensors) == ["weights.counts", "weights.index", "weights.values"]
    assert list(tensors["weights.counts"]) == [np.count_nonzero(a) for a in arrays]
    assert np.array_equal(tensors["weights.index"], np.concatenate([np.flatnonzero(a) for a in arrays]))
    assert np.array_equal(tensors["weights.values"], np.concatenate([a[a != 0] for a in arrays]))


def test_a_wider_model_round_trips(tmp_path):
    """newton_inverse at d = 24 (width 72): the weights come back bit for bit from their
    nonzeros. (How the bytes compare with the nonzeros is bench/bench_artifacts.py's to say.)"""
    prog = tcompile.compile_file(ROOT / "programs" / "newton_inverse.tp", params={"d": 24, "steps": 3})
    path, _ = prog.save(tmp_path / "ni")
    assert dense_equal(tcompile.load(path), prog)


@pytest.mark.parametrize("a", [np.zeros((2, 3)), np.array([[0.0, -0.0, 1.5], [-2.0, 0.0, 1e-300]]),
                               np.arange(24.0).reshape(2, 3, 4) - 5])
def test_sparse_round_trip(a):
    index, values = to_sparse(a)
    back = to_dense(a.shape, index, values)
    assert np.array_equal(back, a) and back.dtype == np.float64
    assert np.count_nonzero(values) == values.size == np.count_nonzero(a)


def test_sparse_matrix_from_entries_is_the_dense_sum_in_order():
    """SparseMatrix.from_entries (how the emitter makes W_1, W_2 without dense arrays) is
    np.add.at into zeros then to_sparse, bit for bit: repeated positions summed left to right
    (0.1 + 0.2 - 0.3 is not 0.1 - 0.3 + 0.2), sums that cancel and -0.0 left out."""
    from tcompile.runtime.sparse import SparseMatrix
    rng = np.random.default_rng(0)
    pos = np.concatenate([rng.integers(0, 40, 200), [7, 7, 7, 9, 9, 11]])
    vals = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-8, 8, 200),
                           [0.1, 0.2, -0.3, 1.0, -1.0, -0.0]])
    for order in (np.arange(len(pos)), rng.permutation(len(pos))):
        dense = np.zeros(40)
        np.add.at(dense, pos[order], vals[order])
        got = SparseMatrix.from_entries((5, 8), pos[order], vals[order])
        index, values = to_sparse(dense.reshape(5, 8))
        assert got.index.tobytes() == index.tobytes() and got.values.tobytes() == values.tobytes()
        assert got.dense().tobytes() == dense.reshape(5, 8).tobytes()
    # no position repeated (the usual MLP), given sorted (W_1) or not (W_2): the short way
    unique = rng.permutation(40)[:30]
    vals = rng.standard_normal(30)
    vals[[3, 11]] = -0.0, 0.0
    for positions in (np.sort(unique), unique):
        dense = np.zeros(40)
        np.add.at(dense, positions, vals)
        got = SparseMatrix.from_entries((5, 8), positions, vals)
        index, values = to_sparse(dense.reshape(5, 8))
        assert got.index.tobytes() == index.tobytes() and got.values.tobytes() == values.tobytes()
        assert got.nnz == 28


@pytest.mark.parametrize("index, values, message", [
    ([1, 1], [1.0, 2.0], "strictly increasing"), ([2, 1], [1.0, 2.0], "strictly increasing"),
    ([6], [1.0], "outside"), ([-1], [1.0], "outside"), ([0], [0.0], "nonzero"),
    ([0], [np.nan], "finite"), ([0, 1], [1.0], "equal length"),
])
def test_sparse_refuses_non_canonical_pairs(index, values, message):
    with pytest.raises(ValueError, match=message):
        to_dense((2, 3), np.array(index, dtype=np.int64), np.array(values, dtype=np.float64))


# ---- damage and edits ----------------------------------------------------------------------

def flip(blob: bytes, where: int) -> bytes:
    b = bytearray(blob)
    b[where] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("case", ["flip_data", "flip_last", "flip_header", "flip_length",
                                  "truncated", "empty", "appended", "garbage"])
def test_damaged_files_are_artifact_errors(base, case):
    path = base.with_name("ls.safetensors")
    blob = path.read_bytes()
    header = 8 + int.from_bytes(blob[:8], "little")
    meta_at = blob.index(b'steps\\":')            # the params, inside the embedded manifest
    new = {"flip_data": lambda: flip(blob, header + (len(blob) - header) // 2),
           "flip_last": lambda: flip(blob, len(blob) - 1), "flip_header": lambda: flip(blob, meta_at + 1),
           "flip_length": lambda: flip(blob, 0), "truncated": lambda: blob[:len(blob) // 3],
           "empty": lambda: b"", "appended": lambda: blob + b"\0" * 8,
           "garbage": lambda: b"\xff" * 64}[case]()
    path.write_bytes(new)
    with pytest.raises(ArtifactError, match=r"ls\.safetensors.*(checksum|cannot be read)"):
        tcompile.load(base)


def _permute_input_rows(doc):
    blk = next(b for b in doc["blocks"] if b["kind"] == "input" and len(b["rows"]) > 1)
    blk["rows"] = blk["rows"][::-1]


def _steps_99(doc):
    doc["params"]["steps"] = 99


def _output_block(doc):
    doc["outputs"][0]["block"] = doc["outputs"][1]["block"]


def _rename_input_block(doc):
    next(b for b in doc["blocks"] if b["kind"] == "input")["name"] = "B"


def _written(doc):
    doc["blocks"][-1]["written"] += 2


EDITS = [_permute_input_rows, _steps_99, _output_block, _rename_input_block, _written]


@pytest.mark.parametrize("edit", EDITS)
def test_any_manifest_edit_breaks_the_checksum(base, edit):
    """Everything the runtime reads is under the digest: layout, params, outputs, row map."""
    _, doc, _ = read_file(base)
    edit(doc)
    rewrite(base, doc, reseal=False)
    with pytest.raises(ArtifactError, match="checksum"):
        tcompile.load(base)


def _drop_tensor(t):
    del t["weights.counts"]


def _extra_tensor(t):
    t["layers.9.attn.W_K"] = np.zeros(1)


def _scale_weight(t):
    t["weights.values"] = t["weights.values"] * 2


@pytest.mark.parametrize("edit", [_drop_tensor, _extra_tensor, _scale_weight])
def test_any_tensor_edit_breaks_the_checksum(base, edit):
    _, _, tensors = read_file(base)
    edit(tensors)
    rewrite(base, tensors=tensors, reseal=False)
    with pytest.raises(ArtifactError, match="checksum"):
        tcompile.load(base)


# ---- careful edits (digest recomputed): still refused where the runtime cannot follow -------

def _layer_heads(doc, t):
    doc["layers"][0]["heads"] += 1


def _layers_dropped(doc, t):
    doc["layers"].pop()


def _no_blocks(doc, t):
    doc["blocks"] = []


def _rows_out_of_range(doc, t):
    doc["blocks"][0]["rows"] = [doc["width"] + 5]


def _unknown_output_block(doc, t):
    doc["outputs"][0]["block"] = "nope"


def _source_edited(doc, t):
    doc["source"] = doc["source"].replace("input a_test : [d]", "input a_test : [d, d]")


def _huge_width(doc, t):
    doc["width"] = 10 ** 9


def _unknown_constant(doc, t):
    next(b for b in doc["blocks"] if b["kind"] == "const")["const"] = "pi"


def _duplicate_position(doc, t):
    t["weights.index"][1] = t["weights.index"][0]


def _counts_off(doc, t):
    t["weights.counts"][0] += 1


def _values_float32(doc, t):
    t["weights.values"] = t["weights.values"].astype(np.float32)


@pytest.mark.parametrize("edit, message", [
    (_rename_input_block, "holds input 'B', which the program does not declare"),
    (_layer_heads, "1 heads and 0 head labels|heads and .* head labels"),
    (_layers_dropped, "layer specs"),
    (_no_blocks, "lives in no block"), (_rows_out_of_range, "outside the width"),
    (_unknown_output_block, "lives in no block"), (_huge_width, "dense weights need .* more than"), (_source_edited, "source does not match"),
    (_unknown_constant, "unknown constant 'pi'"), (_duplicate_position, "strictly increasing"),
    (_counts_off, "add up to"), (_values_float32, "float64"),
])
def test_resealed_edits_the_runtime_cannot_follow_are_artifact_errors(base, edit, message):
    _, doc, tensors = read_file(base)
    tensors = {k: v.copy() for k, v in tensors.items()}
    edit(doc, tensors) if edit.__code__.co_argcount == 2 else edit(doc)
    rewrite(base, doc, tensors)
    with pytest.raises(ArtifactError, match=message):
        tcompile.load(base)


@pytest.mark.parametrize("edit, message", [
    (lambda e: e.__setitem__("layers", None), "layers table is malformed"),
    (lambda e: e["blocks"]["fields"].reverse(), "blocks table is malformed"),
    (lambda e: e["blocks"]["rows"][0].pop(), "wrong length"),
    (lambda e: e["blocks"]["rows"][0].__setitem__(-2, ["x"]), "expr that is not text"),
    (lambda e: e["blocks"]["rows"][0].__setitem__(-1, 2.5), "line that is not an integer"),
    (lambda e: e.__setitem__("params", None), "inconsistent"),
    (lambda e: e.clear(), "missing"),
])
def test_malformed_embedded_manifests_are_artifact_errors(base, edit, message):
    rewrite(base, embedded_edit=edit)
    with pytest.raises(ArtifactError, match=message):
        tcompile.load(base)


def test_format_1_artifacts_and_other_files_get_clear_errors(progs, base, tmp_path):
    """An older two-file artifact (weights without metadata + format-1 JSON manifest) asks for a
    rebuild; a newer version names both; a foreign safetensors file is not an artifact."""
    _, doc, tensors = read_file(base)
    old = tmp_path / "old"
    old.with_name("old.safetensors").write_bytes(st_save({"layers.0.attn.W_K": np.zeros((1, 1, 3))}))
    old.with_name("old.json").write_text(json.dumps(dict(doc, format_version=1)))
    with pytest.raises(ArtifactError, match=r"old\.safetensors.*format-1 artifact.*rebuild"):
        tcompile.load(old)
    old.with_name("old.json").unlink()
    with pytest.raises(ArtifactError, match="not a tcompile artifact"):
        tcompile.load(old)
    rewrite(base, meta_edit={"format_version": "4"})
    with pytest.raises(ArtifactError, match="format version '4'; this tcompile reads version 3$"):
        tcompile.load(base)
    rewrite(base, meta_edit={"format_version": "2"})
    with pytest.raises(ArtifactError, match="format version '2'; this tcompile reads version 3: rebuild"):
        tcompile.load(base)
    with pytest.raises(ArtifactError, match=r"no artifact at .*nothing\.safetensors"):
        tcompile.load(tmp_path / "nothing.json")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(ArtifactError, match="cannot read artifact"):
        tcompile.load(tmp_path / "d")


# ---- writing: modes, failures, interrupts --------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_respect_the_umask(progs, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        paths = progs[0].save(tmp_path / "m")
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [mode, mode]


def test_a_failed_save_writes_nothing(progs, tmp_path):
    bad = tcompile.CompiledProgram(progs[0].typed_manifest, [
        type(w)(**{n: getattr(w, n).copy() for n in WEIGHTS}, head_labels=w.head_labels)
        for w in progs[0].layers])
    bad.layers[-1].W_V[0, 0, 0] = np.inf
    with pytest.raises(ArtifactError, match=r"cannot save layers\.\d+\.attn\.W_V: it must be finite"):
        bad.save(tmp_path / "out" / "m")
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="cannot write artifact"):
        progs[0].save(tmp_path / "file" / "m")              # a file where the directory goes
    progs[1].save(tmp_path / "d" / "m")
    (tmp_path / "d" / "m.json").unlink()
    (tmp_path / "d" / "m.json").mkdir()                      # the copy cannot be written
    before = (tmp_path / "d" / "m.safetensors").read_bytes()
    with pytest.raises(ArtifactError, match="cannot write artifact"):
        progs[0].save(tmp_path / "d" / "m")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["m.json", "m.safetensors"]
    assert (tmp_path / "d" / "m.safetensors").read_bytes() == before


_SAVED_ON = 3          # a saving child's exit status when no kill stopped it within its 5 s


def _saving_child(progs, base: Path, first: int) -> int:
    """Fork a process that saves the two programs over `base`, turn about, until killed.

    Returns once the child is running Python code: Python drops a SIGINT that arrives while
    the child is still settling after the fork, so a kill drawn near 0 s was lost and the child
    saved on for its full 5 s (5 s of the suite's time each, and no save interrupted)."""
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # the child: never returns into pytest
        code = _SAVED_ON
        try:
            # the signals' usual effects, whatever the worker process had set
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            os.close(ready)
            os.write(go, b"1")
            os.close(go)
            t0, i = time.monotonic(), first
            while time.monotonic() - t0 < 5:
                progs[i % 2].save(base)
                i += 1
        except KeyboardInterrupt:
            code = 0
        finally:
            os._exit(code)
    os.close(go)
    os.read(ready, 1)
    os.close(ready)
    return pid


def _child_save_seconds(prog, base: Path) -> float:
    """How long one save takes in a freshly forked process (the probe's files are removed)."""
    ready, go = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready)
            t0 = time.monotonic()
            prog.save(base)
            os.write(go, repr(time.monotonic() - t0).encode())
            os.close(go)
        finally:
            os._exit(0)
    os.close(go)
    took = float(os.read(ready, 64) or b"0")
    os.close(ready)
    os.waitpid(pid, 0)
    for p in base.parent.glob(base.name + "*"):
        p.unlink()
    return took


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_saves_leave_the_old_or_the_new_artifact(progs, tmp_path, sig):
    """Kill a process saving over an artifact at random moments (during the report, the
    packing, the writes, the renames): the artifact always loads, as one of the two programs;
    after SIGINT/SIGTERM no temporary remains and the JSON copy describes the artifact."""
    base = tmp_path / "ls"
    t0 = time.monotonic()
    progs[0].save(base)
    # kills fall within the first few saves *of a child*: a forked process saves slower than
    # this warm parent (copy-on-write faults), more so on a loaded machine
    one_save = max(time.monotonic() - t0, _child_save_seconds(progs[1], tmp_path / "probe"))
    rng = random.Random(sig)
    seen = []
    for k in range(15):
        pid = _saving_child(progs, base, first=k + 1)
        time.sleep(rng.uniform(0.0, 4 * one_save))
        os.kill(pid, sig)
        _, status = os.waitpid(pid, 0)
        # the kill, not the child's 5 s, ended it (else this run interrupted no save)
        if sig == signal.SIGINT:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        else:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig, status
        loaded = tcompile.load(base)
        seen.append(loaded.manifest["params"]["steps"])
        assert dense_equal(loaded, progs[loaded.manifest["params"]["steps"] - 2])
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        if sig == signal.SIGKILL:
            for p in temps:
                assert p.name.startswith((".ls.safetensors.", ".ls.json."))
                p.unlink()
            continue
        assert not temps
        copy = json.loads(base.with_name("ls.json").read_text())
        assert copy["artifact_sha256"] == hashlib.sha256(base.with_name("ls.safetensors").read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ls.json", "ls.safetensors"]
    assert len(set(seen)) == 2, seen               # saves of both did complete between kills


# ---- run -o: never the inputs, never a directory, atomic ------------------------------------

@pytest.fixture()
def run_setup(progs, tmp_path):
    progs[0].save(tmp_path / "ls")
    rng = np.random.default_rng(0)
    A = rng.standard_normal((6, 4))
    inputs = dict(A=A / np.linalg.norm(A, axis=1, keepdims=True), y=rng.standard_normal(6),
                  a_test=rng.standard_normal(4))
    np.savez(tmp_path / "in.npz", **inputs)
    return tmp_path, inputs


@pytest.mark.parametrize("target", ["in.npz", "./in.npz", "link.npz", "sub", "sub/"])
def test_run_output_refuses_its_inputs_and_directories(run_setup, target, capsys):
    from tcompile.cli.main import main
    tmp, _ = run_setup
    (tmp / "sub").mkdir()
    os.symlink(tmp / "in.npz", tmp / "link.npz")
    before = (tmp / "in.npz").read_bytes()
    code = main(["run", str(tmp / "ls"), "--inputs", str(tmp / "in.npz"), "-o", str(tmp) + "/" + target])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert ("is the --inputs file" in err) if "npz" in target else ("is a directory" in err)
    assert (tmp / "in.npz").read_bytes() == before
    assert not [p for p in tmp.rglob("*") if p.name.endswith(".tmp")] and not any((tmp / "sub").iterdir())


def test_run_output_is_written_whole(progs, run_setup, capsys):
    from tcompile.cli.main import main
    tmp, inputs = run_setup
    (tmp / "res.npz").write_bytes(b"old")
    assert main(["run", str(tmp / "ls"), "--inputs", str(tmp / "in.npz"), "-o", str(tmp / "res.npz")]) == 0
    with np.load(tmp / "res.npz") as got:
        want = progs[0].run(**inputs)
        assert sorted(got.files) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert sorted(p.name for p in tmp.iterdir()) == ["in.npz", "ls.json", "ls.safetensors", "res.npz"]
    (tmp / "file").write_text("x")
    assert main(["run", str(tmp / "ls"), "--inputs", str(tmp / "in.npz"), "-o", str(tmp / "file" / "r.npz")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_an_interrupted_picture_leaves_the_old_file(tmp_path, monkeypatch):
    """plots.py writes through runtime.files.atomic_open: a drawing interrupted half way
    leaves the previous picture as it was and no temporary."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    from tcompile.inspection import plots
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    (tmp_path / "p.png").write_bytes(b"old picture")

    def half_then_interrupt(self, f, **kw):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt
    monkeypatch.setattr(Figure, "savefig", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        plots._save(fig, tmp_path / "p")
    assert (tmp_path / "p.png").read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]
    monkeypatch.undo()
    assert [p.name for p in plots._save(fig, tmp_path / "p")] == ["p.png", "p.svg"]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "p.png").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
