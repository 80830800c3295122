"""Exceptions the library raises for problems the caller can fix.

The CLI maps them to one line and exit code 2; the service maps them to 4xx.
"""

from __future__ import annotations


class PooledirError(Exception):
    """Base class of every error pooledir raises on purpose."""


class InputError(PooledirError, ValueError):
    """Bad input: a malformed corpus line, a bad parameter, an unknown id format."""


class FormatError(InputError):
    """A file pooledir wrote (a shard header, a partition layout) that is unreadable or of another format or version."""


class IndexCorruptError(PooledirError):
    """An index folder that cannot be loaded: missing, truncated or mismatched files."""


class DocumentNotFoundError(PooledirError, KeyError):
    """An external document id that is not in the index."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "document not found"


class CheckpointError(PooledirError):
    """A ColBERT checkpoint that cannot be loaded (missing, offline hub id, wrong layout)."""


class NoSpaceError(PooledirError):
    """The disk filled up while a write committed: nothing of that write was committed (the service answers 507)."""
