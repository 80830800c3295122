"""colbert-ai's PLAID (Indexer + Searcher) on the very vectors pooledir indexes.

colbert-ai would encode the collection itself; instead its collection-encoding
step is replaced for the run by a lookup into our cached embeddings, so both
engines index identical vectors and encoding is not paid twice. Queries are
encoded by our encoder (equal to colbert-ai's Checkpoint under colbert-ai's
conventions, tested; and it also honours a checkpoint that switches them
off), inside the timed search, as in pooledir's latency numbers.

Needs the ``eval`` extra (colbert-ai, ninja).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.evaluation.metrics import folder_bytes
from pooledir.evaluation.systems.base import Context, SystemUnavailable
from pooledir.pooled_index import Hit

if TYPE_CHECKING:
    import torch

    from pooledir.encoder import ColBERTEncoder


def _query_encoder(encoder: ColBERTEncoder) -> Callable[..., torch.Tensor]:
    """colbert-ai's ``Searcher.encode`` through our encoder: (1, live tokens, dim), zero padding rows dropped."""
    import torch

    def encode(text: str | list[str], full_length_search: bool = False) -> torch.Tensor:
        Q = encoder.encode_queries(text if isinstance(text, list) else [text])
        live = np.any(Q != 0, axis=2).any(axis=0)
        return torch.from_numpy(np.ascontiguousarray(Q[:, live]))

    return encode


@contextmanager
def _precomputed_passages(texts: list[str], vectors: Sequence[np.ndarray]) -> Iterator[None]:
    """Make colbert-ai's CollectionEncoder return our vectors for the passages it is asked to encode."""
    import torch
    from colbert.indexing import collection_encoder

    row = {t: i for i, t in enumerate(texts)}  # equal texts encode equally, so any of them will do

    def encode_passages(self: Any, passages: Sequence[str]) -> tuple[torch.Tensor | None, list[int] | None]:
        if len(passages) == 0:
            return None, None
        idx = [row[p] for p in passages]
        embs = torch.from_numpy(np.concatenate([vectors[i] for i in idx]).astype(np.float32))
        return (embs.half() if torch.cuda.is_available() else embs), [len(vectors[i]) for i in idx]

    original = collection_encoder.CollectionEncoder.encode_passages
    collection_encoder.CollectionEncoder.encode_passages = encode_passages
    try:
        yield
    finally:
        collection_encoder.CollectionEncoder.encode_passages = original


class PlaidSystem:
    """colbert-ai's PLAID at ``nbits`` residual bits, optionally on pooled vectors."""

    def __init__(self, nbits: int, pool_factor: int = 1) -> None:
        self.nbits = nbits
        self.pool_factor = pool_factor
        self.name = f"plaid-nbits{nbits}" + (f"-pf{pool_factor}" if pool_factor > 1 else "")
        self._row: dict[str, Any] = {}

    def _quiet(self) -> contextlib.ExitStack:
        """colbert-ai's run context, with its many prints swallowed."""
        from colbert.infra import Run

        stack = contextlib.ExitStack()
        stack.enter_context(Run().context(self._run_config))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        return stack

    def build(self, context: Context, documents: Sequence[Document], vectors: Sequence[np.ndarray]) -> None:  # noqa: D102
        from colbert import Indexer
        from colbert.infra import ColBERTConfig, RunConfig

        from pooledir.pooling import pool_embeddings

        t = time.perf_counter()
        vecs = pool_embeddings(vectors, self.pool_factor, device=context.device) if self.pool_factor > 1 else vectors
        pool_s = time.perf_counter() - t
        self.documents = list(documents)
        self.texts = [d.text for d in self.documents]
        self.encoder = context.encoder
        s = context.encoder.settings
        self._config = ColBERTConfig(
            nbits=self.nbits,
            dim=s.dim,
            doc_maxlen=s.doc_maxlen,
            query_maxlen=s.query_maxlen,
            avoid_fork_if_possible=True,
            index_root=str(context.workdir / "plaid"),
        )
        self._run_config = RunConfig(
            nranks=1, experiment="pooledir-eval", root=str(context.workdir), avoid_fork_if_possible=True
        )
        with self._quiet(), _precomputed_passages(self.texts, vecs):
            indexer = Indexer(checkpoint=str(context.encoder.path), config=self._config, verbose=0)
            indexer.index(name=self.name, collection=self.texts, overwrite=True)
        self._index_path = Path(indexer.get_index())
        self._searcher: Any = None  # colbert-ai's Searcher, loaded on the first search (untyped)
        self._row = {
            "system": "plaid",
            "index": "plaid",
            "pool_factor": self.pool_factor,
            "nbits": self.nbits,
            "vectors": int(sum(len(v) for v in vecs)),
            "pool_s": pool_s,
        }

    def search(self, queries: Sequence[str], k: int, vectors: np.ndarray | None = None) -> list[list[Hit]]:  # noqa: D102
        from colbert import Searcher

        with self._quiet():
            if self._searcher is None:  # loaded on first search, outside the build time (as before)
                self._searcher = Searcher(index=self.name, config=self._config, collection=self.texts, verbose=0)
                self._searcher.encode = _query_encoder(self.encoder)
            out = []
            for q in queries:  # colbert-ai's Searcher takes one query at a time
                pids, _, scores = self._searcher.search(q, k=k)
                out.append([Hit(self.documents[p].id, float(sc)) for p, sc in zip(pids, scores)])
        return out

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return dict(self._row)

    def bytes(self) -> dict[str, int]:  # noqa: D102
        path = self._index_path
        parts = ("*.codes.pt", "*.residuals.pt", "centroids.pt", "buckets.pt")
        return {"index_bytes": folder_bytes(path), "vector_bytes": sum(folder_bytes(path, p) for p in parts)}

    def close(self) -> None:  # noqa: D102
        self._searcher = None


def systems(
    nbits: Sequence[int] = (2, 4), pool_factor: int | None = None, pool_factors: Sequence[int] = (1,)
) -> list[PlaidSystem]:
    """One PLAID system per (pool factor, residual bit count), on vectors pooled as pooledir pools them.

    colbert-ai is imported here, before anything is timed; without it the harness skips PLAID with the reason.
    """
    from pooledir.pooling import check_pool_factor

    for b in nbits:
        if b not in (1, 2, 4, 8):  # colbert-ai packs 8 // nbits residual codes per byte
            raise InputError(f"PLAID nbits={b!r} is not one of 1, 2, 4, 8")
    factors = [check_pool_factor(f) for f in ([pool_factor] if pool_factor is not None else pool_factors)]
    try:
        import colbert  # noqa: F401
    except ImportError as e:
        raise SystemUnavailable(
            f'colbert-ai is not installed ({e}); it is in the eval extra: pip install "pooledir[eval]"'
        ) from None
    return [PlaidSystem(b, f) for f in factors for b in nbits]
