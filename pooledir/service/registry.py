"""The indexes a service process serves: opened by name, closed together.

Per-index rules (reads never wait for writes, durable writes, micro-batched queries) live in
:mod:`pooledir.service.handles` and :mod:`pooledir.service.concurrency`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pooledir.encoder import ColBERTEncoder, encoder_for_index, encoder_key
from pooledir.errors import InputError
from pooledir.pooled_index import PooledIndex, read_manifest
from pooledir.service.concurrency import QueryBatcher
from pooledir.service.handles import IndexHandle, LocalIndexHandle

if TYPE_CHECKING:
    from pooledir.index.manifest import Manifest  # what read_manifest returns

log = logging.getLogger(__name__)


def served_encoder(
    name: str,
    manifest: Manifest,
    device: str,
    checkpoint: Path | None,
    query_backend: str = "auto",
    document_backend: str = "torch",
) -> ColBERTEncoder:
    """The encoder that serves index ``name``: its manifest's checkpoint, or ``checkpoint`` where that is not here.

    ``checkpoint`` is ``$POOLEDIR_CHECKPOINT`` (:func:`pooledir.encoder.checkpoint_for_index`). Raises
    :class:`InputError` when the checkpoint loaded makes vectors of another size than the index holds.
    """
    encoder = encoder_for_index(
        manifest, device, checkpoint, query_backend=query_backend, document_backend=document_backend
    )
    if encoder.dim != manifest.dim:
        fallback = checkpoint is not None and encoder.checkpoint == str(checkpoint)
        source = f"$POOLEDIR_CHECKPOINT ({checkpoint})" if fallback else "its manifest's checkpoint"
        raise InputError(
            f"index {name!r} holds {manifest.dim}-d vectors but {source} makes {encoder.dim}-d ones; "
            "serve it with (a copy of) the checkpoint it was built with"
        )
    return encoder


class Registry:
    """The indexes a service process serves, by name (their folder names)."""

    def __init__(self, handles: Mapping[str, IndexHandle], batchers: Sequence[QueryBatcher] = ()) -> None:
        self.handles = dict(handles)
        self.batchers = list(batchers)  # the handles share them: stopped here, once

    @classmethod
    def open(
        cls,
        paths: Sequence[Path],
        device: str,
        micro_batching: bool,
        window_ms: float,
        max_batch: int,
        checkpoint: Path | None = None,
        query_backend: str = "auto",
        document_backend: str = "torch",
        checkpoint_every: int = 100,
    ) -> Registry:
        """Open every index folder; names are folder names and must be distinct.

        ``checkpoint``: an index's weights where its manifest's checkpoint is not here (:func:`served_encoder`).
        """
        names = [Path(p).name for p in paths]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise InputError(f"two indexes share the name {sorted(dupes)[0]!r}; serve folders with distinct names")
        # indexes whose encoders would be identical share one, and their queries share a batcher
        encoders: dict[tuple[Any, ...], ColBERTEncoder] = {}  # by encoder_key
        batchers: dict[tuple[Any, ...], QueryBatcher] = {}
        handles: dict[str, IndexHandle] = {}
        try:
            for name, path in zip(names, paths):
                manifest = read_manifest(path)
                key = encoder_key(manifest, checkpoint)
                if key not in encoders:
                    encoders[key] = served_encoder(name, manifest, device, checkpoint, query_backend, document_backend)
                index = PooledIndex.open(path, device=device, encoder=encoders[key])
                if micro_batching and key not in batchers:
                    batchers[key] = QueryBatcher(encoders[key], window_ms, max_batch)
                handles[name] = LocalIndexHandle(name, index, batchers.get(key), checkpoint_every)
        except BaseException:
            cls(handles, list(batchers.values())).close()  # a later index failed: what this call opened is closed
            raise
        return cls(handles, list(batchers.values()))

    def close(self) -> None:
        """Stop the batchers and close every index."""
        for b in self.batchers:
            b.close()
        for h in self.handles.values():
            h.close()
