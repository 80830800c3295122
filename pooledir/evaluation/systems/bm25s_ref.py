"""BM25 from ``bm25s`` (a well-kept reference) on the lexical lane's own tokens: the cross-check of its numbers.

Documents and queries are tokenized by the same FTS5 tokenizer the lexical lane uses
(:func:`pooledir.lexical.tokenize`: ``porter unicode61``), so the two differ only in BM25 itself:
``robertson`` at k1 1.2, b 0.75 is FTS5's formula (FTS5 clamps a negative idf to ~0), ``lucene`` at
k1 1.5 is bm25s's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pooledir import lexical
from pooledir.corpus import Document
from pooledir.evaluation.systems.base import Context, SystemUnavailable
from pooledir.pooled_index import Hit

#: (method, k1, b) run by default
SETTINGS = (("robertson", 1.2, 0.75), ("lucene", 1.5, 0.75))


class Bm25sSystem:
    """bm25s over the documents' stored text (title + text), FTS5's tokens."""

    def __init__(self, method: str, k1: float, b: float) -> None:
        self.method, self.k1, self.b = method, k1, b
        self.name = f"bm25s-{method}-k{k1:g}-b{b:g}"
        self.retriever: Any = None  # a bm25s.BM25 once built (bm25s ships no types)
        self.ids: list[str] = []

    def build(self, context: Context, documents: Sequence[Document], vectors: Sequence[np.ndarray]) -> None:  # noqa: D102
        import bm25s

        self.ids = [d.id for d in documents]
        self.retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        self.retriever.index(lexical.tokenize([d.text for d in documents]), show_progress=False)

    def search(self, queries: Sequence[str], k: int, vectors: np.ndarray | None = None) -> list[list[Hit]]:  # noqa: D102
        tokens = [list(dict.fromkeys(t)) for t in lexical.tokenize(list(queries))]
        out: list[list[Hit]] = []
        for t in tokens:
            if not t:
                out.append([])
                continue
            docs, scores = self.retriever.retrieve([t], k=min(k, len(self.ids)), show_progress=False)
            out.append([Hit(self.ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0])
        return out

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "system": "bm25s",
            "index": f"{self.method} k1={self.k1:g} b={self.b:g}",
            "mode": "lexical",
            "vectors": 0,
            "pool_s": 0.0,
        }

    def bytes(self) -> dict[str, int]:  # noqa: D102
        n = sum(int(getattr(v, "nbytes", 0)) for v in self.retriever.scores.values())
        return {"index_bytes": n, "vector_bytes": 0}

    def close(self) -> None:  # noqa: D102
        self.retriever = None


def systems(settings: Sequence[Sequence[Any]] = SETTINGS) -> list[Bm25sSystem]:
    """One system per (method, k1, b); unavailable without ``pip install bm25s``."""
    try:
        import bm25s  # noqa: F401
    except ImportError:
        raise SystemUnavailable('bm25s is not installed: pip install "pooledir[eval]"') from None
    return [Bm25sSystem(str(m), float(k1), float(b)) for m, k1, b in settings]
