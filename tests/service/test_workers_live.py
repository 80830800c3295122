"""``pooledir serve --workers 2`` as a real process: read-your-writes on every read route, and searches
answered while another process holds the folder lock for a long write (issue 22, items 7 and 8).

Every request goes on a new connection, so the kernel hands them to either worker. Nothing is timed:
the server is ready when both workers logged their start-up, the write is queued when ``/proc/locks``
shows the server waiting on the folder's lock, and the test holds that lock itself.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pooledir.evaluation import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs /proc/locks")]

DOCS = "/indexes/tiny/documents"
#: only for a failing test: how long to wait for what should come
STUCK_S = 180


def wait_for(what: str, check) -> None:
    deadline = time.monotonic() + STUCK_S
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


@pytest.fixture()
def two_workers(served_index):
    """``pooledir serve INDEX --workers 2`` on a free port; its URL once both workers have started."""
    port = free_port()
    log = served_index.parent / "server.log"
    cmd = [sys.executable, "-m", "pooledir.cli", "serve", str(served_index), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--device", "cpu", "--workers", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(
            "both workers started",
            lambda: proc.poll() is None and log.read_text().count("Application startup complete") == 2,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None


def call(url: str, method: str, path: str, body=None) -> httpx.Response:
    """One request on its own connection (either worker may take it)."""
    return httpx.request(method, url + path, json=body, timeout=STUCK_S)


def reads(url: str, doc_id: str) -> dict:
    """What every read route says about ``doc_id`` (its text or status) and the document count."""
    r = call(url, "GET", f"{DOCS}/{doc_id}")
    search = {"k": 5, "filter": {"tag": doc_id}}
    single = call(url, "POST", "/indexes/tiny/search", search | {"query": "bone"}).json()["results"]
    batch = call(url, "POST", "/indexes/tiny/search/batch", search | {"queries": ["bone", "x"]}).json()["results"]
    return {
        "get": r.json()["text"] if r.status_code == 200 else r.status_code,
        "stats": call(url, "GET", "/indexes/tiny").json()["documents"],
        "list": call(url, "GET", "/indexes").json()["indexes"][0]["documents"],
        "search": [h["id"] for h in single],
        "batch": [[h["id"] for h in hits] for hits in batch],
    }


def test_every_read_route_sees_every_acknowledged_write(two_workers):
    url, n = two_workers, 120
    for i in range(8):
        doc_id = f"ryw{i}"
        doc = {"id": doc_id, "text": f"bone density {i}", "metadata": {"tag": doc_id}}
        assert call(url, "POST", DOCS, {"documents": [doc]}).json() == {"upserted": 1, "documents": n + 1}
        assert reads(url, doc_id) == {
            "get": f"bone density {i}",
            "stats": n + 1,
            "list": n + 1,
            "search": [doc_id],
            "batch": [[doc_id], [doc_id]],
        }
        if i % 2:  # every other one is deleted again
            assert call(url, "DELETE", DOCS, {"ids": [doc_id]}).json() == {"deleted": 1, "documents": n}
            assert reads(url, doc_id) == {"get": 404, "stats": n, "list": n, "search": [], "batch": [[], []]}
        else:
            n += 1


def queued_on(lock_path: Path) -> bool:
    """True when some process waits for an flock on ``lock_path`` (a ``->`` line in /proc/locks)."""
    ino = os.stat(lock_path).st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and line.split()[-3].endswith(f":{ino}") for line in lines)


def test_searches_answer_while_another_process_holds_the_folder_lock(two_workers, served_index):
    url = two_workers
    lock = open(served_index / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process's long write (a compaction) holds the folder
    upsert: list[httpx.Response] = []
    doc = {"id": "queued", "text": "bone queued", "metadata": {"tag": "queued"}}
    writer = threading.Thread(target=lambda: upsert.append(call(url, "POST", DOCS, {"documents": [doc]})))
    try:
        writer.start()
        wait_for("the server's upsert waits on the folder lock", lambda: queued_on(served_index / ".lock"))
        answers = [reads(url, "queued") for _ in range(6)]  # 30 requests over both workers
        assert writer.is_alive() and not upsert  # the write is still waiting
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        writer.join(STUCK_S)
    assert answers == [{"get": 404, "stats": 120, "list": 120, "search": [], "batch": [[], []]}] * 6
    assert upsert[0].json() == {"upserted": 1, "documents": 121}
    assert reads(url, "queued")["get"] == "bone queued"
