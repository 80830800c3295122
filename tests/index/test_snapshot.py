"""The read side (pooledir/index/snapshot.py): a snapshot derived after each write equals one loaded from disk."""

from __future__ import annotations

import numpy as np
import pytest

from pooledir.pooled_index import PooledIndex
from tests.conftest import FakeEncoder
from tests.engine import engine
from tests.index.test_folder import DIM, add, create, queries, results


def assert_same_snapshot(mine, disk):
    assert mine.commit == disk.commit and mine.n_docs == disk.n_docs
    n = max(len(mine.seg_of), len(disk.seg_of))
    for name in ("seg_of", "start_of", "count_of"):
        a, b = getattr(mine, name), getattr(disk, name)
        fill = -1 if name == "seg_of" else 0
        a = np.concatenate([a, np.full(n - len(a), fill, a.dtype)])
        b = np.concatenate([b, np.full(n - len(b), fill, b.dtype)])
        assert np.array_equal(a, b), name
    assert [r.seg_id for r in mine.segments] == [r.seg_id for r in disk.segments]
    assert mine.rows == disk.rows
    for r, d in zip(mine.segments, disk.segments):
        assert np.array_equal(r.doc_ints, d.doc_ints) and np.array_equal(r.starts, d.starts)
        assert np.array_equal(r.counts, d.counts)
        assert (r.live is None) == (d.live is None)
        if r.live is not None:
            assert np.array_equal(r.live, d.live)


@pytest.mark.parametrize("backend", ["flat", "ivfpq"])
def test_snapshot_after_each_write_equals_one_loaded_from_disk(tmp_path, backend):
    """Writes derive the next snapshot in O(batch), other handles refresh from the touched segments only;
    both must be exactly what a fresh open loads."""
    from pooledir.index.snapshot import load_snapshot

    idx = create(tmp_path / "i", backend=backend, train_min_vectors=150, max_segments=5, max_dead_fraction=0.6)
    other = PooledIndex.open(idx.path, device="cpu", encoder=FakeEncoder())
    rng = np.random.default_rng(3)
    seed = 0
    for step in range(30):
        if step % 3 == 2 and len(idx) > 3:
            known = idx.row_ids()[:20]
            idx.delete(list(rng.choice(known, 2, replace=False)))
        else:
            ids = [f"d{int(i)}" for i in rng.choice(40, int(rng.integers(1, 6)), replace=False)]
            add(idx, ids, list(range(seed, seed + len(ids))))
            seed += len(ids)
        disk = load_snapshot(idx.path, idx.doc_store, DIM)
        assert_same_snapshot(engine(idx).snapshot, disk)
        if step % 2:  # every other write: a refresh then spans one commit or two
            other.refresh()
            assert_same_snapshot(engine(other).snapshot, disk)
    assert len(idx) == len(other)
    assert results(idx, queries()) == results(other, queries())
    assert results(idx, queries()) == results(
        PooledIndex.open(idx.path, device="cpu", encoder=FakeEncoder()), queries()
    )
