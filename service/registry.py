"""The indexes a service process serves: opened by name, closed together.

Per-index rules (reads never wait for writes, durable writes, micro-batched queries) live in
:mod:`service.handles` and :mod:`service.concurrency`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pooledir import ColBERTEncoder, PooledIndex, encoder_for_index, encoder_key, read_manifest
from pooledir.errors import InputError
from service.concurrency import QueryBatcher
from service.handles import IndexHandle, LocalIndexHandle

if TYPE_CHECKING:
    from pooledir.index.manifest import Manifest  # what read_manifest returns

log = logging.getLogger(__name__)


def served_encoder(
    name: str,
    manifest: Manifest,
    device: str,
    serve_checkpoint: Path | None,
    query_backend: str = "auto",
    document_backend: str = "torch",
) -> ColBERTEncoder:
    """The encoder that serves index ``name``: its manifest's checkpoint, or ``serve_checkpoint`` when set.

    Raises :class:`InputError` when ``serve_checkpoint`` makes vectors of another size than the index holds.
    """
    encoder = encoder_for_index(
        manifest, device, serve_checkpoint, query_backend=query_backend, document_backend=document_backend
    )
    if encoder.dim != manifest.dim:
        source = f"$POOLEDIR_SERVE_CHECKPOINT ({serve_checkpoint})" if serve_checkpoint else "its manifest's checkpoint"
        raise InputError(
            f"index {name!r} holds {manifest.dim}-d vectors but {source} makes {encoder.dim}-d ones; "
            "serve it with (a copy of) the checkpoint it was built with"
        )
    return encoder


def warn_if_build_checkpoint_set(serve_checkpoint: Path | None) -> None:
    """Log that $POOLEDIR_CHECKPOINT (the checkpoint to build with) is not what the service serves with."""
    if os.environ.get("POOLEDIR_CHECKPOINT") and serve_checkpoint is None:
        log.warning(
            "POOLEDIR_CHECKPOINT is the checkpoint `pooledir index` builds with; the service ignores it and loads "
            "each index's weights from its manifest: set POOLEDIR_SERVE_CHECKPOINT to load them from elsewhere"
        )


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
        serve_checkpoint: Path | None = None,
        query_backend: str = "auto",
        document_backend: str = "torch",
        checkpoint_every: int = 100,
    ) -> Registry:
        """Open every index folder; names are folder names and must be distinct.

        ``serve_checkpoint``: load every index's weights from here (see :func:`served_encoder`).
        """
        names = [Path(p).name for p in paths]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise InputError(f"two indexes share the name {sorted(dupes)[0]!r}; serve folders with distinct names")
        # indexes whose encoders would be identical share one, and their queries share a batcher
        encoders: dict[tuple, ColBERTEncoder] = {}
        batchers: dict[tuple, QueryBatcher] = {}
        handles: dict[str, IndexHandle] = {}
        try:
            for name, path in zip(names, paths):
                manifest = read_manifest(path)
                key = encoder_key(manifest, serve_checkpoint)
                if key not in encoders:
                    encoders[key] = served_encoder(
                        name, manifest, device, serve_checkpoint, query_backend, document_backend
                    )
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
