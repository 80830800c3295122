"""The write side of an index folder: segments in, segments merged, one sqlite commit each time.

Folder layout (format_version 3; a format 2 folder has ``pq`` segments, ``<id>.faiss``)::

    manifest.json            format, config, encoder (written once, at creation)
    docs.sqlite              documents, the live segments, the commit counter, the current quantizer
    quantizer.<q>.faiss      trained, empty IVF-PQ: coarse centroids + PQ codebooks (a new <q> per training)
    segments/<id>.pq3        immutable pq3 segment files (codes document-major + inverted rows), local ids 0..n-1
    segments/<id>.faiss      immutable flat (float32) or format 2 pq segment files
    segments/<id>.f16        optional exact float16 copy of a segment's vectors (keep_exact)
    .lock                    serialises writers across processes (flock; a build holds it from start to end)

The protocol, for every write (add, delete, merge, compaction, training, attach):

1. take the lock and load the newest commit;
2. write any new file under a fresh id (temp name, fsync, rename, fsync the folder);
3. one sqlite transaction changes the document rows, the segment rows and the counter;
4. only then unlink files the commit no longer references.

A crash before 3 leaves unreferenced files, removed by the next writer (only names
this protocol makes: other files in the folder are the user's); a crash after 3
leaves the new commit complete. Readers never see a file change: files
are never rewritten, and the ones they map stay readable after the unlink.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from pooledir.durable import ctrl_c_deferred, fsync_dir
from pooledir.errors import IndexCorruptError, InputError
from pooledir.index.codecs import SegmentCodec, codec_for
from pooledir.index.manifest import FORMAT_VERSION, IndexConfig, read_manifest
from pooledir.index.segments import (
    Faiss,
    SegmentReader,
    planned_nlist,
    ranges,
    train_quantizer,
    write_array,
    write_faiss,
)
from pooledir.index.snapshot import SEGMENTS, Snapshot, load_snapshot, quantizer_path, segment_path
from pooledir.store import DocStore, NewDoc, SegmentRow

log = logging.getLogger(__name__)

#: what a write that only deleted documents (and added one segment) did: deleted doc_ints (, reader, row)
_Delta: TypeAlias = tuple[np.ndarray] | tuple[np.ndarray, SegmentReader, SegmentRow]

#: vectors decoded at a time while re-encoding (bounds the memory of compaction and training)
CHUNK = 262_144
#: segments under this many vectors are "small": they count apart for tiered merging (see merge_choice)
TAIL_VECTORS = 65_536
#: writes of fewer documents than this leave the sqlite WAL to sqlite's own checkpoints
SMALL_WRITE = 64
#: the only file names a write may remove when no commit refers to them (what segment_path, quantizer_path
#: and their temp files are named): anything else in the folder (a user's backup, notes) is left alone
OWN_SEGMENT_FILE = re.compile(r"\d{8,}\.(faiss|pq3|f16)(\.tmp)?")
OWN_ROOT_FILE = re.compile(r"quantizer\.\d+\.faiss(\.tmp)?")
LOCK_FILE = ".lock"

_held = threading.local()  # folder locks this thread holds: {lock file: depth}


class FolderBusyError(InputError):
    """Another process (or thread) holds the folder's writer lock and the caller would not wait."""


@contextmanager
def folder_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold the folder's writer lock (``flock`` on ``.lock``); re-entrant within one thread.

    Re-entrant so that a build, which holds the lock from its first file to its end, can write
    through :meth:`IndexFolder.writing` (a second ``flock`` on a new descriptor would wait for itself).
    ``wait=False`` raises :class:`FolderBusyError` at once when someone else holds it.
    """
    key = os.path.realpath(path / LOCK_FILE)
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if key in depth:
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    with open(key, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise FolderBusyError(
                f"{path} is being written by another pooledir process (it holds {path / LOCK_FILE}); "
                "wait for it to finish, or pick another folder"
            ) from None
        depth[key] = 1
        try:
            yield
        finally:
            del depth[key]


def read_only_error(path: Path) -> InputError:
    """The error every write to a folder this process cannot write raises."""
    return InputError(
        f"{path} is read-only (a read-only file system, or no write permission): search and info work, "
        "but adding, deleting and compacting need a writable folder"
    )


@dataclass(frozen=True)
class Batch:
    """Documents to write, each with its pooled vectors (float32 or float16, (n_i, dim))."""

    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    n_tokens: list[int]
    vectors: list[np.ndarray]
    #: more ids whose rows this batch replaces (a long document's old passages), deleted in the same commit
    replaces: tuple[str, ...] = ()


class IndexFolder:
    """One index folder: its store, its current snapshot and the writes that change them."""

    def __init__(
        self,
        path: Path,
        store: DocStore,
        config: IndexConfig,
        dim: int,
        use_gpu: bool = False,
        format_version: int | None = None,
    ) -> None:
        self.path = path
        self.store = store
        self.config = config
        self.dim = dim
        self.use_gpu = use_gpu
        if format_version is None:
            format_version = _manifest_version(path)
        self.format_version = format_version
        #: the kind of the quantized segments this folder writes: format 2 folders keep writing ``pq``
        self.pq_kind = "pq3" if format_version >= 3 else "pq"
        self._delta: _Delta | None = None  # what the write in progress did, for the next snapshot
        self._ctrl_c_held = ExitStack()  # from a write's commit to its snapshot (see _commit)
        self.snapshot: Snapshot = self._load(None)

    @classmethod
    def open(
        cls, path: Path, config: IndexConfig, dim: int, use_gpu: bool = False, format_version: int | None = None
    ) -> IndexFolder:
        """Open the document store of ``path`` and load its snapshot; a corrupt store raises IndexCorruptError.

        sqlite's OperationalError (disk full, I/O, permissions) is the machine's problem and passes through.
        """
        if not (path / "docs.sqlite").is_file():
            raise IndexCorruptError(f"{path}: docs.sqlite is missing")
        try:
            store = DocStore(path / "docs.sqlite")
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:
            raise IndexCorruptError(f"{path}/docs.sqlite is corrupt: {e}") from None
        try:
            return cls(path, store, config, dim, use_gpu=use_gpu, format_version=format_version)
        except sqlite3.OperationalError:
            store.close()
            raise
        except sqlite3.DatabaseError as e:
            store.close()
            raise IndexCorruptError(f"{path}/docs.sqlite is corrupt: {e}") from None
        except BaseException:
            store.close()
            raise

    # -- reading ----------------------------------------------------------------------------------------------
    def _load(self, previous: Snapshot | None, attempts: int = 20) -> Snapshot:
        """Pin the newest commit and map its files; a file unlinked under us means a newer commit: retry.

        Files ``previous`` (the current snapshot; None when opening) already maps are reused (no re-map, the
        DirectMap kept).
        """
        for _ in range(attempts):
            self.store.pin()
            try:
                return load_snapshot(self.path, self.store, self.dim, previous=previous)
            except FileNotFoundError:
                continue
        raise IndexCorruptError(f"{self.path}: a file the latest commit lists is missing")

    def is_stale(self) -> bool:
        """True when another process committed since this snapshot was loaded."""
        return self.store.latest_commit() != self.snapshot.commit

    def refresh(self) -> bool:
        """Load the newest commit if there is one; returns True when something changed."""
        if not self.is_stale():
            return False
        with ctrl_c_deferred():  # the store pinned at the new commit and the snapshot showing it, or neither
            self.snapshot = self._load(self.snapshot)
        return True

    # -- the write protocol -----------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise InputError when this process cannot write the folder (checked before costly work, e.g. encoding)."""
        if self.store.read_only:
            raise read_only_error(self.path)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the folder's write lock with the newest commit loaded; load the commit made, whatever happens.

        A write that only deleted documents and added one segment leaves ``self._delta`` (deleted
        doc_ints, the new segment's reader and row): the next snapshot is derived from the current
        one in O(batch); anything else (merges, training, errors) loads the commit from disk.
        """
        self.check_writable()
        with folder_lock(self.path):
            self.refresh()
            self._remove_unreferenced()
            self._delta = None
            done = False
            try:
                yield
                done = True
            finally:
                with self._ctrl_c_held:  # a Ctrl-C held back since a commit (see _commit) lands after its snapshot
                    delta, self._delta = self._delta, None
                    self.snapshot = self._next_snapshot(delta if done else None)

    def _next_snapshot(self, delta: _Delta | None) -> Snapshot:
        old = self.snapshot
        self.store.pin()
        commit = int(self.store.get_meta("commit", "0"))
        if commit == old.commit:
            return old
        if delta is not None and commit == old.commit + 1:
            return old.after_write(commit, *delta)
        return self._load(self.snapshot)

    def _commit(self, new_files: list[Path], change: Callable[[], object], fold: bool = True) -> None:
        """Run ``change`` (row edits) and bump the counter in one transaction; on error drop ``new_files``.

        ``fold``: then truncate the sqlite WAL (after bulk writes, so the folder holds its real size);
        small writes leave it to sqlite's automatic checkpoint, sparing them the extra fsyncs.
        A committed transaction is durable in the WAL either way.

        From here to the new snapshot's installation at the end of :meth:`writing` a Ctrl-C is held back: the
        writer never shows the old snapshot over the new commit. Any other error after sqlite committed leaves
        the files: they are dropped only when the counter on disk shows the commit did not land.
        """
        self._ctrl_c_held.enter_context(ctrl_c_deferred())
        before = self.store.latest_commit()  # the folder lock is held: no one else moves it meanwhile
        try:
            with self.store.transaction():
                change()
                self.store.bump_commit()
        except BaseException:
            self.store.end_transaction()  # one an interrupt left open (between BEGIN and COMMIT)
            if not self._landed(before):
                for f in new_files:
                    f.unlink(missing_ok=True)
            raise
        if fold:
            self.store.checkpoint()

    def _landed(self, before: int) -> bool:
        """Whether a commit after ``before`` is on disk.

        True when that cannot be read: the files are kept then, and the next write removes them if no commit
        lists them.
        """
        try:
            return self.store.latest_commit() != before
        except sqlite3.Error:
            return True

    def _remove_unreferenced(self) -> None:
        """Remove segment and quantizer files the commit does not refer to (a crashed write, or dropped ones).

        Only files named as this module names them are candidates (see OWN_SEGMENT_FILE, OWN_ROOT_FILE).
        """
        seg_dir = self.path / SEGMENTS
        seg_dir.mkdir(exist_ok=True)
        keep = {segment_path(self.path, r.seg_id, codec_for(r.kind).suffix).name for r in self.snapshot.rows}
        keep |= {segment_path(self.path, r.seg_id, ".f16").name for r in self.snapshot.rows if r.exact}
        q = self.snapshot.quantizer_id
        if q is not None:
            keep.add(quantizer_path(self.path, q).name)
        removed = False
        for folder, own in ((seg_dir, OWN_SEGMENT_FILE), (self.path, OWN_ROOT_FILE)):
            for f in folder.iterdir():
                if own.fullmatch(f.name) and f.name not in keep and not f.is_dir():
                    f.unlink(missing_ok=True)
                    removed = True
        if removed:
            fsync_dir(seg_dir)
            fsync_dir(self.path)

    def _write_segment_files(
        self, seg_id: int, codec: SegmentCodec, data: object, exact: np.ndarray | None
    ) -> list[Path]:
        files = [segment_path(self.path, seg_id, codec.suffix)]
        try:
            codec.write(data, files[0])
            if exact is not None:
                files.append(segment_path(self.path, seg_id, ".f16"))
                write_array(exact.astype(np.float16), files[1])
        except BaseException:
            for f in files:
                f.unlink(missing_ok=True)
            raise
        return files

    def _target_quantizer(self) -> Faiss | None:
        """The quantizer new vectors are encoded with: None = keep them exact (flat backend, or not yet trained)."""
        return self.snapshot.quantizer if self.config.backend == "ivfpq" else None

    def target_codec(self, quantizer: Faiss | None) -> SegmentCodec:
        """The codec new segments are written with: flat without a quantizer, else this folder's format's."""
        return codec_for("flat" if quantizer is None else self.pq_kind)

    # -- writes -----------------------------------------------------------------------------------------------
    def upsert(self, batch: Batch) -> int:
        """Write the batch as one new segment; documents with known ids are replaced. Returns how many replaced."""
        with self.writing():
            replaced = self.store.lookup(list(dict.fromkeys([*batch.ids, *batch.replaces])))
            packed = np.concatenate(batch.vectors).astype(np.float32, copy=False)
            counts = np.array([len(v) for v in batch.vectors], dtype=np.int64)
            seg_id = self.store.next_segment_id()
            quantizer = self._target_quantizer()
            codec = self.target_codec(quantizer)
            data = codec.encode([packed], self.dim, quantizer)
            files = self._write_segment_files(seg_id, codec, data, packed if self.config.keep_exact else None)
            starts = np.cumsum(counts) - counts
            rows = [
                NewDoc(i, t, m, int(n), int(c), seg_id, int(s))
                for i, t, m, n, c, s in zip(batch.ids, batch.texts, batch.metadata, batch.n_tokens, counts, starts)
            ]
            seg = SegmentRow(
                seg_id,
                codec.kind,
                len(packed),
                len(rows),
                self.snapshot.quantizer_id if quantizer is not None else None,
                self.config.keep_exact,
            )

            layout: list[np.ndarray] = []

            def change() -> None:
                self.store.delete(replaced.values())
                self.store.insert_many(rows)
                self.store.add_segment(seg)
                layout.append(self.store.segment_layout(seg_id))  # doc_int, seg_start, n_vectors: O(batch)

            self._commit(files, change, fold=len(rows) >= SMALL_WRITE)
            try:  # the commit stands whatever happens here: without a delta the next snapshot is read from disk
                exact = files[1] if self.config.keep_exact else None
                file = codec.open(files[0], seg.n_vectors, self.dim, quantizer, exact)
                (part,) = layout
                reader = SegmentReader(seg_id, seg.kind, file, seg.n_vectors, part[:, 1], part[:, 2], part[:, 0])
                self._delta = (np.fromiter(replaced.values(), np.int64, len(replaced)), reader, seg)
            except Exception:  # noqa: BLE001 - only an optimisation failed
                log.warning("could not map the new segment %d in place; reloading the commit", seg_id, exc_info=True)
            del packed, data  # the batch's float32 copy (and a flat segment's): not held through a compaction
        self.maintain()
        return len(replaced)

    def delete(self, doc_ints: Sequence[int]) -> None:
        """Tombstone documents: their rows go in one commit; their vectors wait for compaction."""
        with self.writing():
            self._commit([], lambda: self.store.delete(doc_ints), fold=len(doc_ints) >= SMALL_WRITE)
            self._delta = (np.asarray(doc_ints, dtype=np.int64),)
        self.maintain()

    def maintain(self) -> None:
        """The automatic triggers, after a write: train, compact past the tombstone share, merge small segments."""
        snap, c = self.snapshot, self.config
        if c.backend == "ivfpq" and snap.quantizer is None and snap.n_live >= c.train_min_vectors:
            self.compact()
        elif self.retrain_recommended() or snap.n_stored - snap.n_live > c.max_dead_fraction * max(snap.n_stored, 1):
            self.compact()
        else:
            group = merge_choice([s.n_vectors for s in snap.segments], c.max_segments)
            if group:
                self.merge([snap.segments[i].seg_id for i in group])

    def _sample_outgrown(self) -> bool:
        """True when a new training sample would be ``retrain_factor`` times larger than the quantizer's was.

        This is the automatic re-training: an index that grew from a few documents re-trains as it
        grows (10k, 40k, 160k vectors by default), but never once its sample reached
        ``train_sample / retrain_factor`` (a bulk build's first chunk): re-training the same-size
        sample would re-encode the whole index for nothing.
        """
        snap, c = self.snapshot, self.config
        if snap.quantizer is None:
            return False
        had = min(max(snap.trained_vectors, 1), c.train_sample)
        return min(snap.n_live, c.train_sample) >= c.retrain_factor * had

    def retrain_recommended(self) -> bool:
        """True when re-training would help; the next write's compaction then re-trains.

        Either a larger sample (see above), or (:meth:`_lists_outgrown`) a list count that no longer fits the corpus.
        """
        return self._sample_outgrown() or self._lists_outgrown()

    def _lists_outgrown(self) -> bool:
        """True when the automatic list count of a training now differs and the index grew ``retrain_factor``-fold.

        Grown since the quantizer's training, with ``nlist`` sized automatically. So a streamed build ends with
        the lists a bulk build of its size picks, or up to ``retrain_factor`` times fewer where the sample caps
        them (N/39 lists up to ``train_sample`` vectors; ``train_sample``/39 beyond, the same for both); under
        PLAID's ``16·√N`` rule alone, the factor's square root. Every re-training re-encodes the index in one
        compaction: growth by 4x between trainings keeps that to about a third more encoding than the vectors'.
        """
        snap, c = self.snapshot, self.config
        if snap.quantizer is None or c.nlist is not None:
            return False
        if snap.n_live < c.retrain_factor * max(snap.trained_vectors, 1):
            return False
        want = planned_nlist(snap.n_live, min(snap.n_live, c.train_sample), legacy=self.pq_kind == "pq")
        return want != int(snap.quantizer.nlist)

    def compact(self, retrain: bool | None = None) -> None:
        """Merge every segment into one without deleted vectors; train first when due (or ``retrain``)."""
        with self.writing():
            snap, c = self.snapshot, self.config
            untrained = c.backend == "ivfpq" and snap.quantizer is None
            if retrain is None:
                retrain = self.retrain_recommended() or (untrained and snap.n_live >= c.train_min_vectors)
            if c.backend != "ivfpq" or (untrained and snap.n_live < c.train_min_vectors):
                retrain = False
            self._merge_locked([r.seg_id for r in snap.rows], retrain)

    def upgrade(self) -> bool:
        """Rewrite a format 2 folder as format 3: re-train at format 3's defaults, every segment as pq3, one commit.

        The segments are switched by the compaction commit (a crash before it leaves the format 2 folder as it
        was, after it a folder of pq3 segments that reads either way); the manifest says 3 only after it, so a
        crash between the two leaves a folder that opens and whose next ``upgrade`` finishes the job. Returns
        False when there was nothing to do (already format 3).
        """
        if self.format_version >= 3:
            return False
        with self.writing():
            self.pq_kind = "pq3"
            try:
                snap, c = self.snapshot, self.config
                trained = c.backend == "ivfpq" and (snap.quantizer is not None or snap.n_live >= c.train_min_vectors)
                if snap.rows:
                    self._merge_locked([r.seg_id for r in snap.rows], retrain=trained, keep_codec=False)
            except BaseException:
                self.pq_kind = "pq"
                raise
        manifest = read_manifest(self.path)
        manifest.format_version = 3
        manifest.write(self.path)
        self.format_version = 3
        return True

    def merge(self, seg_ids: list[int]) -> None:
        """Merge some segments into one (the tiered policy), dropping their deleted vectors."""
        with self.writing():
            live = {r.seg_id for r in self.snapshot.rows}
            self._merge_locked([s for s in seg_ids if s in live], retrain=False)

    def _merge_locked(self, seg_ids: list[int], retrain: bool, keep_codec: bool = True) -> None:
        snap = self.snapshot
        idx = [i for i, s in enumerate(snap.segments) if s.seg_id in set(seg_ids)]
        if not idx or (len(idx) == 1 and snap.segments[idx[0]].live is None and not retrain):
            return  # nothing to gain
        quantizer, q_id, q_files = snap.quantizer, snap.quantizer_id, []
        if retrain:
            quantizer = self._train(idx, keep_codec)
            q_id = (snap.quantizer_id or 0) + 1
            q_files = [quantizer_path(self.path, q_id)]
            write_faiss(quantizer, q_files[0])
        if self.config.backend != "ivfpq":
            quantizer = None
        seg_id = self.store.next_segment_id()
        codec = self.target_codec(quantizer)
        kinds = {snap.segments[i].kind for i in idx}
        if codec.copy_merge and not retrain and kinds == {codec.kind}:
            parts = [(snap.segments[i], snap.segments[i].starts, snap.segments[i].counts) for i in idx]
            data = codec.merge(parts, quantizer)  # codes copied, not re-encoded
        else:  # other kinds, or a new quantizer: decode and re-encode, chunk by chunk
            chunks = (c for i in idx for c in snap.vectors_of_segment(i, CHUNK))
            data = codec.encode(chunks, self.dim, quantizer)
        exact = None
        if self.config.keep_exact:
            exact = np.concatenate([_live_exact(snap.segments[i]) for i in idx])
        try:
            files = self._write_segment_files(seg_id, codec, data, exact) + q_files
        except BaseException:
            for f in q_files:
                f.unlink(missing_ok=True)
            raise
        doc_ints = np.concatenate([snap.segments[i].doc_ints for i in idx])
        counts = np.concatenate([snap.segments[i].counts for i in idx])
        starts = np.cumsum(counts) - counts
        q_of_row = q_id if codec.uses_quantizer else None
        row = SegmentRow(seg_id, codec.kind, int(counts.sum()), len(doc_ints), q_of_row, exact is not None)
        old = [snap.segments[i].seg_id for i in idx]

        def change() -> None:
            self.store.drop_segments(old)
            self.store.add_segment(row)
            self.store.move(doc_ints, seg_id, starts)
            if retrain:
                self.store.set_meta("quantizer", str(q_id))
                self.store.set_meta("trained_vectors", str(snap.n_live))

        self._commit(files, change)
        log.info(
            "merged %d segment(s) into %d (%d vectors)%s",
            len(old),
            seg_id,
            row.n_vectors,
            " retrained" if retrain else "",
        )
        self.snapshot = self._load(self.snapshot)
        self._remove_unreferenced()

    def _train(self, idx: list[int], keep_codec: bool = True) -> Faiss:
        """Train a quantizer on a sample of the live vectors (exact where kept, else decoded).

        ``keep_codec``: as many sub-quantizers and bits as the current quantizer has, unless the config names them.
        """
        snap, c = self.snapshot, self.config
        sizes = np.array([snap.segments[i].n_live for i in idx], dtype=np.int64)
        total = int(sizes.sum())
        if total == 0:
            raise InputError("the index holds no vectors to train on")
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(total, min(total, c.train_sample), replace=False))
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        sample = np.empty((len(pick), self.dim), dtype=np.float32)  # filled in place: no list + concatenate copy
        at = 0
        for j, i in enumerate(idx):
            mine = pick[(pick >= bounds[j]) & (pick < bounds[j + 1])] - bounds[j]
            if len(mine):
                seg = snap.segments[i]
                local = ranges(seg.starts, seg.counts)[mine]
                sample[at : at + len(mine)] = seg.reconstruct(local)
                at += len(mine)
        # a re-training keeps the codec the index was trained with unless the config names one: an index made
        # before the default changed (pq_m 16 -> 64) must not grow 2.5x, and re-encode lossily, on re-training
        q = snap.quantizer if keep_codec else None
        pq_m = c.pq_m or (int(q.pq.M) if q is not None else None)
        pq_nbits = c.pq_nbits or (kept_nbits(q, min(snap.trained_vectors, c.train_sample)) if q is not None else None)
        legacy = self.pq_kind == "pq"
        return train_quantizer(sample, total, c.nlist, pq_m, pq_nbits, self.use_gpu, legacy)

    def close(self) -> None:
        """Release the snapshot and the store."""
        self.snapshot.close()
        self.store.close()


def open_folder(path: Path, use_gpu: bool = False) -> IndexFolder:
    """The folder of the index at ``path``, its manifest read and checked: for code below the facade."""
    manifest = read_manifest(path)
    return IndexFolder.open(
        path, manifest.config, manifest.dim, use_gpu=use_gpu, format_version=manifest.format_version
    )


def _manifest_version(path: Path) -> int:
    """The manifest's format_version (the caller already read and checked it); a folder without one: the current."""
    import json

    try:
        version = json.loads((path / "manifest.json").read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        return FORMAT_VERSION
    return version if type(version) is int else FORMAT_VERSION


def merge_choice(sizes: Sequence[int], max_segments: int, tail: int = TAIL_VECTORS) -> list[int]:
    """Positions of the segments a write should merge (tiered), or [] when none need to.

    Segments under ``tail`` vectors (what single-document writes make) and larger ones are
    counted apart, each kind up to ``max_segments``: past that, the smallest of the kind merge
    into one, leaving ``max_segments // 2``. Small writes therefore only ever merge small
    segments: an index whose large segments are at the bound (a bulk build) does not copy
    millions of vectors on the next single-document write.
    """
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for kind in ([i for i in order if sizes[i] < tail], [i for i in order if sizes[i] >= tail]):
        if len(kind) > max_segments:
            return kind[: len(kind) - max_segments // 2 + 1]
    return []


def ensure_layout(path: Path) -> None:
    """Create the segments folder of a new index."""
    (path / SEGMENTS).mkdir(parents=True, exist_ok=True)
    fsync_dir(path)


def _live_exact(seg: SegmentReader) -> np.ndarray:
    """The exact (float16) copies of a segment's live vectors, in document order (``keep_exact`` indexes)."""
    if seg.exact is None:  # keep_exact is fixed at creation: every segment of such an index has its copy
        raise IndexCorruptError(f"a segment of kind {seg.kind!r} has no exact copy, though the index keeps them")
    return np.asarray(seg.exact[ranges(seg.starts, seg.counts)])


def kept_nbits(quantizer: Faiss, n_trained: int) -> int | None:
    """The bits a re-training keeps from ``quantizer`` (trained on ``n_trained`` vectors), or None (the default).

    :func:`~pooledir.index.segments.train_quantizer` lowers the bits of a sample smaller than 2**bits to
    floor(log2(n)): bits that a small sample forced are not a codec to keep once the index has grown.
    """
    bits = int(quantizer.pq.nbits)
    return bits if n_trained >= 2 << bits else None
