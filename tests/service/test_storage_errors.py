"""A corrupt index and a full disk: a JSON 503/507 with the message, never a bare 500 (issue 22, item 11)."""

from __future__ import annotations

import errno

import pytest

SEARCH = "/indexes/tiny/search"
DOCS = "/indexes/tiny/documents"


def test_a_truncated_segment_is_503_and_readyz_fails(client, served_index, tiny_encoder):
    """Another process commits a segment that is then cut short: every read says so, and /readyz too."""
    from pooledir import Document, PooledIndex

    assert client.get("/readyz").json()["status"] == "ready"
    before = set((served_index / "segments").iterdir())
    with PooledIndex.open(served_index, device="cpu", encoder=tiny_encoder) as other:
        other.add([Document("late", "bone density", {})])
    (new,) = set((served_index / "segments").iterdir()) - before
    new.write_bytes(new.read_bytes()[:100])  # bit rot or a torn copy: what the commit lists is not there
    for method, url, body in [
        ("POST", SEARCH, {"query": "bone"}),
        ("POST", "/indexes/tiny/search/batch", {"queries": ["bone"]}),
        ("GET", f"{DOCS}/d1", None),
        ("GET", "/indexes/tiny", None),
    ]:
        r = client.request(method, url, json=body)
        assert r.status_code == 503, (url, r.text)
        assert "corrupt or truncated" in r.json()["detail"] and new.name in r.json()["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "corrupt" and "corrupt or truncated" in ready.json()["detail"]["tiny"]
    assert client.get("/healthz").status_code == 200  # alive, not ready


def test_readyz_finds_a_corrupt_commit_without_a_read_first(client, served_index, tiny_encoder):
    from pooledir import Document, PooledIndex

    before = set((served_index / "segments").iterdir())
    with PooledIndex.open(served_index, device="cpu", encoder=tiny_encoder) as other:
        other.add([Document("late", "bone density", {})])
    (new,) = set((served_index / "segments").iterdir()) - before
    new.write_bytes(b"\0" * 64)
    assert client.get("/readyz").status_code == 503


@pytest.mark.parametrize("code, status, message", [(errno.ENOSPC, 507, "disk is full"), (errno.EIO, 503, "retry")])
def test_a_failing_disk_is_a_json_error_and_nothing_is_lost(client, monkeypatch, code, status, message):
    import pooledir.index.folder as folder_mod

    real = folder_mod.IndexFolder._write_segment_files  # every segment file of a write goes through it

    def fail(*args, **kwargs):
        raise OSError(code, "simulated")

    monkeypatch.setattr(folder_mod.IndexFolder, "_write_segment_files", fail)
    r = client.post(DOCS, json={"documents": [{"id": "new", "text": "bone"}]})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and message in r.json()["detail"]
    assert client.get("/indexes/tiny").json()["documents"] == 120
    assert client.get(f"{DOCS}/new").status_code == 404
    assert client.post(SEARCH, json={"query": "bone"}).status_code == 200
    monkeypatch.setattr(folder_mod.IndexFolder, "_write_segment_files", real)  # space again
    assert client.post(DOCS, json={"documents": [{"id": "new", "text": "bone"}]}).json()["documents"] == 121


def test_sqlite_disk_full_is_507(client, monkeypatch):
    import sqlite3

    import pooledir.index.folder as folder_mod

    def full(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(folder_mod.IndexFolder, "_commit", full)
    r = client.request("DELETE", DOCS, json={"ids": ["d1"]})
    assert r.status_code == 507 and "disk is full" in r.json()["detail"]
    monkeypatch.undo()
    assert client.get(f"{DOCS}/d1").status_code == 200


def test_the_stores_no_space_error_is_507(client, monkeypatch):
    """The store turns sqlite's full-disk failure into NoSpaceError (a PooledirError, not an OSError)."""
    import pooledir.index.folder as folder_mod
    from pooledir import NoSpaceError

    def full(self, *args, **kwargs):
        raise NoSpaceError("no space left on device for docs.sqlite: nothing of this write was committed")

    monkeypatch.setattr(folder_mod.IndexFolder, "_commit", full)
    r = client.request("DELETE", DOCS, json={"ids": ["d1"]})
    assert r.status_code == 507 and "no space left on device" in r.json()["detail"], r.text
    monkeypatch.undo()
    assert client.get(f"{DOCS}/d1").status_code == 200
