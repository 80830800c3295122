"""service/concurrency.py: the query batcher and the read side, with stand-ins for the encoder and the index.

Ordering is asserted on state (requests queued, a thread waiting on a condition), never on time.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest


# -- QueryBatcher -----------------------------------------------------------------------------------------------
class _GatedEncoder:
    """encode_queries records its batches; the first call waits for ``gate``, so later queries pile up."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def encode_queries(self, texts):
        self.calls.append(list(texts))
        self.entered.set()
        self.gate.wait()
        if self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on}")
        return np.array([[[float(len(t))]] for t in texts])


def _submit(batcher, queries, out, errors):
    def run():
        try:
            out[tuple(queries)] = batcher.encode(list(queries))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            errors[tuple(queries)] = e

    t = threading.Thread(target=run)
    t.start()
    return t


def _pending(batcher, n):
    """Wait until ``n`` requests are queued (state the test observes, no clock)."""
    while True:
        with batcher._cond:
            if len(batcher._pending) == n:
                return
        threading.Event().wait(0.001)


def test_query_batcher_encodes_waiting_queries_in_one_call():
    from pooledir.service.concurrency import QueryBatcher

    enc = _GatedEncoder()
    batcher = QueryBatcher(enc, window_ms=0, max_batch=4)
    out, errors = {}, {}
    first = _submit(batcher, ["a"], out, errors)
    enc.entered.wait()  # the batcher is inside the first call: the next ones queue
    threads = [_submit(batcher, q, out, errors) for q in (["bb", "ccc"], ["dddd"], ["eeeee"])]
    _pending(batcher, 3)
    enc.gate.set()
    for t in [first, *threads]:
        t.join()
    batcher.close()
    assert not errors
    # the three waiting requests (4 queries, max_batch) go in one call; each gets its own rows back
    assert enc.calls == [["a"], ["bb", "ccc", "dddd", "eeeee"]]
    for queries, Q in out.items():
        assert Q[:, 0, 0].tolist() == [len(q) for q in queries]


def test_query_batcher_fails_every_request_of_a_failed_batch_and_goes_on():
    from pooledir.service.concurrency import QueryBatcher

    enc = _GatedEncoder(fail_on="bad")
    batcher = QueryBatcher(enc, window_ms=0, max_batch=8)
    out, errors = {}, {}
    first = _submit(batcher, ["a"], out, errors)
    enc.entered.wait()
    threads = [_submit(batcher, q, out, errors) for q in (["bad"], ["ok"])]
    _pending(batcher, 2)
    enc.gate.set()
    for t in [first, *threads]:
        t.join()
    assert set(errors) == {("bad",), ("ok",)} and all("cannot encode bad" in str(e) for e in errors.values())
    assert batcher.encode(["again"])[0, 0, 0] == 5  # the thread survived the failure
    batcher.close()
    batcher._thread.join()
    assert not batcher._thread.is_alive()


def test_query_batcher_checks_queries_before_queueing():
    from pooledir import InputError
    from pooledir.service.concurrency import QueryBatcher

    enc = _GatedEncoder()
    enc.gate.set()
    batcher = QueryBatcher(enc, window_ms=0, max_batch=8)
    with pytest.raises(InputError):
        batcher.encode(["fine", "   "])
    assert enc.calls == []
    batcher.close()


# -- ReadSide (what replaced the RW lock: reads never wait for writes, only for a newer commit to load) ----------
class _FakeIndex:
    """The part of PooledIndex that ReadSide uses; ``stale`` says a newer commit is on disk."""

    path = "fake"

    def __init__(self) -> None:
        self.stale = False
        self.pins = self.releases = 0
        self.commit = 0

    def is_stale(self) -> bool:
        return self.stale

    def pin(self) -> None:
        self.pins += 1
        self.stale = False
        self.commit += 1

    def release(self) -> None:
        self.releases += 1


def test_read_side_pins_once_for_concurrent_reads_and_releases_when_idle():
    from pooledir.service.concurrency import ReadSide

    index = _FakeIndex()
    reads = ReadSide(index)
    with reads.reading() as a, reads.reading() as b:  # the second read joins the pinned snapshot
        assert a is b is index and index.pins == 1 and index.releases == 0
    assert index.releases == 1  # idle: no read transaction held
    with reads.reading():
        assert index.pins == 2  # pinned afresh for the next read


def test_read_side_loads_a_newer_commit_after_the_reads_in_flight():
    from pooledir.service.concurrency import ReadSide

    index = _FakeIndex()
    reads = ReadSide(index)
    started, seen = threading.Event(), []
    with reads.reading():
        index.stale = True  # a write committed while this read runs

        def later() -> None:
            started.set()
            with reads.reading() as i:
                seen.append(i.commit)

        t = threading.Thread(target=later)
        t.start()
        started.wait()
        _waiting(reads)  # it waits for this read (on the old commit) to end before loading
        assert index.commit == 1 and not seen
    t.join()
    assert seen == [2] and index.pins == 2


def test_exclusive_waits_for_reads_and_holds_new_ones_off():
    from pooledir.service.concurrency import ReadSide

    index = _FakeIndex()
    reads = ReadSide(index)
    order: list[str] = []
    entered = threading.Event()
    with reads.reading():

        def hold() -> None:
            with reads.exclusive():
                order.append("exclusive")

        t = threading.Thread(target=hold)
        t.start()
        _waiting(reads)
        order.append("read ends")
    t.join()
    with reads.exclusive():

        def read() -> None:
            entered.set()
            with reads.reading():
                order.append("read")

        r = threading.Thread(target=read)
        r.start()
        entered.wait()
        _waiting(reads)
        order.append("exclusive ends")
    r.join()
    assert order == ["read ends", "exclusive", "exclusive ends", "read"]


def _waiting(reads) -> None:
    """Return once some thread waits on the read side's condition (observed state, no clock)."""
    while True:
        with reads._cond:
            if reads._cond._waiters:
                return
        threading.Event().wait(0.001)
