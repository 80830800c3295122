"""Damaged files: checksummed segments, a damaged document store, a full disk at the commit (issue 22, item 11)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pooledir.errors import IndexCorruptError, NoSpaceError
from pooledir.index.segments import FOOTER, default_nlist, default_nlist_v2, default_pq_m, verify_file, write_faiss
from pooledir.pooled_index import PooledIndex
from tests.conftest import FakeEncoder
from tests.index.test_folder import EVERYTHING, add, create, queries, results


def rot(path: Path, offset: int, n: int = 64, seed: int = 0) -> None:
    """Overwrite ``n`` bytes at ``offset`` (from the end when negative) with random ones, in place."""
    data = bytearray(path.read_bytes())
    offset = offset % len(data)
    data[offset : offset + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    with open(path, "r+b") as f:  # in place, as a disk's bit rot or a stray write would
        f.write(bytes(data))


def pq_index(path: Path, kind: str = "pq3") -> PooledIndex:
    """A trained index of two segments: pq3 (format 3), or pq (a format 2 folder, see :func:`format2`)."""
    idx = create(path, backend="ivfpq", train_min_vectors=200, train_sample=2000, nlist=4)
    if kind == "pq":
        idx = format2(idx)
    add(idx, [f"d{i}" for i in range(60)], list(range(60)))
    add(idx, [f"e{i}" for i in range(10)], list(range(100, 110)))
    assert idx.info()["backend"]["trained"] and {s["kind"] for s in idx.info()["segments"]} == {kind}
    return idx


def format2(idx: PooledIndex) -> PooledIndex:
    """The empty index reopened as a format 2 folder (its manifest says so): it writes ``pq`` segments."""
    path = idx.path
    idx.close()
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(manifest | {"format_version": 2}))
    return PooledIndex.open(path, device="cpu", encoder=FakeEncoder())


def segment_file(folder: Path, seg_id: int) -> Path:
    (path,) = [p for p in (folder / "segments").glob(f"{seg_id:08d}.*") if p.suffix in (".pq3", ".faiss")]
    return path


def snapshot_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_footer_catches_rot_truncation_and_a_missing_footer_is_legacy(tmp_path):
    import faiss

    index = faiss.IndexFlatIP(8)
    index.add(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    path = tmp_path / "s.faiss"
    write_faiss(index, path)
    assert verify_file(path) is True
    assert faiss.read_index(str(path)).ntotal == 50  # faiss ignores the footer
    good = path.read_bytes()
    rot(path, 600)
    with pytest.raises(IndexCorruptError, match="no longer match the checksum"):
        verify_file(path)
    path.write_bytes(good[:700] + good[-FOOTER.size :])
    with pytest.raises(IndexCorruptError, match="truncated or overwritten"):
        verify_file(path)
    path.write_bytes(good[: -FOOTER.size])
    assert verify_file(path) is False  # written before footers: nothing to check against


@pytest.mark.parametrize("kind", ["pq3", "pq"])
@pytest.mark.parametrize("where", [0.05, 0.5, -200])
def test_a_rotted_segment_fails_the_open_so_nothing_is_written_into_it(tmp_path, where, kind):
    idx = pq_index(tmp_path / "i", kind)
    seg = segment_file(tmp_path / "i", idx.info()["segments"][0]["id"])
    idx.close()
    rot(seg, int(where * seg.stat().st_size) if isinstance(where, float) else where)
    before = snapshot_of(tmp_path / "i")
    with pytest.raises(IndexCorruptError, match=f"{seg.name} is corrupt"):
        PooledIndex.open(tmp_path / "i", device="cpu")
    assert snapshot_of(tmp_path / "i") == before


def test_a_segment_without_footer_is_still_checked_for_ids_and_codebooks(tmp_path):
    idx = pq_index(tmp_path / "i", "pq")  # footers came with format 2: only pq segments may lack one
    q = queries()
    expected = results(idx, q, EVERYTHING)
    idx.close()
    for seg in (tmp_path / "i" / "segments").glob("*.faiss"):  # as an index written before footers
        seg.write_bytes(seg.read_bytes()[: -FOOTER.size])
    with PooledIndex.open(tmp_path / "i", device="cpu") as idx:
        assert results(idx, q, EVERYTHING) == expected
    seg = sorted((tmp_path / "i" / "segments").glob("*.faiss"))[0]
    good = seg.read_bytes()
    for offset, message in [(200, "codebooks differ|corrupt or truncated"), (-100, "ids are not 0..n-1")]:
        rot(seg, offset, 16)
        with pytest.raises(IndexCorruptError, match=message):
            PooledIndex.open(tmp_path / "i", device="cpu")
        seg.write_bytes(good)


@pytest.mark.parametrize("kind", ["pq3", "pq"])
def test_verify_notices_a_file_written_after_the_open(tmp_path, kind):
    idx = pq_index(tmp_path / "i", kind)
    idx.verify()
    idx.verify(full=True)
    seg = segment_file(tmp_path / "i", idx.info()["segments"][0]["id"])
    rot(seg, seg.stat().st_size // 2)
    with pytest.raises(IndexCorruptError, match="no longer match the checksum"):
        idx.verify()
    idx.close()


def test_a_damaged_document_store_is_corruption_not_a_clean_up_error(tmp_path):
    idx = create(tmp_path / "i", backend="flat")
    add(idx, [f"d{i}" for i in range(200)], list(range(200)))
    idx.close()
    db = tmp_path / "i" / "docs.sqlite"
    rot(db, 100, 2000)  # page 1 after its header: the schema
    with pytest.raises(IndexCorruptError, match="docs.sqlite is corrupt"):
        PooledIndex.open(tmp_path / "i", device="cpu")


def test_a_full_disk_at_the_commit_is_one_error_and_nothing_is_committed(tmp_path):
    idx = create(tmp_path / "i", backend="flat")
    add(idx, [f"d{i}" for i in range(20)], list(range(20)))
    q = queries()
    expected = results(idx, q)
    segments = sorted((tmp_path / "i" / "segments").iterdir())
    conn = idx.doc_store.conn
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0] + 1}")
    from pooledir.corpus import Document
    from tests.index.test_folder import doc_vectors

    docs = [Document(f"n{i}", "x" * 5000) for i in range(20)]
    with pytest.raises(NoSpaceError, match="nothing of this write was committed"):
        idx.add(docs, embeddings=[doc_vectors(i) for i in range(20)], pooled=True)
    assert sorted((tmp_path / "i" / "segments").iterdir()) == segments
    assert len(idx) == 20 and results(idx, q) == expected
    conn.execute("PRAGMA max_page_count = 1073741823")
    add(idx, ["later"], [999])  # the store still takes writes
    idx.close()
    with PooledIndex.open(tmp_path / "i", device="cpu") as idx:
        assert len(idx) == 21
        with sqlite3.connect(tmp_path / "i" / "docs.sqlite") as c:
            assert c.execute("SELECT COUNT(*) FROM docs WHERE ext_id LIKE 'n%'").fetchone()[0] == 0


def test_defaults():
    # format 3: dim/4 at the default 6 bits (PQ32x6 at 128 d, code_rule.md s11), dim/8 at 8 bits (older manifests)
    assert default_pq_m(128) == 32 and default_pq_m(96) == 24 and default_pq_m(384) == 96 and default_pq_m(6) == 1
    assert default_pq_m(128, nbits=8) == 16 and default_pq_m(384, nbits=8) == 48 and default_pq_m(128, nbits=6) == 32
    assert default_pq_m(128, legacy=True) == 64 and default_pq_m(6, legacy=True) == 3  # format 2 folders
    assert default_nlist(1_000_000) == 8192 and default_nlist(100) == 2 and default_nlist(5) == 1
    assert default_nlist(1_000_000, n_train=262_144) == 262_144 // 39  # >= 39 training vectors a list
    assert default_nlist_v2(1_000_000) == 4000 and default_nlist_v2(100) == 2
