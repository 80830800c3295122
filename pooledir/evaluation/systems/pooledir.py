"""pooledir's own indexes as evaluated systems: one per (backend, pooling, codec), built from cached vectors."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from pooledir import hybrid
from pooledir.corpus import Document
from pooledir.evaluation.systems.base import Context
from pooledir.fusion import Fusion
from pooledir.hybrid import check_mode
from pooledir.lexical import TABLE as LEXICAL_TABLE
from pooledir.pooled_index import Hit, IndexConfig, PooledIndex
from pooledir.pooling import check_pool_threshold, pool_embeddings
from pooledir.search import SearchParams


class PooledirSystem:
    """A :class:`PooledIndex` with one backend, pooling and codec, searched with ``params``' knobs.

    ``pool_threshold`` pools adaptively (Ward merge heights) here, before the index, which then
    stores the pooled vectors as they are; ``refine`` keeps the float16 copy so that MaxSim
    re-scores the candidates exactly (IVF-PQ's ``keep_exact``). The flat backend is the exact
    baseline: it scores every document by MaxSim (``exhaustive``), no ANN candidates.
    """

    def __init__(
        self,
        backend: str,
        pool_factor: int,
        params: SearchParams | None = None,
        pool_threshold: float | None = None,
        pq_m: int | None = None,
        refine: bool = False,
        mode: str = "dense",
        fusion: Fusion | None = None,
    ) -> None:
        self.mode, self.fusion = check_mode(mode), fusion
        self.pool_threshold = check_pool_threshold(pool_threshold)
        self.config = IndexConfig(
            backend=backend,
            pool_factor=1 if self.pool_threshold is not None else pool_factor,
            pq_m=pq_m,
            keep_exact=refine,
        )
        self.config.check()
        self.params = replace(params or SearchParams(), exhaustive=backend == "flat")
        pooling = f"pt{self.pool_threshold:g}" if self.pool_threshold is not None else f"pf{pool_factor}"
        self.name = f"pooledir-{backend}-{pooling}" + (f"-m{pq_m}" if pq_m else "") + ("-refine" if refine else "")
        self.subdir = self.name  # systems that differ only in the search mode share one built index
        if mode != "dense":
            self.name += f"-{mode}" + (f"-{fusion.method}{fusion.weight:g}-d{fusion.depth}" if fusion else "")
        self.index: PooledIndex | None = None
        self.pool_s = 0.0

    def build(self, context: Context, documents: Sequence[Document], vectors: Sequence[np.ndarray]) -> None:  # noqa: D102
        path = context.workdir / self.subdir
        if (path / "manifest.json").is_file():  # built by a system before this one, from the same vectors
            self.index = PooledIndex.open(path, device=context.device, encoder=context.encoder)
            return
        shutil.rmtree(path, ignore_errors=True)
        self.index = PooledIndex.create(path, config=self.config, device=context.device, encoder=context.encoder)
        pool_s = 0.0
        if self.pool_threshold is not None:
            t = time.perf_counter()
            vectors = pool_embeddings(vectors, pool_threshold=self.pool_threshold)
            pool_s = time.perf_counter() - t
        self.pool_s = pool_s + self.index.add(documents, embeddings=vectors).pool_s

    def _built(self) -> PooledIndex:
        """The index :meth:`build` made or opened."""
        if self.index is None:
            raise RuntimeError(f"{self.name}: call build() before searching or measuring it")
        return self.index

    def search(self, queries: Sequence[str], k: int, vectors: np.ndarray | None = None) -> list[list[Hit]]:  # noqa: D102
        params = replace(self.params, k=k)
        if self.mode != "dense":
            return hybrid.search(self._built(), list(queries), params, self.mode, fusion=self.fusion, Q=vectors)
        if vectors is not None:
            return self._built().search_embeddings(vectors, params)
        return self._built().search(list(queries), k=k, params=params)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        info = self._built().describe()
        return {
            "system": "pooledir",
            "index": self.config.backend,
            "pool_factor": None if self.pool_threshold is not None else self.config.pool_factor,
            "pool_threshold": self.pool_threshold,
            # the sub-quantizers the trained index holds (the default resolved), None for flat
            "pq_m": info.backend.get("pq_m", self.config.pq_m) if self.config.backend == "ivfpq" else None,
            "refine": self.config.keep_exact,
            "mode": self.mode,
            "fusion": asdict(self.fusion or Fusion()) if self.mode == "hybrid" else None,
            "nbits": None,
            "vectors": info.vectors,
            "pool_s": self.pool_s,
        }

    def bytes(self) -> dict[str, int]:  # noqa: D102
        files = self._built().describe().bytes
        vector_bytes = sum(v for k, v in files.items() if k.startswith(("segments", "quantizer")))
        store = sum(v for k, v in files.items() if k.startswith("docs.sqlite"))
        text, lexical = self._store_bytes()
        # what a query reads: the vectors and the store less the documents' text and metadata; the lexical
        # lane's FTS5 tables only where this mode reads them (a dense search never does, and PLAID has none)
        table = max(0, store - text - lexical)
        return {
            "index_bytes": vector_bytes + store,
            "vector_bytes": vector_bytes,
            "lexical_bytes": lexical,
            "search_bytes": vector_bytes + table + (lexical if self.mode != "dense" else 0),
        }

    def _store_bytes(self) -> tuple[int, int]:
        """Bytes of document text and metadata, and the pages of the lexical lane's FTS5 tables (``dbstat``)."""
        con = sqlite3.connect(f"file:{self._built().path / 'docs.sqlite'}?mode=ro", uri=True)
        try:
            sql = "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB)) + LENGTH(metadata)), 0) FROM docs"
            (text,) = con.execute(sql).fetchone()
            try:
                sql = f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE '{LEXICAL_TABLE}%'"
                (lexical,) = con.execute(sql).fetchone()
            except sqlite3.OperationalError:  # a sqlite built without the dbstat table: counted with the store
                lexical = 0
        finally:
            con.close()
        return int(text), int(lexical)

    def close(self) -> None:  # noqa: D102
        if self.index is not None:
            self.index.close()


def systems(
    indexes: Sequence[str] = ("ivfpq", "flat"),
    pool_factors: Sequence[int] = (1, 2, 3, 4),
    params: SearchParams | None = None,
    pool_thresholds: Sequence[float] = (),
    pq_ms: Sequence[int | None] = (None,),
    refine: Sequence[bool] = (False,),
    modes: Sequence[str] = ("dense",),
    fusions: Sequence[Fusion | None] = (None,),
) -> list[PooledirSystem]:
    """One system per (backend, pooling, codec, mode), backends first; bad values fail before anything is built.

    ``fusions`` are the hybrid settings measured (None: the library's default); other modes ignore them.
    """
    for f in fusions:
        if f is not None:
            f.check()
    searches = [(m, f) for m in modes for f in (fusions if m == "hybrid" else [None])]
    out = []
    for b in indexes:
        codecs = [(m, r) for m in pq_ms for r in refine] if b == "ivfpq" else [(None, False)]
        for m, r in codecs:
            for mode, f in searches:
                out += [PooledirSystem(b, pf, params, pq_m=m, refine=r, mode=mode, fusion=f) for pf in pool_factors]
                out += [
                    PooledirSystem(b, 1, params, pool_threshold=t, pq_m=m, refine=r, mode=mode, fusion=f)
                    for t in pool_thresholds
                ]
    return out
