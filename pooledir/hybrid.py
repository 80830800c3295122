"""Search modes of :meth:`PooledIndex.search`: ``dense`` (MaxSim), ``lexical`` (BM25) and ``hybrid`` (both, fused).

The lexical lane is :mod:`pooledir.lexical`, the fusion :mod:`pooledir.fusion`; the dense lane is the
index's own search, called through its public entry point. Both lanes read the snapshot the index has
pinned, so they see the same commit; a metadata filter applies to both. With passages, each lane ranks
documents by their best passage.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pooledir import lexical
from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.fusion import Fusion, fuse
from pooledir.search import Hit, SearchParams

if TYPE_CHECKING:
    from pathlib import Path

    from pooledir.index.manifest import IndexConfig
    from pooledir.store import DocStore

MODES = ("dense", "lexical", "hybrid")


class SearchableIndex(Protocol):
    """What the lexical and hybrid modes need from an index (:class:`~pooledir.pooled_index.PooledIndex` is one)."""

    path: Path
    config: IndexConfig

    @property
    def doc_store(self) -> DocStore:
        """The document store at the pinned snapshot: the lexical table and the ids it ranks."""
        ...

    @property
    def n_rows(self) -> int:
        """Stored rows (documents, or passages of split documents): what the lexical table holds."""
        ...

    def get(self, id: str) -> Document:
        """The stored document ``id``."""
        ...

    def search(
        self, queries: list[str], *, k: int, params: SearchParams, filter: dict[str, Any] | None
    ) -> list[list[Hit]]:
        """Dense search of ``queries``."""
        ...

    def search_embeddings(
        self, Q: np.ndarray, params: SearchParams, *, filter: dict[str, Any] | None
    ) -> list[list[Hit]]:
        """Dense search of encoded queries."""
        ...


def check_mode(mode: str) -> str:
    """Return ``mode`` or raise InputError listing the modes."""
    if mode not in MODES:
        raise InputError(f"search mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def search(
    index: SearchableIndex,
    queries: Sequence[str],
    params: SearchParams,
    mode: str,
    with_text: bool = False,
    filter: dict[str, Any] | None = None,
    fusion: Fusion | None = None,
    Q: np.ndarray | None = None,
    *,
    parallel: bool = True,
) -> list[list[Hit]]:
    """``lexical`` or ``hybrid`` search of ``queries`` (already checked); ``Q``: their dense encodings, if made.

    ``parallel``: hybrid runs its lexical lane in a thread while the dense lane runs (the default), or after
    it (same results; what ``eval/bench_hybrid.py`` compares).
    """
    from pooledir.store import check_filter

    check_mode(mode)
    fusion = fusion or Fusion()
    fusion.check()
    if filter:  # {} is no filter, as in the dense lane
        check_filter(filter)
    _require_table(index)
    if mode == "lexical":
        return lexical_hits(index, queries, params.k, filter, with_text)
    depth = max(params.k, fusion.depth)
    wide = replace(params, k=depth)
    # the lexical lane runs beside the dense one (sqlite, faiss and torch release the GIL): a hybrid query
    # costs about the slower lane where a core is free. Same commit: the thread reads through the index's
    # own connection (opened with check_same_thread=False), inside the read transaction that pins the
    # snapshot the dense lane searches; this call waits for the thread before it returns or raises, so the
    # caller cannot end (release) that transaction under it.
    lex_future = _pool().submit(lexical_hits, index, queries, depth, filter, False) if parallel else None
    try:
        if Q is None:
            dense = index.search(list(queries), k=depth, params=wide, filter=filter)
        else:
            dense = index.search_embeddings(Q, wide, filter=filter)
    except BaseException:
        if lex_future is not None:
            wait([lex_future])  # the dense lane's error is the one raised, as when the lanes ran in turn
        raise
    if lex_future is None:
        lex = lexical_hits(index, queries, depth, filter, False)
    else:
        lex = lex_future.result()
    out = []
    for d, lx in zip(dense, lex):
        fused = fuse([(h.id, h.score) for h in d], [(h.id, h.score) for h in lx], fusion, params.k)
        out.append(_hits(index, fused, with_text))
    return out


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The lexical lanes' threads, shared by every index of the process (one per hybrid search in flight)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pooledir-lexical")
        return _executor


def lexical_hits(
    index: SearchableIndex, queries: Sequence[str], k: int, filter: dict[str, Any] | None, with_text: bool
) -> list[list[Hit]]:
    """BM25's top ``k`` documents per query (a split document by its best passage)."""
    if index.n_rows == 0:
        return [[] for _ in queries]
    conn = index.doc_store.conn
    out = []
    for q in queries:
        if index.config.passage_stride is None:
            doc_ints, scores = lexical.search(conn, q, k, filter, n_rows=index.n_rows)
            ranked = list(zip(index.doc_store.ext_ids(doc_ints), scores.tolist()))
        else:
            ranked = _best_passages(index, q, k, filter)
        out.append(_hits(index, ranked, with_text))
    return out


def lexical_stats(index: SearchableIndex, queries: Sequence[str]) -> list[lexical.Stats]:
    """BM25 statistics of this index for each query's words (a partition's share of the collection's)."""
    _require_table(index)
    conn = index.doc_store.conn
    return [lexical.local_stats(conn, q, index.n_rows) for q in queries]


def lexical_hits_with(
    index: SearchableIndex,
    queries: Sequence[str],
    stats: Sequence[lexical.Stats],
    k: int,
    filter: dict[str, Any] | None = None,
) -> list[list[Hit]]:
    """BM25's top ``k`` documents per query, scored with collection-wide ``stats`` (one per query).

    What a partition answers: merged by score across partitions, the lists are one index's
    :func:`lexical_hits` over all of their documents (an index with passages is not partitioned).
    """
    from pooledir.store import check_filter

    _require_table(index)
    store = index.doc_store
    allowed = None
    if filter:  # {} is no filter, as in the dense lane
        check_filter(filter)
        allowed = np.sort(store.matching(filter))
    out = []
    for q, s in zip(queries, stats):
        doc_ints, scores = lexical.search_with(store.conn, q, k, s, allowed)
        out.append(_hits(index, list(zip(store.ext_ids(doc_ints), scores.tolist())), False))
    return out


def _require_table(index: SearchableIndex) -> None:
    if not lexical.has_table(index.doc_store.conn):
        raise InputError(
            f"{index.path} has no lexical table (made by an older pooledir and opened read-only): "
            "open it once with write access to build it, or search with mode='dense'"
        )


def _best_passages(index: SearchableIndex, q: str, k: int, filter: dict[str, Any] | None) -> list[tuple[str, float]]:
    """Documents by their best passage: asks for more rows (x4, x16, x64) until ``k`` documents or none left."""
    from pooledir.passages import parent_id

    conn, store = index.doc_store.conn, index.doc_store
    for factor in (4, 16, 64):
        doc_ints, scores = lexical.search(conn, q, factor * k, filter, n_rows=index.n_rows)
        best: dict[str, float] = {}
        for row_id, s in zip(store.ext_ids(doc_ints), scores.tolist()):
            best.setdefault(parent_id(row_id), s)
        if len(doc_ints) < factor * k or len(best) >= k:
            break
    return list(best.items())[:k]


def _hits(index: SearchableIndex, ranked: Sequence[tuple[str, float]], with_text: bool) -> list[Hit]:
    if not with_text:
        return [Hit(i, float(s)) for i, s in ranked]
    docs = [index.get(i) for i, _ in ranked]
    return [Hit(i, float(s), d.text, d.metadata) for (i, s), d in zip(ranked, docs)]
