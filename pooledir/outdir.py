"""The output folder of a build: claim it before the work, remove what the build made if it fails.

A build writes into a folder that did not exist or was empty, so that a failed or
interrupted build can be undone completely, and only what it made is removed: the
folders it created, or the contents of the empty folder it was given. A later
"resume" mode would keep the partial work instead of calling :func:`cleanup_on_failure`.
"""

from __future__ import annotations

import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

from pooledir.errors import InputError


def claim_output_folder(out: Path) -> Path | None:
    """Make ``out`` an empty folder to build into; return the topmost folder this call created.

    Returns None when ``out`` already existed (empty): then only its contents are the build's.
    Raises :class:`InputError` when ``out`` is a file, a folder with files in it, or not writable;
    ``OSError`` when it cannot be created.
    """
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"{out} is a file, not a folder; pass a new folder for the index")
        if any(out.iterdir()):
            raise InputError(f"{out} exists and is not empty; pick a new folder or delete it first")
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(f"{out} is not writable; pass a folder you may write to")
        return None
    top = out.absolute()
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    out.mkdir(parents=True)
    return top


def cleanup_on_failure(out: Path, created: Path | None) -> None:
    """Remove what a failed build wrote: ``created`` (from :func:`claim_output_folder`), else ``out``'s contents.

    A second Ctrl-C while this runs is held back until it is done, so no half-removed folder is left.
    """
    with _sigint_deferred():
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
            return
        if not out.is_dir():
            return
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


@contextmanager
def _sigint_deferred():
    """Hold SIGINT back inside the block (main thread only); deliver it once the block is done."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)
