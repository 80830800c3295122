"""Oversized and unauthenticated bodies against a real uvicorn on 127.0.0.1, sent chunked from a raw socket.

The client offers a body of ``OFFERED`` bytes (4x the server's limit), stops early if the server answers
or closes, and then waits for the answer however long the server takes: what is bounded is what is sent,
never when. The server's peak RSS is reset before each case (``/proc/PID/clear_refs``) and read after,
and the bytes it read (``/proc/PID/io``) counted, so the numbers are what the refused request cost.
"""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import pytest

from pooledir.evaluation import start_server

pytestmark = pytest.mark.slow

KEY = "s3cret"
GIB = 1 << 30
CHUNK = 1 << 16
LIMIT = 8 << 20  # the server's default max_body_bytes
OFFERED = 4 * LIMIT
#: only for a server that never answers (a failing test): how long to wait for it
STUCK_S = 120
#: (method, path) of every route that reads a body
BODY_ROUTES = [
    ("POST", "/indexes/tiny/search"),
    ("POST", "/indexes/tiny/search/batch"),
    ("POST", "/indexes/tiny/documents"),
    ("DELETE", "/indexes/tiny/documents"),
]


def stream_body(port: int, method: str, path: str, headers: dict[str, str], total: int = OFFERED):
    """Send up to ``total`` bytes of an unterminated JSON document, chunked, stopping if the server answers.

    Then wait for the answer. Returns (status, response body, bytes of body sent, seconds to the answer).
    """
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Transfer-Encoding: chunked\r\n\r\n"
    filler = b'{"documents": [{"id": "x", "text": "' + b"a" * (CHUNK - 36)
    frame = b"%x\r\n%s\r\n" % (len(filler), filler)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    pending, sent, answer, closed = memoryview(head.encode()), 0, b"", False
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < STUCK_S:
            readable, writable, _ = select.select([sock], [sock] if sent < total and not closed else [], [], 1.0)
            if readable:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                answer += data
                if not data or _complete(answer):
                    break
            elif writable:
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True  # the server closed: stop sending (``sent`` stays what was sent), read its answer
                    continue
                pending = pending[n:]
                if not pending:
                    sent += len(filler)
                    pending = memoryview(frame)
        elapsed = time.perf_counter() - t0
    finally:
        sock.close()
    assert answer, f"no answer to {method} {path} within {STUCK_S} s ({sent} bytes sent)"
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2], sent, elapsed


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def rss_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def bytes_read(pid: int) -> int:
    """Bytes the process has read through read/recv calls (sockets included)."""
    with open(f"/proc/{pid}/io") as f:
        return int(dict(line.split(":", 1) for line in f)["rchar"])


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, tiny_encoder, tiny_docs):
    """One uvicorn with an API key on a tiny index, shared by this module's cases."""
    from pooledir import IndexConfig, PooledIndex

    path = tmp_path_factory.mktemp("limits") / "tiny"
    with PooledIndex.create(path, config=IndexConfig(pool_factor=2), device="cpu", encoder=tiny_encoder) as idx:
        idx.add(tiny_docs[:30])
    server = start_server([path], env={"POOLEDIR_API_KEY": KEY}, log_path=path.parent / "server.log")
    yield server
    server.stop()


def count_documents(url: str) -> int:
    r = httpx.get(f"{url}/indexes/tiny", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    return r.json()["documents"]


@pytest.mark.parametrize("method, path", BODY_ROUTES)
@pytest.mark.parametrize("with_key", [False, True], ids=["no-key", "key"])
def test_chunked_body_over_the_limit_is_refused_early(keyed_server, method, path, with_key):
    proc, url = keyed_server.proc, keyed_server.url
    port = int(url.rsplit(":", 1)[1])
    headers = {"Authorization": f"Bearer {KEY}"} if with_key else {}
    reset_peak(proc.pid)
    before, read_before = rss_kib(proc.pid), bytes_read(proc.pid)
    status, body, sent, elapsed = stream_body(port, method, path, headers)
    after, read = rss_kib(proc.pid), bytes_read(proc.pid) - read_before
    grew_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(
        f"{method} {path} key={with_key}: {status}, {sent / 2**20:.1f} MiB sent, {read / 2**20:.1f} MiB read, "
        f"{elapsed:.3f} s, peak +{grew_mib:.1f} MiB"
    )
    assert status == (413 if with_key else 401), body[:300]
    detail = json.loads(body)["detail"]
    assert ("request body over 8388608 bytes" if with_key else "API key") in detail
    assert grew_mib < 20, keyed_server.log()
    # refused at the limit (or before the body), not after reading all that was offered
    assert read < (LIMIT + (2 << 20) if with_key else 2 << 20)
    assert count_documents(url) == 30  # nothing written
    assert proc.poll() is None


@pytest.mark.parametrize("path", ["/healthz", "/indexes"])
def test_routes_without_a_body_answer_and_stop_reading(keyed_server, path):
    """A body sent where none is read: the answer comes at once and the connection closes."""
    proc, url = keyed_server.proc, keyed_server.url
    port = int(url.rsplit(":", 1)[1])
    reset_peak(proc.pid)
    before, read_before = rss_kib(proc.pid), bytes_read(proc.pid)
    status, _, sent, elapsed = stream_body(port, "GET", path, {})
    grew_mib = (rss_kib(proc.pid)["VmHWM"] - before["VmRSS"]) / 1024
    read = bytes_read(proc.pid) - read_before
    print(
        f"GET {path} (no key): {status} after {sent / 2**20:.1f} MiB sent, {read / 2**20:.1f} MiB read, {elapsed:.3f} s"
    )
    assert status == (200 if path == "/healthz" else 401)
    assert grew_mib < 20 and read < 2 << 20


def test_declared_length_over_the_limit_is_refused_before_reading(keyed_server):
    url = keyed_server.url
    r = httpx.post(
        f"{url}/indexes/tiny/documents",
        content=b"{}",
        headers={"Authorization": f"Bearer {KEY}", "Content-Length": "2", "X-Ignored": "1"},
        timeout=10,
    )
    assert r.status_code == 422  # a small body with the key goes through to validation
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /indexes/tiny/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {GIB}\r\n\r\n".encode()
        )
        answer = sock.recv(1 << 16)  # answered with no body byte sent
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()
