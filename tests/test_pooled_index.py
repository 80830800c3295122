"""PooledIndex: k beyond the index, input checked before work, a full disk, a corrupt generation, passages."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from pooledir.corpus import Document
from pooledir.errors import DocumentNotFoundError, IndexCorruptError, InputError
from pooledir.pooled_index import IndexConfig, PooledIndex
from tests.conftest import WORDS
from tests.engine import engine


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


# -- passages -----------------------------------------------------------------------------------------------------
FILLER, NEEDLE = WORDS[: len(WORDS) // 2], " ".join(WORDS[len(WORDS) // 2 :][:10])


@pytest.fixture(scope="module")
def long_corpus():
    rng = np.random.default_rng(0)
    docs = [Document(f"d{i}", " ".join(rng.choice(FILLER, 30))) for i in range(40)]
    # the long document's only words in common with the query are in its tail, far past doc_maxlen=64 tokens
    tail = " ".join(rng.choice(FILLER, 400)) + " " + NEEDLE + " " + " ".join(rng.choice(FILLER, 10))
    return docs + [Document("long", tail, {"src": "book"})]


def passage_index(path, encoder, docs, stride):
    idx = PooledIndex.create(
        path, config=IndexConfig(backend="flat", passage_stride=stride), device="cpu", encoder=encoder
    )
    idx.add(docs)
    return idx


def test_a_match_in_the_tail_is_found_only_with_passages(tmp_path, tiny_encoder, long_corpus):
    assert tiny_encoder.count_truncated([d.text for d in long_corpus]) == 1
    plain = passage_index(tmp_path / "plain", tiny_encoder, long_corpus, None)
    assert "long" not in ids_of(plain.search(NEEDLE, k=5)[0])
    split = passage_index(tmp_path / "split", tiny_encoder, long_corpus, 30)
    hits = split.search(NEEDLE, k=5, with_text=True)[0]
    assert hits[0].id == "long"
    assert hits[0].text == long_corpus[-1].text and hits[0].metadata == {"src": "book"}  # the whole document
    assert len(set(ids_of(hits))) == 5  # one hit per document, however many of its passages matched


def test_passages_are_stored_under_the_parent(tmp_path, tiny_encoder, long_corpus):
    from pooledir.passages import window_tokens

    idx = passage_index(tmp_path / "i", tiny_encoder, long_corpus, 30)
    n_passages = idx.n_rows - 40
    window = window_tokens(tiny_encoder)
    assert window == 64 - 3  # [CLS], the marker and [SEP]
    assert n_passages >= (420 - window) // 30 + 1
    store = idx.doc_store
    first = store.rows([store.lookup(["long#p0"])["long#p0"]])[0]
    assert first.metadata["parent_id"] == "long" and first.metadata["n_passages"] == n_passages
    last = store.rows([store.lookup([f"long#p{n_passages - 1}"])[f"long#p{n_passages - 1}"]])[0]
    start, end = last.metadata["span"]
    assert last.text == "" and long_corpus[-1].text[start:end].endswith(long_corpus[-1].text.split()[-1])
    assert idx.get("long") == long_corpus[-1] and idx.get("d3") == long_corpus[3]
    # k documents come back even though one document owns many of the rows
    assert len(idx.search("cancer", k=41)[0]) == 41
    # the setting is in the manifest and survives reopening
    idx.close()
    assert json.loads((tmp_path / "i" / "manifest.json").read_text())["config"]["passage_stride"] == 30
    again = PooledIndex.open(tmp_path / "i", device="cpu", encoder=tiny_encoder)
    assert again.search(NEEDLE, k=1)[0][0].id == "long"
    # replacing the document replaces all of its passages; deleting it deletes them all
    again.add([Document("long", "a short replacement about cancer")])
    assert again.n_rows == 41 and again.get("long").text == "a short replacement about cancer"
    again.add([long_corpus[-1]])
    assert again.n_rows == 40 + n_passages and len(again) == 41
    assert again.delete(["long"]) == 1 and len(again) == again.n_rows == 40
    with pytest.raises(DocumentNotFoundError, match="unknown document id 'long'"):
        again.get("long")
    with pytest.raises(DocumentNotFoundError, match="'long'"):
        again.delete(["long"])


def test_a_passage_index_counts_documents_not_passage_rows(tmp_path, tiny_encoder, long_corpus):
    """len(), describe().documents and info()["documents"] counted rows: 21 documents showed as 26."""
    idx = passage_index(tmp_path / "i", tiny_encoder, long_corpus[20:], 30)
    assert idx.n_rows > 21  # the long document is several rows
    assert len(idx) == 21 and idx.describe().documents == 21 and idx.info()["documents"] == 21
    assert len(idx.search("cancer", k=21)[0]) == 21 and len(idx.search("cancer", k=5)[0]) == 5
    idx.delete(["long"])
    assert len(idx) == idx.n_rows == 20 and idx.describe().documents == 20


def test_a_passage_id_is_refused_by_every_write_and_the_document_stays_whole(tmp_path, tiny_encoder, long_corpus):
    """Issue 22 item 6: deleting `long#p3` left the parent undeletable by its id and its other passages stored."""
    from pooledir.cli import main

    idx = passage_index(tmp_path / "i", tiny_encoder, long_corpus, 30)
    n = len(idx)
    message = r"'long#p3' ends like a passage id .* by its own id \(here 'long'\)"
    with pytest.raises(InputError, match=message):
        idx.delete(["long#p3"])
    with pytest.raises(InputError, match=message):
        idx.delete(["d1", "long#p3"])
    with pytest.raises(InputError, match=message):
        idx.add([Document("long#p3", "a replacement passage")])
    assert len(idx) == n and idx.get("long") == long_corpus[-1] and idx.get("d1") == long_corpus[1]
    idx.close()
    import sys

    argv, sys.argv = sys.argv, ["pooledir", "delete", str(tmp_path / "i"), "long#p3"]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = argv
    assert exit_.value.code == 2
    with PooledIndex.open(tmp_path / "i", device="cpu", encoder=tiny_encoder) as again:
        assert len(again) == n
        assert again.delete(["long"]) == 1 and len(again) == 40  # the parent, all of its passages


def test_a_document_that_lost_one_passage_is_still_deleted_and_replaced_whole(tmp_path, tiny_encoder, long_corpus):
    """An index damaged by an older version (one passage deleted alone): the document's id still reaches the rest."""
    idx = passage_index(tmp_path / "i", tiny_encoder, long_corpus, 30)
    n = idx.n_rows
    store = idx.doc_store
    engine(idx).delete([store.lookup(["long#p3"])["long#p3"]])  # what `delete long#p3` did before
    assert idx.n_rows == n - 1 and len(idx) == 41
    idx.add([long_corpus[-1]])  # adding it again replaces every passage left
    assert idx.n_rows == n
    engine(idx).delete([store.lookup(["long#p0", "long#p3"])[i] for i in ("long#p0", "long#p3")])
    assert idx.delete(["long"]) == 1 and len(idx) == 40
    assert store.ids_starting_with("long#p") == []


def test_passage_settings_and_ids_are_checked(tmp_path, tiny_encoder):
    with pytest.raises(InputError, match="passage_stride=0 must be a positive number"):
        PooledIndex.create(tmp_path / "a", config=IndexConfig(passage_stride=0), device="cpu", encoder=tiny_encoder)
    with pytest.raises(InputError, match="passage_stride=62 is larger than the 61 tokens of one passage"):
        PooledIndex.create(tmp_path / "b", config=IndexConfig(passage_stride=62), device="cpu", encoder=tiny_encoder)
    idx = PooledIndex.create(
        tmp_path / "c", config=IndexConfig(backend="flat", passage_stride=10), device="cpu", encoder=tiny_encoder
    )
    with pytest.raises(InputError, match=r"'x#p3' ends like a passage id"):
        idx.add([Document("x#p3", "cancer")])
    with pytest.raises(InputError, match="pass documents, not embeddings"):
        idx.add([Document("x", "cancer")], embeddings=[np.ones((3, 16), np.float16)])


def test_pq_m_must_divide_the_dimension_at_creation(tmp_path, tiny_encoder):
    """faiss would only fail when the index trains, thousands of documents later."""
    with pytest.raises(InputError, match=r"pq_m=7 must divide the vector dimension 16; pass a divisor such as 2"):
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
