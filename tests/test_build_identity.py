"""Byte-identical builds, across refactors and across machines.

Every shipped program (the seed programs at two settings), three shared builds (whose fold,
kernel and read-ahead choices compare layers bit for bit) and a fixed corpus of random programs
(tests/corpus/*.tp) must build to the artifacts recorded in tests/corpus/checksums.json. A change
that is meant to alter compiled weights or the manifest regenerates them
(`python tests/corpus/regenerate.py`) and says so in its commit message.

The recorded checksums were made on one machine and must hold on every other: the same build
is repeated in child processes that run numpy's other SIMD paths (NPY_DISABLE_CPU_FEATURES, as
on a CPU without AVX-512 or AVX2), other OpenBLAS kernels (OPENBLAS_CORETYPE, only kernels this
CPU can run), other BLAS thread counts and torch's default CPU capability. Those are what
differed between an Intel and an AMD machine before the compiler evaluated its fits through
tcompile.language.portable_math (numpy's AVX-512 exp/log/power gave other last bits).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import builds
import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"
sys.path.insert(0, str(CORPUS))
from regenerate import artifact_digests, corpus_entries, entry_id  # noqa: E402

RECORDED = json.loads((CORPUS / "checksums.json").read_text())
ENTRIES = corpus_entries()


def test_corpus_is_complete():
    assert len(ENTRIES) >= 64
    assert {entry_id(p, q) for p, q in ENTRIES} == set(RECORDED)


@pytest.mark.parametrize("path,params", ENTRIES, ids=[entry_id(p, q) for p, q in ENTRIES])
def test_artifact_is_byte_identical(path, params):
    # the in-process build is the session's shared one (tests/builds.py): the bytes it saves
    # are the build's, whichever test compiled it first
    assert artifact_digests(path, params, build=builds.build) == RECORDED[entry_id(path, params)]


def _numpy_cpu():
    """numpy's CPU dispatch tables (numpy._core in numpy 2, numpy.core in 1.x)."""
    try:
        from numpy._core import _multiarray_umath as m
    except ImportError:                                      # numpy < 2
        from numpy.core import _multiarray_umath as m
    return m.__cpu_dispatch__, m.__cpu_features__


def _machines() -> dict[str, dict[str, str]]:
    """Environments that make this machine compute like another: numpy without its AVX-512
    (and then also its AVX2) loops, OpenBLAS kernels of older CPUs, 1 and 2 BLAS threads. Only
    dispatch targets this CPU has are disabled, and only kernels it can run are chosen."""
    dispatch, features = _numpy_cpu()
    usable = [f for f in dispatch if features.get(f)]
    avx512 = [f for f in usable if f.startswith(("AVX512", "X86_V4"))]
    avx2 = [f for f in usable if f in ("X86_V3", "AVX2", "FMA3", "AVX", "F16C")]
    older_kernel = "Haswell" if features.get("AVX2") else "Nehalem"
    return {
        "no AVX-512, older BLAS kernel, 1 thread": {
            "NPY_DISABLE_CPU_FEATURES": " ".join(avx512), "OPENBLAS_CORETYPE": older_kernel,
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
        "no AVX2, Nehalem BLAS kernel, 2 threads": {
            "NPY_DISABLE_CPU_FEATURES": " ".join(avx512 + avx2),
            "OPENBLAS_CORETYPE": "Nehalem", "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2",
            "ATEN_CPU_CAPABILITY": "default"},
    }


def test_builds_do_not_depend_on_the_cpu_or_blas_kernel():
    """The whole corpus, rebuilt in a child process per simulated machine (both at once: this
    is the suite's slowest identity check, ~10 s per machine), gives the recorded bytes."""
    children = {}
    for label, changes in _machines().items():
        env = {**os.environ, **changes}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(CORPUS.parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        children[label] = subprocess.Popen(
            [sys.executable, str(CORPUS / "regenerate.py"), "--print"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for label, child in children.items():
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, f"{label}: {err[-2000:]}"
        got = json.loads(out)
        differ = sorted(k for k in RECORDED if got.get(k) != RECORDED[k])
        assert not differ, f"{label}: artifacts differ from the recorded ones: {differ}"


def test_the_simulated_machines_really_differ():
    """The child environments must change what numpy runs, or the test above proves nothing:
    numpy reports each disabled dispatch target as absent there (on a CPU without AVX-512 the
    first machine is this one, which is fine: the second still differs)."""
    for label, changes in _machines().items():
        env = {**os.environ, **changes}
        code = ("import json, sys; sys.path.insert(0, %r); from test_build_identity import "
                "_numpy_cpu; print(json.dumps(_numpy_cpu()[1]))" % str(Path(__file__).parent))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        present = {k for k, v in json.loads(out.splitlines()[-1]).items() if v}
        for feature in changes["NPY_DISABLE_CPU_FEATURES"].split():
            assert feature not in present, (label, feature)
