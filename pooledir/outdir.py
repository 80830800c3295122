"""The output folder of a build or an encode: claim it before the work, remove what it made if it fails.

A build writes into a folder that did not exist or was empty, so that a failed or
interrupted build can be undone completely, and only what it made is removed: the
folders it created, or the contents of the empty folder it was given. The claim holds
the folder's writer lock (``.lock``, see :func:`pooledir.index.folder.folder_lock`) from
the first check to the end of the build: a second build into the same folder is refused
at once and never removes what the first one wrote. A shard folder is claimed the same way
(:func:`claim_shard_folder`), except that the parts of a split encode share it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pooledir.durable import ctrl_c_deferred
from pooledir.errors import InputError

#: the lock every encoder of a shard folder holds (exclusively, or shared by the parts of a split encode); the
#: folder's own ``.lock`` is its manifest's, taken for a moment by each writer
ENCODE_LOCK = ".encode.lock"
#: taken for a moment by each part of a split encode as it starts, so two parts check each other in turn
PARTS_LOCK = ".encode-parts.lock"
_PART_LOCK_RE = re.compile(r"\.encode-part-(\d+)-of-(\d+)\.lock")


@dataclass(frozen=True)
class Claim:
    """A build's hold on its output folder."""

    #: the topmost folder the claim created (removed whole if the build fails), or None
    created: Path | None
    #: True when ``--resume`` found an index there to continue
    resuming: bool


@contextmanager
def claim_output_folder(out: Path, resume: bool = False) -> Iterator[Claim]:
    """Hold ``out`` for one build: a new or empty folder, or with ``resume`` one that holds an index.

    Raises :class:`InputError` when ``out`` is a file, holds files (an index without ``resume``),
    is not writable, or another build holds it (then nothing is touched); ``OSError`` when it
    cannot be created. The folder's lock is held until the block ends.
    """
    from pooledir.index.folder import LOCK_FILE, folder_lock

    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; pass a new folder for the index")
    created = make_output_folder(out)
    with folder_lock(out, wait=False):
        resuming = resume and (out / "manifest.json").is_file()
        if not resume and (out / "manifest.json").is_file():
            raise InputError(f"{out} already holds an index; pick a new folder, delete it, or resume its build")
        if not resuming and any(p.name != LOCK_FILE for p in out.iterdir()):
            raise InputError(f"{out} exists and is not empty; pick a new folder or delete it first")
        try:
            yield Claim(created, resuming)
        except BaseException:  # a build that failed and kept nothing leaves what it found (or nothing)
            if out.is_dir() and all(p.name == LOCK_FILE for p in out.iterdir()):
                if created is not None:
                    shutil.rmtree(created, ignore_errors=True)
                else:
                    (out / LOCK_FILE).unlink(missing_ok=True)
            raise


@dataclass(frozen=True)
class ShardClaim:
    """An encode's hold on its shard folder."""

    #: the topmost folder the claim created, or None
    created: Path | None
    #: True when the folder held nothing: an encode that fails before completing a shard removes what it made
    fresh: bool


@contextmanager
def claim_shard_folder(out: Path, may_continue: bool, part: int = 0, parts: int = 1) -> Iterator[ShardClaim]:
    """Hold the shard folder ``out`` for one encode: new or empty, or with ``may_continue`` one with shards.

    One encode holds the folder alone; the ``parts`` of a split encode share it, each part once. A second
    encode of the folder (or of the same part) is refused at once with :class:`InputError`, as are a file,
    without ``may_continue`` a folder that holds files, and a part whose part count differs from another
    part's (one encoding now, or one whose shards record their count); nothing is touched then. If the block fails
    before any shard is complete, the claim removes what it made (the folders it created, or the contents
    of the empty folder it was given), unless another part is encoding there.
    """
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise InputError(f"{out} is a file; pick a folder for the shards")
    if not may_continue and out.is_dir() and _holds_files(out):
        raise InputError(f"{out} exists and is not empty; pick a new folder, or resume the encode there")
    created = make_output_folder(out)
    with ExitStack() as locks:
        shared = locks.enter_context(_hold(out, out / ENCODE_LOCK, shared=parts > 1))
        if parts > 1:
            with open(out / PARTS_LOCK, "a") as mutex:  # parts start one at a time: the later of two is refused
                fcntl.flock(mutex, fcntl.LOCK_EX)
                locks.enter_context(_hold(out, out / _part_lock(part, parts), shared=False))
                _refuse_other_part_counts(out, part, parts)
        fresh = not _holds_files(out)
        if not fresh and not may_continue:  # filled between the first look and the lock
            raise InputError(f"{out} exists and is not empty; pick a new folder, or resume the encode there")
        try:
            yield ShardClaim(created, fresh)
        except BaseException:
            if fresh and not any(out.glob("shard-*.json")) and _alone(shared):
                cleanup_on_failure(out, created)
            raise


def _part_lock(part: int, parts: int) -> str:
    """The lock file one part of a split encode holds (exclusively) while it runs."""
    return f".encode-part-{part}-of-{parts}.lock"


def _refuse_other_part_counts(out: Path, part: int, parts: int) -> None:
    """:class:`InputError` when a part with another part count encodes ``out`` now or wrote its shards."""
    from pooledir.shards import recorded_part_counts

    running = {}
    for lock in out.glob(".encode-part-*-of-*.lock"):
        match = _PART_LOCK_RE.fullmatch(lock.name)
        if match and int(match[2]) != parts and _held(lock):
            running[int(match[2])] = f"part {match[1]}/{match[2]} is encoding it now"
    recorded = recorded_part_counts(out)
    for other, numbers in recorded.items():
        if other != parts:
            running.setdefault(other, f"shard {numbers[0]} was written as part {numbers[0] % other}/{other}")
    if running:
        other, why = min(running.items())
        raise InputError(
            f"{out} is split into {other} parts ({why}), but this encode is part {part}/{parts}: every part of "
            f"one folder needs the same part count; run it as K/{other}, or pick another folder"
        )


def _held(lock: Path) -> bool:
    """Whether another process holds ``lock`` (a part that is running)."""
    try:
        f = open(lock)
    except FileNotFoundError:  # removed a moment ago by a part that failed before its first shard
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def _holds_files(out: Path) -> bool:
    """Whether ``out`` holds anything but lock files."""
    return any(not (p.name == ".lock" or p.name.startswith(".encode")) for p in out.iterdir())


@contextmanager
def _hold(out: Path, lock: Path, shared: bool) -> Iterator[IO[str]]:
    """``flock`` ``lock`` (shared or exclusive) without waiting; :class:`InputError` when another encode holds it."""
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"{out} is being written by another encode (it holds {lock}); wait for it to finish, "
                "or pick another folder"
            ) from None
        yield f


def _alone(lock: IO[str]) -> bool:
    """Whether no other encode shares the folder: the shared lock becomes exclusive without waiting."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def make_output_folder(out: Path) -> Path | None:
    """Create ``out`` if missing; return the topmost folder this call created (None: it existed).

    Raises :class:`InputError` when ``out`` is not writable.
    """
    created = None
    if not out.is_dir():
        top = out.absolute()
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        try:
            out.mkdir(parents=True)
            created = top
        except FileExistsError:  # another build made it a moment ago: the lock decides which one goes on
            pass
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"{out} is not writable; pass a folder you may write to")
    return created


def cleanup_on_failure(out: Path, created: Path | None) -> None:
    """Remove what a failed build wrote: ``created`` (from :func:`claim_output_folder`), else ``out``'s contents.

    A second Ctrl-C while this runs is held back until it is done, so no half-removed folder is left.
    """
    with ctrl_c_deferred():
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
            return
        if not out.is_dir():
            return
        for child in out.iterdir():
            if child.name == ".lock":  # held by this build until it ends; an empty folder may keep it
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
