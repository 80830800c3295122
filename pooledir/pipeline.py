"""The write pipeline: prepare (passages) → encode → pool → a :class:`WriteBatch` that one method commits.

Every writer composes these steps: :meth:`PooledIndex.add <pooledir.pooled_index.PooledIndex.add>`, the
streamed build (:mod:`pooledir.build`), shard encoding (:mod:`pooledir.build`, :mod:`pooledir.distributed`),
the HTTP service (encodes outside its write lock, commits inside) and Ray Serve (encodes at the ingress,
commits in the partition that owns the document). :meth:`PooledIndex.write` commits a batch.

* :func:`prepare` turns documents into the rows an index stores: with ``passage_stride`` set, a long
  document becomes passage rows (:mod:`pooledir.passages`), which needs the encoder's tokenizer.
* :func:`encode` and :func:`pool` make each row's vectors; :class:`PoolSpec` says how an index pools.
* A batch records the ``passage_stride`` it was prepared with; an index refuses a batch prepared for
  another (:func:`check_batch`). Vectors made without the text (cached embeddings, encoded shards)
  cannot be split into passages: :func:`refuse_vectors_for_passages` is that one rule and its message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pooledir.corpus import Document
from pooledir.errors import InputError

if TYPE_CHECKING:
    from pooledir.index.folder import Batch
    from pooledir.passages import PassageEncoder


class DocumentEncoder(Protocol):
    """What encoding needs from an encoder (:class:`~pooledir.encoder.ColBERTEncoder` is one)."""

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> list[np.ndarray]:
        """One (n_tokens, dim) array per text."""
        ...


@dataclass(frozen=True)
class PoolSpec:
    """How an index pools a document's token vectors: a factor, or an adaptive threshold."""

    factor: int = 1
    protected_tokens: int = 1
    threshold: float | None = None

    @classmethod
    def of(cls, config: Any) -> PoolSpec:
        """The spec of an :class:`~pooledir.index.manifest.IndexConfig` (or anything with its pool fields)."""
        return cls(config.pool_factor, config.protected_tokens, getattr(config, "pool_threshold", None))

    @property
    def pools(self) -> bool:
        """Whether vectors change at all."""
        return self.factor > 1 or self.threshold is not None


@dataclass(frozen=True)
class Prepared:
    """Documents as the rows an index stores, with the text to encode for each row."""

    documents: tuple[str, ...]  # the ids as given (a split document's rows are its passages)
    rows: list[Document]
    texts: list[str]
    passage_stride: int | None = None


@dataclass(frozen=True)
class WriteBatch:
    """Rows with their pooled vectors, ready for :meth:`PooledIndex.write`; picklable (Ray ships it)."""

    documents: tuple[str, ...]
    rows: list[Document]
    vectors: list[np.ndarray]
    n_tokens: list[int]
    passage_stride: int | None = None
    encode_s: float = 0.0
    pool_s: float = 0.0

    @property
    def n_vectors(self) -> int:
        """Vectors the batch holds."""
        return sum(len(v) for v in self.vectors)

    def to_index_batch(self) -> Batch:
        """The storage engine's record of the same rows."""
        from pooledir.index.folder import Batch

        rows = self.rows
        ids, texts, metadata = [d.id for d in rows], [d.text for d in rows], [d.metadata for d in rows]
        return Batch(ids, texts, metadata, self.n_tokens, self.vectors)

    def split(self, owner: Callable[[str], int]) -> dict[int, WriteBatch]:
        """One batch per owner of the documents (a document's passages stay together), in document order."""
        from pooledir.passages import parent_id

        of_row = parent_id if self.passage_stride is not None else (lambda i: i)
        groups: dict[int, list[int]] = {}
        for j, row in enumerate(self.rows):
            groups.setdefault(owner(of_row(row.id)), []).append(j)
        docs: dict[int, list[str]] = {}
        for d in self.documents:
            docs.setdefault(owner(d), []).append(d)
        return {
            p: WriteBatch(
                tuple(docs.get(p, ())),
                [self.rows[j] for j in js],
                [self.vectors[j] for j in js],
                [self.n_tokens[j] for j in js],
                self.passage_stride,
            )
            for p, js in groups.items()
        }


def refuse_vectors_for_passages(passage_stride: int | None, what: str = "embeddings") -> None:
    """Raise :class:`InputError` when vectors made without the text are headed for a passage index."""
    if passage_stride is not None:
        raise InputError(
            f"this index splits documents into passages (passage_stride={passage_stride}), which needs their "
            f"text: pass documents, not {what}"
        )


def prepare(
    documents: Sequence[Document], passage_stride: int | None, encoder: PassageEncoder | None = None
) -> Prepared:
    """The rows to store for ``documents`` (already checked): split into passages when ``passage_stride`` is set."""
    ids = tuple(d.id for d in documents)
    if passage_stride is None:
        return Prepared(ids, list(documents), [d.text for d in documents])
    if encoder is None:
        raise InputError("splitting documents into passages needs the encoder's tokenizer; pass an encoder")
    from pooledir.passages import split_documents

    rows, texts = split_documents(documents, encoder, passage_stride)
    return Prepared(ids, rows, texts, passage_stride)


def encode(texts: Sequence[str], encoder: DocumentEncoder, show_progress: bool = False) -> list[np.ndarray]:
    """One (n_tokens, dim) array per text."""
    return encoder.encode_documents(list(texts), show_progress=show_progress)


def pool(
    embeddings: Sequence[np.ndarray], spec: PoolSpec, device: str = "cpu", show_progress: bool = False
) -> list[np.ndarray]:
    """Pool each document's vectors as ``spec`` says; float16 arrays (also when ``spec`` does not pool)."""
    from pooledir.pooling import pool_embeddings

    return pool_embeddings(
        embeddings,
        spec.factor,
        spec.protected_tokens,
        device=device,
        show_progress=show_progress,
        pool_threshold=spec.threshold,
    )


def encode_and_pool(
    prepared: Prepared, encoder: DocumentEncoder, spec: PoolSpec, device: str, show_progress: bool = False
) -> WriteBatch:
    """Encode the prepared rows, pool them: the batch to commit."""
    t0 = time.perf_counter()
    embeddings = encode(prepared.texts, encoder, show_progress)
    encode_s = time.perf_counter() - t0
    return from_embeddings(prepared, embeddings, spec, device, show_progress=show_progress, encode_s=encode_s)


def from_embeddings(
    prepared: Prepared,
    embeddings: Sequence[np.ndarray],
    spec: PoolSpec,
    device: str = "cpu",
    pooled: bool = False,
    n_tokens: Sequence[int] | np.ndarray | None = None,
    show_progress: bool = False,
    encode_s: float = 0.0,
    dim: int | None = None,
) -> WriteBatch:
    """The batch for rows whose vectors are given: pooled here unless ``pooled`` (then ``n_tokens``: counts before).

    ``dim``, when given, is checked before pooling (which would fail obscurely on a malformed array).
    """
    if len(embeddings) != len(prepared.rows):
        raise InputError(f"got {len(embeddings)} embeddings for {len(prepared.rows)} documents")
    if n_tokens is not None and (not pooled or len(n_tokens) != len(prepared.rows)):
        raise InputError(f"n_tokens ({len(n_tokens)} values) needs pooled=True and one count per document")
    check_shapes(prepared.rows, embeddings, dim)
    t0 = time.perf_counter()
    if pooled:
        vectors = list(embeddings)
        counts = [int(n) for n in n_tokens] if n_tokens is not None else [len(e) for e in embeddings]
    else:
        vectors = pool(embeddings, spec, device, show_progress)
        counts = [len(e) for e in embeddings]
    pool_s = 0.0 if pooled else time.perf_counter() - t0
    return WriteBatch(prepared.documents, prepared.rows, vectors, counts, prepared.passage_stride, encode_s, pool_s)


def check_shapes(rows: Sequence[Document], vectors: Sequence[np.ndarray], dim: int | None) -> None:
    """Raise :class:`InputError` unless each row has an (n >= 1, dim) array."""
    for d, e in zip(rows, vectors):
        e = np.asarray(e)
        if e.ndim != 2 or (dim is not None and e.shape[1] != dim) or len(e) == 0:
            raise InputError(f"document {d.id!r}: embedding shape {e.shape} is not (n >= 1, {dim or 'dim'})")


def check_batch(batch: WriteBatch, passage_stride: int | None, dim: int) -> None:
    """Raise :class:`InputError` unless ``batch`` fits an index with this ``passage_stride`` and ``dim``."""
    if batch.passage_stride != passage_stride:
        if passage_stride is None:
            raise InputError(
                f"this batch was split into passages (passage_stride={batch.passage_stride}) but the index "
                "stores whole documents; prepare it with the index's settings"
            )
        refuse_vectors_for_passages(passage_stride, "a batch prepared without them")
    if len(batch.vectors) != len(batch.rows) or len(batch.n_tokens) != len(batch.rows):
        raise InputError(f"a batch of {len(batch.rows)} rows holds {len(batch.vectors)} vector arrays")
    check_shapes(batch.rows, batch.vectors, dim)
