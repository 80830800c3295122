"""An index split into N partitions by document id, for serving on several machines (``pooledir serve --ray``).

A partitioned index is a folder::

    partitions.json    {"format": "pooledir-partitions", "format_version": 1, "partitions": N, "hash": "blake2b-64"}
    part-00000/        an ordinary pooledir index holding the documents whose id hashes to 0
    ...

Document ``id`` lives in partition ``blake2b(id) mod N`` (:func:`partition_of`), so a write is routed
to one partition without asking any, and every partition answers a search over its own documents;
merging their top-k by score gives the top-k of the whole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pooledir.durable import read_versioned_json, write_json_durably
from pooledir.errors import InputError
from pooledir.pipeline import refuse_vectors_for_passages

if TYPE_CHECKING:
    from pooledir.index.manifest import IndexConfig
    from pooledir.shards import ShardManifest

FORMAT = "pooledir-partitions"
FORMAT_VERSION = 1
LAYOUT = "partitions.json"


def partition_of(doc_id: str, partitions: int) -> int:
    """The partition that owns ``doc_id``: a stable hash (the same on every machine and Python run)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % partitions


@dataclass(frozen=True)
class PartitionedIndex:
    """A partitioned index folder: its path and partition count."""

    path: Path
    partitions: int

    def part(self, i: int) -> Path:
        """Folder of partition ``i``."""
        return self.path / f"part-{i:05d}"

    @property
    def parts(self) -> list[Path]:
        """Every partition's folder, in order."""
        return [self.part(i) for i in range(self.partitions)]


def is_partitioned(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a partitioned index folder (it holds partitions.json)."""
    return (Path(path) / LAYOUT).is_file()


def read_partitions(path: str | os.PathLike[str]) -> PartitionedIndex:
    """Open a partitioned index folder's layout, checking that every partition folder is there."""
    path = Path(path)
    if not (path / LAYOUT).is_file():
        raise InputError(f"{path} is not a partitioned index ({LAYOUT} is missing)")
    data = read_versioned_json(path / LAYOUT, FORMAT, FORMAT_VERSION, "partition layout", "build it again")
    n = data.get("partitions")
    if not isinstance(n, int) or n < 1:
        raise InputError(f"{path / LAYOUT}: partitions={n!r} must be a positive integer")
    layout = PartitionedIndex(path, n)
    for p in layout.parts:
        if not (p / "manifest.json").is_file():
            raise InputError(f"{p} (a partition of {path}) holds no index")
    return layout


def write_layout(path: Path, partitions: int) -> PartitionedIndex:
    """Write partitions.json (atomically, fsynced) and return the layout."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "partitions": partitions, "hash": "blake2b-64"}
    write_json_durably(path / LAYOUT, data)
    return PartitionedIndex(path, partitions)


def build_partitions(
    paths: Sequence[str | Path],
    out: str | Path,
    partitions: int,
    config: IndexConfig,
    *,
    device: str = "cpu",
    chunk_docs: int = 2_000,
    show_progress: bool = True,
) -> PartitionedIndex:
    """Build a partitioned index from shard folders: partition p gets the documents whose id hashes to p.

    Each partition is an ordinary index with ``config``, built with :mod:`pooledir.build`'s streamed,
    committed chunks (the shards are read once per partition); IVF-PQ partitions share one quantizer,
    trained once on a sample across all the shards.
    """
    from pooledir import build

    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise InputError(f"partitions={partitions!r} must be a positive integer")
    refuse_vectors_for_passages(config.passage_stride, "encoded shards")  # partitions are built from shards
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; pick a new folder for the partitioned index")
    manifests, spec = build.read_shard_folders(paths)
    pooled = build.shards_pooled_for(spec, config)
    quantizer, total = _shared_quantizer(manifests, config, pooled)
    out.mkdir(parents=True, exist_ok=True)
    layout = PartitionedIndex(out, partitions)
    for p, folder in enumerate(layout.parts):
        chunks = build.shard_chunks(manifests, chunk_docs, pooled)
        mine = (c.select([i for i, d in enumerate(c.docs) if partition_of(d.id, partitions) == p]) for c in chunks)
        with build.create_index_for_shards(folder, spec, config, device) as index:
            if quantizer is not None:
                index.install_quantizer(quantizer, total)
            build._run(mine, index, None, False, show_progress, None)
    return write_layout(out, partitions)


def _shared_quantizer(manifests: list[ShardManifest], config: IndexConfig, pooled: bool) -> tuple[Any, int]:
    """IVF-PQ partitions share one quantizer, trained once on a sample across all shards (as one index would be).

    Then every partition encodes a vector as one index over all the documents would, and the merged
    top-k is that index's. None (each partition as it is) for the flat backend or below ``train_min_vectors``.
    """
    from pooledir.distributed.build import training_sample
    from pooledir.index.segments import train_quantizer

    if config.backend != "ivfpq":
        return None, 0
    expected = sum(m.vectors for m in manifests) if pooled else sum(i.tokens for m in manifests for i in m.shards)
    if (expected if pooled else expected // config.pool_factor) < config.train_min_vectors:
        return None, 0
    sample, total = training_sample(manifests, config, pooled)
    return train_quantizer(sample, total, config.nlist, config.pq_m, config.pq_nbits), total
