"""Byte-identical builds across refactors: every shipped program at two settings and a fixed
corpus of random programs (tests/corpus/*.tp) must build to the artifacts recorded in
tests/corpus/checksums.json. A change that is meant to alter compiled weights or the manifest
regenerates them (`python tests/corpus/regenerate.py`) and says so in its commit message.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"
sys.path.insert(0, str(CORPUS))
from regenerate import artifact_digests, corpus_entries, entry_id  # noqa: E402

RECORDED = json.loads((CORPUS / "checksums.json").read_text())
ENTRIES = corpus_entries()


def test_corpus_is_complete():
    assert len(ENTRIES) >= 36
    assert {entry_id(p, q) for p, q in ENTRIES} == set(RECORDED)


@pytest.mark.parametrize("path,params", ENTRIES, ids=[entry_id(p, q) for p, q in ENTRIES])
def test_artifact_is_byte_identical(path, params):
    assert artifact_digests(path, params) == RECORDED[entry_id(path, params)]
