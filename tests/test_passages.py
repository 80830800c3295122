"""Passages (pooledir/passages.py): long documents split into overlapping passages, searched by their best one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pooledir.corpus import Document
from pooledir.errors import DocumentNotFoundError, InputError
from pooledir.pooled_index import IndexConfig, PooledIndex
from tests.conftest import WORDS
from tests.engine import engine
from tests.test_pooled_index import ids_of

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
