"""FAISS IVF-PQ over inner product: the compressed backend pooledir is built around.

The CPU index is the source of truth (it keeps a hashtable direct map so
vectors can be decoded by id for MaxSim). The file is written without the
map: it is 16 bytes per vector, as much as the PQ codes, and faiss rebuilds
it from the inverted lists in ~0.1 s per 600k vectors at load. When faiss
sees a GPU, training and search run on a GPU copy; the copy is rebuilt
lazily after a write.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from pooledir.device import faiss_gpu_available
from pooledir.errors import InputError
from pooledir.index.base import VectorBackend, atomic_write_index

log = logging.getLogger(__name__)

#: sub-quantizer counts faiss's GPU IVF-PQ accepts (with 8-bit codes)
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)


def default_nlist(n_vectors: int) -> int:
    """≈ 4·√N lists, but never so many that a list gets fewer than 39 training vectors.

    On SciFact train qrels 2,048 lists beat 4·√N = 3,129 for 611,980 pooled vectors
    (eval/results/tune_scifact_train.json), but rounding down to a power of two cost IVF-PQ 4% of
    nDCG@10 on a 500-document index (512 lists instead of 966), so the rule stays 4·√N.
    """
    return max(1, min(int(round(4 * math.sqrt(max(n_vectors, 1)))), n_vectors // 39))


def default_pq_m(dim: int) -> int:
    """dim/8 sub-quantizers (16 for 128-d), rounded down to a GPU-legal count that divides ``dim``."""
    for m in sorted(GPU_PQ_M, reverse=True):
        if m <= max(1, dim // 8) and dim % m == 0:
            return m
    return 1


class IVFPQBackend(VectorBackend):
    """``IndexIVFPQ`` (inner product, residual PQ) with id-addressable vectors."""

    kind = "ivfpq"

    def __init__(
        self,
        dim: int,
        nlist: int | None = None,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        use_gpu: bool = False,
        index=None,
    ) -> None:
        super().__init__(dim)
        self.nlist = nlist
        self.pq_m = pq_m or default_pq_m(dim)
        if dim % self.pq_m:
            raise InputError(f"pq_m={self.pq_m} must divide the vector dimension {dim}")
        self.pq_nbits = pq_nbits
        self.use_gpu = use_gpu and faiss_gpu_available()
        if use_gpu and not self.use_gpu:
            log.info("faiss sees no GPU; IVF-PQ runs on the CPU")
        self.index = index
        self._gpu_index = None
        self._gpu_res = None

    @property
    def ntotal(self) -> int:  # noqa: D102
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:  # noqa: D102
        return self.index is not None and self.index.is_trained

    def train(self, vectors: np.ndarray, n_total: int | None = None) -> None:
        """Train coarse centroids and PQ codebooks on ``vectors``, a sample of ``n_total`` (default: all)."""
        import faiss

        n = len(vectors)
        # size the lists for the whole collection, but never beyond what the sample can train
        nlist = min(self.nlist or default_nlist(max(n_total or n, n)), max(1, n))
        nbits = self.pq_nbits
        if n < (1 << nbits):  # faiss needs >= 2**nbits training points per codebook
            nbits = max(1, int(math.log2(max(n, 2))))
            log.warning("only %d training vectors: PQ codes use %d bits instead of %d", n, nbits, self.pq_nbits)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.use_gpu and nbits == 8:
            gpu = faiss.index_cpu_to_gpu(self._resources(), 0, index)
            gpu.train(x)
            index = faiss.index_gpu_to_cpu(gpu)
        else:
            index.train(x)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self.index, self.nlist, self.pq_nbits = index, nlist, nbits
        self._gpu_index = None

    def _resources(self):
        import faiss

        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        return self._gpu_res

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:  # noqa: D102
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        self._gpu_index = None

    def remove(self, ids: np.ndarray) -> int:  # noqa: D102
        removed = int(self.index.remove_ids(np.asarray(ids, dtype=np.int64)))
        self._gpu_index = None
        return removed

    def _searcher(self):
        import faiss

        if not self.use_gpu or self.pq_nbits != 8:
            return self.index
        if self._gpu_index is None:
            co = faiss.GpuClonerOptions()
            co.useFloat16 = True  # float16 lookup tables: needed for large pq_m on GPU
            self._gpu_index = faiss.index_cpu_to_gpu(self._resources(), 0, self.index, co)
        return self._gpu_index

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        index = self._searcher()
        index.nprobe = min(nprobe, self.nlist or 1)
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:  # noqa: D102
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def save(self, path: Path) -> None:  # noqa: D102
        import faiss

        ivf = faiss.extract_index_ivf(self.index)
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # the map is derived data: keep it off the disk
        try:
            atomic_write_index(self.index, path)
        finally:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)

    @classmethod
    def load(cls, path: Path, config: dict, use_gpu: bool) -> IVFPQBackend:  # noqa: D102
        import faiss

        index = faiss.read_index(str(path))
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type != faiss.DirectMap.Hashtable:  # pooledir writes the file without it (older files had it)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        pq = faiss.downcast_index(index).pq
        return cls(index.d, nlist=ivf.nlist, pq_m=pq.M, pq_nbits=pq.nbits, use_gpu=use_gpu, index=index)

    def describe(self) -> dict:  # noqa: D102
        return super().describe() | {
            "nlist": self.nlist,
            "pq_m": self.pq_m,
            "pq_nbits": self.pq_nbits,
            "device": "gpu" if self.use_gpu else "cpu",
        }
