"""The PQ code of a new format-3 index (eval/results/code_rule.md, s11 rule), and the codes existing indexes keep.

A new format-3 index whose config names no ``pq_m``/``pq_nbits`` gets the rule's PQ32x6 (dim/4 sub-quantizers of
6 bits); every manifest written before it records ``pq_nbits: 8`` and keeps 8-bit codes (dim/8 sub-quantizers)
through re-training and the format 2 -> 3 upgrade; a re-training keeps the bits its quantizer has, except bits
that a too-small first sample forced.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pooledir.index import segments
from pooledir.pooled_index import PooledIndex
from tests.conftest import FakeEncoder
from tests.index.test_folder import add, create

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: the code the s11 rule picked, for the tests' 16-d vectors: dim/4 sub-quantizers of 6 bits
NEW_M, NEW_NBITS = 4, 6


def codec(idx: PooledIndex) -> tuple[int, int]:
    backend = idx.info()["backend"]
    return backend["pq_m"], backend["pq_nbits"]


def test_a_new_format_3_index_gets_the_rules_code(tmp_path):
    idx = create(tmp_path / "i", backend="ivfpq", train_min_vectors=1500)
    assert idx.manifest.config.pq_nbits is None  # the default, resolved when the index trains
    add(idx, [f"d{i}" for i in range(300)], list(range(300)))  # ~2,000 vectors
    assert idx.manifest.format_version == 3 and codec(idx) == (NEW_M, NEW_NBITS)
    assert json.loads((tmp_path / "i" / "manifest.json").read_text())["config"]["pq_nbits"] is None
    assert codec(PooledIndex.open(tmp_path / "i", device="cpu", encoder=FakeEncoder())) == (NEW_M, NEW_NBITS)
    eight = create(tmp_path / "eight", backend="ivfpq", train_min_vectors=1500, pq_nbits=8)
    add(eight, [f"d{i}" for i in range(300)], list(range(300)))
    assert codec(eight) == (2, 8)  # 8 bits named: the format-3 code before s11, PQ16x8 at 128 d


@pytest.mark.parametrize("fixture", ["format2_ivfpq", "format3_f32"])
def test_indexes_made_before_the_rule_keep_their_8_bit_code_when_they_retrain(tmp_path, fixture):
    path = tmp_path / "old"
    shutil.copytree(FIXTURES / fixture, path)
    assert json.loads((path / "manifest.json").read_text())["config"]["pq_nbits"] == 8
    idx = PooledIndex.open(path, device="cpu", encoder=FakeEncoder())
    before = codec(idx)
    assert before[1] == 8
    idx.compact(retrain=True)
    assert codec(idx) == before and len(idx) == 299
    if fixture == "format2_ivfpq":  # the upgrade re-trains at format 3's sub-quantizers for the recorded 8 bits
        assert idx.upgrade() is True
        assert codec(idx) == (2, 8) and idx.manifest.format_version == 3


def test_a_retraining_keeps_the_bits_the_index_has_not_those_a_small_sample_forced(tmp_path, monkeypatch):
    monkeypatch.setattr(segments, "PQ_NBITS", 7)  # another default, in force when the index first trained
    kept = create(tmp_path / "kept", backend="ivfpq", train_min_vectors=1500)
    add(kept, [f"d{i}" for i in range(300)], list(range(300)))
    assert codec(kept) == (NEW_M, 7)
    monkeypatch.setattr(segments, "PQ_NBITS", NEW_NBITS)
    kept.compact(retrain=True)
    assert codec(kept) == (NEW_M, 7)  # its code, not today's default
    small = create(tmp_path / "small", backend="ivfpq", train_min_vectors=30)
    add(small, [f"d{i}" for i in range(6)], list(range(6)))  # 30-63 vectors: the bits forced below 6
    assert small.info()["backend"]["trained"] and codec(small)[1] < NEW_NBITS
    add(small, [f"e{i}" for i in range(60)], list(range(1000, 1060)))
    small.compact(retrain=True)
    assert codec(small) == (NEW_M, NEW_NBITS)  # grown past 2**6 vectors: the default's bits
