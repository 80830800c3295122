"""A real uvicorn process on a free loopback port: concurrency and crash safety."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index_dir, port):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = open(index_dir.parent / f"server-{port}.log", "w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "-m", "pooledir.cli", "serve", str(index_dir), "--port", str(port), "--device", "cpu"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {server_log(proc)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become ready in 90 s")


def server_log(proc) -> str:
    with open(proc.log_path) as f:
        return f.read()[-3000:]


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


SEARCHERS, WRITERS = 13, 3  # 16 clients on one worker


def test_concurrent_searches_during_writes(served_index):
    """16 clients mix single and batch searches, upserts and deletes; bounded in count, not in time."""
    proc, url = start_server(served_index, free_port())
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
        assert errors == [], server_log(proc)
        assert len(acked_upserts) == 4 * WRITERS and len(acked_deletes) == 2 * WRITERS
        with httpx.Client(base_url=url, timeout=30) as c:
            for doc_id in acked_upserts:
                assert c.get(f"/indexes/tiny/documents/{doc_id}").status_code == 200
            for doc_id in acked_deletes:
                assert c.get(f"/indexes/tiny/documents/{doc_id}").status_code == 404
            assert c.get("/indexes/tiny").json()["documents"] == 120 + 4 * WRITERS - 2 * WRITERS
    finally:
        stop(proc)


def test_kill_9_during_upsert_keeps_acknowledged_documents(served_index):
    port = free_port()
    proc, url = start_server(served_index, port)
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
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t.join(30)
    finally:
        stop(proc)

    from pooledir import PooledIndex

    with PooledIndex.open(served_index, device="cpu") as idx:  # loadable, consistent
        n = len(idx)
        assert n in (123, 323)  # the killed upsert is all there or not at all
    proc, url = start_server(served_index, free_port())
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for doc_id in acked:
                assert c.get(f"/indexes/tiny/documents/{doc_id}").status_code == 200
            assert c.post("/indexes/tiny/search", json={"query": "heart study", "k": 3}).status_code == 200
    finally:
        stop(proc)
