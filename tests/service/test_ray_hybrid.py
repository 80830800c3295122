"""Ray Serve's ingress over partitions answers lexical and hybrid queries as one index over the same documents.

In-process and fast: the partitions are :class:`pooledir.service.ray_serve.Partition` bodies behind a stand-in for
Ray's deployment handles (arguments and answers pickled, as Ray sends them), so the ingress's merging,
the summed BM25 statistics and the fusion are the code under test, without a Ray cluster
(``tests/distributed/test_serve.py`` runs the same over a real one, marked slow).
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from pooledir.corpus import Document
from pooledir.distributed.partition import partition_of, write_layout
from pooledir.hybrid import search as hybrid_search
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams
from tests.conftest import random_text

PARTS = 3
QUERIES = ["cancer cells grow", "vitamin d bone density code7", "protein gene expression in mice", "the heart", "zzz"]


class Remote:
    """A Ray Serve deployment handle's shape (``handle.method.remote(*args).result()``), in this process."""

    def __init__(self, body) -> None:
        self.body = body

    def __getattr__(self, name: str):
        def remote(*args):
            answer = getattr(self.body, name)(*pickle.loads(pickle.dumps(args)))
            return SimpleNamespace(result=lambda: pickle.loads(pickle.dumps(answer)))

        return SimpleNamespace(remote=remote)


@pytest.fixture(scope="module")
def one_and_split(tmp_path_factory, tiny_encoder):
    """One index and a 3-partition copy of the same 45 documents (the same vectors in both)."""
    from pooledir.service.ray_serve import Partition, ShardedHandle

    rng = np.random.default_rng(3)
    docs = [
        Document(f"d{i}", random_text(rng, int(rng.integers(4, 30))) + f" code{i % 9}", {"g": i % 3}) for i in range(45)
    ]
    vectors = tiny_encoder.encode_documents([d.text for d in docs])
    config = IndexConfig(backend="flat", pool_factor=1)
    root = tmp_path_factory.mktemp("ray-hybrid")
    one = PooledIndex.create(root / "one", config=config, device="cpu", encoder=tiny_encoder)
    one.add(docs, embeddings=vectors)
    split = root / "split"
    for p in range(PARTS):
        mine = [j for j, d in enumerate(docs) if partition_of(d.id, PARTS) == p]
        assert mine, "every partition must hold documents for the test to mean anything"
        with PooledIndex.create(split / f"part-{p:05d}", config=config, device="cpu", encoder=tiny_encoder) as part:
            part.add([docs[j] for j in mine], embeddings=[vectors[j] for j in mine])
    layout = write_layout(split, PARTS)
    partitions = [Remote(Partition(str(path))) for path in layout.parts]
    handle = ShardedHandle("split", partitions, tiny_encoder, None, "cpu")
    yield one, handle
    one.close()
    for p in partitions:
        p.body.index.close()


def same_ranking(want, got) -> None:
    """Same ids and scores in the same order; ids whose scores tie may come in either order."""
    assert len(want) == len(got)
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5, atol=1e-5)
    key = [(round(h.score, 4), h.id) for h in want]
    assert sorted(key) == sorted((round(h.score, 4), h.id) for h in got)


@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
@pytest.mark.parametrize("filter", [None, {"g": 1}])
def test_partitions_answer_as_one_index(one_and_split, mode, filter):
    one, handle = one_and_split
    for k in (60, 5):  # every match, then a top-k cut inside the ranking
        params = SearchParams(k=k)
        want = hybrid_search(one, QUERIES, params, mode, filter=filter)
        got = handle.search(QUERIES, params, with_text=False, filter=filter, mode=mode)
        for w, g in zip(want, got):
            if k == 60:
                same_ranking(w, g)
            else:  # a cut may fall inside a tie: the scores still agree
                np.testing.assert_allclose([h.score for h in g], [h.score for h in w], rtol=1e-5, atol=1e-5)
    assert any(want), "the queries must find documents"
    if filter:
        assert all(one.get(h.id).metadata["g"] == 1 for hits in got for h in hits)


def test_the_partitions_own_statistics_would_rank_differently(one_and_split):
    """Why the ingress sums statistics: scored alone, a partition's BM25 is not the whole collection's."""
    from pooledir import hybrid

    one, handle = one_and_split
    want = hybrid_search(one, QUERIES[:2], SearchParams(k=60), "lexical")
    alone = {
        h.id: h.score
        for p in handle.partitions
        for q in range(2)
        for h in hybrid.lexical_hits(p.body.index, QUERIES[q : q + 1], 60, None, False)[0]
    }
    assert any(abs(alone[h.id] - h.score) > 1e-3 for hits in want for h in hits)


def test_with_text_and_a_bad_mode(one_and_split):
    from pooledir.errors import InputError

    one, handle = one_and_split
    got = handle.search(QUERIES[:1], SearchParams(k=3), with_text=True, mode="hybrid")[0]
    assert got and all(h.text == one.get(h.id).text and h.metadata == one.get(h.id).metadata for h in got)
    with pytest.raises(InputError, match="bm25"):
        handle.search(QUERIES[:1], SearchParams(k=3), with_text=False, mode="bm25")
