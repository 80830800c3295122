"""Ray Serve's ingress over partitions answers lexical and hybrid queries as one index over the same documents.

In-process and fast: the partitions are :class:`pooledir.service.ray_serve.Partition` bodies behind a stand-in for
Ray's deployment handles (arguments and answers pickled, as Ray sends them), so the ingress's merging,
the summed BM25 statistics and the fusion are the code under test, without a Ray cluster
(``tests/distributed/test_serve.py`` runs the same over a real one, marked slow).
"""

from __future__ import annotations

import os
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
            return SimpleNamespace(result=lambda timeout_s=None: pickle.loads(pickle.dumps(answer)))

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


class ActorDiedError(Exception):
    """Stands in for ray.exceptions.ActorDiedError (these tests run without Ray)."""


class DeadPartition:
    """A deployment handle whose actor died: every call's answer raises, as Ray's does."""

    def __getattr__(self, name: str):
        def result(timeout_s=None):
            raise ActorDiedError("The actor died unexpectedly before finishing this task.")

        return SimpleNamespace(remote=lambda *args: SimpleNamespace(result=result))


class SilentPartition:
    """A deployment handle whose replica never answers: ``result`` gives up after the timeout it is handed."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def __getattr__(self, name: str):
        def result(timeout_s=None):
            self.timeouts.append(timeout_s)
            raise TimeoutError(f"Timed out waiting for result after {timeout_s}s.")

        return SimpleNamespace(remote=lambda *args: SimpleNamespace(result=result))


@pytest.fixture()
def two_partitions(tmp_path, tiny_encoder, tiny_docs):
    """A 2-partition index behind in-process deployment handles; yields (handle, partition folders)."""
    from pooledir.service.ray_serve import Partition, ShardedHandle

    split = tmp_path / "split"
    for p in range(2):
        mine = [d for d in tiny_docs[:20] if partition_of(d.id, 2) == p]
        config = IndexConfig(backend="flat", pool_factor=1)
        with PooledIndex.create(split / f"part-{p:05d}", config=config, device="cpu", encoder=tiny_encoder) as part:
            part.add(mine)
    layout = write_layout(split, 2)
    bodies = [Partition(str(path)) for path in layout.parts]
    yield (
        ShardedHandle("split", [Remote(b) for b in bodies], tiny_encoder, None, "cpu", probe_timeout_s=3.0),
        layout.parts,
    )
    for body in bodies:
        body.index.close()


def readyz(handle):
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.registry import Registry
    from pooledir.service.settings import Settings

    app = create_app(Settings(device="cpu"), open_registry=lambda settings: Registry({"split": handle}))
    with TestClient(app) as client:
        r = client.get("/readyz")
    return r.status_code, r.json()


def test_readyz_names_a_partition_whose_actor_died_unreachable_not_corrupt(two_partitions):
    """Issue 18: ShardedHandle.problem() was always None, so /readyz said ready over a dead partition; then it
    said so, but with status "corrupt", as for a damaged file: the body now says which."""
    from pooledir.service.handles import Problem

    handle, _ = two_partitions
    assert handle.problem() is None
    assert readyz(handle) == (200, {"status": "ready", "indexes": ["split"]})
    handle.partitions[1] = DeadPartition()
    problem = handle.problem()
    assert problem == Problem(
        "unreachable",
        "partition 1: unreachable (ActorDiedError: The actor died unexpectedly before finishing this task.)",
    )
    assert readyz(handle) == (
        503,
        {"status": "unreachable", "indexes": ["split"], "detail": {"split": problem.message}},
    )


def test_readyz_names_a_partition_that_does_not_answer_in_time(two_partitions):
    handle, _ = two_partitions
    silent = SilentPartition()
    handle.partitions[0] = silent
    problem = handle.problem()
    assert problem is not None and problem.kind == "unreachable"
    assert problem.message.startswith("partition 0: unreachable (TimeoutError: Timed out waiting")
    assert "partition 1" not in problem.message
    # bounded by the handle's probe timeout, never an unbounded wait
    assert silent.timeouts and all(t is not None and 0 <= t <= handle.probe_timeout_s for t in silent.timeouts)
    code, body = readyz(handle)  # the message carries the time left, which differs from one probe to the next
    assert code == 503 and body["status"] == "unreachable" and list(body["detail"]) == ["split"]
    assert body["detail"]["split"].startswith("partition 0: unreachable (TimeoutError: Timed out waiting")


def damage(segment, stamp, good):
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # bit rot: the same size, a checksum that no longer matches
    segment.write_bytes(bytes(damaged))
    os.utime(segment, ns=(stamp + 10**9, stamp + 10**9))  # a new mtime however coarse the clock: it is re-read


def test_readyz_names_a_partition_with_a_damaged_file_and_recovers_with_it(two_partitions):
    handle, parts = two_partitions
    segment = sorted((parts[0] / "segments").iterdir())[0]
    good, stamp = segment.read_bytes(), segment.stat().st_mtime_ns
    damage(segment, stamp, good)
    problem = handle.problem()
    assert problem is not None and problem.kind == "corrupt"
    assert problem.message.startswith("partition 0: ") and "partition 1" not in problem.message
    assert "corrupt" in problem.message and segment.name in problem.message
    assert "unreachable" not in problem.message
    code, body = readyz(handle)
    assert code == 503 and body["status"] == "corrupt" and body["detail"] == {"split": problem.message}
    segment.write_bytes(good)
    os.utime(segment, ns=(stamp + 2 * 10**9, stamp + 2 * 10**9))
    assert handle.problem() is None  # ready again once the file is whole


def test_readyz_with_one_partition_corrupt_and_one_unreachable_names_each(two_partitions):
    """Both at once: each partition named with its own kind; the body's status is the graver one, corrupt."""
    handle, parts = two_partitions
    segment = sorted((parts[0] / "segments").iterdir())[0]
    damage(segment, segment.stat().st_mtime_ns, segment.read_bytes())
    handle.partitions[1] = DeadPartition()
    problem = handle.problem()
    assert problem is not None and problem.kind == "corrupt"
    first, second = problem.message.split("; partition 1: ")
    assert first.startswith("partition 0: ") and "corrupt" in first and segment.name in first
    assert second.startswith("unreachable (ActorDiedError: ")
    code, body = readyz(handle)
    assert code == 503 and body["status"] == "corrupt" and body["detail"] == {"split": problem.message}


def test_a_request_that_reaches_a_dead_partition_is_a_json_503_not_a_traceback(two_partitions, tiny_docs):
    """Ray's own failure (the actor died) used to escape the routes as a bare 500."""
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.registry import Registry
    from pooledir.service.settings import Settings

    handle, _ = two_partitions
    handle.partitions[1] = DeadPartition()
    app = create_app(Settings(device="cpu"), open_registry=lambda settings: Registry({"split": handle}))
    with TestClient(app, raise_server_exceptions=False) as client:
        for method, url, body in [
            ("POST", "/indexes/split/search", {"query": "cancer", "k": 3}),
            ("GET", "/indexes/split", None),
            ("POST", "/indexes/split/documents", {"documents": [{"id": "new", "text": "bone density"}]}),
            ("DELETE", "/indexes/split/documents", {"ids": [tiny_docs[0].id]}),
        ]:
            r = client.request(method, url, json=body)
            assert r.status_code == 503, (url, r.text)
            assert r.json()["detail"].startswith("partition 1 of split does not answer (ActorDiedError: "), r.text
