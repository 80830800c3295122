"""A format 2 index (made by the code before format 3) opens, searches, takes writes and upgrades in place.

tests/fixtures/format2_ivfpq was made by main at 93f5827: 300 documents of 3-8 random unit 16-d vectors
(pool_factor 1, train_min_vectors 1000, max_segments 4), added in three batches of 100, then d7 replaced
and d5 deleted: three ``pq`` segments, nlist 27, pq_m 8. format2_ivfpq.expected.json holds that code's
exhaustive search results for four seeded queries.
"""

from __future__ import annotations

import json
import shutil
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pooledir.pooled_index import PooledIndex
from tests.index.test_folder import EVERYTHING, FakeEncoder, _child, add, results

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


#: top-10 overlap of the upgraded index with format 2's answers that the tests require (see the first test)
UPGRADED_OVERLAP = 0.3


@pytest.fixture
def old(tmp_path) -> Path:
    path = tmp_path / "old"
    shutil.copytree(FIXTURES / "format2_ivfpq", path)
    return path


def fixture_queries() -> tuple[np.ndarray, list]:
    expected = json.loads((FIXTURES / "format2_ivfpq.expected.json").read_text())
    rng = np.random.default_rng(expected["queries_seed"])
    q = rng.standard_normal((4, 5, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=2, keepdims=True)
    return q, [[(i, s) for i, s in hits] for hits in expected["results"]]


def open_index(path: Path) -> PooledIndex:
    return PooledIndex.open(path, device="cpu", encoder=FakeEncoder())


def test_the_format_2_fixture_opens_searches_as_before_and_takes_writes(old):
    Q, expected = fixture_queries()
    idx = open_index(old)
    info = idx.info()
    assert idx.manifest.format_version == 2 and {s["kind"] for s in info["segments"]} == {"pq"}
    assert len(idx) == 299 and idx.get("d7").text == "text of d7, replaced"
    assert results(idx, Q) == expected  # the same codes, the same scores as the code that wrote them
    add(idx, ["new"], [5])
    assert {s["kind"] for s in idx.info()["segments"]} == {"pq"} and len(idx) == 300


def overlap(a: list, b: list) -> float:
    """Share of the top ids two result lists (rows of (id, score)) have in common, as faiss measures kNN overlap."""
    from faiss.contrib.evaluation import knn_intersection_measure

    return float(knn_intersection_measure(*(np.array([[i for i, _ in row] for row in r]) for r in (a, b))))


def test_overlap_is_the_share_of_common_ids():
    a = [[("x", 1.0), ("y", 0.5)], [("z", 1.0), ("w", 0.5)]]
    assert overlap(a, a) == 1.0 and overlap(a, [[("y", 1.0), ("q", 0.5)], [("p", 1.0), ("r", 0.5)]]) == 0.25


def test_upgrade_rewrites_every_segment_as_pq3_and_keeps_every_document(old):
    Q, expected = fixture_queries()
    idx = open_index(old)
    assert idx.upgrade() is True
    info = idx.info()
    assert idx.manifest.format_version == 3 and info["backend"]["codec"] == "pq3"
    assert [s["kind"] for s in info["segments"]] == ["pq3"] and info["deleted_vectors"] == 0
    assert info["backend"]["pq_m"] == 2  # format 3's dim/8, re-trained
    assert len(idx) == 299 and idx.get("d7").text == "text of d7, replaced"
    assert sorted(p.suffix for p in (old / "segments").iterdir()) == [".pq3"]
    # re-encoded at a quarter of the code bytes (2 B of PQ for 16-d random vectors): 0.375 of the top 10
    # measured, against 0.03 by chance (10 of 299); the codec's precision on real vectors is eval/'s job
    assert overlap(results(idx, Q), expected) >= UPGRADED_OVERLAP
    assert idx.upgrade() is False
    add(idx, ["new"], [5])
    again = open_index(old)
    assert again.manifest.format_version == 3 and {s["kind"] for s in again.info()["segments"]} == {"pq3"}
    assert results(again, Q, EVERYTHING) == results(idx, Q, EVERYTHING)


@pytest.mark.parametrize("moment", ["before_commit", "after_commit", "before_manifest"])
def test_kill_9_during_an_upgrade_leaves_a_readable_index_with_every_document(old, moment):
    Q, expected = fixture_queries()
    code = {
        "before_commit": """
            import pooledir.index.folder as f
            real = f.IndexFolder._commit
            def die(self, files, change, fold=True):
                if files:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(self, files, change, fold)
            f.IndexFolder._commit = die
        """,
        "after_commit": """
            import pooledir.index.folder as f
            real = f.IndexFolder._commit
            def die(self, files, change, fold=True):
                real(self, files, change, fold)
                if files:  # committed; the old segment files not yet removed
                    os.kill(os.getpid(), signal.SIGKILL)
            f.IndexFolder._commit = die
        """,
        "before_manifest": """
            import pooledir.index.manifest as m
            m.Manifest.write = lambda self, folder: os.kill(os.getpid(), signal.SIGKILL)
        """,
    }[moment]
    proc = _child(textwrap.dedent(code) + "idx.upgrade()\n", old)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    idx = open_index(old)
    assert len(idx) == 299 and idx.get("d7").text == "text of d7, replaced" and idx.get("d299").text
    kinds = {s["kind"] for s in idx.info()["segments"]}
    assert kinds == ({"pq"} if moment == "before_commit" else {"pq3"})
    if moment == "before_commit":
        assert results(idx, Q) == expected
    else:
        assert overlap(results(idx, Q), expected) >= UPGRADED_OVERLAP
    assert idx.upgrade() is True  # the manifest still says 2: the next upgrade finishes the job
    assert idx.manifest.format_version == 3 and {s["kind"] for s in idx.info()["segments"]} == {"pq3"}
    assert len(idx) == 299
    leftovers = {p.name for p in (old / "segments").iterdir()}
    assert leftovers == {f"{s['id']:08d}.pq3" for s in idx.info()["segments"]}


def test_cli_upgrade(old):
    """``pooledir upgrade DIR`` upgrades once, then says there is nothing to do."""
    import subprocess
    import sys

    from tests.index.test_folder import ROOT

    def run() -> str:
        cmd = [sys.executable, "-m", "pooledir.cli", "upgrade", str(old)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first, second = run(), run()
    assert first.startswith(f"upgraded {old} to format_version 3") and "already format_version 3" in second
    assert open_index(old).manifest.format_version == 3
