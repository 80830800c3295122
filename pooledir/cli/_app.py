"""The typer app every command registers on, and the mapping of failures to one line and an exit code.

pooledir's own errors and the file system's (a full disk, a missing permission) print ``error: ...`` and exit 2;
Ctrl-C prints ``interrupted`` and exits 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TextIO

import typer

from pooledir.cli._common import CHECKPOINT_HELP

if TYPE_CHECKING:
    from pooledir.encoder import ColBERTEncoder
    from pooledir.pooled_index import PooledIndex

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say pooledir[onnx], pooledir[distributed]: not rich markup
    help="Multi-vector (ColBERT) retrieval with token pooling: build, update and search pooled indexes.",
    epilog=CHECKPOINT_HELP,
)


def _version(value: bool) -> None:
    if value:
        from pooledir import __version__

        typer.echo(f"pooledir {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Multi-vector (ColBERT) retrieval with token pooling: build, update and search pooled indexes."""


def main() -> None:
    """Console entry point: run the app; errors a user can fix become one line and exit code 2.

    pooledir's own errors and the file system's (a full disk, a missing permission) print
    ``error: ...`` and exit 2; Ctrl-C prints ``interrupted`` and exits 130. Anything else is a
    bug and keeps its traceback.
    """
    # OMP_WAIT_POLICY=PASSIVE is set where pooledir is imported (pooledir/__init__.py), before torch or faiss
    logging.basicConfig(level=os.environ.get("POOLEDIR_LOG", "WARNING").upper(), format="%(levelname)s %(message)s")
    stderr, sys.stderr = sys.stderr, _LineTracker(sys.stderr)
    try:
        code = _run_app()
    finally:
        sys.stderr = stderr
    sys.exit(code)


def _run_app() -> int:
    """The app, with every failure mapped to its line and exit code (see :func:`main`)."""
    from pooledir.errors import PooledirError

    try:
        code = app(standalone_mode=False)
    except PooledirError as e:
        _fail(str(e))
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except OSError as e:
        _fail(os_error_line(e))
    except Exception as e:
        line = sqlite_error_line(e)
        if line is not None:
            _fail(line)
        # usage errors of the click typer vendors (typer._click): they know how to show themselves
        exit_code = getattr(e, "exit_code", None)
        if hasattr(e, "show") and isinstance(exit_code, int):
            e.show()
            sys.exit(exit_code)
        raise
    # typer answers a KeyboardInterrupt with Exit(130), which standalone_mode=False returns as a code
    if code == 130:
        _fail("interrupted", 130)
    return code if isinstance(code, int) else 0


class _LineTracker:
    """stderr, remembering whether its last write ended a line: a message then starts on a line of its own.

    A Ctrl-C can land while a progress bar is half drawn (inside tqdm, after it wrote its line and before
    it could be closed); the bar's line then has no end.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _fail(message: str, code: int = 2) -> NoReturn:
    _close_progress_bars()
    if isinstance(sys.stderr, _LineTracker) and not sys.stderr.at_line_start:
        sys.stderr.write("\n")
    typer.secho(f"error: {message}" if code == 2 else message, err=True, fg="red")
    sys.exit(code)


def _close_progress_bars() -> None:
    """End the progress bars a failure left open, so the message starts on a line of its own.

    A bar that the failure's traceback kept alive sits in a reference cycle; collecting it runs its
    close(), which ends its line.
    """
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    import gc

    gc.collect()
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.close()


def os_error_line(e: OSError) -> str:
    """One line for a file-system error: the path, what went wrong, and for a full disk what to do."""
    import errno

    what = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what += " (free some space, then run the command again; nothing committed was lost)"
    where = ", ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {what}" if where else what


#: sqlite's messages for a problem with the machine (disk, permissions), not with pooledir's SQL
_SQLITE_ENVIRONMENT = ("disk is full", "disk i/o error", "readonly database", "unable to open database", "locked")


def sqlite_error_line(e: BaseException) -> str | None:
    """One line for an sqlite error that the machine caused (a full disk, a read-only file) or a damaged file."""
    import sqlite3

    if isinstance(e, sqlite3.OperationalError):
        if any(m in str(e).lower() for m in _SQLITE_ENVIRONMENT):
            return f"the document store failed: {e}"
        return None
    if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, sqlite3.IntegrityError | sqlite3.ProgrammingError):
        where = f"{_opened[-1]}/docs.sqlite" if _opened else "the document store"
        return f"{where} is corrupt: {e}; restore the index folder from a backup or rebuild it"
    return None


#: index folders the command opened, for a message about a damage found after the open
_opened: list[Path] = []


def open_index(path: Path, *, encodes: bool = False, **kwargs: Any) -> PooledIndex:
    """``PooledIndex.open``, remembering the folder so that a later sqlite error can name it.

    ``encodes``: the command encodes text, so an index whose recorded checkpoint is not on this machine
    loads its encoder from ``$POOLEDIR_CHECKPOINT`` (:func:`pooledir.encoder.checkpoint_for_index`).
    """
    from pooledir.pooled_index import PooledIndex

    _opened.append(path)
    encoder = _encoder_from_fallback(path, **kwargs) if encodes else None
    if encoder is not None:
        return PooledIndex.open(path, device=kwargs.get("device", "auto"), encoder=encoder)
    return PooledIndex.open(path, **kwargs)


def _encoder_from_fallback(path: Path, device: str = "auto", **backends: str) -> ColBERTEncoder | None:
    """The encoder of an index built elsewhere, from ``$POOLEDIR_CHECKPOINT``; None when its own is here."""
    from pooledir.cli._common import fallback_checkpoint
    from pooledir.encoder import checkpoint_for_index, encoder_for_index
    from pooledir.index.manifest import read_manifest

    fallback = fallback_checkpoint()
    if fallback is None:
        return None
    manifest = read_manifest(path)
    if checkpoint_for_index(manifest.checkpoint, fallback) != fallback:
        return None
    return encoder_for_index(manifest, device, fallback, **backends)
