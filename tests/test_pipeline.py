"""pooledir/pipeline.py: prepare → encode → pool → WriteBatch → PooledIndex.write, and its one passage rule."""

from __future__ import annotations

import numpy as np
import pytest

from pooledir import pipeline
from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.pooled_index import IndexConfig, PooledIndex
from tests.engine import engine

LONG = " ".join(["vitamin bone heart"] * 60) + " the needle zebra quartz"  # far past doc_maxlen=64 tokens
RULE = r"splits documents into passages \(passage_stride=30\), which needs their text: pass documents, not"


def make(path, encoder, stride=None, backend="flat"):
    config = IndexConfig(backend=backend, passage_stride=stride)
    return PooledIndex.create(path, config=config, device="cpu", encoder=encoder)


def stored(idx):
    """Every stored row: id, text, metadata, token count and vectors."""
    store, snap = idx.doc_store, engine(idx).snapshot
    live = np.flatnonzero(snap.seg_of >= 0)
    out = []
    for n, row in zip(live, store.rows(live)):
        vectors, _ = snap.fetch(np.array([n]))
        out.append((row.id, row.text, row.metadata, vectors.tolist()))
    return sorted(out)


def test_make_batch_then_write_stores_what_add_stores(tmp_path, tiny_encoder, tiny_docs):
    docs = [*tiny_docs[:8], Document("long", LONG, {"k": 1})]
    with make(tmp_path / "a", tiny_encoder, 30) as a, make(tmp_path / "b", tiny_encoder, 30) as b:
        result = a.add(docs)
        batch = b.make_batch(docs)
        assert batch.passage_stride == 30 and batch.documents == tuple(d.id for d in docs)
        assert len(batch.rows) > len(docs)  # the long document became passages
        written = b.write(batch)
        assert (written.documents, written.vectors) == (result.documents, result.vectors) == (9, batch.n_vectors)
        assert stored(a) == stored(b)


def test_one_rule_refuses_vectors_made_without_text_for_a_passage_index(tmp_path, tiny_encoder, tiny_docs):
    idx = make(tmp_path / "p", tiny_encoder, 30)
    vectors = [np.ones((3, tiny_encoder.dim), np.float32)]
    with pytest.raises(InputError, match=RULE + " embeddings"):
        idx.add([Document("x", "a")], embeddings=vectors)
    plain = make(tmp_path / "plain", tiny_encoder).make_batch(tiny_docs[:2])  # prepared for whole documents
    with pytest.raises(InputError, match=RULE + " a batch prepared without them"):
        idx.write(plain)
    with pytest.raises(InputError, match="stores whole documents"):
        make(tmp_path / "w", tiny_encoder).write(idx.make_batch(tiny_docs[:2]))
    assert len(idx) == 0


def test_encoded_shards_into_a_passage_index_are_refused_by_the_same_rule(tmp_path, tiny_encoder, tiny_docs):
    from pooledir.build import create_index_for_shards
    from pooledir.build_shards import EncodeConfig, encode_corpus
    from pooledir.distributed.partition import build_partitions
    from pooledir.shards import read_shard_manifest

    shards = tmp_path / "shards"
    encode_corpus(iter(tiny_docs[:10]), shards, tiny_encoder, EncodeConfig(shard_docs=5), show_progress=False)
    config = IndexConfig(backend="flat", passage_stride=30)
    with pytest.raises(InputError, match=RULE + " encoded shards"):
        create_index_for_shards(tmp_path / "i", read_shard_manifest(shards).spec, config, device="cpu")
    with pytest.raises(InputError, match=RULE + " encoded shards"):
        build_partitions([shards], tmp_path / "parts", 2, config, show_progress=False)


def test_split_keeps_a_documents_passages_with_it(tiny_encoder, tiny_docs):
    from pooledir.passages import parent_id

    docs = [Document("long", LONG), *tiny_docs[:5]]
    prepared = pipeline.prepare(docs, 30, tiny_encoder)
    batch = pipeline.encode_and_pool(prepared, tiny_encoder, pipeline.PoolSpec(2), "cpu")

    def owner(doc_id: str) -> int:
        return 0 if doc_id == "long" else 1

    parts = batch.split(owner)
    assert parts[0].documents == ("long",) and {parent_id(r.id) for r in parts[0].rows} == {"long"}
    assert len(parts[0].rows) > 1
    assert parts[1].documents == tuple(d.id for d in tiny_docs[:5]) == tuple(r.id for r in parts[1].rows)
    assert sum(p.n_vectors for p in parts.values()) == batch.n_vectors


def test_pool_spec_follows_the_index_config():
    spec = pipeline.PoolSpec.of(IndexConfig(pool_factor=3, protected_tokens=2))
    assert (spec.factor, spec.protected_tokens, spec.threshold, spec.pools) == (3, 2, None, True)
    assert not pipeline.PoolSpec.of(IndexConfig(pool_factor=1)).pools
