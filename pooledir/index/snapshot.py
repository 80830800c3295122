"""The read side: one commit's segments, memory-mapped, and the tables that find a document's vectors.

A :class:`Snapshot` is immutable. Readers keep searching the snapshot they
loaded while other processes write or compact: its segment files stay mapped
(an unlinked file stays readable on Linux while it is mapped), and the store's
pinned read transaction keeps the matching document rows. Loading a newer
commit builds a new snapshot; the old one goes when nothing refers to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pooledir.errors import IndexCorruptError
from pooledir.index.codecs import codec_for
from pooledir.index.plaid import CentroidLane, centroids_of
from pooledir.index.segments import Probe, SegmentReader, live_bitmap, ranges, read_quantizer
from pooledir.search import CandidateSource, TokenAnn
from pooledir.store import DocStore, SegmentRow

if TYPE_CHECKING:
    import faiss

SEGMENTS = "segments"


def segment_path(folder: Path, seg_id: int, suffix: str = ".faiss") -> Path:
    """``segments/<id>.faiss`` (``.pq3`` for a pq3 segment: its codec's suffix; ``.f16``, the exact sidecar)."""
    return folder / SEGMENTS / f"{seg_id:08d}{suffix}"


def quantizer_path(folder: Path, q_id: int) -> Path:
    """``quantizer.<id>.faiss``: a new id each time the index is (re)trained."""
    return folder / f"quantizer.{q_id}.faiss"


@dataclass
class Snapshot:
    """Segments and document tables of one commit.

    ``seg_of[doc_int]`` is the position in ``segments`` of the document's segment (-1: no such
    document), ``start_of``/``count_of`` its first local id there and its number of vectors.
    """

    commit: int
    dim: int
    segments: list[SegmentReader]
    rows: list[SegmentRow]
    quantizer: faiss.IndexIVFPQ | None
    quantizer_id: int | None
    trained_vectors: int
    seg_of: np.ndarray
    start_of: np.ndarray
    count_of: np.ndarray
    n_docs: int
    _keep: list[object] = field(default_factory=list)
    _live: np.ndarray | None = field(default=None, repr=False)
    _centroids: np.ndarray | None = field(default=None, repr=False)  # the quantizer's, float32: shared by snapshots

    @property
    def n_live(self) -> int:
        """Vectors that belong to a document."""
        return int(self.count_of.sum())

    @property
    def n_stored(self) -> int:
        """Vectors in segment files, deleted ones included."""
        return sum(s.n_vectors for s in self.segments)

    # -- search -----------------------------------------------------------------------------------------------
    def live_docs(self) -> np.ndarray:
        """Internal numbers of every document of this commit, ascending (computed once: snapshots are immutable)."""
        if self._live is None:
            self._live = np.flatnonzero(self.seg_of >= 0)
        return self._live

    def centroids(self) -> np.ndarray:
        """The shared quantizer's centroids, float32 (nlist, d): copied once per quantizer, not per query."""
        if self._centroids is None:
            if self.quantizer is None:  # _readers refuses a quantized segment without one: not reachable by input
                raise IndexCorruptError("the index has quantized segments but no quantizer")
            self._centroids = centroids_of(self.quantizer)
        return self._centroids

    def sources(self) -> list[CandidateSource]:
        """Candidate generation per kind of segment: the centroid lane (pq3), per-token ANN (pq, flat)."""
        lane = [s for s in self.segments if codec_for(s.kind).centroid_lane and s.n_live]
        rest = [s for s in self.segments if not codec_for(s.kind).centroid_lane and s.n_live]
        out: list[CandidateSource] = [CentroidLane(self.centroids(), lane)] if lane else []
        return out + ([TokenAnn(partial(self.ann, segments=rest))] if rest else [])

    def ann(
        self, tokens: np.ndarray, k: int, nprobe: int, segments: list[SegmentReader] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, doc_ints) per token over every segment (or ``segments``); the quantizer runs once.

        Deleted vectors are never returned (a bitmap over local ids, every kind), so they never take a
        candidate's place. Missing hits have doc -1.
        """
        segments = self.segments if segments is None else segments
        probe = Probe(np.ascontiguousarray(tokens, dtype=np.float32))
        if self.quantizer is not None and any(codec_for(s.kind).uses_quantizer for s in segments):
            probe.coarse, probe.assign = self.quantizer.quantizer.search(probe.x, min(nprobe, self.quantizer.nlist))
        x = probe.x
        scores, docs = [], []
        for seg in segments:
            if seg.n_live == 0:
                continue
            D, ids = seg.search(probe, k)
            scores.append(D)
            docs.append(seg.docs_of(ids))
        if not scores:
            return np.zeros((len(x), k), np.float32), np.full((len(x), k), -1, np.int64)
        S, ids = np.hstack(scores), np.hstack(docs)
        S = np.where(ids < 0, -np.inf, S)
        if S.shape[1] > k:
            part = np.argpartition(-S, k - 1, axis=1)[:, :k]
            S, ids = np.take_along_axis(S, part, 1), np.take_along_axis(ids, part, 1)
        elif S.shape[1] < k:
            pad = k - S.shape[1]
            S = np.hstack([S, np.full((len(x), pad), -np.inf, np.float32)])
            ids = np.hstack([ids, np.full((len(x), pad), -1, np.int64)])
        order = np.argsort(-S, axis=1, kind="stable")
        S, ids = np.take_along_axis(S, order, 1), np.take_along_axis(ids, order, 1)
        return np.where(ids < 0, 0.0, S).astype(np.float32), ids

    def fetch(self, doc_ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed float32 vectors of the documents, in the order given, and their offsets."""
        doc_ints = np.asarray(doc_ints, dtype=np.int64)
        counts = self.count_of[doc_ints]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        segs = self.seg_of[doc_ints]
        if len(segs) and np.all(segs == segs[0]):  # one segment (the usual case): decoded in place, no scatter
            return self.segments[segs[0]].reconstruct(ranges(self.start_of[doc_ints], counts)), offsets
        out = np.empty((int(offsets[-1]), self.dim), dtype=np.float32)
        for s in np.unique(segs):
            mine = np.flatnonzero(segs == s)
            local = ranges(self.start_of[doc_ints[mine]], counts[mine])
            out[ranges(offsets[mine], counts[mine])] = self.segments[s].reconstruct(local)
        return out, offsets

    def vectors_of_segment(self, i: int, chunk: int = 65_536) -> Iterator[np.ndarray]:
        """Yield the live vectors of segment ``i`` in document order, in chunks (decoded or exact)."""
        seg = self.segments[i]
        local = ranges(seg.starts, seg.counts)
        for start in range(0, len(local), chunk):
            yield seg.reconstruct(local[start : start + chunk])

    def after_write(
        self,
        commit: int,
        deleted: np.ndarray,
        added: SegmentReader | None = None,
        added_row: SegmentRow | None = None,
    ) -> Snapshot:
        """The snapshot of the next commit when it only deleted documents and added one segment.

        What :func:`load_snapshot` would build, in O(batch + touched segments' documents) instead of
        a scan of every document: untouched readers (files, bitmaps, DirectMaps) are shared, a
        segment that lost documents gets a new reader over the same file with a copied bitmap.
        """
        deleted = np.asarray(deleted, dtype=np.int64)
        deleted = deleted[(deleted < len(self.seg_of))]
        deleted = deleted[self.seg_of[deleted] >= 0]
        size = len(self.seg_of)
        if added is not None and len(added.doc_ints):
            size = max(size, int(added.doc_ints.max()) + 1)
        seg_of = np.full(size, -1, dtype=np.int32)
        start_of = np.zeros(size, dtype=np.int64)
        count_of = np.zeros(size, dtype=np.int64)
        seg_of[: len(self.seg_of)] = self.seg_of
        start_of[: len(self.start_of)] = self.start_of
        count_of[: len(self.count_of)] = self.count_of
        segments = list(self.segments)
        for s in np.unique(seg_of[deleted]):
            segments[s] = segments[s].without(deleted[seg_of[deleted] == s])
        seg_of[deleted] = -1
        start_of[deleted] = 0
        count_of[deleted] = 0
        rows = list(self.rows)
        if added is not None:
            seg_of[added.doc_ints] = len(segments)
            start_of[added.doc_ints] = added.starts
            count_of[added.doc_ints] = added.counts
            if added_row is None:
                raise ValueError("after_write needs the added segment's row")  # a caller's bug, not input
            segments.append(added)
            rows.append(added_row)
        return Snapshot(
            commit=commit,
            dim=self.dim,
            segments=segments,
            rows=rows,
            quantizer=self.quantizer,
            quantizer_id=self.quantizer_id,
            trained_vectors=self.trained_vectors,
            seg_of=seg_of,
            start_of=start_of,
            count_of=count_of,
            n_docs=self.n_docs - len(deleted) + (len(added.doc_ints) if added is not None else 0),
            _centroids=self._centroids,
        )

    def verify(self, full: bool = False) -> None:
        """Raise :class:`IndexCorruptError` if a segment file changed on disk since it was checked.

        One ``stat`` per segment (a changed file is read and checked again); ``full`` re-reads
        every file against its checksum footer.
        """
        files = {id(s.file): s.file for s in self.segments if s.file is not None}
        for f in files.values():
            f.verify(full)

    def close(self) -> None:
        """Release the segment mappings."""
        for s in self.segments:
            s.close()


def load_snapshot(folder: Path, store: DocStore, dim: int, previous: Snapshot | None = None) -> Snapshot:
    """Build the snapshot of the commit ``store`` has pinned (the caller pins and retries).

    Segment files (and the quantizer) that ``previous`` already mapped are reused, not re-opened.
    """
    commit = _int_meta(store, "commit", "0")
    q_id = _int_meta(store, "quantizer", None)
    centroids = None
    if previous is not None and previous.quantizer_id == q_id:
        quantizer, centroids = previous.quantizer, previous._centroids
        reusable = {r.seg_id: r for r in previous.segments if r.file is not None}
    else:
        quantizer = read_quantizer(quantizer_path(folder, q_id)) if q_id is not None else None
        reusable = {}
    if quantizer is not None and quantizer.d != dim:
        raise IndexCorruptError(f"{folder}: the quantizer has dimension {quantizer.d}, the manifest says {dim}")
    rows = store.segments()
    if previous is not None and reusable and commit >= previous.commit:
        return _refresh(folder, store, dim, previous, commit, rows)
    layout = store.layout()  # doc_int, segment, seg_start, n_vectors; sorted by segment, start
    size = int(layout[:, 0].max()) + 1 if len(layout) else 0
    seg_of = np.full(size, -1, dtype=np.int32)
    start_of = np.zeros(size, dtype=np.int64)
    count_of = np.zeros(size, dtype=np.int64)
    known = {r.seg_id: i for i, r in enumerate(rows)}
    unknown = set(np.unique(layout[:, 1]).tolist()) - set(known)
    if unknown:
        raise IndexCorruptError(f"{folder}: documents point at segment(s) {sorted(unknown)[:5]} no commit lists")

    def layout_of(seg_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(layout[:, 1], [seg_id, seg_id + 1])
        return layout[lo:hi, 0], layout[lo:hi, 2], layout[lo:hi, 3]

    readers = _readers(folder, dim, rows, quantizer, q_id, reusable, layout_of, (seg_of, start_of, count_of))
    return Snapshot(
        commit=commit,
        dim=dim,
        segments=readers,
        rows=rows,
        quantizer=quantizer,
        quantizer_id=q_id,
        trained_vectors=_int_meta(store, "trained_vectors", "0"),
        seg_of=seg_of,
        start_of=start_of,
        count_of=count_of,
        n_docs=len(layout),
        _centroids=centroids,
    )


def _refresh(
    folder: Path, store: DocStore, dim: int, previous: Snapshot, commit: int, rows: list[SegmentRow]
) -> Snapshot:
    """A newer commit with the same quantizer, from ``previous``: reads only new or touched segments' rows.

    Segments no commit after ``previous`` touched (lost documents) keep their readers; documents
    of dropped or touched segments are cleared, then those of new or touched ones are read
    (one indexed query per segment), so a refresh after another process's small write costs
    O(what it changed), not a scan of every document.
    """
    touched = store.touched_since(previous.commit)
    size = max(len(previous.seg_of), store.max_doc_int() + 1)
    old = {r.seg_id: r for r in previous.segments}
    pos = {r.seg_id: i for i, r in enumerate(rows)}
    remap = np.array([pos.get(r.seg_id, -1) for r in previous.segments] + [-1], dtype=np.int32)
    seg_of = np.full(size, -1, dtype=np.int32)
    start_of = np.zeros(size, dtype=np.int64)
    count_of = np.zeros(size, dtype=np.int64)
    seg_of[: len(previous.seg_of)] = remap[previous.seg_of]  # -1 indexes the trailing -1
    start_of[: len(previous.start_of)] = previous.start_of
    count_of[: len(previous.count_of)] = previous.count_of
    keep = {
        r.seg_id
        for r in rows
        if r.seg_id in old
        and r.seg_id not in touched
        and old[r.seg_id].kind == r.kind
        and old[r.seg_id].n_vectors == r.n_vectors
        and old[r.seg_id].file is not None
    }
    for reader in previous.segments:
        if reader.seg_id not in keep:
            seg_of[reader.doc_ints] = -1
            start_of[reader.doc_ints] = 0
            count_of[reader.doc_ints] = 0

    def layout_of(seg_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part = store.segment_layout(seg_id)  # doc_int, seg_start, n_vectors, by start: one indexed query
        return part[:, 0], part[:, 1], part[:, 2]

    readers = _readers(
        folder,
        dim,
        rows,
        previous.quantizer,
        previous.quantizer_id,
        old,
        layout_of,
        (seg_of, start_of, count_of),
        keep,
    )
    return Snapshot(
        commit=commit,
        dim=dim,
        segments=readers,
        rows=rows,
        quantizer=previous.quantizer,
        quantizer_id=previous.quantizer_id,
        trained_vectors=_int_meta(store, "trained_vectors", "0"),
        seg_of=seg_of,
        start_of=start_of,
        count_of=count_of,
        n_docs=sum(len(r.doc_ints) for r in readers),
        _centroids=previous._centroids,
    )


def _readers(
    folder: Path,
    dim: int,
    rows: list[SegmentRow],
    quantizer: faiss.IndexIVFPQ | None,
    q_id: int | None,
    reusable: dict[int, SegmentReader],
    layout_of: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    tables: tuple[np.ndarray, np.ndarray, np.ndarray],
    keep: Set[int] = frozenset(),
) -> list[SegmentReader]:
    """One reader per committed segment, and each document's place in ``tables`` (seg_of, start_of, count_of).

    ``layout_of(seg_id)`` gives the segment's (doc_ints, starts, counts) in start order; readers in
    ``keep`` are taken as they are (their documents are already in ``tables``); a segment whose file
    a reader in ``reusable`` already maps gets a new reader over that file, any other is opened. On
    failure the files opened here are closed again (reused readers still serve the previous snapshot).
    """
    seg_of, start_of, count_of = tables
    readers: list[SegmentReader] = []
    fresh: list[SegmentReader] = []
    try:
        for i, r in enumerate(rows):
            if r.seg_id in keep:
                readers.append(reusable[r.seg_id])
                continue
            doc_ints, starts, counts = layout_of(r.seg_id)
            if len(doc_ints) and (
                starts[-1] + counts[-1] > r.n_vectors or np.any(starts[1:] < starts[:-1] + counts[:-1])
            ):
                raise IndexCorruptError(
                    f"{folder}: documents of segment {r.seg_id} overlap or run past its {r.n_vectors} vectors; "
                    "the index is mismatched"
                )
            codec = codec_for(r.kind)
            if codec.uses_quantizer and (quantizer is None or r.quantizer != q_id):
                raise IndexCorruptError(f"{folder}: segment {r.seg_id} was encoded with another quantizer")
            old = reusable.get(r.seg_id)
            if old is not None and old.file is not None and old.kind == r.kind and old.n_vectors == r.n_vectors:
                reader = old.with_documents(doc_ints, starts, counts)
            else:
                exact = segment_path(folder, r.seg_id, ".f16") if r.exact else None
                file = codec.open(segment_path(folder, r.seg_id, codec.suffix), r.n_vectors, dim, quantizer, exact)
                live = live_bitmap(r.n_vectors, starts, counts)
                reader = SegmentReader(r.seg_id, r.kind, file, r.n_vectors, starts, counts, doc_ints, live)
                fresh.append(reader)
            readers.append(reader)
            seg_of[doc_ints] = i
            start_of[doc_ints] = starts
            count_of[doc_ints] = counts
    except BaseException:
        for reader in fresh:
            reader.close()
        raise
    return readers


def _int_meta(store: DocStore, key: str, default: str | None) -> Any:  # int, or None without a default
    """A number the store keeps in its meta table; a value that is not one means a corrupt index."""
    value = store.get_meta(key, default)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        raise IndexCorruptError(f"{store.path} is corrupt: its {key} {value!r} is not a number") from None
