from __future__ import annotations

import pytest


@pytest.fixture()
def served_index(tmp_path, tiny_encoder, tiny_docs):
    """A tiny IVF-PQ index folder named 'tiny' (120 documents)."""
    from pooledir import IndexConfig, PooledIndex

    path = tmp_path / "tiny"
    with PooledIndex.create(path, config=IndexConfig(pool_factor=2), device="cpu", encoder=tiny_encoder) as idx:
        idx.add(tiny_docs)
    return path


@pytest.fixture()
def make_client(served_index):
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    clients = []

    def make(**overrides):
        settings = Settings(indexes=[served_index], device="cpu", **overrides)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture()
def client(make_client):
    return make_client()


def tiny_index(path, encoder, docs):
    """Build the tiny pooled (x2) index of ``docs`` at ``path``; returns ``path``."""
    from pooledir import IndexConfig, PooledIndex

    with PooledIndex.create(path, config=IndexConfig(pool_factor=2), device="cpu", encoder=encoder) as idx:
        idx.add(docs)
    return path


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory, tiny_encoder, tiny_docs):
    """One app on its own tiny index for a whole module: for tests that change nothing (bad input)."""
    from fastapi.testclient import TestClient

    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    path = tiny_index(tmp_path_factory.mktemp("shared") / "tiny", tiny_encoder, tiny_docs)
    with TestClient(create_app(Settings(indexes=[path], device="cpu"))) as client:
        yield client
