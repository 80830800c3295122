"""A real uvicorn process on a free loopback port: concurrency and crash safety."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from pooledir.evaluation import free_port, start_server

pytestmark = pytest.mark.slow


def start(index_dir, port=None):
    port = port or free_port()
    return start_server([index_dir], port=port, log_path=index_dir.parent / f"server-{port}.log")


SEARCHERS, WRITERS = 13, 3  # 16 clients on one worker


def test_concurrent_searches_during_writes(served_index):
    """16 clients mix single and batch searches, upserts and deletes; bounded in count, not in time."""
    server = start(served_index)
    url = server.url
    errors, acked_upserts, acked_deletes = [], [], []
    stop_flag = threading.Event()
    try:

        def searcher(i):
            with httpx.Client(base_url=url, timeout=60) as c:
                for n in range(16):  # bounded in count
                    if stop_flag.is_set():
                        return
                    if n % 4 == 3:
                        body = {"queries": [f"cancer cells {i} {n}", "vitamin bone"], "k": 5}
                        r = c.post("/indexes/tiny/search/batch", json=body)
                        ok = r.status_code == 200 and [len(x) for x in r.json()["results"]] == [5, 5]
                    else:
                        r = c.post("/indexes/tiny/search", json={"query": f"cancer cells {i} {n}", "k": 5})
                        ok = r.status_code == 200 and len(r.json()["results"]) == 5
                    if not ok:
                        errors.append((r.status_code, r.text[:200]))

        def writer(w):
            with httpx.Client(base_url=url, timeout=60) as c:
                for n in range(4):
                    doc = {"id": f"live{w}-{n}", "text": f"vitamin bone study number {w} {n}"}
                    r = c.post("/indexes/tiny/documents", json={"documents": [doc]})
                    (acked_upserts.append(doc["id"]) if r.status_code == 200 else errors.append(r.text))
                    if n % 2:
                        gone = f"d{10 * w + n}"
                        r = c.request("DELETE", "/indexes/tiny/documents", json={"ids": [gone]})
                        (acked_deletes.append(gone) if r.status_code == 200 else errors.append(r.text))

        threads = [threading.Thread(target=searcher, args=(i,)) for i in range(SEARCHERS)]
        threads += [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        stop_flag.set()
        assert errors == [], server.log()
        assert len(acked_upserts) == 4 * WRITERS and len(acked_deletes) == 2 * WRITERS
        with httpx.Client(base_url=url, timeout=30) as c:
            for doc_id in acked_upserts:
                assert c.get(f"/indexes/tiny/documents/{doc_id}").status_code == 200
            for doc_id in acked_deletes:
                assert c.get(f"/indexes/tiny/documents/{doc_id}").status_code == 404
            assert c.get("/indexes/tiny").json()["documents"] == 120 + 4 * WRITERS - 2 * WRITERS
    finally:
        server.stop()


def test_kill_9_during_upsert_keeps_acknowledged_documents(served_index):
    server = start(served_index)
    url = server.url
    acked = []
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            for n in range(3):
                r = c.post(
                    "/indexes/tiny/documents", json={"documents": [{"id": f"ok{n}", "text": f"heart study {n}"}]}
                )
                assert r.status_code == 200
                acked.append(f"ok{n}")

        big = {"documents": [{"id": f"big{i}", "text": "protein expression in cells " * 30} for i in range(200)]}

        def fire():
            try:
                httpx.post(f"{url}/indexes/tiny/documents", json=big, timeout=60)
            except httpx.HTTPError:
                pass  # the server dies under this request

        t = threading.Thread(target=fire)
        t.start()
        time.sleep(1.0)  # the upsert is being encoded / written
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        t.join(30)
    finally:
        server.stop()

    from pooledir import PooledIndex

    with PooledIndex.open(served_index, device="cpu") as idx:  # loadable, consistent
        n = len(idx)
        assert n in (123, 323)  # the killed upsert is all there or not at all
    server = start(served_index)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for doc_id in acked:
                assert c.get(f"/indexes/tiny/documents/{doc_id}").status_code == 200
            assert c.post("/indexes/tiny/search", json={"query": "heart study", "k": 3}).status_code == 200
    finally:
        server.stop()
