"""What several command groups share: option types, the default checkpoint, and the wording of summaries."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pooledir.index_info import IndexInfo
    from pooledir.pooled_index import PooledIndex

Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda[:N].")]
Checkpoint = Annotated[
    str | None,
    typer.Option(help="ColBERT checkpoint folder or hub id (default: $POOLEDIR_CHECKPOINT, else zero-shot MiniLM)."),
]


SplitPassages = Annotated[
    bool,
    typer.Option(
        help="Split documents longer than the checkpoint's doc_maxlen into overlapping passages, indexed under "
        "the document's id and scored by their best passage (default: such documents are truncated)."
    ),
]
PassageStride = Annotated[
    int | None,
    typer.Option(help="Tokens from one passage's start to the next's (implies --split-passages; default: half)."),
]

UseRay = Annotated[
    bool,
    typer.Option("--ray", help='Run on a Ray cluster (needs the extra: pip install "pooledir[distributed]").'),
]
RayAddress = Annotated[
    str | None,
    typer.Option(help="With --ray: the cluster's address (auto: the one `ray start` runs here; default: a new one)."),
]

NProbe = Annotated[
    int | None, typer.Option(help="IVF lists probed per query token (default: the library's SearchParams).")
]
Candidates = Annotated[
    int | None, typer.Option(help="Nearest vectors per query token (default: the library's SearchParams).")
]
Rerank = Annotated[
    int | None, typer.Option(help="Candidates scored by full MaxSim (default: the library's SearchParams).")
]
Prune = Annotated[
    bool,
    typer.Option(
        "--prune",
        help="Centroid-score pruning in format-3 indexes' candidate lists: faster, tuned for MiniLM-ColBERT's "
        "score scale (SearchParams.prune).",
    ),
]
QueryBackend = Annotated[
    str,
    typer.Option(
        help="How queries are encoded: auto (onnx where ONNX Runtime is installed and the device is the CPU, "
        "else torch); torch; onnx (ONNX Runtime on CPU, the same vectors, faster; needs pooledir[onnx]); "
        "onnx-int8 (faster still, but lossy)."
    ),
]
DocumentBackend = Annotated[
    str,
    typer.Option(help="How documents are encoded: torch or onnx (ONNX Runtime on CPU, the same vectors)."),
]


#: ``$POOLEDIR_CHECKPOINT``, one meaning in every command: the checkpoint to use where none is given or found
CHECKPOINT_HELP = (
    "$POOLEDIR_CHECKPOINT is the checkpoint to use where none is given or found: a new build without "
    "--checkpoint encodes with it, and an index whose recorded checkpoint folder is not on this machine (built "
    "elsewhere, served from a container) reads its weights from it (search, add, serve); an index whose "
    "checkpoint is here keeps it."
)


def fallback_checkpoint() -> Path | None:
    """``$POOLEDIR_CHECKPOINT`` (None when unset or empty): see :data:`CHECKPOINT_HELP`."""
    env = os.environ.get("POOLEDIR_CHECKPOINT")
    return Path(env) if env else None


def default_checkpoint() -> Path:
    """A build's checkpoint when none is given: ``$POOLEDIR_CHECKPOINT``, else MiniLM (converted once, cached)."""
    from pooledir.checkpoint import convert_checkpoint, minilm_path

    env = fallback_checkpoint()
    if env is not None:
        return env
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pooledir" / "minilm-colbert-128-plain"
    if not (cache / "artifact.metadata").is_file():
        convert_checkpoint(minilm_path(), cache, dim=128)
    typer.secho(
        f"no --checkpoint given: using the zero-shot MiniLM checkpoint {cache} "
        "(pass a trained ColBERT checkpoint for real retrieval quality)",
        err=True,
        fg="yellow",
    )
    return cache


def return_freed_memory() -> None:
    """Make glibc's malloc hand large freed blocks back to the OS, so a streamed build's RSS stays flat.

    By default glibc raises its mmap threshold each time a large block is freed; the encoder's
    activations (a different size every batch) then land in the heap and RSS ratchets up chunk after
    chunk. Measured here encoding 1,500 SciFact documents alone: 662 -> 825 MB by default, flat at
    542 MB with the threshold fixed at 128 KiB. An explicit MALLOC_MMAP_THRESHOLD_ wins.
    """
    import ctypes

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def resume_command() -> str:
    import shlex

    args = sys.argv[1:]
    return "pooledir " + " ".join(shlex.quote(a) for a in args + ([] if "--resume" in args else ["--resume"]))


def print_long_documents(n_long: int, doc_maxlen: int, passage_stride: int | None) -> None:
    """Say how many documents were longer than ``doc_maxlen`` and what became of them (nothing when none)."""
    if not n_long:
        return
    if passage_stride is None:
        typer.echo(
            f"{n_long} documents were longer than doc_maxlen={doc_maxlen} tokens and were truncated "
            "(see --split-passages)"
        )
    else:
        typer.echo(
            f"{n_long} documents were longer than doc_maxlen={doc_maxlen} tokens and were split into "
            "overlapping passages"
        )


def plural(n: int, word: str) -> str:
    """``n word`` with thousands separators, ``word`` in the plural unless ``n`` is 1."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def holding(idx: PooledIndex) -> str:
    """What an index holds, one wording for every command: 'N documents', with passages 'N documents (M passages)'.

    A passage index stores a short document as one row and a long one as a row per passage; M counts the rows.
    """
    return holding_counts(len(idx), idx.n_rows, idx.config.passage_stride)


def holding_counts(documents: int, rows: int, passage_stride: int | None) -> str:
    """:func:`holding` from the counts (of a build's report, once its index is closed)."""
    if passage_stride is None:
        return plural(documents, "document")
    return f"{plural(documents, 'document')} ({plural(rows, 'passage')})"


def print_summary(info: IndexInfo, what: str) -> None:
    """One line: vectors before and after pooling, their sizes, and the index on disk."""
    before, after = info.vectors_before_pooling, info.vectors
    f16 = 2 * info.dim  # bytes of one float16 vector
    threshold = info.pool_threshold
    pooling = f"x{info.pool_factor}" if threshold is None else f"<= {threshold:g} (adaptive)"
    typer.echo(
        f"{what}: {before} vectors ({before * f16 / 1e6:.1f} MB as float16) -> "
        f"{after} after pooling {pooling} ({after * f16 / 1e6:.1f} MB, {after / max(before, 1):.1%}); "
        f"{info.backend['kind']} index on disk {info.index_bytes / 1e6:.2f} MB at {info.path}"
    )
