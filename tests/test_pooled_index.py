"""PooledIndex: k beyond the index, input checked first, a full disk, a corrupt commit, pooling settings, queries."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from pooledir.corpus import Document
from pooledir.errors import DocumentNotFoundError, IndexCorruptError, InputError
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams


@pytest.fixture()
def flat(tmp_path, tiny_encoder, tiny_docs):
    idx = PooledIndex.create(tmp_path / "i", config=IndexConfig(backend="flat"), device="cpu", encoder=tiny_encoder)
    idx.add(tiny_docs[:30])
    return idx


def ids_of(hits):
    return [h.id for h in hits]


def test_k_above_the_document_count_returns_what_there_is(flat, tmp_path, tiny_encoder):
    hits = flat.search(["cancer cells", "vitamin"], k=500)
    assert [len(h) for h in hits] == [30, 30]
    assert sorted(ids_of(hits[0])) == sorted(f"d{i}" for i in range(30))
    empty = PooledIndex.create(tmp_path / "e", device="cpu", encoder=tiny_encoder)
    assert empty.search(["cancer"], k=3) == [[]]


def test_k_and_params_k_never_silently_disagree(flat):
    """params alone: its k; k alone: k; both and different: an InputError naming both (was: k won silently)."""
    from pooledir.search import SearchParams

    assert len(flat.search("cancer", params=SearchParams(k=3))[0]) == 3
    assert len(flat.search("cancer", k=4)[0]) == 4
    assert len(flat.search("cancer")[0]) == 10
    assert len(flat.search("cancer", k=5, params=SearchParams(k=5))[0]) == 5
    with pytest.raises(InputError, match=r"k=7 and params.k=3 disagree"):
        flat.search("cancer", k=7, params=SearchParams(k=3))


def test_queries_are_checked_before_the_encoder_loads(flat, tiny_encoder):
    flat.close()
    idx = PooledIndex.open(flat.path, device="cpu")  # no encoder: it would load from the checkpoint on first use
    for queries, msg in [([""], "query 0 is empty"), (["ok", "a\ud800"], "query 1 is not valid Unicode")]:
        with pytest.raises(InputError, match=msg):
            idx.search(queries)
    assert idx._encoder is None


def test_info_reports_the_device_in_use_not_auto(flat, tiny_encoder):
    import torch

    flat.close()
    idx = PooledIndex.open(flat.path, device="auto", encoder=tiny_encoder)
    assert idx.info()["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_non_documents_and_bad_ids_fail_early(flat):
    with pytest.raises(InputError, match="item 0 is a dict, not a Document"):
        flat.add([{"id": "x", "text": "cancer"}])
    with pytest.raises(InputError, match="document id is int, expected a string"):
        flat.add([Document(5, "cancer")])
    assert len(flat) == 30


def disk_full_after(monkeypatch, limit: int) -> None:
    """Make every faiss file write fail with ENOSPC once ``limit`` bytes of it are on the disk."""
    import faiss

    real = faiss.PyCallbackIOWriter

    def writer(callback, *args):
        written = [0]

        def write(data):
            if written[0] + len(data) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            written[0] += len(data)
            return callback(data)

        return real(write, *args)

    monkeypatch.setattr(faiss, "PyCallbackIOWriter", writer)


def test_a_full_disk_keeps_the_old_index_and_removes_the_temp_file(flat, monkeypatch):
    expected = ids_of(flat.search(["cancer cells"], k=5)[0])
    disk_full_after(monkeypatch, 4096)
    segments = sorted(flat.path.rglob("*.faiss"))
    with pytest.raises(OSError) as err:
        flat.add([Document(f"new{i}", "vitamin bone study " * 5) for i in range(30)])  # a segment over 4 kB
    assert err.value.errno == errno.ENOSPC and err.value.filename.endswith(".faiss")
    assert not list(flat.path.rglob("*.tmp"))  # the partly written file is gone: the disk is not kept full
    assert sorted(flat.path.rglob("*.faiss")) == segments
    monkeypatch.undo()
    assert len(flat) == 30 and ids_of(flat.search(["cancer cells"], k=5)[0]) == expected
    flat.close()
    again = PooledIndex.open(flat.path, device="cpu", encoder=flat._encoder)
    assert len(again) == 30 and ids_of(again.search(["cancer cells"], k=5)[0]) == expected


def test_a_commit_that_is_not_a_number_is_corruption(flat, tiny_encoder):
    flat.doc_store.conn.execute("UPDATE meta SET value = 'x1' WHERE key = 'commit'")
    flat.close()
    with pytest.raises(IndexCorruptError, match="commit 'x1' is not a number"):
        PooledIndex.open(flat.path, device="cpu", encoder=tiny_encoder)


def test_pq_m_must_divide_the_dimension_at_creation(tmp_path, tiny_encoder):
    """faiss would only fail when the index trains, thousands of documents later."""
    with pytest.raises(InputError, match=r"pq_m=7 must divide the vector dimension 16; pass a divisor such as 4"):
        PooledIndex.create(tmp_path / "i", config=IndexConfig(pq_m=7), device="cpu", encoder=tiny_encoder)
    assert not (tmp_path / "i").exists()


def test_an_adaptive_index_stores_its_threshold_and_pools_by_it(tmp_path, tiny_encoder, tiny_docs):
    from pooledir.pooling import pool_embeddings

    config = IndexConfig(backend="flat", pool_threshold=0.3)
    idx = PooledIndex.create(tmp_path / "i", config=config, device="cpu", encoder=tiny_encoder)
    idx.add(tiny_docs[:40])
    raw = tiny_encoder.encode_documents([d.text for d in tiny_docs[:40]])
    pooled = pool_embeddings(raw, protected_tokens=1, pool_threshold=0.3)
    fixed = pool_embeddings(raw, 2, protected_tokens=1)
    assert idx.info()["vectors"] == sum(len(p) for p in pooled) != sum(len(p) for p in fixed)
    assert idx.info()["vectors_before_pooling"] == sum(len(r) for r in raw)
    assert idx.info()["pool_threshold"] == 0.3
    idx.close()
    # the manifest round-trips it, and a reopened index pools new documents the same way
    assert json.loads((tmp_path / "i" / "manifest.json").read_text())["config"]["pool_threshold"] == 0.3
    again = PooledIndex.open(tmp_path / "i", device="cpu", encoder=tiny_encoder)
    assert again.config == config and again.config.pooling == "<= 0.3"
    again.add(tiny_docs[40:50])
    more = pool_embeddings(tiny_encoder.encode_documents([d.text for d in tiny_docs[40:50]]), pool_threshold=0.3)
    assert again.info()["vectors"] == sum(len(p) for p in pooled) + sum(len(p) for p in more)
    assert [h.id for h in again.search(tiny_docs[45].text, k=1)[0]] == ["d45"]


def test_a_threshold_excludes_a_pool_factor_and_is_checked():
    with pytest.raises(InputError, match=r"pool_threshold=0.2 and pool_factor=3 both choose how far"):
        IndexConfig(pool_factor=3, pool_threshold=0.2).check()
    with pytest.raises(InputError, match=r"pool_threshold=-1 must be a finite number >= 0"):
        IndexConfig(pool_threshold=-1).check()
    with pytest.raises(InputError, match=r"pool_threshold='x' must be a number"):
        IndexConfig(pool_threshold="x").check()
    IndexConfig(pool_threshold=0).check()  # merges only duplicates
    old = {k: v for k, v in vars(IndexConfig()).items() if k != "pool_threshold"}
    assert IndexConfig(**old).pool_threshold is None  # manifests written before the field read as fixed-factor


def test_the_facade_answers_the_queries_its_callers_need(tmp_path):
    """stats(), row_ids(), known_ids(), doc_store, quantizer, train/install_quantizer: typed, no engine reached."""
    from tests.conftest import FakeEncoder

    rng = np.random.default_rng(0)
    vecs = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in rng.standard_normal((60, 5, 16)).astype(np.float32)]
    docs = [Document(f"d{i}", f"text {i}") for i in range(60)]
    config = IndexConfig(backend="ivfpq", pool_factor=1, nlist=4, pq_m=4, train_min_vectors=10_000)
    idx = PooledIndex.create(tmp_path / "a", config=config, device="cpu", encoder=FakeEncoder())
    assert idx.stats().stored_vectors == 0 and idx.quantizer is None and idx.row_ids() == []
    idx.train_quantizer(np.concatenate(vecs), n_total=300)  # a detached build trains before anything is added
    assert idx.stats().trained and idx.quantizer.nlist == 4 and idx.stats().trained_vectors == 300
    other = PooledIndex.create(tmp_path / "b", config=config, device="cpu", encoder=FakeEncoder())
    other.install_quantizer(idx.quantizer, 300)  # partitions share one quantizer
    assert other.stats().trained and other.describe().backend["nlist"] == 4
    idx.add(docs, embeddings=vecs, pooled=True)
    idx.delete(["d3"])
    stats = idx.stats()
    assert (stats.rows, stats.live_vectors, stats.stored_vectors) == (59, 295, 300)
    assert stats.commit == idx.commit and stats.segments == len(idx.describe().segments)
    assert sorted(idx.row_ids()) == sorted(d.id for d in docs if d.id != "d3")
    assert idx.known_ids(["d1", "d3", "nope"]) == {"d1"}
    assert idx.doc_store.rows([idx.doc_store.lookup(["d7"])["d7"]])[0].text == "text 7"
    with pytest.raises(InputError, match="already holds"):
        idx.install_quantizer(other.quantizer, 300)


# -- moved from tests/test_index.py: build, search, reopen, bad input, crashes and corruption --------------------
def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny_embeddings(tiny_encoder, tiny_docs):
    return tiny_encoder.encode_documents([d.text for d in tiny_docs])


def make_index(path, tiny_encoder, tiny_docs, tiny_embeddings, **config):
    # the tiny corpus holds ~1,500 vectors: let IVF-PQ train on them rather than stay exact
    config.setdefault("train_min_vectors", 500)
    idx = PooledIndex.create(path, config=IndexConfig(**config), device="cpu", encoder=tiny_encoder)
    idx.add(tiny_docs, embeddings=tiny_embeddings)
    return idx


def test_retraining_keeps_the_codec_the_index_was_trained_with(
    tmp_path, tiny_encoder, tiny_docs, tiny_embeddings, monkeypatch
):
    """An index trained under an older default (here 1 sub-quantizer) keeps it when re-trained later."""
    import pooledir.index.segments as segments

    # the default when the index was made
    monkeypatch.setattr(segments, "default_pq_m", lambda dim, legacy=False, nbits=None: 1)
    idx = make_index(tmp_path / "old", tiny_encoder, tiny_docs, tiny_embeddings)
    assert idx.info()["backend"]["pq_m"] == 1
    monkeypatch.undo()  # today's default differs
    assert segments.default_pq_m(tiny_encoder.dim) != 1
    idx.compact(retrain=True)
    assert idx.info()["backend"]["pq_m"] == 1
    fresh = make_index(tmp_path / "new", tiny_encoder, tiny_docs, tiny_embeddings)
    assert fresh.info()["backend"]["pq_m"] == segments.default_pq_m(tiny_encoder.dim)


# -- the pooled index ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["flat", "ivfpq"])
def test_build_search_reopen(tmp_path, tiny_encoder, tiny_docs, tiny_embeddings, backend):
    idx = make_index(tmp_path / "i", tiny_encoder, tiny_docs, tiny_embeddings, backend=backend)
    info = idx.info()
    assert info["documents"] == 120
    assert info["vectors"] < info["vectors_before_pooling"]
    hits = idx.search([tiny_docs[5].text, tiny_docs[17].text], k=5)
    assert len(hits) == 2 and all(len(h) == 5 for h in hits)
    assert hits[0][0].score >= hits[0][-1].score
    # the bulk add's sqlite WAL is folded into the database: the folder holds the index's real size
    wal = tmp_path / "i" / "docs.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    idx.close()
    again = PooledIndex.open(tmp_path / "i", device="cpu", encoder=tiny_encoder)
    assert ids_of(again.search([tiny_docs[5].text, tiny_docs[17].text], k=5)[0]) == ids_of(hits[0])
    assert again.get("d3") == tiny_docs[3]


def test_exact_scores_equal_maxsim_over_pooled_vectors(tmp_path, tiny_encoder, tiny_docs, tiny_embeddings):
    from pooledir.maxsim import maxsim
    from pooledir.pooling import pool_embeddings

    idx = make_index(tmp_path / "i", tiny_encoder, tiny_docs, tiny_embeddings, backend="flat")
    Q = tiny_encoder.encode_queries([tiny_docs[9].text])
    pooled = pool_embeddings(tiny_embeddings, 2)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pooled])])
    ref = maxsim(Q, np.concatenate(pooled).astype(np.float32), offsets)[0]
    params = SearchParams(k=10, candidates_per_token=2000, rerank=120)
    hits = idx.search_embeddings(Q, params)[0]
    best = np.argsort(-ref)[:10]
    assert ids_of(hits) == [tiny_docs[i].id for i in best]
    assert np.allclose([h.score for h in hits], ref[best], atol=1e-2)


def test_zero_query_rows_fetch_nothing_and_score_nothing(
    tmp_path, tiny_encoder, tiny_docs, tiny_embeddings, monkeypatch
):
    from pooledir.index.plaid import CentroidLane

    idx = make_index(tmp_path / "i", tiny_encoder, tiny_docs, tiny_embeddings, backend="ivfpq")
    Q = tiny_encoder.encode_queries([tiny_docs[9].text, tiny_docs[40].text])
    padded = np.concatenate([Q, np.zeros((2, 5, Q.shape[2]), np.float32)], axis=1)  # padding without augmentation
    searched = []
    real_one = CentroidLane._one  # the pq3 segments' candidate generation, one query at a time
    monkeypatch.setattr(
        CentroidLane, "_one", lambda self, ST, depths: searched.append(ST.shape[1]) or real_one(self, ST, depths)
    )
    a, b = idx.search_embeddings(Q), idx.search_embeddings(padded)
    assert searched == [Q.shape[1]] * 4  # the zero rows never reached candidate generation
    for ha, hb in zip(a, b):
        assert ids_of(ha) == ids_of(hb) and np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-5)


def test_index_records_the_encoding_conventions(tmp_path, tiny_ckpt, tiny_docs):
    from pooledir.encoder import ColBERTEncoder

    enc = ColBERTEncoder(tiny_ckpt, device="cpu", query_augmentation=False, markers=False)
    idx = PooledIndex.create(tmp_path / "i", config=IndexConfig(backend="flat"), device="cpu", encoder=enc)
    idx.add(tiny_docs[:20])
    hits = idx.search(tiny_docs[3].text, k=3)[0]
    idx.close()
    again = PooledIndex.open(tmp_path / "i", device="cpu")  # loads the encoder from the manifest
    s = again.encoder.settings
    assert (s.query_augmentation, s.markers) == (False, False)
    assert ids_of(again.search(tiny_docs[3].text, k=3)[0]) == ids_of(hits)


def test_keep_exact_store(tmp_path, tiny_encoder, tiny_docs, tiny_embeddings):
    """With every document a candidate, exact.f16 must score exactly as the flat index, across writes."""
    exact = make_index(tmp_path / "e", tiny_encoder, tiny_docs, tiny_embeddings, backend="ivfpq", keep_exact=True)
    flat = make_index(tmp_path / "f", tiny_encoder, tiny_docs, tiny_embeddings, backend="flat")
    for idx in (exact, flat):
        idx.add([Document("new", "protein expression in brain cells")])
        idx.delete(["d0"])
    exact = PooledIndex.open(tmp_path / "e", device="cpu", encoder=tiny_encoder)
    everything = SearchParams(k=20, nprobe=10_000, candidates_per_token=5000, rerank=1000)
    for q in ["protein expression in brain cells", tiny_docs[40].text]:
        Q = tiny_encoder.encode_queries([q])
        a, b = exact.search_embeddings(Q, everything)[0], flat.search_embeddings(Q, everything)[0]
        assert ids_of(a) == ids_of(b)
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-4)


def test_add_delete_replace_without_retraining(tmp_path, tiny_encoder, tiny_docs, tiny_embeddings):
    idx = make_index(tmp_path / "i", tiny_encoder, tiny_docs[:100], tiny_embeddings[:100], backend="ivfpq")
    trained = idx.info()["backend"]["nlist"]
    idx.add(tiny_docs[100:])
    assert len(idx) == 120 and idx.info()["backend"]["nlist"] == trained
    before = idx.doc_store.lookup(["d50"])["d50"]
    idx.delete(["d3", "d4"])
    assert len(idx) == 118
    with pytest.raises(DocumentNotFoundError):
        idx.get("d3")
    assert idx.doc_store.lookup(["d50"])["d50"] == before  # ids stay stable across deletes
    idx.add([Document("d5", "a replaced document about vitamin bone")])
    assert len(idx) == 118 and idx.get("d5").text == "a replaced document about vitamin bone"
    info = idx.info()
    assert sum(s["live_vectors"] for s in info["segments"]) == info["vectors"]
    hits = idx.search(["a replaced document about vitamin bone"], k=118)[0]
    assert "d3" not in ids_of(hits) and "d5" in ids_of(hits)
    reopened = PooledIndex.open(tmp_path / "i", device="cpu", encoder=tiny_encoder)
    assert len(reopened) == 118 and reopened.get("d5").text.startswith("a replaced")


# -- bad input: clear errors, nothing already indexed lost -------------------------------------------------------
@pytest.fixture()
def built(tmp_path, tiny_encoder, tiny_docs, tiny_embeddings):
    idx = make_index(tmp_path / "i", tiny_encoder, tiny_docs, tiny_embeddings, backend="ivfpq")
    expected = ids_of(idx.search(["cancer cells"], k=5)[0])
    return idx, expected


def assert_intact(path, encoder, expected, n=120):
    idx = PooledIndex.open(path, device="cpu", encoder=encoder)
    assert len(idx) == n
    assert ids_of(idx.search(["cancer cells"], k=5)[0]) == expected


def test_bad_search_parameters(built, tiny_encoder):
    idx, expected = built
    with pytest.raises(InputError, match="k=0 must be a positive integer"):
        idx.search(["cancer"], k=0)
    with pytest.raises(InputError, match="nprobe=-1"):
        idx.search(["cancer"], params=SearchParams(nprobe=-1))
    with pytest.raises(InputError, match="query 0 is empty"):
        idx.search([""])
    assert_intact(idx.path, tiny_encoder, expected)


def test_bad_adds_change_nothing(built, tiny_encoder):
    idx, expected = built
    with pytest.raises(InputError, match="duplicate document id 'x'"):
        idx.add([Document("x", "a"), Document("x", "b")])
    with pytest.raises(InputError, match="no documents found"):
        idx.add([])
    with pytest.raises(InputError, match=r"embedding shape \(3, 5\)"):
        idx.add([Document("y", "a")], embeddings=[np.ones((3, 5), np.float16)])
    with pytest.raises(DocumentNotFoundError, match="unknown document id"):
        idx.delete(["d1", "nope"])
    assert idx.get("d1").id == "d1"
    assert_intact(idx.path, tiny_encoder, expected)


def test_bad_configs(tmp_path, tiny_encoder):
    for config, msg in [
        (IndexConfig(pool_factor=0), "pool_factor=0"),
        (IndexConfig(pool_factor=-2), "pool_factor"),
        (IndexConfig(backend="hnsw"), "backend='hnsw'"),
    ]:
        with pytest.raises(InputError, match=msg):
            PooledIndex.create(tmp_path / "x", config=config, device="cpu", encoder=tiny_encoder)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(InputError, match="exists and is not empty"):
        PooledIndex.create(tmp_path / "full", device="cpu", encoder=tiny_encoder)


def test_crash_during_write_leaves_previous_index(built, tiny_encoder, monkeypatch):
    from pooledir.index.codecs import PQ3Codec

    idx, expected = built
    files_before = sorted(p.name for p in (idx.path / "segments").iterdir())

    def boom(codec, data, path):
        path.write_bytes(b"half a faiss file")
        raise OSError("disk full")

    def commit_fails(self):
        raise OSError("disk full at commit")

    monkeypatch.setattr(PQ3Codec, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        idx.add([Document("new", "vitamin bone study")])
    monkeypatch.undo()
    monkeypatch.setattr(type(idx.doc_store), "bump_commit", commit_fails)
    with pytest.raises(OSError, match="disk full at commit"):
        idx.add([Document("new", "vitamin bone study")])
    with pytest.raises(OSError, match="disk full at commit"):
        idx.delete(["d1"])
    monkeypatch.undo()
    # the live object recovered from disk and still answers, unchanged; no stray segment file is left
    assert len(idx) == 120 and ids_of(idx.search(["cancer cells"], k=5)[0]) == expected
    assert sorted(p.name for p in (idx.path / "segments").iterdir()) == files_before
    assert_intact(idx.path, tiny_encoder, expected)


@pytest.mark.parametrize(
    "damage, msg",
    [
        (lambda p: (p / "manifest.json").write_text("{trunc"), "manifest.json is corrupt"),
        (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
        (
            lambda p: (p / "manifest.json").write_text(json.dumps({"format": "pooledir-index", "format_version": 99})),
            "format_version 99",
        ),
        (
            lambda p: next(p.glob("segments/*.pq3")).write_bytes(next(p.glob("segments/*.pq3")).read_bytes()[:500]),
            "corrupt or truncated",
        ),
        (lambda p: next(p.glob("segments/*.pq3")).unlink(), "is missing"),
        (lambda p: next(p.glob("quantizer.*.faiss")).write_bytes(b"junk"), "corrupt or truncated"),
        (
            lambda p: (p / "manifest.json").write_text(json.dumps({"format": "pooledir-index", "format_version": 1})),
            "format_version 1 index .* Rebuild it",
        ),
    ],
)
def test_corrupt_index_fails_clearly(built, tiny_encoder, damage, msg):
    idx, _ = built
    idx.close()
    damage(idx.path)
    with pytest.raises(IndexCorruptError, match=msg):
        PooledIndex.open(idx.path, device="cpu", encoder=tiny_encoder)


def test_mismatched_vectors_fail_clearly(built, tiny_encoder):
    idx, _ = built
    idx.doc_store.unpin()
    idx.doc_store.conn.execute("UPDATE docs SET n_vectors = n_vectors + 1 WHERE ext_id = 'd1'")
    idx.close()
    with pytest.raises(IndexCorruptError, match="mismatched"):
        PooledIndex.open(idx.path, device="cpu", encoder=tiny_encoder)


def test_open_missing_folder(tmp_path):
    with pytest.raises(InputError, match="no index at"):
        PooledIndex.open(tmp_path / "none")


def test_metadata_filter_ranks_only_matching_documents_exactly(tmp_path, tiny_encoder, tiny_docs, tiny_embeddings):
    from pooledir.maxsim import maxsim
    from pooledir.pooling import pool_embeddings

    idx = make_index(tmp_path / "i", tiny_encoder, tiny_docs, tiny_embeddings, backend="ivfpq", keep_exact=True)
    idx.add([Document("tagged", "vitamin bone study", {"src": "api", "ok": True})])
    assert ids_of(idx.search(["cancer cells"], k=5, filter={"n": 7})[0]) == ["d7"]
    assert ids_of(idx.search(["cancer cells"], k=5, filter={"src": "api", "ok": True})[0]) == ["tagged"]
    assert idx.search(["cancer cells"], k=5, filter={"n": 7, "src": "api"})[0] == []
    # the order among matches is exact MaxSim over their (exact) vectors
    wanted = [i for i in range(120) if i < 30]
    Q = tiny_encoder.encode_queries(["protein expression"])
    hits = idx.search_embeddings(Q, SearchParams(k=5), filter=None)  # unfiltered still works
    assert len(hits[0]) == 5
    pooled = pool_embeddings([tiny_embeddings[i] for i in wanted], 2)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pooled])])
    ref = maxsim(Q, np.concatenate(pooled).astype(np.float32), offsets)[0]
    idx.doc_store.unpin()
    for i in wanted:
        idx.doc_store.conn.execute(
            "UPDATE docs SET metadata = json_set(metadata, '$.grp', 'a') WHERE ext_id = ?", (f"d{i}",)
        )
    got = idx.search_embeddings(Q, SearchParams(k=5), filter={"grp": "a"})[0]
    assert ids_of(got) == [f"d{wanted[j]}" for j in np.argsort(-ref, kind="stable")[:5]]
