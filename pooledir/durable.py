"""Files written so that a crash or a full disk leaves the old file or the new one, never half of either.

Outside :mod:`pooledir.index` (whose segment writer has its own copy until the format change lands),
every small file pooledir writes goes through :func:`write_durably`, and every versioned JSON header it
reads back (shard headers and manifests, the partition layout) through :func:`read_versioned_json`.
A step that must not be cut in half by a Ctrl-C (installing a commit's snapshot, removing a failed build's
files) runs inside :func:`ctrl_c_deferred`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pooledir.errors import FormatError


def fsync_dir(path: Path) -> None:
    """Flush a folder to disk so that renames inside it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[IO[bytes]], object], tmp_suffix: str = ".tmp") -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync it, rename it to ``path``, fsync the folder.

    On any failure the temporary file is removed (a full disk does not stay full of it), and an
    ``OSError`` names the file being written (a failed ``f.write`` names none).
    """
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_durably(path: Path, data: dict[str, Any]) -> None:
    """:func:`write_durably` of ``data`` as indented JSON."""
    write_durably(path, lambda f: f.write(json.dumps(data, indent=2).encode("utf-8")))


def read_versioned_json(
    path: Path, fmt: str, version: int, what: str, fix: str = "", error: type[FormatError] = FormatError
) -> dict[str, Any]:
    """The JSON object of ``path``, checked to say ``"format": fmt`` and ``"format_version": version``.

    Raises ``error`` (a :class:`FormatError`) naming the file and ``what`` it is: unreadable, not JSON,
    another format, or another version (``fix`` says what to do about that).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} ({what}) is corrupt: {e}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path} ({what}) is not a pooledir {what} (format {fmt!r} expected)")
    found = data.get("format_version")
    if found != version or type(found) is not int:
        raise error(f"{path} has format_version {found!r}; this pooledir reads {version}" + (f": {fix}" if fix else ""))
    return data


@contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold SIGINT back inside the block (main thread only); deliver it once the block is done.

    For short steps whose halves disagree (a commit's snapshot half installed): the Ctrl-C then lands after
    the step, where the writer is whole, instead of inside it. It lands as the handler in force says: Python's
    KeyboardInterrupt, the caller's own handler, the default action (the process ends) or nothing (ignored).
    Other threads, which Python never hands a signal, and a handler not set from Python run the block as is.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)
        elif received and previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)
