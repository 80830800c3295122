"""The pq3 segment codec (format 3) against the oracles: decoded inner products, flat search, a fresh build."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from pooledir.errors import IndexCorruptError
from pooledir.index.codecs import PQ3_HEADER, PQ3Codec, PQ3File, codec_for, list_numbers
from pooledir.index.detached import install_quantizer
from pooledir.index.segments import (
    FOOTER,
    Probe,
    SegmentReader,
    live_bitmap,
    read_quantizer,
    train_quantizer,
    write_faiss,
)
from pooledir.pooled_index import PooledIndex
from pooledir.search import SearchParams
from tests.conftest import FakeEncoder
from tests.engine import engine
from tests.index.test_folder import EVERYTHING, add, create, doc_vectors, queries, results
from tests.index.test_segments_corruption import format2, segment_file, snapshot_of

DIM = 16


def unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def quantizer():
    return train_quantizer(unit(4000, 0), 4000, nlist=32, pq_m=8, pq_nbits=8)


def pq3_reader(tmp_path: Path, quantizer, x: np.ndarray, counts: list[int]) -> SegmentReader:
    codec = PQ3Codec()
    path = tmp_path / "s.pq3"
    codec.write(codec.encode([x[:100], x[100:]], DIM, quantizer), path)
    file = codec.open(path, len(x), DIM, quantizer, None)
    counts = np.array(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return SegmentReader(0, "pq3", file, len(x), starts, counts, np.arange(len(counts)), None)


def probe(quantizer, q: np.ndarray, nprobe: int) -> Probe:
    p = Probe(np.ascontiguousarray(q))
    p.coarse, p.assign = quantizer.quantizer.search(p.x, nprobe)
    return p


@pytest.mark.parametrize("nprobe", [32, 5])
def test_pq3_scores_are_the_inner_products_with_the_decoded_vectors(tmp_path, quantizer, nprobe):
    """Table lookups give q·(centroid + PQ residual) of exactly the vectors in the probed lists (float tolerance)."""
    x = unit(1000, 1)
    reader = pq3_reader(tmp_path, quantizer, x, [10] * 100)
    q = unit(8, 2)
    D, ids = reader.search(probe(quantizer, q, nprobe), 20)
    decoded = quantizer.sa_decode(quantizer.sa_encode(x))
    np.testing.assert_allclose(reader.reconstruct(np.arange(1000)), decoded, atol=1e-6)
    lists = list_numbers(quantizer.sa_encode(x), quantizer.coarse_code_size())
    _, assign = quantizer.quantizer.search(q, nprobe)
    for t in range(len(q)):
        ok = np.flatnonzero(np.isin(lists, assign[t]))
        s = decoded[ok] @ q[t]
        best = ok[np.argsort(-s, kind="stable")[:20]]
        assert set(ids[t]) == set(best)
        np.testing.assert_allclose(D[t], np.sort(s)[::-1][:20], atol=1e-4)


def test_pq3_never_returns_deleted_vectors(tmp_path, quantizer):
    x = unit(1000, 1)
    reader = pq3_reader(tmp_path, quantizer, x, [10] * 100)
    gone = np.arange(0, 100, 2)  # every other document
    fewer = reader.without(gone)
    assert fewer.live is not None and fewer.n_live == 500
    D, ids = fewer.search(probe(quantizer, unit(8, 2), 32), 600)
    hits = ids[ids >= 0]
    assert len(hits) == 8 * 500 and not np.isin(hits // 10, gone).any()  # all 500 live vectors, no dead one
    assert np.all(np.diff(D, axis=1) <= 0)


def test_pq3_index_against_the_flat_oracle(tmp_path):
    """On random data the pq3 index finds the flat index's top 10 and scores within the stated tolerance.

    Tolerance: pq_m 8 on 16-d unit vectors decodes each vector to within ~0.1 of its inner products, so a
    document's MaxSim over 5 query tokens stays within 0.2 of the exact one (0.15 measured); >= 80% of the top 10
    agree (0.88 measured).
    """
    flat = create(tmp_path / "flat", backend="flat")
    pq3 = create(tmp_path / "pq3", backend="ivfpq", train_min_vectors=1000, pq_m=8, pq_nbits=8)  # the stated code
    ids, seeds = [f"d{i}" for i in range(300)], list(range(300))
    add(flat, ids, seeds)
    add(pq3, ids, seeds)
    assert {s["kind"] for s in pq3.info()["segments"]} == {"pq3"} and pq3.info()["backend"]["codec"] == "pq3"
    Q = queries(12)
    exact, approx = results(flat, Q), results(pq3, Q)
    overlap = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(exact, approx)])
    assert overlap >= 0.8, overlap
    truth = {i: v for i, v in zip(ids, (doc_vectors(s) for s in seeds))}
    for q, hits in zip(Q, approx):
        for doc, score in hits:
            assert abs(score - float((q @ truth[doc].T).max(axis=1).sum())) < 0.2
    # the default search keeps k; uniform random vectors have no clusters, the centroid lane's worst case (its
    # recall on clustered data: tests/index/test_plaid.py), so here it takes 4x PLAID's depth to keep most of the top 10
    default = results(pq3, Q, SearchParams(k=10))
    assert all(len(h) == 10 for h in default)
    deeper = results(pq3, Q, SearchParams(k=10, candidates_per_token=128))
    assert np.mean([len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(exact, deeper)]) >= 0.7


def test_grown_index_equals_a_fresh_build_with_the_same_quantizer(tmp_path):
    """Upserts, replaced ids, deletes, tiered merges and compaction give what one build of the final documents gives."""
    config = {"backend": "ivfpq", "train_min_vectors": 400, "max_segments": 4, "max_dead_fraction": 0.9}
    grown = create(tmp_path / "grown", **config)
    add(grown, [f"d{i}" for i in range(80)], list(range(80)))  # trains once here, the quantizer stays
    final = {f"d{i}": i for i in range(80)}
    rng = np.random.default_rng(1)
    for step in range(30):
        ids = [f"d{int(i)}" for i in rng.choice(120, 3, replace=False)]
        add(grown, ids, [1000 + 3 * step + j for j in range(3)])
        final.update({i: 1000 + 3 * step + j for j, i in enumerate(ids)})
        if step % 5 == 4:
            grown.delete(list(final)[:2])
            for g in list(final)[:2]:
                del final[g]
    info = grown.info()
    assert info["deleted_vectors"] > 0 and {s["kind"] for s in info["segments"]} == {"pq3"}
    assert len(info["segments"]) <= 8  # merges happened (copying codes)
    fresh = create(tmp_path / "fresh", **config)
    quantizer_file = next((tmp_path / "grown").glob("quantizer.*.faiss"))
    install_quantizer(engine(fresh), read_quantizer(quantizer_file), info["trained_vectors"])  # as a Ray build does
    add(fresh, list(final), list(final.values()))
    Q = queries(8)
    assert results(grown, Q) == results(fresh, Q)
    grown.compact()
    assert len(grown.info()["segments"]) == 1 and grown.info()["deleted_vectors"] == 0
    assert results(grown, Q) == results(fresh, Q)
    reopened = PooledIndex.open(tmp_path / "grown", device="cpu", encoder=FakeEncoder())
    assert results(reopened, Q) == results(fresh, Q)


def pq3_folder(path: Path) -> PooledIndex:
    idx = create(path, backend="ivfpq", train_min_vectors=200, nlist=8)
    add(idx, [f"d{i}" for i in range(60)], list(range(60)))
    add(idx, ["e0"], [100])
    assert [s["kind"] for s in idx.info()["segments"]] == ["pq3", "pq3"]
    return idx


def test_a_truncated_pq3_file_is_corruption_and_nothing_is_lost(tmp_path):
    idx = pq3_folder(tmp_path / "i")
    seg = segment_file(tmp_path / "i", idx.info()["segments"][0]["id"])
    idx.close()
    seg.write_bytes(seg.read_bytes()[:-300])
    before = snapshot_of(tmp_path / "i")
    with pytest.raises(IndexCorruptError, match=f"{seg.name} is corrupt"):
        PooledIndex.open(tmp_path / "i", device="cpu")
    assert snapshot_of(tmp_path / "i") == before


def test_a_quantizer_that_does_not_match_the_segments_is_corruption(tmp_path):
    """Another quantizer file in place (fewer lists): the open refuses the segments, writes nothing."""
    idx = pq3_folder(tmp_path / "i")
    q_file = next((tmp_path / "i").glob("quantizer.*.faiss"))
    idx.close()
    write_faiss(train_quantizer(unit(3000, 5), 3000, nlist=4, pq_m=None, pq_nbits=8), q_file)
    before = snapshot_of(tmp_path / "i")
    with pytest.raises(IndexCorruptError, match="another quantizer"):
        PooledIndex.open(tmp_path / "i", device="cpu")
    assert snapshot_of(tmp_path / "i") == before


def rewrite(path: Path, edit) -> None:
    """Change a pq3 file's payload with ``edit(bytearray)``, with a valid footer (only the structure is wrong)."""
    import zlib

    data = bytearray(path.read_bytes()[: -FOOTER.size])
    edit(data)
    path.write_bytes(bytes(data) + FOOTER.pack(b"pdcrc32\x00", len(data), zlib.crc32(bytes(data))))


def test_codes_naming_lists_past_the_quantizer_are_corruption(tmp_path, quantizer):
    x = unit(300, 3)
    reader = pq3_reader(tmp_path, quantizer, x, [3] * 100)
    path = reader.file.path
    reader.close()
    code_size = quantizer.sa_code_size()

    def past_nlist(data: bytearray) -> None:  # first code's list number (1 byte for 32 lists) -> 200
        data[64] = 200

    rewrite(path, past_nlist)
    with pytest.raises(IndexCorruptError, match="names a list past the quantizer's 32"):
        PQ3File.open(path, 300, DIM, quantizer, None)
    rewrite(path, lambda d: d.__setitem__(64, 0 if d[64] else 1))  # a valid list, but not the one indexed
    with pytest.raises(IndexCorruptError, match="disagree with its codes|out of order"):
        PQ3File.open(path, 300, DIM, quantizer, None)
    head = PQ3_HEADER.unpack(path.read_bytes()[: PQ3_HEADER.size])
    assert head[3] == code_size and head[2] == 300
    with pytest.raises(IndexCorruptError, match="expects 301"):
        PQ3File.open(path, 301, DIM, quantizer, None)
    other = train_quantizer(unit(4000, 0), 4000, nlist=32, pq_m=4, pq_nbits=8)
    with pytest.raises(IndexCorruptError, match="another quantizer"):
        PQ3File.open(path, 300, DIM, other, None)
    path.write_bytes(path.read_bytes()[: -FOOTER.size])  # no footer: pq3 files always have one
    with pytest.raises(IndexCorruptError, match="corrupt or truncated: it has no checksum footer"):
        PQ3File.open(path, 300, DIM, quantizer, None)
    assert struct.calcsize("<8sIQIIIIII") == PQ3_HEADER.size


def test_a_one_document_pq3_segment_is_small(tmp_path):
    """No per-segment codebooks or ids: a 10-vector segment is header + codes + rows + footer."""
    idx = pq3_folder(tmp_path / "i")
    one = idx.info()["segments"][1]
    size = segment_file(tmp_path / "i", one["id"]).stat().st_size
    # 1 byte of list number (8 lists) + the default PQ's dim/4 = 4 codes of 6 bits = 3 bytes
    code_size = engine(idx).snapshot.quantizer.sa_code_size()
    assert code_size == 4
    assert size <= 64 + one["vectors"] * (code_size + 4) + 4 * (2 * one["vectors"] + 1) + 3 * 8 + FOOTER.size


def test_a_format_2_folder_opens_searches_and_keeps_writing_pq_segments(tmp_path):
    idx = create(tmp_path / "old", backend="ivfpq", train_min_vectors=200)
    idx = format2(idx)
    add(idx, [f"d{i}" for i in range(60)], list(range(60)))
    add(idx, ["e0", "e1"], [100, 101])
    idx.delete(["d3"])
    info = idx.info()
    assert {s["kind"] for s in info["segments"]} == {"pq"} and info["backend"]["codec"] == "pq"
    assert info["backend"]["pq_m"] == 8  # format 2's dim/2, not format 3's dim/8
    assert segment_file(tmp_path / "old", info["segments"][0]["id"]).suffix == ".faiss"
    Q = queries()
    before = results(idx, Q)
    assert all(len(h) == 10 for h in before) and "d3" not in {i for h in before for i, _ in h}
    idx.compact(retrain=True)
    assert {s["kind"] for s in idx.info()["segments"]} == {"pq"}
    again = PooledIndex.open(tmp_path / "old", device="cpu", encoder=FakeEncoder())
    assert again.manifest.format_version == 2 and results(again, Q) == results(idx, Q)
    assert codec_for("pq").suffix == ".faiss" and codec_for("pq3").suffix == ".pq3"
    with pytest.raises(IndexCorruptError, match="segment kind 'zz'"):
        codec_for("zz")


def test_live_bitmap_matches_reader_rows(tmp_path, quantizer):
    reader = pq3_reader(tmp_path, quantizer, unit(200, 4), [2] * 100)
    assert live_bitmap(200, reader.starts, reader.counts) is None
    D, ids = reader.search(probe(quantizer, unit(3, 9), 32), EVERYTHING.k)
    assert D.shape == ids.shape == (3, 10) and (ids >= 0).all()


@pytest.fixture(scope="module")
def quantizers_by_bits():
    """The same 32 lists and 8 sub-quantizers at 5, 6, 8, 10 and 12 bits a code (5,000 training vectors)."""
    return {b: train_quantizer(unit(5000, 0), 5000, nlist=32, pq_m=8, pq_nbits=b) for b in (5, 6, 8, 10, 12)}


@pytest.mark.parametrize("nbits", [5, 6, 10, 12])
def test_non_8_bit_pq3_codes_store_and_decode_as_faiss_does(tmp_path, quantizers_by_bits, nbits):
    """A pq3 file of B-bit codes holds ceil(M·B/8) code bytes a vector and decodes to faiss's sa_decode."""
    quantizer = quantizers_by_bits[nbits]
    assert quantizer.pq.nbits == nbits  # enough training vectors: the bits were not lowered
    x = unit(1000, 1)
    reader = pq3_reader(tmp_path, quantizer, x, [10] * 100)
    head = PQ3_HEADER.unpack(reader.file.path.read_bytes()[: PQ3_HEADER.size])
    assert head[3] == 1 + -(-8 * nbits // 8) == quantizer.sa_code_size()  # 1 B list number (32 lists) + PQ bytes
    assert (head[6], head[7]) == (8, nbits)
    decoded = quantizer.sa_decode(quantizer.sa_encode(x))
    np.testing.assert_array_equal(reader.reconstruct(np.arange(1000)), decoded)
    D, ids = reader.search(probe(quantizer, unit(8, 2), 32), 20)  # all lists probed: the flat top 20 of decoded
    for t, q in enumerate(unit(8, 2)):
        s = decoded @ q
        assert set(ids[t]) == set(np.argsort(-s, kind="stable")[:20])
        np.testing.assert_allclose(D[t], np.sort(s)[::-1][:20], atol=1e-4)


def test_more_bits_decode_closer_to_the_vectors(tmp_path, quantizers_by_bits):
    """Each added bit is used: the decoded error falls from 5 to 12 bits, through the stored file."""
    x = unit(1000, 1)
    errors = []
    for b in (5, 6, 8, 10, 12):
        (tmp_path / str(b)).mkdir()
        reader = pq3_reader(tmp_path / str(b), quantizers_by_bits[b], x, [10] * 100)
        errors.append(float(np.mean(np.sum((reader.reconstruct(np.arange(1000)) - x) ** 2, axis=1))))
        reader.close()
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.7 * errors[0], errors


@pytest.mark.parametrize(("nbits", "min_overlap", "max_error"), [(6, 0.7, 0.35), (12, 0.9, 0.05)])
def test_a_non_8_bit_index_against_the_flat_oracle(tmp_path, nbits, min_overlap, max_error):
    """A whole index at B-bit codes records the bits, finds the flat index's top 10 and scores within tolerance.

    700 random documents (16-d, pq_m 8, 126 lists), 12 queries of 5 tokens, every list probed. Measured: top-10
    overlap / largest MaxSim error 0.77 / 0.24 at 6 bits, 0.85 / 0.12 at 8 bits, 0.96 / 0.019 at 12 bits; the
    bounds leave room for float noise, and 12 bits' must beat what 8 bits reach.
    """
    flat = create(tmp_path / "flat", backend="flat")
    pq3 = create(tmp_path / "pq3", backend="ivfpq", train_min_vectors=4500, pq_m=8, pq_nbits=nbits)
    ids, seeds = [f"d{i}" for i in range(700)], list(range(700))
    add(flat, ids, seeds)
    add(pq3, ids, seeds)
    info = pq3.info()
    assert {s["kind"] for s in info["segments"]} == {"pq3"} and info["backend"]["pq_nbits"] == nbits
    Q = queries(12)
    exact, approx = results(flat, Q), results(pq3, Q)
    overlap = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(exact, approx)])
    assert overlap >= min_overlap, overlap
    truth = {i: doc_vectors(s) for i, s in zip(ids, seeds)}
    errors = [
        abs(score - float((q @ truth[doc].T).max(axis=1).sum())) for q, hits in zip(Q, approx) for doc, score in hits
    ]
    assert max(errors) < max_error, max(errors)
    reopened = PooledIndex.open(tmp_path / "pq3", device="cpu", encoder=FakeEncoder())
    assert results(reopened, Q) == approx


def test_a_pq3_merge_holds_no_copy_of_its_codes(tmp_path, quantizer):
    """Merging and writing N vectors allocates 6 bytes a vector (list numbers, uint32 rows) and a few chunks.

    The codes are copied from the sources' maps to the new file a chunk at a time. Measured at N = 600,000
    (9-byte codes): peak 5.2 MB, where the merge that held one copy of the codes (since session 9) took 13.8
    MB; it held three copies of the codes and four int64 arrays before that.
    """
    import tracemalloc

    from pooledir.index.codecs import CHUNK

    n = 600_000
    x = unit(n, 11)
    codec = PQ3Codec()
    readers = []
    for i, part in enumerate((x[: n // 2], x[n // 2 :])):
        path = tmp_path / f"{i}.pq3"
        codec.write(codec.encode([part], DIM, quantizer), path)
        readers.append(
            SegmentReader(
                i,
                "pq3",
                codec.open(path, len(part), DIM, quantizer, None),
                len(part),
                np.array([0]),
                np.array([len(part)]),
                np.array([i]),
                None,
            )
        )
    code_bytes = n * quantizer.sa_code_size()
    tracemalloc.start()
    try:
        data = codec.merge([(r, r.starts, r.counts) for r in readers], quantizer)
        codec.write(data, tmp_path / "merged.pq3")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 7 * n + 48 * CHUNK < code_bytes + 14 * n, (peak, code_bytes)
    merged = codec.open(tmp_path / "merged.pq3", n, DIM, quantizer, None)
    assert np.array_equal(np.asarray(merged.codes), np.concatenate([np.asarray(r.file.codes) for r in readers]))


def test_a_pq3_segment_of_no_vectors_writes_and_opens(tmp_path, quantizer):
    """A merge whose parts are all empty (every document of it deleted) still writes a valid file."""
    codec = PQ3Codec()
    codec.write(codec.encode([np.empty((0, DIM), np.float32)], DIM, quantizer), tmp_path / "empty.pq3")
    file = codec.open(tmp_path / "empty.pq3", 0, DIM, quantizer, None)
    assert file.codes.shape == (0, quantizer.sa_code_size()) and len(file.rows) == 0


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_merge_sources_and_inverted_rows_come_out_alike_at_any_chunk_size(monkeypatch, chunk):
    """A merge reads its sources and places its rows ``CHUNK`` at a time: the same bytes and rows at any size."""
    import pooledir.index.codecs as codecs
    from pooledir.index.codecs import CodeRuns, inverted
    from pooledir.index.segments import ranges

    monkeypatch.setattr(codecs, "CHUNK", chunk)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (500, 4), dtype=np.uint8)
    counts = rng.integers(0, 20, 40)  # empty documents too
    starts = rng.integers(0, 500 - counts)
    runs = CodeRuns(codes, starts, counts)
    pieces = list(runs.chunks())
    assert all(0 < len(p) <= chunk for p in pieces) and len(runs) == counts.sum()
    assert np.array_equal(np.concatenate(pieces), codes[ranges(starts, counts)])
    keys = rng.integers(0, 50, 1000).astype(np.uint16)
    lists, list_starts, rows = inverted(keys, 64)
    assert np.array_equal(lists, np.unique(keys)) and rows.dtype == np.uint32
    assert np.array_equal(rows, np.argsort(keys, kind="stable"))  # rows of a list ascending
    assert np.array_equal(np.diff(list_starts), np.bincount(keys)[lists])


@pytest.mark.parametrize("coarse_size, width", [(2, 26), (2, 27), (4, 36), (3, 27), (1, 9)])
def test_list_numbers_of_rows_are_the_codes_little_endian_heads(coarse_size, width):
    """Of every code or of some rows: through a uint16/32 view where a code is a whole number of them, else bytes."""
    codes = np.random.default_rng(width).integers(0, 256, (300, width), dtype=np.uint8)
    rows = np.array([5, 0, 299, 5, 17])
    want = [int.from_bytes(codes[r, :coarse_size].tobytes(), "little") for r in rows]
    assert list_numbers(codes, coarse_size, rows).tolist() == want
    assert list_numbers(codes, coarse_size).tolist() == [
        int.from_bytes(c[:coarse_size].tobytes(), "little") for c in codes
    ]
    assert list_numbers(codes[:, :width], coarse_size, rows[:0]).tolist() == []
