"""Segment codecs: how each kind of segment file is encoded, written, opened, searched and merged.

Three kinds, one class each, looked up by the kind a segment row records (:func:`codec_for`):

* ``flat`` (:class:`FlatCodec`): float32 vectors in a faiss ``IndexFlatIP``.
* ``pq`` (:class:`PQCodec`, format_version 2): a faiss ``IndexIVFPQ`` holding the segment's PQ codes in
  inverted lists with an 8-byte id per vector (the functions of :mod:`pooledir.index.segments`).
* ``pq3`` (:class:`PQ3Codec`, format_version 3): the shared quantizer used as a standalone codec.
  ``segments/<id>.pq3`` holds a header, each vector's faiss ``sa_encode`` code (list number, then the
  PQ code of its residual) **document-major** in local-id order, and this segment's inverted index
  (sorted list numbers present, their starts, and uint32 local rows): no id per vector, no codebooks
  (they live once, in the quantizer).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from pooledir.durable import write_durably
from pooledir.errors import IndexCorruptError
from pooledir.index.segments import (
    FOOTER,
    Faiss,
    Probe,
    SegmentFile,
    SegmentReader,
    _stamp,
    _write_checksummed,
    encode_segment,
    map_exact,
    merge_pq,
    open_segment_file,
    ranges,
    sa_encode,
    verify_file,
    write_segment,
)

#: per source segment of a merge: (reader, starts, counts) of the documents to keep
MergePart: TypeAlias = tuple[SegmentReader, np.ndarray, np.ndarray]
#: a pq3 file's header fields: magic, version, n, code_size, dim, nlist, pq_m, nbits, n_lists
PQ3Head: TypeAlias = tuple[bytes, int, int, int, int, int, int, int, int]

#: vectors encoded or decoded at a time (bounds the temporary memory of encoding and reconstruction)
CHUNK = 65_536
#: pq3 header: magic, codec version, n_vectors, code_size, dim, nlist, pq_m, nbits, lists present
PQ3_HEADER = struct.Struct("<8sIQIIIIII")
PQ3_MAGIC = b"pdpq3\x00\x00\x00"
PQ3_VERSION = 1
_HEADER_BYTES = 64  # the header padded, so the arrays after it start aligned
_ALIGN = 8


class SegmentCodec:
    """How one kind of segment is stored. Subclasses fill in the five operations."""

    kind: str = ""
    suffix: str = ".faiss"
    uses_quantizer: bool = False
    copy_merge: bool = False  # merges copy codes (no decode/re-encode) when every part is of this kind
    centroid_lane: bool = False  # searched by PLAID's centroid interaction (pooledir.index.plaid), not per token

    def encode(self, chunks: Iterable[np.ndarray], dim: int, quantizer: Faiss) -> object:
        """Encode vectors (float32 chunks, in local-id order) into this codec's in-memory segment data."""
        raise NotImplementedError

    # data is Any: each codec reads back only what its own encode/merge made (a faiss index, or PQ3Data)
    def write(self, data: Any, path: Path) -> None:
        """Write segment data durably (temp file, fsync, rename) with the checksum footer."""
        raise NotImplementedError

    def open(self, path: Path, n_vectors: int, dim: int, quantizer: Faiss, exact_path: Path | None) -> SegmentFile:
        """Map a segment file and check it against its commit row and the quantizer."""
        return open_segment_file(path, self.kind, n_vectors, dim, quantizer, exact_path)

    def merge(self, parts: list[MergePart], quantizer: Faiss) -> object:
        """Segment data holding the kept documents of ``parts`` ((reader, starts, counts)), without re-encoding."""
        raise NotImplementedError


class FlatCodec(SegmentCodec):
    """float32 vectors in an ``IndexFlatIP`` (exact)."""

    kind = "flat"

    def encode(self, chunks: Iterable[np.ndarray], dim: int, quantizer: Faiss) -> object:
        """Add the chunks to an ``IndexFlatIP``."""
        index = encode_segment(np.empty((0, dim), np.float32))
        for chunk in chunks:
            index.add(np.ascontiguousarray(chunk, dtype=np.float32))
        return index

    def write(self, data: Faiss, path: Path) -> None:
        """Write the faiss index with its footer."""
        write_segment(data, path)


class PQCodec(FlatCodec):
    """Format 2: an ``IndexIVFPQ`` of the segment's codes, sharing the quantizer's centroids."""

    kind = "pq"
    uses_quantizer = True
    copy_merge = True

    def encode(self, chunks: Iterable[np.ndarray], dim: int, quantizer: Faiss) -> object:
        """Add the chunks to a clone of the quantizer under ids 0..n-1."""
        index = encode_segment(np.empty((0, dim), np.float32), quantizer)
        done = 0
        for chunk in chunks:
            index.add_with_ids(
                np.ascontiguousarray(chunk, dtype=np.float32), np.arange(done, done + len(chunk), dtype=np.int64)
            )
            done += len(chunk)
        return index

    def merge(self, parts: list[MergePart], quantizer: Faiss) -> object:
        """Copy the kept codes list by list (:func:`merge_pq`)."""
        return merge_pq(parts, quantizer)


# -- pq3 -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodeRuns:
    """Some documents' code rows in a mapped pq3 file, read ``CHUNK`` rows at a time: a merge's source.

    A merge copies these rows into the new file without holding them: they are read once to list their
    list numbers and once to be written, a chunk at a time, straight from the page cache.
    """

    codes: np.ndarray  # (n, code_size) uint8, the source file's mapped codes
    starts: np.ndarray  # int64, first row of each kept document
    counts: np.ndarray  # int64, its rows

    def __len__(self) -> int:
        return int(self.counts.sum())

    def chunks(self) -> Iterator[np.ndarray]:
        """The rows in order, ``CHUNK`` at a time (the last fewer); a chunk may cut a document's rows in two."""
        ends = np.cumsum(self.counts)
        begins = ends - self.counts
        total = int(ends[-1]) if len(ends) else 0
        for a in range(0, total, CHUNK):
            b = min(a + CHUNK, total)
            i, j = int(np.searchsorted(ends, a, side="right")), int(np.searchsorted(begins, b, side="left"))
            starts, counts = self.starts[i:j].copy(), self.counts[i:j].copy()
            starts[0] += a - begins[i]  # the first document's rows before this chunk
            counts[0] -= a - begins[i]
            counts[-1] -= ends[j - 1] - b  # and the last one's after it
            yield np.asarray(self.codes[ranges(starts, counts)])


def _code_chunks(part: np.ndarray | CodeRuns) -> Iterable[np.ndarray]:
    return part.chunks() if isinstance(part, CodeRuns) else (part,)


@dataclass
class PQ3Data:
    """A pq3 segment to write: codes in local-id order, in parts as encoded or to copy, and their inverted index.

    The parts are written one after the other, never joined. Encoded parts are arrays; a merge's parts are
    :class:`CodeRuns` of the source files, so a merge of N vectors holds 6 bytes a vector (list numbers and
    rows), not their codes.
    """

    parts: list[np.ndarray | CodeRuns]  # (n_i, code_size) uint8 rows each; in order they are the segment's codes
    code_size: int
    lists: np.ndarray  # uint32 (L,): list numbers present, ascending
    starts: np.ndarray  # uint32 (L + 1,): rows of lists[j] are rows[starts[j]:starts[j + 1]]
    rows: np.ndarray  # uint32 (n,): local ids, grouped by list
    dim: int
    nlist: int
    pq_m: int
    nbits: int


def list_numbers(codes: np.ndarray, coarse_size: int, rows: np.ndarray | None = None) -> np.ndarray:
    """The list number each faiss sa code (or each of ``rows``) starts with: its first ``coarse_size`` bytes, LE.

    Viewed as the narrowest unsigned type that holds it (uint16 up to 65,536 lists): 2 bytes a vector, not 8,
    and numpy sorts 16-bit keys stably by radix. Where that type is exactly ``coarse_size`` bytes and a code a
    whole number of them (the default PQ32x6 code: 2 + 24 bytes), the codes are viewed as it and the numbers
    gathered directly: 34k rows of a mapped file took 0.3 ms through the view, 1.2 ms through a byte gather.
    """
    codes = np.asarray(codes)  # asarray: no memmap per operation
    if coarse_size in (2, 4, 8) and codes.shape[1] % coarse_size == 0 and codes.flags.c_contiguous:
        heads = codes.view(f"<u{coarse_size}")[:, 0]
        return np.ascontiguousarray(heads if rows is None else heads[rows])
    head = codes[:, :coarse_size] if rows is None else codes[rows, :coarse_size]
    width = 1 << max(coarse_size - 1, 0).bit_length()  # 1, 2, 4 or 8 bytes: a dtype the head can be viewed as
    if width != coarse_size:
        head = np.pad(head, ((0, 0), (0, width - coarse_size)))
    return np.ascontiguousarray(head).view(f"<u{width}").ravel()


def inverted(list_no: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lists present, their starts, local rows grouped by list) of the list number of each vector.

    A counting sort (``nlist`` counters) placed ``CHUNK`` rows at a time: the rows of a list ascending, as a
    stable argsort orders them, with nothing as long as the segment but the list numbers and the uint32 rows.
    """
    counts = np.zeros(nlist, dtype=np.int64)
    for at in range(0, len(list_no), CHUNK):  # bincount copies its input as int64: a chunk at a time
        counts += np.bincount(list_no[at : at + CHUNK], minlength=nlist)
    lists = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[lists])])
    rows = np.empty(len(list_no), dtype=np.uint32)
    fill = np.cumsum(counts) - counts  # the next free slot of each list
    for at in range(0, len(list_no), CHUNK):
        keys = list_no[at : at + CHUNK]
        order = np.argsort(keys, kind="stable")
        ranked = keys[order]
        rank = np.arange(len(keys)) - np.searchsorted(ranked, ranked)  # place within its list in this chunk
        rows[fill[ranked] + rank] = at + order
        fill += np.bincount(keys, minlength=nlist)
    return lists.astype(np.uint32), starts.astype(np.uint32), rows


def _pad(n: int) -> int:
    return -n % _ALIGN


def _sections(n: int, code_size: int, n_lists: int) -> list[tuple[str, int, int]]:
    """(name, offset, bytes) of each array in a pq3 file after the header."""
    out, at = [], _HEADER_BYTES
    for name, size in (
        ("codes", n * code_size),
        ("lists", 4 * n_lists),
        ("starts", 4 * (n_lists + 1)),
        ("rows", 4 * n),
    ):
        out.append((name, at, size))
        at += size + _pad(size)
    return out


def pq3_payload_bytes(n: int, code_size: int, n_lists: int) -> int:
    """Bytes of a pq3 file before its footer."""
    name, at, size = _sections(n, code_size, n_lists)[-1]
    return at + size + _pad(size)


class PQ3Codec(SegmentCodec):
    """Format 3: faiss sa codes document-major, with this segment's inverted index of uint32 rows."""

    kind = "pq3"
    suffix = ".pq3"
    uses_quantizer = True
    copy_merge = True
    centroid_lane = True

    def encode(self, chunks: Iterable[np.ndarray], dim: int, quantizer: Faiss) -> PQ3Data:
        """``sa_encode`` the chunks (:func:`~pooledir.index.segments.sa_encode`) and index their list numbers."""
        return self._data([sa_encode(quantizer, c) for c in _split(chunks)], dim, quantizer)

    def merge(self, parts: list[MergePart], quantizer: Faiss) -> PQ3Data:
        """The kept documents' code rows (document-major: slices), copied when written; inverted rows rebuilt."""
        files = [_pq3_file(r) for r, _, _ in parts]
        runs: list[np.ndarray | CodeRuns] = [
            CodeRuns(f.codes, np.asarray(s, np.int64), np.asarray(c, np.int64)) for f, (_, s, c) in zip(files, parts)
        ]
        return self._data(runs, files[0].dim, quantizer)

    def _data(self, parts: list[np.ndarray | CodeRuns], dim: int, quantizer: Faiss) -> PQ3Data:
        lists, starts, rows = inverted(_list_numbers_of(parts, quantizer.coarse_code_size()), int(quantizer.nlist))
        nlist, pq_m, nbits = int(quantizer.nlist), int(quantizer.pq.M), int(quantizer.pq.nbits)
        return PQ3Data(parts, int(quantizer.sa_code_size()), lists, starts, rows, dim, nlist, pq_m, nbits)

    def write(self, data: PQ3Data, path: Path) -> None:
        """Header, codes, lists, starts, rows (each 8-byte aligned), then the checksum footer."""
        n, code_size = len(data.rows), data.code_size
        head = PQ3_HEADER.pack(
            PQ3_MAGIC, PQ3_VERSION, n, code_size, data.dim, data.nlist, data.pq_m, data.nbits, len(data.lists)
        )
        codes = (chunk for part in data.parts for chunk in _code_chunks(part))
        arrays = {"codes": codes, "lists": [data.lists], "starts": [data.starts], "rows": [data.rows]}

        def payload(put: Callable[[bytes | memoryview], int]) -> None:
            put(head + b"\x00" * (_HEADER_BYTES - len(head)))
            for name, _, size in _sections(n, code_size, len(data.lists)):
                for array in arrays[name]:  # the arrays' own bytes (a view): no bytes copy of a segment
                    if array.size:  # an empty part has no bytes (and a memoryview of it cannot be cast)
                        put(np.ascontiguousarray(array).data.cast("B"))
                put(b"\x00" * _pad(size))

        write_durably(path, lambda f: _write_checksummed(f, payload))

    def open(self, path: Path, n_vectors: int, dim: int, quantizer: Faiss, exact_path: Path | None) -> PQ3File:
        """Map and check a ``.pq3`` file (:meth:`PQ3File.open`)."""
        return PQ3File.open(path, n_vectors, dim, quantizer, exact_path)


def _list_numbers_of(parts: list[np.ndarray | CodeRuns], coarse_size: int) -> np.ndarray:
    """The list number of every code of the parts, in order (its chunks' arrays freed on return)."""
    listed = [list_numbers(chunk, coarse_size) for part in parts for chunk in _code_chunks(part)]
    return np.concatenate(listed) if listed else np.empty(0, np.uint16)


def _split(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for c in chunks:
        for i in range(0, len(c), CHUNK):
            yield c[i : i + CHUNK]


def _pq3_file(reader: SegmentReader) -> PQ3File:
    """The mapped pq3 file of an open reader; anything else is a caller's bug (merges group segments by kind)."""
    if not isinstance(reader.file, PQ3File):
        raise ValueError(f"segment {reader.seg_id} is not an open pq3 segment; a pq3 merge takes only those")
    return reader.file


class PQ3File(SegmentFile):
    """A mapped ``.pq3`` file: codes and inverted index as numpy views of one read-only memory map."""

    def __init__(self, path: Path, mm: np.ndarray, head: PQ3Head, quantizer: Faiss, exact: np.ndarray | None) -> None:
        self.index = None
        self.kind = "pq3"
        self.exact = exact
        self._placeholder = None
        self.path = path
        self._stamp = None
        self.quantizer = quantizer
        _, _, n, code_size, self.dim, self.nlist, self.pq_m, self.nbits, n_lists = head
        views = {}
        for name, at, size in _sections(n, code_size, n_lists):
            raw = mm[at : at + size]
            views[name] = raw.reshape(n, code_size) if name == "codes" else raw.view(np.uint32)
        self.codes, self.lists, self.starts, self.rows = views["codes"], views["lists"], views["starts"], views["rows"]
        self.coarse_size = code_size - quantizer.pq.code_size

    @classmethod
    def open(cls, path: Path, n_vectors: int, dim: int, quantizer: Faiss, exact_path: Path | None) -> PQ3File:
        """Map a ``.pq3`` file; its checksum, header, quantizer and inverted index are checked."""
        stamp = _stamp(path)  # FileNotFoundError: a newer commit dropped it (the caller reloads)
        if not verify_file(path):
            raise IndexCorruptError(f"{path} is corrupt or truncated: it has no checksum footer")
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        if len(mm) < _HEADER_BYTES + FOOTER.size:
            raise IndexCorruptError(f"{path} is corrupt: {len(mm)} bytes cannot hold a pq3 header")
        head = PQ3_HEADER.unpack(bytes(mm[: PQ3_HEADER.size]))
        magic, version, n, code_size, fdim, nlist, pq_m, nbits, n_lists = head
        if magic != PQ3_MAGIC or version != PQ3_VERSION:
            raise IndexCorruptError(f"{path} is not a pq3 segment (version {PQ3_VERSION})")
        if n != n_vectors or fdim != dim:
            raise IndexCorruptError(
                f"{path} holds {n} {fdim}-d vectors; the index expects {n_vectors} {dim}-d vectors: "
                "the index is mismatched"
            )
        if quantizer is None or (nlist, pq_m, nbits, code_size) != (
            quantizer.nlist,
            quantizer.pq.M,
            quantizer.pq.nbits,
            quantizer.sa_code_size(),
        ):
            raise IndexCorruptError(f"{path} was encoded with another quantizer than this index's: mismatched")
        if pq3_payload_bytes(n, code_size, n_lists) != len(mm) - FOOTER.size:
            raise IndexCorruptError(f"{path} is corrupt: its size does not match its header")
        file = cls(path, mm, head, quantizer, map_exact(exact_path, n_vectors, dim))
        file._check_structure()
        file._stamp = stamp
        return file

    def _check_structure(self) -> None:
        """List numbers within the quantizer's lists, an inverted index that covers rows 0..n-1 once.

        Read in runs of about ``CHUNK`` rows, whole lists at a time: opening a segment holds no array as long
        as the segment (a 10^7-vector one took 200 MB when it was read at once).
        """
        n = len(self.codes)
        bad = f"{self.path} is corrupt or does not match its quantizer"
        starts = self.starts.astype(np.int64)
        lists = np.asarray(self.lists)
        if len(lists) and lists.max() >= self.quantizer.nlist:
            raise IndexCorruptError(f"{bad}: a code names a list past the quantizer's {self.quantizer.nlist}")
        if starts[0] != 0 or starts[-1] != n or np.any(np.diff(starts) <= 0) or np.any(np.diff(lists) <= 0):
            raise IndexCorruptError(f"{bad}: its inverted lists are out of order")
        cuts = np.unique(np.searchsorted(starts, np.arange(0, n, CHUNK), side="right") - 1)
        for a, b in zip(cuts, [*cuts[1:], len(lists)]):  # lists a..b-1: rows starts[a]:starts[b]
            rows = np.asarray(self.rows[starts[a] : starts[b]], dtype=np.int64)
            if len(rows) and rows.max() >= n:
                raise IndexCorruptError(f"{bad}: its inverted lists disagree with its codes")
            listed = list_numbers(self.codes, self.coarse_size, rows)
            if len(listed) and listed.max() >= self.quantizer.nlist:
                raise IndexCorruptError(f"{bad}: a code names a list past the quantizer's {self.quantizer.nlist}")
            if not np.array_equal(np.repeat(lists[a:b], np.diff(starts[a : b + 1])), listed):
                raise IndexCorruptError(f"{bad}: its inverted lists disagree with its codes")

    def _direct_map(self) -> None:
        return None

    def lists_used(self) -> np.ndarray:
        """The lists that hold at least one vector of this segment."""
        return np.asarray(self.lists, dtype=np.int64)

    def reconstruct(self, local: np.ndarray) -> np.ndarray:
        """float32 vectors of local ids: the exact sidecar when kept, else ``sa_decode`` of their codes."""
        if self.exact is not None:
            return np.asarray(self.exact[local], dtype=np.float32)
        local = np.asarray(local, dtype=np.int64)
        if len(local) <= CHUNK:  # one decode, no copy into a second buffer
            return np.asarray(self.quantizer.sa_decode(np.ascontiguousarray(self.codes[local])))  # typed, no copy
        out = np.empty((len(local), self.dim), dtype=np.float32)
        for i in range(0, len(local), CHUNK):
            out[i : i + CHUNK] = self.quantizer.sa_decode(np.ascontiguousarray(self.codes[local[i : i + CHUNK]]))
        return out

    def search(self, probe: Probe, k: int, reader: SegmentReader) -> tuple[np.ndarray, np.ndarray]:
        """Per token top-``k`` (score, local id) among the live vectors of its probed lists, read from the map.

        The per-token lane over a pq3 segment (``Snapshot.ann``; searches use the centroid lane,
        :mod:`pooledir.index.plaid`): each token's probed lists' live rows are decoded and scored
        q·(centroid + residual), as faiss's IVF-PQ scan scores them; nothing is copied into a faiss index.
        """
        n, k = len(probe.x), max(1, min(k, reader.n_live))
        D = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        assign = probe.assign
        if assign is None:  # a caller's bug: a pq3 segment is searched through the shared quantizer's lists
            raise ValueError("a pq3 segment needs the probe's coarse assignment")
        for t in range(n):
            rows = self._live_rows(assign[t][assign[t] >= 0], reader)
            if not len(rows):
                continue
            s = self._decoded(rows) @ probe.x[t]
            top = np.argsort(-s, kind="stable")[:k]
            D[t, : len(top)], ids[t, : len(top)] = s[top], rows[top]
        return D, ids

    def _decoded(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.quantizer.sa_decode(np.ascontiguousarray(self.codes[rows])))  # typed, no copy

    def rows_of_lists(self, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local rows, the list of each) of the vectors in ``lists`` that this segment holds, read from the map."""
        at = np.searchsorted(self.lists, lists)
        held = at < len(self.lists)
        held[held] = self.lists[at[held]] == lists[held]
        at = at[held]
        lo, hi = self.starts[at].astype(np.int64), self.starts[at + 1].astype(np.int64)
        rows = np.asarray(self.rows[ranges(lo, hi - lo)], dtype=np.int64)
        return rows, np.repeat(lists[held], hi - lo)

    def _live_rows(self, lists: np.ndarray, reader: SegmentReader) -> np.ndarray:
        """Local rows of the live vectors in ``lists`` (those this segment holds), ascending."""
        rows, _ = self.rows_of_lists(lists)
        return np.sort(rows[reader.alive(rows)])


CODECS: dict[str, SegmentCodec] = {c.kind: c for c in (FlatCodec(), PQCodec(), PQ3Codec())}


def codec_for(kind: str) -> SegmentCodec:
    """The codec of a segment kind; an unknown kind means the folder was written by something else."""
    try:
        return CODECS[kind]
    except KeyError:
        raise IndexCorruptError(
            f"segment kind {kind!r} is not one of {sorted(CODECS)}: the index is mismatched"
        ) from None
