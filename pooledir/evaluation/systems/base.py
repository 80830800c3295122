"""The small protocol every evaluated system follows, pooledir's own indexes and peers alike.

The harness builds each system from the same cached document vectors,
searches it with the same queries and scores what comes back; it never
needs to know which engine it is talking to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pooledir.corpus import Document
from pooledir.pooled_index import Hit


@dataclass(frozen=True)
class Context:
    """What every system of one evaluation shares.

    Attributes
    ----------
    encoder : the ColBERTEncoder that made the document vectors; systems encode queries with it.
    device : where to pool and search (``"cpu"``, ``"cuda"``, ``"auto"``).
    workdir : a scratch folder the system may write its index into.
    """

    encoder: Any
    device: str
    workdir: Path


class System(Protocol):
    """A retrieval engine measured by the harness.

    ``name`` tags the system's run file and row (e.g. ``"pooledir-ivfpq-pf2"``).
    """

    name: str

    def build(self, context: Context, documents: Sequence[Document], vectors: Sequence[np.ndarray]) -> None:
        """Index ``documents`` from their unpooled ``vectors`` (one (n_tokens, dim) array each)."""

    def search(self, queries: Sequence[str], k: int, vectors: np.ndarray | None = None) -> list[list[Hit]]:
        """The ``k`` best documents per query, encoding included.

        ``vectors`` (nq, Lq, dim) are the same queries already encoded; a system
        may use them instead of encoding the text (the quality run passes them,
        the timed single-query run does not).
        """

    def describe(self) -> dict[str, Any]:
        """After ``build``: ``system``, ``index``, ``pool_factor``, ``nbits``, ``vectors`` and ``pool_s``.

        ``pool_s`` is the part of the build spent pooling, if any; the rest counts as build time.
        """

    def bytes(self) -> dict[str, int]:
        """After ``build``: ``index_bytes``, ``vector_bytes`` and optionally ``search_bytes``.

        ``index_bytes``: every file of the index; ``vector_bytes``: the vectors alone; ``search_bytes``:
        what a query needs, documents' text counted apart (default ``index_bytes``).
        """

    def close(self) -> None:
        """Release what ``build`` opened."""


class SystemUnavailable(Exception):
    """A factory's way to say its engine cannot run here (not installed, wrong torch).

    The harness records the reason under ``skipped`` and measures the other systems.
    """


#: builds the systems one entry of an evaluation asks for, from that entry's options
SystemFactory = Callable[..., list[System]]
