"""A corpus fed through a named pipe, so a test decides how far a build can read.

A build reading from :class:`CorpusPipe` blocks once it has read every line written so far: it can
never finish before the test lets it, however fast the machine is. Tests that signal a build in
the middle use this instead of racing a timer.
"""

from __future__ import annotations

import array
import fcntl
import os
import termios
import threading
from collections.abc import Callable, Sequence
from pathlib import Path


class CorpusPipe:
    """A FIFO at ``path`` (name ends in .jsonl) whose writer thread writes ``lines`` while ``may_write()``.

    ``may_write(n_written)`` is polled before each line; the thread stops for good once ``stop()`` is
    called. The write end stays open until ``close()``, so the reader sees no end of file before then;
    with ``end`` it is closed once every line is written.
    """

    def __init__(self, path: Path, lines: Sequence[str], may_write: Callable[[int], bool], end: bool = False) -> None:
        self.path = path
        os.mkfifo(path)
        self.lines = lines
        self.may_write = may_write
        self.written = 0
        self.opened = threading.Event()  # set once a reader has opened the pipe
        self._stop = threading.Event()
        self._end = end
        self._file = None
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        self._file = open(self.path, "w")  # blocks until the build opens the pipe for reading
        self.opened.set()
        while self.written < len(self.lines) and not self._stop.is_set():
            if self.may_write(self.written):
                try:
                    self._file.write(self.lines[self.written])
                    self._file.flush()
                except BrokenPipeError:  # the reader is gone
                    return
                self.written += 1
            else:
                self._stop.wait(0.02)  # a poll interval, not a deadline
        if self._end and self.written == len(self.lines):
            self._file.close()

    def unread(self) -> int:
        """Bytes written that the reader has not read yet (0 before the pipe is open)."""
        if self._file is None:
            return 0
        n = array.array("i", [0])
        fcntl.ioctl(self._file.fileno(), termios.FIONREAD, n)
        return n[0]

    def stop(self) -> int:
        """Write no more lines (a line being written is finished); returns how many were written."""
        self._stop.set()
        if self.opened.is_set():
            self._thread.join(60)
        return self.written

    def close(self) -> None:
        """Stop and close the write end (the reader then sees the end of the file)."""
        self._stop.set()
        if not self.opened.is_set():  # no reader came: open the read end once so the writer's open() returns
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self._thread.join(60)
            os.close(fd)
        self._thread.join(60)
        if self._file is not None:
            try:
                self._file.close()
            except BrokenPipeError:  # lines were still buffered for a reader that is gone
                pass
