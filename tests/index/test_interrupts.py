"""A Ctrl-C at any line of a write leaves the last commit or the new one, readable, and the writer usable.

Python runs a signal's handler between two lines: here the SIGINT handler is run from a trace function at the
n-th line of the write protocol's modules (:data:`PROTOCOL`) during a write, for every n (every ``stride``-th
for the longer writes), as a Ctrl-C landing there would. The CLI test of a Ctrl-C'd build met one such line
at random (just after sqlite's COMMIT, whose files were then dropped); this walks them, in the main thread
(where Python runs signal handlers).
"""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import pooledir
from pooledir.pooled_index import PooledIndex
from tests.conftest import FakeEncoder
from tests.index.test_folder import add, create, queries, results

#: the write protocol's modules, where a Ctrl-C can land between a commit and what depends on it (lines elsewhere,
#: encoding a segment or training, run before the commit, with nothing to undo but the files _commit drops)
PROTOCOL = ("store.py", "durable.py", "index/folder.py", "index/snapshot.py")
OWN_FILES = frozenset(str(Path(pooledir.__file__).parent / name) for name in PROTOCOL)


@contextmanager
def interrupt_at(n: int) -> Iterator[list[int]]:
    """A Ctrl-C at the ``n``-th line of the write protocol's code run inside the block; yields [lines run].

    The SIGINT handler in force at that line runs there, as Python runs it for a real signal: the default one
    raises KeyboardInterrupt in the traced frame; inside :func:`~pooledir.durable.ctrl_c_deferred` the signal
    is held back and delivered at the block's end.
    """
    seen = [0]

    def on_line(frame, event, arg):
        if event == "line":
            seen[0] += 1
            if seen[0] == n:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, frame)
        return on_line

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's, whatever ran the tests
    sys.settrace(lambda frame, event, arg: on_line if frame.f_code.co_filename in OWN_FILES else None)
    try:
        yield seen
    finally:
        sys.settrace(None)
        signal.signal(signal.SIGINT, previous)


@dataclass(frozen=True)
class Write:
    """A write to interrupt: how to make the folder it starts from, the write itself, every how many lines.

    ``commits``: a write of two (an add, then the training it triggers) may also be left after the first: its
    documents are all there, its search results those of an index not trained yet.
    """

    make: Callable[[Path], PooledIndex]
    write: Callable[[PooledIndex], object]
    stride: int = 1
    commits: int = 1


def _flat(path: Path) -> PooledIndex:
    idx = create(path, backend="flat", max_segments=2)
    add(idx, [f"d{i}" for i in range(12)], list(range(12)))
    add(idx, ["d0", "e0"], [50, 51])
    return idx


def _untrained(path: Path) -> PooledIndex:
    idx = create(path, backend="ivfpq", train_min_vectors=150, nlist=4, pq_m=4)
    add(idx, [f"d{i}" for i in range(12)], list(range(12)))
    return idx


def _trained(path: Path) -> PooledIndex:
    idx = _untrained(path)
    add(idx, [f"t{i}" for i in range(30)], list(range(100, 130)))
    assert idx.stats().trained
    return idx


#: one write of each path of the protocol: a segment added (the path of a build's chunks: every line), documents
#: deleted, small segments merged, an add that trains the quantizer, a re-training (about 1,900 trials, 50 s on
#: one of 2 cores)
WRITES = {
    "upsert": Write(_flat, lambda idx: add(idx, ["d1", "new"], [60, 61])),
    "delete": Write(_flat, lambda idx: idx.delete(["d2", "e0"]), 2),
    "upsert that merges": Write(_flat, lambda idx: add(idx, ["m"], [70]), 2),
    "upsert that trains": Write(_untrained, lambda idx: add(idx, [f"t{i}" for i in range(30)], range(100, 130)), 7, 2),
    "re-training": Write(_trained, lambda idx: idx.compact(retrain=True), 5),
}


def state(idx: PooledIndex) -> tuple[list[str], list]:
    return sorted(idx.row_ids()), results(idx, queries(3))


@pytest.mark.parametrize("name", list(WRITES))
def test_a_ctrl_c_at_any_line_of_a_write(tmp_path, name):
    """Interrupted at each line: KeyboardInterrupt reaches the caller; the folder (reopened) and the writer (as it
    is) show the state before or after the write, the same one; the writer's next write succeeds."""
    w = WRITES[name]
    template = tmp_path / "template"
    w.make(template).close()
    shutil.copytree(template, tmp_path / "whole")
    with PooledIndex.open(tmp_path / "whole", device="cpu", encoder=FakeEncoder()) as idx:
        before = state(idx)
        with interrupt_at(0) as lines:  # never: counts the lines
            w.write(idx)
        after = state(idx)
    trials = range(1, lines[0] + 1, w.stride)
    hits = 0
    for n in trials:
        folder = tmp_path / f"at{n}"
        shutil.copytree(template, folder)
        with PooledIndex.open(folder, device="cpu", encoder=FakeEncoder()) as idx:
            interrupted = _run(w, idx, n)
            hits += interrupted
            mine = state(idx)
            with PooledIndex.open(folder, device="cpu", encoder=FakeEncoder()) as again:
                again.verify(full=True)
                assert state(again) == mine, f"line {n}: the writer and the folder disagree"
            if w.commits == 1 or not interrupted:
                assert mine in ((before, after) if interrupted else (after,)), f"line {n}: {mine[0]}"
            else:
                assert mine[0] in (before[0], after[0]), f"line {n}: neither the documents before nor after"
            add(idx, ["later"], [999])  # the folder lock and the store are free again
            assert "later" in idx.row_ids()
        shutil.rmtree(folder)
    assert hits >= len(trials) / 2 > 10, f"{hits} of {len(trials)} trials were interrupted"


def _run(w: Write, idx: PooledIndex, n: int) -> bool:
    """Run the write with a Ctrl-C at its n-th line: True if it was interrupted (nothing else may escape).

    False where the write ran to its end: a destructor met the Ctrl-C (Python prints and drops it there), or
    this run took fewer lines than the first (a module imported, a cache filled, by then).
    """
    with interrupt_at(n):
        try:
            w.write(idx)
        except KeyboardInterrupt:
            return True
        except Exception as e:  # noqa: BLE001 - any other error is the finding, said with its line
            pytest.fail(f"line {n}: {e!r} instead of KeyboardInterrupt")
    return False
