"""Immutable segment files and the trained quantizer they share.

A segment holds the vectors of some documents under segment-local ids
``0..n-1``, each document's vectors contiguous (its rows in docs.sqlite say
where they start). Two kinds:

* ``pq``: an ``IndexIVFPQ`` whose inverted lists hold PQ codes encoded with the
  index's shared quantizer. The file is written with an empty placeholder for
  the coarse quantizer (its centroids live once, in ``quantizer.<q>.faiss``),
  so a one-document segment is ~135 KB of PQ codebooks, not megabytes of
  centroids. Read with ``IO_FLAG_MMAP_IFC``: codes and ids stay in the page
  cache, not in Python memory.
* ``flat``: an ``IndexFlatIP`` of float32 vectors (the flat backend, and an
  IVF-PQ index while it is too small to train), memory-mapped the same way.

The quantizer file stores its coarse centroids as float16 (an ``IndexScalarQuantizer``;
:func:`train_quantizer` rounds them before anything is encoded) and :func:`read_quantizer` decodes them
into the flat float32 index that assigns lists; files with float32 centroids (written before) open as they are.

A segment file is written to a temp name, fsynced, renamed and its folder
fsynced; it is never changed after. An optional float16 sidecar
(``<id>.f16``, rows in local-id order) gives exact vectors for MaxSim.

Segment and quantizer files end with a footer (:data:`FOOTER`: a magic, the length
of the faiss bytes before it and their CRC-32), checked when a process first maps
the file: bit rot, a truncation or an overwrite raise :class:`IndexCorruptError`
instead of wrong scores or a crash inside faiss. faiss ignores the trailing bytes;
files written before the footer existed get the structural checks only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from pooledir.device import faiss_gpu_available
from pooledir.durable import write_durably
from pooledir.errors import IndexCorruptError
from pooledir.index.coarse import assign_lists, train_centroids

log = logging.getLogger(__name__)

#: a faiss object (index, quantizer, selector): SWIG classes whose stubs lack much of what is used here
#: (DirectMap, PyCallbackIOWriter, SearchParameters(sel=...), the concrete class after read/clone/downcast)
Faiss = Any


def _faiss() -> Any:
    """The faiss module, imported on first use (``import pooledir`` stays light) and typed at this boundary."""
    import faiss

    return faiss


#: sub-quantizer counts faiss's GPU IVF-PQ accepts (with 8-bit codes)
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)


#: PLAID's rule: 2**floor(log2(LISTS_PER_ROOT_N·√N)) coarse lists (format 3); change here, or per index with nlist
LISTS_PER_ROOT_N = 16
#: a list gets at least this many training vectors (faiss's own warning threshold): caps nlist by the sample
MIN_POINTS_PER_LIST = 39
#: k-means iterations of the coarse quantizer: thousands of centroids on 2 cores must train in minutes
COARSE_NITER = 10
#: below this many rows faiss's own sa_encode is as fast (threading overhead dominates either way, 2 loaded cores:
#: 28 vs 37 ms at 50 rows, equal at 500, 318 vs 73 ms at 5,000 with 1,740 lists)
BLAS_ASSIGN_MIN_ROWS = 1024
#: PQ codebooks train on at most this many residuals per codeword (faiss's default 256: 65,536 per sub-quantizer)
PQ_POINTS_PER_CENTROID = 256
#: the code of a new (format 3) index whose config names none: PQ32x6 at 128 d (dim/4 sub-quantizers of 6 bits,
#: 24 B a vector), eval/results/code_rule.md's s11 rule on the engine's own index (format_study/code3_*)
DIMS_PER_SUBQUANTIZER = 4
PQ_NBITS = 6
#: sub-quantizers of an 8-bit format 3 code: dim/8 (PQ16x8 at 128 d), the default before s11 (format_rule.md);
#: every manifest written before s11 records ``pq_nbits: 8`` and so keeps that code
DIMS_PER_SUBQUANTIZER_8BIT = 8
#: bits per PQ code of a format 2 folder (every format 2 manifest records them; a config without them gets these)
LEGACY_PQ_NBITS = 8


def default_nlist(n_vectors: int, n_train: int | None = None) -> int:
    """PLAID's ``2**floor(log2(16·√N))`` lists, capped so a list gets ``MIN_POINTS_PER_LIST`` training vectors.

    On NFCorpus dev (exhaustive MaxSim over decoded pooled x2 vectors) 13,312 lists + PQ32 kept 99.6% of
    flat nDCG@10 where ≈2,256 lists + PQ32 kept 98.2% (issue 21): finer lists buy code precision.
    """
    n_train = n_vectors if n_train is None else n_train
    rule = 1 << int(math.floor(math.log2(max(LISTS_PER_ROOT_N * math.sqrt(max(n_vectors, 1)), 1))))
    return max(1, min(rule, n_train // MIN_POINTS_PER_LIST))


def default_nlist_v2(n_vectors: int) -> int:
    """Format 2's ≈ 4·√N lists, never so many that a list gets fewer than 39 training vectors.

    On SciFact train qrels 2,048 lists beat 4·√N = 3,129 for 611,980 pooled vectors
    (eval/results/tune_scifact_train.json), but rounding down to a power of two cost IVF-PQ 4% of
    nDCG@10 on a 500-document index (512 lists instead of 966), so the rule stayed 4·√N.
    """
    return max(1, min(int(round(4 * math.sqrt(max(n_vectors, 1)))), n_vectors // 39))


def planned_nlist(n_total: int, n_sample: int, legacy: bool = False) -> int:
    """The list count :func:`train_quantizer` picks for ``n_total`` vectors trained on ``n_sample`` of them."""
    n = max(n_total, n_sample)
    auto = default_nlist_v2(n) if legacy else default_nlist(n, n_sample)
    return min(auto, max(1, n_sample))


def default_pq_m(dim: int, legacy: bool = False, nbits: int | None = None) -> int:
    """Sub-quantizers when the config names none, rounded down to a GPU-legal divisor of ``dim``.

    Format 3 at :data:`PQ_NBITS` bits (``nbits`` None): dim/4 (32 for 128-d), eval/results/code_rule.md's s11
    rule, which found PQ32x6's score error 26% below PQ16x8's on NFCorpus dev on the engine's own index. Format 3
    at other bits (the ``pq_nbits: 8`` older manifests record): dim/8, the PQ16x8 of eval/results/format_rule.md.
    Format 2 (coarse lists ≈4·√N): dim/2, the smallest of dim/8, dim/4, dim/2 that kept >= 99% on both tuning
    sets (eval/results/codec_rule.md).
    """
    if legacy:
        want = dim // 2
    elif nbits is None or nbits == PQ_NBITS:
        want = dim // DIMS_PER_SUBQUANTIZER
    else:
        want = dim // DIMS_PER_SUBQUANTIZER_8BIT
    for m in sorted(GPU_PQ_M, reverse=True):
        if m <= max(1, want) and dim % m == 0:
            return m
    return 1


def default_pq_nbits(legacy: bool = False) -> int:
    """Bits per PQ code when the config names none: :data:`PQ_NBITS` for format 3, 8 for format 2.

    Manifests written before the s11 default (eval/results/code_rule.md) record ``pq_nbits: 8`` and keep it.
    """
    return LEGACY_PQ_NBITS if legacy else PQ_NBITS


# -- durable files ------------------------------------------------------------------------------------------------
#: the last bytes of a segment or quantizer file: magic, length of the faiss bytes before it, their CRC-32
FOOTER = struct.Struct("<8sQI")
FOOTER_MAGIC = b"pdcrc32\x00"
_CHECK_CHUNK = 1 << 22


def _write_checksummed(f: IO[bytes], write: Callable[[Callable[[bytes | memoryview], int]], object]) -> None:
    """``write(put)`` the payload through ``put``, then the footer that records its length and CRC-32.

    ``put`` takes bytes or a byte-format memoryview (an array's own memory, not a copy of it).
    """
    state = [0, 0]

    def put(data: bytes | memoryview) -> int:
        state[0] += len(data)
        state[1] = zlib.crc32(data, state[1])
        return f.write(data)

    write(put)
    f.write(FOOTER.pack(FOOTER_MAGIC, state[0], state[1]))


def verify_file(path: Path) -> bool:
    """Check a file's footer against its bytes; raise :class:`IndexCorruptError` if they differ.

    Returns False for a file written before footers existed (nothing to check against). Reads
    the whole file (about 1.3 GB/s): done once per file and process, files never change.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < FOOTER.size:
                return False
            f.seek(size - FOOTER.size)
            magic, length, crc = FOOTER.unpack(f.read(FOOTER.size))
            if magic != FOOTER_MAGIC:
                return False
            if length != size - FOOTER.size:
                raise IndexCorruptError(
                    f"{path} is corrupt: it holds {size - FOOTER.size} bytes, its checksum was recorded over "
                    f"{length} (truncated or overwritten); restore the folder from a backup or rebuild the index"
                )
            f.seek(0)
            got, left = 0, length
            while left:
                chunk = f.read(min(_CHECK_CHUNK, left))
                if not chunk:
                    break
                got, left = zlib.crc32(chunk, got), left - len(chunk)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise IndexCorruptError(f"{path} cannot be read: {e.strerror or e}") from None
    if left or got != crc:
        raise IndexCorruptError(
            f"{path} is corrupt: its bytes no longer match the checksum written with it (bit rot or an "
            "overwrite); restore the folder from a backup or rebuild the index"
        )
    return True


def write_faiss(index: Faiss, path: Path) -> None:
    """Write a faiss index durably (see :func:`pooledir.durable.write_durably`), with a checksum footer.

    The bytes go through a Python file object: faiss's own file writer only prints an error when
    ``fclose`` fails, so a full disk could leave a truncated file that looked written (and was
    committed); Python raises ``OSError`` for any failed write, flush or fsync.
    """
    faiss = _faiss()

    def write(f: IO[bytes]) -> None:
        _write_checksummed(f, lambda put: faiss.write_index(index, faiss.PyCallbackIOWriter(put)))

    half = _fp16_coarse(index)
    if half is None:
        write_durably(path, write)
        return
    real = index.quantizer
    index.quantizer = half  # the same values at half the bytes; held here while the index points at it
    try:
        write_durably(path, write)
    finally:
        index.quantizer = real
        del half


def _fp16_coarse(index: Faiss) -> Faiss:
    """The coarse centroids of a trained, empty IVF (a quantizer) as a float16 ``IndexScalarQuantizer``.

    None for anything else, and for centroids that float16 cannot hold exactly (a quantizer trained before
    :func:`train_quantizer` rounded them): the file keeps what the codes were encoded against, bit for bit.
    """
    faiss = _faiss()

    if not isinstance(index, faiss.IndexIVF) or index.ntotal or index.quantizer.ntotal != index.nlist:
        return None
    coarse = faiss.downcast_index(index.quantizer)
    if not isinstance(coarse, faiss.IndexFlat) or coarse.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    centroids = coarse.reconstruct_n(0, coarse.ntotal)
    if not np.array_equal(centroids.astype(np.float16).astype(np.float32), centroids):
        return None
    half = faiss.IndexScalarQuantizer(index.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    half.add(centroids)
    return half


def write_array(array: np.ndarray, path: Path) -> None:
    """Write raw array bytes durably (the float16 sidecar)."""
    write_durably(path, lambda f: f.write(np.ascontiguousarray(array).tobytes()))


def file_digest(path: Path) -> str:
    """sha256 of a (small) file: a quantizer's fingerprint, checked when a segment is attached."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# -- the quantizer ------------------------------------------------------------------------------------------------
def train_quantizer(
    sample: np.ndarray,
    n_total: int,
    nlist: int | None,
    pq_m: int | None,
    pq_nbits: int | None,
    use_gpu: bool = False,
    legacy: bool = False,
) -> Faiss:
    """An empty, trained ``IndexIVFPQ`` (inner product, by residual): coarse centroids + PQ codebooks.

    Lists are sized for the ``n_total`` vectors the index holds (:func:`default_nlist`; ``legacy``: format 2's
    :func:`default_nlist_v2` and dim/2 sub-quantizers), never beyond what the sample can train; ``pq_m`` and
    ``pq_nbits`` None: :func:`default_pq_m`, :func:`default_pq_nbits`. PQ bits drop only when the sample is
    smaller than 2**bits. On CPU the coarse k-means and the residuals run on numpy's BLAS
    (:mod:`pooledir.index.coarse`; two-level k-means from ``TWO_LEVEL_LISTS`` lists on): faiss's own flat
    search assigned 2-3x slower here.
    """
    faiss = _faiss()

    n, dim = sample.shape
    nlist = min(nlist, max(1, n)) if nlist else planned_nlist(n_total, n, legacy)
    pq_nbits = pq_nbits or default_pq_nbits(legacy)
    pq_m = pq_m or default_pq_m(dim, legacy, pq_nbits)  # the bits asked for, not those a small sample lowers
    nbits = pq_nbits
    if n < (1 << nbits):  # faiss needs >= 2**nbits training points per codebook
        nbits = max(1, int(math.log2(max(n, 2))))
        log.warning("only %d training vectors: PQ codes use %d bits instead of %d", n, nbits, pq_nbits)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    # below 39 points a centroid faiss prints a raw "WARNING clustering ..." to stderr; the sample size is
    # the config's choice (train_sample), and the warning changes nothing in how faiss trains
    index.cp.min_points_per_centroid = 1
    index.pq.cp.min_points_per_centroid = 1
    index.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    if not legacy:
        index.cp.niter = COARSE_NITER
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if use_gpu and nbits == 8 and faiss_gpu_available():  # faiss's GPU IVF-PQ: 8-bit codes only; others on CPU
        index = _train_on_gpu(index, x, pq_m)
    else:
        _train_on_cpu(index, x)
    # before anything is encoded; the PQ stays as trained on residuals to the float32 centroids (< 2**-11 apart):
    # re-training it on the rounded ones moved NFCorpus dev nDCG@10 by -0.0013, rounding alone by +0.0005
    # (eval/results/quantizer_fp16_nfcorpus_dev120.cpu.json)
    round_centroids(index)
    return index


def _train_on_gpu(index: Faiss, x: np.ndarray, pq_m: int) -> Faiss:
    faiss = _faiss()

    res = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16LookupTables = pq_m > 48  # float32 tables of 64 x 256 exceed a block's shared memory
    gpu = faiss.index_cpu_to_gpu(res, 0, index, options)
    gpu.train(x)
    return faiss.index_gpu_to_cpu(gpu)


def _train_on_cpu(index: Faiss, x: np.ndarray) -> None:
    """Coarse spherical k-means and the residuals on numpy's BLAS, then faiss trains the PQ on those residuals.

    What faiss's ``IndexIVF.train`` does (spherical k-means for inner product, at most 256 points a centroid,
    then the PQ on residuals to the assigned centroid), with the assignments computed as one GEMM per block.
    Residuals are computed only for the points the PQ trains on (faiss would sample ``2**nbits`` x
    ``PQ_POINTS_PER_CENTROID`` = 65,536 of them at 8 bits), in place: for a 262,144-vector sample a quarter of
    the assignments, and one 32 MB array instead of two 134 MB temporaries.
    """
    centroids = train_centroids(x, int(index.nlist), int(index.cp.niter), int(index.cp.max_points_per_centroid))
    index.quantizer.add(centroids)
    n_pq = (1 << int(index.pq.nbits)) * int(index.pq.cp.max_points_per_centroid)
    if len(x) > n_pq:
        x = x[np.sort(np.random.default_rng(1234).choice(len(x), n_pq, replace=False))]
    residuals = centroids[assign_lists(centroids, x)]
    np.subtract(x, residuals, out=residuals)
    index.pq.train(residuals)
    index.is_trained = True
    index.precompute_table()


def coarse_centroids(index: Faiss) -> np.ndarray:
    """The (nlist, d) float32 centroids of an IVF whose coarse quantizer is flat: a view of faiss's memory."""
    faiss = _faiss()

    flat = faiss.downcast_index(index.quantizer)
    return np.asarray(faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)).reshape(flat.ntotal, flat.d)


def sa_encode(index: Faiss, x: np.ndarray) -> np.ndarray:
    """``index.sa_encode(x)``: list number, then the PQ code of the residual; lists from :func:`assign_lists`.

    The same codes as faiss's (up to exact ties between two centroids), at the speed of numpy's BLAS; a batch
    of fewer than :data:`BLAS_ASSIGN_MIN_ROWS` rows (a single-document write) goes through faiss as it is.
    """
    faiss = _faiss()

    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < BLAS_ASSIGN_MIN_ROWS:
        return np.asarray(index.sa_encode(x), dtype=np.uint8)
    codes = np.empty((len(x), index.sa_code_size()), dtype=np.uint8)
    if len(x):
        lists = assign_lists(coarse_centroids(index), x)
        index.encode_vectors(len(x), faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(codes), True)
    return codes


def round_centroids(index: Faiss) -> None:
    """Round an IVF's coarse centroids to float16 values, so the quantizer file can store them at half the bytes.

    Done before anything is encoded: codes are the same before and after the quantizer is written and read.
    """
    faiss = _faiss()

    coarse = faiss.downcast_index(index.quantizer)
    centroids = coarse.reconstruct_n(0, coarse.ntotal).astype(np.float16).astype(np.float32)
    coarse.reset()
    coarse.add(centroids)


def read_quantizer(path: Path) -> Faiss:
    """Load a trained empty IVF-PQ written by :func:`write_faiss` (fully in memory: a few MB).

    Its coarse quantizer is always an ``IndexFlatIP``: float16 centroids on disk are decoded into one.
    """
    faiss = _faiss()

    verify_file(path)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexCorruptError(f"{path} is corrupt or truncated: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(index, faiss.IndexIVFPQ):
        raise IndexCorruptError(f"{path} is not an IVF-PQ quantizer")
    coarse = faiss.downcast_index(index.quantizer)
    if coarse.ntotal != index.nlist or coarse.d != index.d:
        raise IndexCorruptError(f"{path} is corrupt: {coarse.ntotal} {coarse.d}-d centroids for {index.nlist} lists")
    if isinstance(coarse, faiss.IndexScalarQuantizer) and coarse.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        _decode_coarse(index, coarse)
    elif not isinstance(coarse, faiss.IndexFlatIP):
        raise IndexCorruptError(
            f"{path} has a {type(coarse).__name__} coarse quantizer, not float32 or float16 centroids"
        )
    return index


def _decode_coarse(index: Faiss, coarse: Faiss) -> None:
    """Give ``index`` a flat float32 coarse quantizer of ``coarse``'s float16 centroids (BLAS-speed assignment)."""
    faiss = _faiss()

    flat = faiss.IndexFlatIP(index.d)
    flat.add(coarse.reconstruct_n(0, coarse.ntotal))
    index.quantizer = flat
    flat.this.disown()  # the index owns it (own_fields, set by read_index) ...
    coarse.this.own(True)  # ... and Python the float16 one it no longer points at, freed with this reference


def describe_quantizer(q: Faiss) -> dict[str, int]:
    """The resolved IVF-PQ shape, as ``info()`` reports it."""
    return {"nlist": int(q.nlist), "pq_m": int(q.pq.M), "pq_nbits": int(q.pq.nbits)}


# -- writing segments ---------------------------------------------------------------------------------------------
def encode_segment(vectors: np.ndarray, quantizer: Faiss = None) -> Faiss:
    """A faiss index holding ``vectors`` under ids 0..n-1: PQ-coded with ``quantizer``, else flat float32."""
    faiss = _faiss()

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if quantizer is None:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        return index
    index = faiss.clone_index(quantizer)  # swig returns the concrete class, owned
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index


def write_segment(index: Faiss, path: Path) -> None:
    """Write a segment file durably; a pq segment leaves its coarse centroids out (they are shared)."""
    faiss = _faiss()

    if isinstance(index, faiss.IndexIVF):
        real = index.quantizer
        placeholder = faiss.IndexFlatIP(index.d)  # 0 centroids on disk; held here while the index points at it
        index.quantizer = placeholder
        try:
            write_faiss(index, path)
        finally:
            index.quantizer = real
            del placeholder
    else:
        write_faiss(index, path)


# -- reading segments ---------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """One ANN request's query tokens and the shared quantizer's lists for them, computed once for every segment.

    ``assign``/``coarse``: per token the ``nprobe`` nearest lists and q·centroid (None without a quantizer).
    """

    x: np.ndarray
    assign: np.ndarray | None = None
    coarse: np.ndarray | None = None


class SegmentFile:
    """One memory-mapped segment file (and its exact sidecar), shared by the readers of successive snapshots.

    A commit that leaves a segment's file alone (nearly every write) hands the same object to the
    next snapshot, so a write neither re-maps old segments nor throws away the DirectMap their
    decoding built (8 bytes a vector: O(index) to rebuild).
    """

    def __init__(self, index: Faiss, kind: str, quantizer: Faiss = None, exact: np.ndarray | None = None) -> None:
        self.index = index
        self.kind = kind
        self.exact = exact
        self._placeholder = None
        self._shared = None
        self._dm_lock = threading.Lock()
        self._dm_ready = False
        self.path: Path | None = None  # set by open_segment_file, for verify()
        self._stamp: tuple[int, int] | None = None
        if kind == "pq":
            self._placeholder = index.quantizer  # swapped back on release: the segment frees it, never the shared one
            index.own_fields = False
            index.quantizer = quantizer.quantizer
            self._shared = quantizer  # the shared quantizer outlives this segment

    def _direct_map(self) -> None:
        faiss = _faiss()

        if not self._dm_ready:
            with self._dm_lock:
                if not self._dm_ready:  # 8 bytes a vector, built from the mapped lists on first decode
                    try:
                        self.index.set_direct_map_type(faiss.DirectMap.Array)
                    except RuntimeError:  # ids out of range: a file damaged where no footer could tell
                        raise IndexCorruptError(
                            f"{self.path or 'a segment'} is corrupt: its ids are not 0..n-1"
                        ) from None
                    self._dm_ready = True

    def reconstruct(self, local: np.ndarray) -> np.ndarray:
        """float32 vectors of local ids: the exact sidecar when kept, else decoded."""
        if self.exact is not None:
            return np.asarray(self.exact[local], dtype=np.float32)
        if self.kind == "pq":
            self._direct_map()
        return np.asarray(self.index.reconstruct_batch(np.ascontiguousarray(local, dtype=np.int64)), np.float32)

    def search(self, probe: Probe, k: int, reader: SegmentReader) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products of ``probe.x`` among ``reader``'s live vectors, inside faiss."""
        faiss = _faiss()

        if self.kind == "pq":
            return search_ivf(self.index, probe, k, reader)
        n, k = len(probe.x), min(k, max(reader.n_live, 1))
        D = np.empty((n, k), dtype=np.float32)
        ids = np.empty((n, k), dtype=np.int64)
        sel = reader.selector()
        params = faiss.SearchParameters(sel=sel) if sel else None
        self.index.search_c(n, faiss.swig_ptr(probe.x), k, faiss.swig_ptr(D), faiss.swig_ptr(ids), params)
        return D, ids

    def lists_used(self) -> np.ndarray:
        """The inverted lists (pq) that hold at least one of this segment's vectors, from the DirectMap."""
        faiss = _faiss()

        self._direct_map()
        return np.unique(faiss.vector_to_array(self.index.direct_map.array) >> 32)

    def verify(self, full: bool = False) -> None:
        """Raise :class:`IndexCorruptError` if the file changed on disk since it was checked (``full``: re-read it).

        Without ``full`` this is one ``stat``: a file that was written to (new size or mtime) is read
        again and checked against its footer. An unlinked file (a newer commit dropped it) is skipped:
        this mapping still holds what was checked.
        """
        if self.path is None:
            return
        try:
            stamp = _stamp(self.path)
        except FileNotFoundError:
            return
        if full or stamp != self._stamp:
            verify_file(self.path)
            self._stamp = stamp

    def __del__(self) -> None:
        if getattr(self, "_placeholder", None) is not None and self.index is not None:  # __init__ may have been cut
            self.index.quantizer = self._placeholder
            self.index.own_fields = True
            self._placeholder = None
        self.index = None


@dataclass
class SegmentReader:
    """One segment of a snapshot: its mapped file and the per-document table that maps its local ids to documents.

    ``starts[j]`` is the first local id of live document ``doc_ints[j]`` (sorted); vectors of
    deleted documents stay in the file until compaction and are hidden by ``live`` (a bitmap
    faiss's ``IDSelectorBitmap`` reads, or None when nothing is dead). Immutable once built:
    a write that deletes some of its documents makes a new reader over the same file.
    """

    seg_id: int
    kind: str
    file: SegmentFile | None
    n_vectors: int
    starts: np.ndarray
    counts: np.ndarray
    doc_ints: np.ndarray
    live: np.ndarray | None = None
    _selector: Faiss = None
    _by_doc: tuple[np.ndarray, np.ndarray] | None = None

    def by_doc(self) -> tuple[np.ndarray, np.ndarray]:
        """(doc_ints ascending, their positions in ``doc_ints``): a merged segment's documents are in merge order.

        Computed once (a reader is immutable); what a lookup of documents by number searches.
        """
        if self._by_doc is None:
            order = np.argsort(self.doc_ints, kind="stable")
            self._by_doc = (self.doc_ints[order], order)
        return self._by_doc

    @property
    def index(self) -> Faiss:
        """The faiss index (None once closed)."""
        return self.file.index if self.file is not None else None

    @property
    def exact(self) -> np.ndarray | None:
        """The float16 sidecar, memory-mapped, or None."""
        return self.file.exact if self.file is not None else None

    @property
    def n_live(self) -> int:
        """Vectors that still belong to a document."""
        return int(self.counts.sum())

    def selector(self) -> Faiss:
        """Faiss ``IDSelectorBitmap`` over the live vectors, or None when every vector is live."""
        faiss = _faiss()

        if self.live is None:
            return None
        if self._selector is None:
            self._selector = faiss.IDSelectorBitmap(self.n_vectors, faiss.swig_ptr(self.live))
        return self._selector

    def open_file(self) -> SegmentFile:
        """The mapped file; a closed reader (its snapshot was released) has none."""
        if self.file is None:
            raise RuntimeError(f"segment {self.seg_id}'s reader is closed: use a snapshot that is still open")
        return self.file

    def search(self, probe: Probe, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner products of the probe's tokens among live vectors: (scores, local ids), -1 = none."""
        return self.open_file().search(probe, k, self)

    def docs_of(self, local: np.ndarray) -> np.ndarray:
        """Internal document number of each local id (-1 stays -1)."""
        j = np.searchsorted(self.starts, local, side="right") - 1
        return np.where(local < 0, -1, self.doc_ints[np.clip(j, 0, None)])

    def reconstruct(self, local: np.ndarray) -> np.ndarray:
        """float32 vectors of local ids: the exact sidecar when kept, else decoded from the segment."""
        return self.open_file().reconstruct(local)

    def with_documents(self, doc_ints: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> SegmentReader:
        """A reader over the same file whose live documents are these (the table a newer commit has)."""
        if np.array_equal(doc_ints, self.doc_ints) and np.array_equal(starts, self.starts):
            return self
        return SegmentReader(
            self.seg_id,
            self.kind,
            self.file,
            self.n_vectors,
            starts,
            counts,
            doc_ints,
            live_bitmap(self.n_vectors, starts, counts),
        )

    def alive(self, local: np.ndarray) -> np.ndarray:
        """Which of these local ids (int64) still belong to a document: their bit in ``live`` (all, when None)."""
        if self.live is None:
            return np.ones(len(local), dtype=bool)
        return np.asarray((self.live[local >> 3] >> (local & 7).astype(np.uint8)) & 1, dtype=bool)

    def without(self, gone: np.ndarray) -> SegmentReader:
        """A reader over the same file with documents ``gone`` deleted: O(this segment's documents + bitmap bytes)."""
        drop = np.isin(self.doc_ints, gone)
        if not drop.any():
            return self
        if self.live is None:
            live = np.packbits(np.ones(self.n_vectors, dtype=bool), bitorder="little")
        else:
            live = self.live.copy()
        pos = ranges(self.starts[drop], self.counts[drop])
        np.bitwise_and.at(live, pos >> 3, ~np.left_shift(np.uint8(1), (pos & 7).astype(np.uint8)))
        keep = ~drop
        return SegmentReader(
            self.seg_id,
            self.kind,
            self.file,
            self.n_vectors,
            self.starts[keep],
            self.counts[keep],
            self.doc_ints[keep],
            live,
        )

    def close(self) -> None:
        """Drop this reader's reference to the file (its mapping closes when no snapshot refers to it)."""
        self.file = None
        self._selector = None


def search_ivf(index: Faiss, probe: Probe, k: int, reader: SegmentReader) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, local ids) of an IVF-PQ segment in the lists the probe already chose; dead ids skipped."""
    faiss = _faiss()

    x, assign, coarse = probe.x, probe.assign, probe.coarse
    if assign is None or coarse is None:  # a caller's bug: pq segments are searched in the probe's lists
        raise ValueError("an IVF-PQ segment needs the probe's coarse assignment")
    n, k = len(x), min(k, max(reader.n_live, 1))
    D = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    sel = reader.selector()
    params = faiss.SearchParametersIVF(nprobe=assign.shape[1], sel=sel) if sel else None
    if params is None:
        params = faiss.SearchParametersIVF(nprobe=assign.shape[1])
    index.search_preassigned_c(
        n,
        faiss.swig_ptr(x),
        k,
        faiss.swig_ptr(assign),
        faiss.swig_ptr(coarse),
        faiss.swig_ptr(D),
        faiss.swig_ptr(ids),
        False,
        params,
    )
    return D, ids


def live_bitmap(n_vectors: int, starts: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """Bitmap (little bit order) of the vectors that belong to a document; None when all of them do."""
    if int(np.sum(counts)) == n_vectors:
        return None
    mask = np.zeros(n_vectors, dtype=bool)
    mask[ranges(starts, counts)] = True
    return np.packbits(mask, bitorder="little")


def open_segment_file(
    path: Path, kind: str, n_vectors: int, dim: int, quantizer: Faiss, exact_path: Path | None = None
) -> SegmentFile:
    """Memory-map a segment file and check it: its checksum, and that it holds what its commit row says."""
    faiss = _faiss()

    stamp = _stamp(path)  # FileNotFoundError: a newer commit dropped it (the caller reloads)
    checked = verify_file(path)
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as e:
        msg = str(e).splitlines()[0][:200]
        if not path.exists():
            raise FileNotFoundError(path) from None
        raise IndexCorruptError(f"{path} is corrupt or truncated: {msg}") from None
    want = faiss.IndexIVFPQ if kind == "pq" else faiss.IndexFlatIP
    if not isinstance(index, want) or index.d != dim or index.ntotal != n_vectors:
        raise IndexCorruptError(
            f"{path} holds {index.ntotal} {index.d}-d vectors ({type(index).__name__}); "
            f"the index expects {n_vectors} {dim}-d vectors in a {kind} segment: the index is mismatched"
        )
    if kind == "pq":
        if index.nlist != quantizer.nlist or index.pq.M != quantizer.pq.M or index.pq.nbits != quantizer.pq.nbits:
            raise IndexCorruptError(f"{path} was encoded with another quantizer than this index's: mismatched")
        _check_pq_structure(path, index, quantizer, count_lists=not checked)
    exact = map_exact(exact_path, n_vectors, dim)
    file = SegmentFile(index, kind, quantizer if kind == "pq" else None, exact)
    file.path, file._stamp = path, stamp
    if kind == "pq" and not checked:
        file._direct_map()  # no footer: check the ids now (the first search would build this map anyway)
    return file


def map_exact(exact_path: Path | None, n_vectors: int, dim: int) -> np.ndarray | None:
    """Memory-map a segment's float16 sidecar (``keep_exact``), checking its size; None without one."""
    if exact_path is None:
        return None
    raw = np.memmap(exact_path, dtype=np.float16, mode="r")
    if len(raw) != n_vectors * dim:
        raise IndexCorruptError(f"{exact_path} holds {len(raw)} values, expected {n_vectors} x {dim}")
    return raw.reshape(n_vectors, dim)


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _check_pq_structure(path: Path, index: Faiss, quantizer: Faiss, count_lists: bool) -> None:
    """Codebooks equal to the quantizer's; with ``count_lists`` (a file without a footer), list sizes that add up."""
    faiss = _faiss()

    mine = faiss.vector_to_array(index.pq.centroids)
    if not np.array_equal(mine, faiss.vector_to_array(quantizer.pq.centroids)):
        raise IndexCorruptError(f"{path} is corrupt: its PQ codebooks differ from the index's quantizer")
    if not count_lists:
        return
    inv = index.invlists
    sizes = sum(inv.list_size(i) for i in range(index.nlist))
    if sizes != index.ntotal:
        raise IndexCorruptError(f"{path} is corrupt: its lists hold {sizes} codes, its header says {index.ntotal}")


def open_segment(
    path: Path,
    kind: str,
    n_vectors: int,
    dim: int,
    quantizer: Faiss,
    doc_ints: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    exact_path: Path | None = None,
) -> SegmentReader:
    """Memory-map a segment file, check it, and give it its per-document table."""
    file = open_segment_file(path, kind, n_vectors, dim, quantizer, exact_path)
    return SegmentReader(-1, kind, file, n_vectors, starts, counts, doc_ints, live_bitmap(n_vectors, starts, counts))


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """All positions of the ranges [starts[j], starts[j] + counts[j]), concatenated."""
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.asarray(np.repeat(starts, counts) + np.arange(int(counts.sum()), dtype=np.int64) - offsets)


# -- merging ------------------------------------------------------------------------------------------------------
def merge_pq(parts: list[tuple[SegmentReader, np.ndarray, np.ndarray]], quantizer: Faiss) -> Faiss:
    """A new pq index holding the given vectors of pq segments, renumbered 0..n-1, without re-encoding.

    ``parts``: per source segment, (reader, starts, counts) of the documents to keep, in the
    order they go into the new segment. Codes are copied list by list from the mapped files.
    """
    faiss = _faiss()

    out = faiss.clone_index(quantizer)  # swig returns the concrete class, owned
    code_size = out.code_size
    offset = 0
    per_list_ids: list[list[np.ndarray]] = [[] for _ in range(out.nlist)]
    per_list_codes: list[list[np.ndarray]] = [[] for _ in range(out.nlist)]
    for reader, starts, counts in parts:
        keep = ranges(starts, counts)
        new_of_old = np.full(reader.n_vectors, -1, dtype=np.int64)
        new_of_old[keep] = offset + np.arange(len(keep))
        offset += len(keep)
        inv = reader.index.invlists
        # a small segment touches few lists: visit only those (a merge of many one-document segments
        # would otherwise pay nlist Python-level calls per segment)
        file = reader.open_file()
        lists = file.lists_used() if reader.n_vectors < out.nlist else range(out.nlist)
        for lst in lists:
            lst = int(lst)
            size = inv.list_size(lst)
            if not size:
                continue
            ids = faiss.rev_swig_ptr(inv.get_ids(lst), size)
            if ids.min() < 0 or ids.max() >= reader.n_vectors:
                raise IndexCorruptError(f"{file.path or 'a segment'} is corrupt: its ids are not 0..n-1")
            codes = faiss.rev_swig_ptr(inv.get_codes(lst), size * code_size).reshape(size, code_size)
            new = new_of_old[ids]
            ok = new >= 0
            if ok.any():
                per_list_ids[lst].append(new[ok])
                per_list_codes[lst].append(np.array(codes[ok]))
    for lst in range(out.nlist):
        if per_list_ids[lst]:
            ids = np.ascontiguousarray(np.concatenate(per_list_ids[lst]))
            codes = np.ascontiguousarray(np.concatenate(per_list_codes[lst]))
            out.invlists.add_entries(lst, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
    out.ntotal = offset
    return out
