"""Segments built outside the index (other processes, other machines) and attached in one commit.

A detached segment is a folder::

    segment.json    {"format": "pooledir-segment", "format_version": 1, "kind": "pq3" | "pq" | "flat",
                     "dim", "n_vectors", "n_docs", "quantizer": fingerprint of the quantizer used | null,
                     "exact": whether segment.f16 is there}
    segment.pq3     the vectors, local ids 0..n-1 in document order (the segment file format of its kind:
                    ``segment.faiss`` for flat and format 2 pq segments)
    segment.f16     optional float16 copy, same rows (when the index keeps exact vectors)
    docs.jsonl      one {"id", "text", "metadata", "n_tokens", "n_vectors"} per document, in segment order

:func:`build_segment` writes one against an index's current quantizer (read, never
changed); :func:`attach` checks every file and switches them all in with one commit.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pooledir.corpus import Document, check_documents
from pooledir.durable import fsync_dir, write_durably
from pooledir.errors import IndexCorruptError, InputError
from pooledir.index.codecs import SegmentCodec
from pooledir.index.folder import IndexFolder, open_folder
from pooledir.index.segments import Faiss, SegmentReader, file_digest, live_bitmap, write_array
from pooledir.index.snapshot import quantizer_path, segment_path
from pooledir.store import NewDoc, SegmentRow

FORMAT = "pooledir-segment"
FORMAT_VERSION = 1


class _Checked(NamedTuple):
    """A detached segment checked against the index: its folder, segment.json, docs.jsonl rows, row starts."""

    path: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    starts: np.ndarray


def build_segment(
    out_dir: str | os.PathLike[str],
    index_path: str | os.PathLike[str],
    documents: Sequence[Document],
    vectors: Sequence[np.ndarray],
    n_tokens: Sequence[int] | None = None,
) -> Path:
    """Write a detached segment of already-pooled ``vectors`` encoded for the index at ``index_path``.

    Safe beside writers of that index: only its manifest and current quantizer are read.
    """
    docs = check_documents(documents, "documents")
    if len(vectors) != len(docs) or (n_tokens is not None and len(n_tokens) != len(docs)):
        raise InputError(
            f"got {len(vectors)} vector arrays and {len(n_tokens or docs)} counts for {len(docs)} documents"
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; pick a new folder for the segment")
    folder = open_folder(Path(index_path))
    try:
        dim, config, snap = folder.dim, folder.config, folder.snapshot
        for d, v in zip(docs, vectors):
            if v.ndim != 2 or v.shape[1] != dim or len(v) == 0:
                raise InputError(f"document {d.id!r}: vectors of shape {v.shape} are not (n >= 1, {dim})")
        quantizer = snap.quantizer if config.backend == "ivfpq" else None
        codec = folder.target_codec(quantizer)
        digest = None
        if quantizer is not None and snap.quantizer_id is not None:  # a quantizer is loaded from its id's file
            digest = file_digest(quantizer_path(folder.path, snap.quantizer_id))
        keep_exact = config.keep_exact
        packed = np.concatenate(vectors).astype(np.float32, copy=False)
        out.mkdir(parents=True, exist_ok=True)
        codec.write(codec.encode([packed], dim, quantizer), out / f"segment{codec.suffix}")
        if keep_exact:
            write_array(packed.astype(np.float16), out / "segment.f16")
    finally:
        folder.close()
    with open(out / "docs.jsonl", "w") as f:
        for i, (d, v) in enumerate(zip(docs, vectors)):
            n = int(n_tokens[i]) if n_tokens is not None else len(v)
            row = {"id": d.id, "text": d.text, "metadata": d.metadata, "n_tokens": n, "n_vectors": len(v)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": codec.kind,
        "dim": dim,
        "n_vectors": len(packed),
        "n_docs": len(docs),
        "quantizer": digest,
        "exact": keep_exact,
    }
    (out / "segment.json").write_text(json.dumps(meta, indent=2))  # written last: its presence means complete
    fsync_dir(out)
    return out


def _read_detached(path: Path, dim: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """segment.json and docs.jsonl of a detached segment, checked against each other."""
    try:
        meta = json.loads((path / "segment.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is not a detached segment: segment.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}/segment.json is corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}/segment.json is not a pooledir segment (format {FORMAT} version {FORMAT_VERSION})")
    if meta.get("dim") != dim:
        raise InputError(f"{path} holds {meta.get('dim')}-d vectors; this index holds {dim}-d ones")
    rows = []
    try:
        with open(path / "docs.jsonl") as f:
            for line in f:
                r = json.loads(line)
                rows.append(r)
                if not isinstance(r.get("n_vectors"), int) or r["n_vectors"] < 1 or not isinstance(r.get("id"), str):
                    raise InputError(f"{path}/docs.jsonl line {len(rows)}: bad id or n_vectors")
    except FileNotFoundError:
        raise InputError(f"{path}: docs.jsonl is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}/docs.jsonl line {len(rows) + 1} is corrupt: {e}") from None
    total = sum(r["n_vectors"] for r in rows)
    if len(rows) != meta.get("n_docs") or total != meta.get("n_vectors"):
        raise InputError(
            f"{path}: docs.jsonl lists {len(rows)} documents with {total} vectors, but segment.json says "
            f"{meta.get('n_docs')} documents with {meta.get('n_vectors')} vectors; rebuild the segment"
        )
    return meta, rows


def _copy_durably(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        write_durably(dst, lambda out: shutil.copyfileobj(f, out, 1 << 22))


def attach(folder: IndexFolder, paths: Sequence[Path]) -> int:
    """Check detached segments, copy them in, and reference them all in one commit; returns documents attached."""
    if not paths:
        raise InputError("no segment folders given")
    with folder.writing():
        snap, config = folder.snapshot, folder.config
        want = folder.target_codec(snap.quantizer if config.backend == "ivfpq" else None)
        digest = _quantizer_digest(folder) if want.uses_quantizer else None
        seen: set[str] = set()
        checked = [_check_detached(folder, path, want, digest, seen) for path in paths]
        new_files, docs, segs = _copy_in(folder, checked, want)
        replaced = folder.store.lookup([d.id for d in docs])

        def change() -> None:
            folder.store.delete(replaced.values())
            folder.store.insert_many(docs)
            for s in segs:
                folder.store.add_segment(s)

        folder._commit(new_files, change)
    folder.maintain()
    return len(docs)


def _quantizer_digest(folder: IndexFolder) -> str:
    """The digest of the current quantizer's file (a codec that uses a quantizer implies one is installed)."""
    q_id = folder.snapshot.quantizer_id
    if q_id is None:
        raise IndexCorruptError(f"{folder.path}: its segments use a quantizer, but none is recorded in the index")
    return file_digest(quantizer_path(folder.path, q_id))


def _check_detached(
    folder: IndexFolder, path: Path, want: SegmentCodec, digest: str | None, seen: set[str]
) -> _Checked:
    """(path, meta, rows, starts) of one detached segment, checked against the index and the ``seen`` ids."""
    config, snap = folder.config, folder.snapshot
    meta, rows = _read_detached(path, folder.dim)
    if meta["kind"] != want.kind or meta.get("quantizer") != digest:
        raise InputError(
            f"{path} was built for another quantizer ({meta['kind']}, {meta.get('quantizer')}) than this "
            f"index's ({want.kind}, {digest}); build it again against the index as it is now"
        )
    if bool(meta.get("exact")) != config.keep_exact:
        raise InputError(f"{path}: exact copy {bool(meta.get('exact'))}, the index keeps_exact={config.keep_exact}")
    dupes = seen & {r["id"] for r in rows}
    if dupes or len({r["id"] for r in rows}) != len(rows):
        raise InputError(f"{path}: document id {sorted(dupes)[:1] or 'repeated'} appears twice in the segments")
    seen |= {r["id"] for r in rows}
    counts = np.array([r["n_vectors"] for r in rows], dtype=np.int64)
    starts = np.cumsum(counts) - counts
    exact = path / "segment.f16" if config.keep_exact else None
    try:  # maps the file and checks kind, dimension, vector count and quantizer shape
        file = want.open(path / f"segment{want.suffix}", meta["n_vectors"], folder.dim, snap.quantizer, exact)
        live = live_bitmap(meta["n_vectors"], starts, counts)
        SegmentReader(-1, want.kind, file, meta["n_vectors"], starts, counts, np.arange(len(rows)), live).close()
    except (IndexCorruptError, FileNotFoundError, ValueError) as e:
        raise InputError(f"{path}: the segment file is unreadable or does not match docs.jsonl: {e}") from None
    return _Checked(path, meta, rows, starts)


def _copy_in(
    folder: IndexFolder, checked: list[_Checked], want: SegmentCodec
) -> tuple[list[Path], list[NewDoc], list[SegmentRow]]:
    """Copy checked segments into the folder under new ids (fsynced); their files, documents and segment rows.

    On any failure the files copied so far are removed.
    """
    config, snap = folder.config, folder.snapshot
    new_files: list[Path] = []
    docs: list[NewDoc] = []
    segs: list[SegmentRow] = []
    next_id = folder.store.next_segment_id()
    try:
        for j, (path, meta, rows, starts) in enumerate(checked):
            seg_id = next_id + j
            new_files.append(segment_path(folder.path, seg_id, want.suffix))
            _copy_durably(path / f"segment{want.suffix}", new_files[-1])
            if config.keep_exact:
                new_files.append(segment_path(folder.path, seg_id, ".f16"))
                _copy_durably(path / "segment.f16", new_files[-1])
            q = snap.quantizer_id if want.uses_quantizer else None
            segs.append(SegmentRow(seg_id, meta["kind"], meta["n_vectors"], len(rows), q, config.keep_exact))
            docs += [
                NewDoc(
                    r["id"],
                    r.get("text", ""),
                    r.get("metadata") or {},
                    int(r.get("n_tokens", r["n_vectors"])),
                    r["n_vectors"],
                    seg_id,
                    int(s),
                )
                for r, s in zip(rows, starts)
            ]
        fsync_dir(segment_path(folder.path, 0).parent)
    except BaseException:
        for f in new_files:
            f.unlink(missing_ok=True)
        raise
    return new_files, docs, segs


def train_for_attach(folder: IndexFolder, sample: np.ndarray, n_total: int) -> None:
    """Train the quantizer of an index that holds no vectors yet, on ``sample``, in one commit.

    For builds that train once and then build every segment elsewhere against that quantizer
    (:func:`build_segment`) before :func:`attach` switches them in: ``n_total`` is how many vectors
    the segments will hold (it sizes the IVF lists, ≈4·√N, and tells re-training the index is as
    large as it was trained for).
    """
    from pooledir.index.segments import train_quantizer

    c = folder.config
    if len(sample) == 0:
        raise InputError("no vectors to train on")
    legacy = folder.pq_kind == "pq"
    quantizer = train_quantizer(sample, n_total, c.nlist, c.pq_m, c.pq_nbits, folder.use_gpu, legacy)
    install_quantizer(folder, quantizer, n_total)


def install_quantizer(folder: IndexFolder, quantizer: Faiss, n_total: int) -> None:
    """Make a trained quantizer the current one of an index that holds no vectors yet, in one commit.

    Several indexes given the same quantizer (the partitions of one corpus) encode vectors alike.
    """
    from pooledir.index.segments import write_faiss

    with folder.writing():
        snap, c = folder.snapshot, folder.config
        if c.backend != "ivfpq":
            raise InputError(f"the {c.backend} backend has no quantizer to train")
        if snap.n_stored:
            raise InputError(f"{folder.path} already holds {snap.n_stored} vectors; train before anything is added")
        if quantizer.d != folder.dim:
            raise InputError(f"a {quantizer.d}-d quantizer cannot encode this index's {folder.dim}-d vectors")
        q_id = (snap.quantizer_id or 0) + 1
        path = quantizer_path(folder.path, q_id)
        write_faiss(quantizer, path)
        fsync_dir(folder.path)

        def change() -> None:
            folder.store.set_meta("quantizer", str(q_id))
            folder.store.set_meta("trained_vectors", str(n_total))

        folder._commit([path], change)
