"""Distributed build: index shard folders with Ray tasks, one segment per group of shards, in one commit.

The driver trains the IVF-PQ quantizer once, on a seeded sample drawn across every shard (nothing
to train on the flat backend, or below ``train_min_vectors``, as in a serial build); Ray tasks
then build one detached segment per group of consecutive shards against it
(:func:`pooledir.index.detached.build_segment`, pooling the vectors first when the shards are
unpooled), and the driver attaches them all with one commit. A failure anywhere before that commit
leaves the index without documents; the tasks' folders are removed either way.

Every worker reads the shards and the index folder and writes its segment under the index folder,
so on a real cluster both live on a file system every node mounts.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pooledir import pipeline
from pooledir.build import BuildReport, read_shard_folders, shards_pooled_for
from pooledir.errors import InputError
from pooledir.shards import ShardError, ShardInfo, ShardManifest, ShardSpec, open_shard

if TYPE_CHECKING:
    from pooledir.corpus import Document
    from pooledir.index.manifest import IndexConfig
    from pooledir.pooled_index import PooledIndex

log = logging.getLogger(__name__)


def shard_groups(manifests: Sequence[ShardManifest], groups: int | None) -> list[list[tuple[ShardManifest, ShardInfo]]]:
    """Every shard of the folders, in order, cut into ``groups`` runs of consecutive shards (default: one each)."""
    every = [(m, info) for m in manifests for info in m.shards]
    if not every:
        raise ShardError("the shard folders hold no completed shard")
    n = min(groups or len(every), len(every))
    if n < 1:
        raise InputError(f"segments={groups} must be >= 1")
    cuts = np.linspace(0, len(every), n + 1).round().astype(int)
    return [every[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def _pool(vectors: list[np.ndarray], config: IndexConfig) -> list[np.ndarray]:
    """Pool unpooled shard vectors as the index pools what it adds (a factor or a threshold)."""
    return pipeline.pool(vectors, pipeline.PoolSpec.of(config), device="cpu")


def _group_vectors(
    group: list[tuple[str, dict[str, Any], dict[str, Any]]], pooled: bool, config: IndexConfig, verify: bool
) -> tuple[list[Document], list[np.ndarray], list[int]]:
    """A group's documents, pooled vectors (float32) and token counts, read from its shards."""
    docs: list[Document] = []
    vectors: list[np.ndarray] = []
    n_tokens: list[int] = []
    for folder, spec, info in group:
        shard = open_shard(Path(folder), ShardSpec(**spec), ShardInfo(**info), verify=verify)
        off = shard.offsets
        shard_vectors = [np.asarray(shard.vectors[off[j] : off[j + 1]], np.float32) for j in range(len(off) - 1)]
        if not pooled and config.pools:
            shard_vectors = _pool(shard_vectors, config)
        docs += list(shard.documents())
        vectors += shard_vectors
        n_tokens += [int(x) for x in shard.n_tokens]
        del shard
    return docs, vectors, n_tokens


def build_group_segment(
    out_dir: str, index_path: str, group: list[tuple[str, dict[str, Any], dict[str, Any]]], pooled: bool, verify: bool
) -> dict[str, Any]:
    """Ray task body: build the detached segment of one group of shards; returns its counts."""
    from pooledir.index.detached import build_segment
    from pooledir.index.manifest import read_manifest

    t0 = time.perf_counter()
    config = read_manifest(Path(index_path)).config
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # a retried task starts again from nothing
    docs, vectors, n_tokens = _group_vectors(group, pooled, config, verify)
    build_segment(out, index_path, docs, vectors, n_tokens)
    return {
        "path": str(out),
        "documents": len(docs),
        "vectors": sum(len(v) for v in vectors),
        "tokens": sum(n_tokens),
        "seconds": time.perf_counter() - t0,
    }


def training_sample(
    manifests: Sequence[ShardManifest], config: IndexConfig, pooled: bool, seed: int = 0
) -> tuple[np.ndarray, int]:
    """A seeded sample of up to ``config.train_sample`` pooled vectors drawn across every shard, and the total.

    Pooled shards: rows drawn uniformly from all their vectors. Unpooled shards that the index pools:
    documents drawn uniformly and pooled as the index pools them until the sample is full; the total is
    then estimated as the shards' token vectors divided by the pool factor.
    """
    size, pool_factor = config.train_sample, config.pool_factor
    shards = [(m, info) for m in manifests for info in m.shards]
    rng = np.random.default_rng(seed)
    if pooled:
        sizes = np.array([info.vectors for _, info in shards], dtype=np.int64)
        total = int(sizes.sum())
        pick = np.sort(rng.choice(total, min(total, size), replace=False))
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        parts = []
        for j, (m, info) in enumerate(shards):
            mine = pick[(pick >= bounds[j]) & (pick < bounds[j + 1])] - bounds[j]
            if len(mine):
                parts.append(np.asarray(open_shard(m.path, m.spec, info, verify=False).vectors[mine], np.float32))
        return np.concatenate(parts), total
    docs = np.array([info.documents for _, info in shards], dtype=np.int64)
    total = max(1, round(sum(info.tokens for _, info in shards) / pool_factor))
    order = rng.permutation(int(docs.sum()))
    bounds = np.concatenate([[0], np.cumsum(docs)])
    parts, have = [], 0
    for start in range(0, len(order), 256):  # pool a few hundred documents at a time until the sample is full
        batch = np.sort(order[start : start + 256])
        for j, (m, info) in enumerate(shards):
            mine = batch[(batch >= bounds[j]) & (batch < bounds[j + 1])] - bounds[j]
            if not len(mine):
                continue
            shard = open_shard(m.path, m.spec, info, verify=False)
            vecs = [np.asarray(shard.vectors[shard.offsets[i] : shard.offsets[i + 1]], np.float32) for i in mine]
            for p in _pool(vecs, config):
                parts.append(p)
                have += len(p)
        if have >= size:
            break
    sample = np.concatenate(parts)
    if len(sample) > size:
        sample = sample[np.sort(rng.choice(len(sample), size, replace=False))]
    return sample, total


def build_index_ray(
    paths: Sequence[str | Path],
    index: PooledIndex,
    *,
    segments: int | None = None,
    verify: bool = True,
    show_progress: bool = True,
) -> BuildReport:
    """Add the documents of shard folders to the empty ``index`` with Ray tasks; one commit attaches them.

    The result holds the same documents and vectors as :func:`pooledir.build.build_index_from_shards`
    (the same search results on the flat backend; IVF-PQ is trained on a sample drawn across all
    shards rather than on the first ones). Call :func:`pooledir.distributed.connect` first.

    Parameters
    ----------
    paths
        Shard folders from ``pooledir encode`` (several: indexed together, made the same way).
    index
        An index with no documents, e.g. from :func:`pooledir.build.create_index_for_shards`.
    segments
        Ray tasks, each building one segment from a run of consecutive shards (default: one per shard).
    verify, show_progress
        Check every shard file's sha256 (in the tasks); a progress bar on the driver.
    """
    from tqdm.auto import tqdm

    from pooledir.distributed import require_ray, user_error

    ray = require_ray()
    t_start = time.perf_counter()
    if len(index) or index.stats().stored_vectors:
        raise InputError(
            f"{index.path} already holds documents; a distributed build attaches all of its segments in one "
            "commit, into an index without documents"
        )
    manifests, spec = read_shard_folders(paths)
    if spec.dim != index.dim:
        raise ShardError(f"the shards hold {spec.dim}-d vectors; the index holds {index.dim}-d ones")
    pooled = shards_pooled_for(spec, index.config)
    groups = shard_groups(manifests, segments)
    report = BuildReport()
    _train_before_attach(index, manifests, pooled)
    work = index.path / f".ray-build-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    task = ray.remote(num_cpus=1, max_retries=3)(build_group_segment)
    total_docs = sum(m.documents for m in manifests)
    bar = tqdm(total=total_docs, desc="build (ray)", unit="doc", disable=not show_progress, smoothing=0.05)
    refs: list[Any] = []  # Ray ObjectRefs
    try:
        refs = [
            task.remote(
                str(work / f"group-{g:05d}"),
                str(index.path),
                [(str(m.path), asdict(m.spec), asdict(info)) for m, info in group],
                pooled,
                verify,
            )
            for g, group in enumerate(groups)
        ]
        results = _gather(ray, refs, bar)
        t = time.perf_counter()
        report.added = index.attach_segments([r["path"] for r in results])
        report.add_s = time.perf_counter() - t
    except Exception as e:
        # The other tasks' segments will never be attached, but they are not cancelled: in Ray 2.60 a
        # cancel that races a task's retry or completion aborts the driver process ("Check failed: ...
        # Tried to complete task that was not pending", ray-project/ray#54846), which took this process
        # with it. Let them end before their folders are removed: a task still writing would leave its own.
        if refs:
            ray.wait(refs, num_returns=len(refs))
        err = user_error(e)
        if err is not None:
            raise err from None
        raise
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    report.documents = total_docs
    report.commits = 1
    report.vectors = sum(r["vectors"] for r in results)
    report.tokens = sum(r["tokens"] for r in results)
    report.seconds = time.perf_counter() - t_start
    return report


def _train_before_attach(index: PooledIndex, manifests: Sequence[ShardManifest], pooled: bool) -> None:
    """Train an untrained IVF-PQ index on a sample across all shards, when they hold enough vectors to."""
    cfg = index.config
    if cfg.backend != "ivfpq" or index.stats().trained:
        return
    expected = sum(m.vectors for m in manifests) if pooled else sum(i.tokens for m in manifests for i in m.shards)
    if (expected if pooled else expected // cfg.pool_factor) >= cfg.train_min_vectors:
        t = time.perf_counter()
        sample, total = training_sample(manifests, cfg, pooled)
        index.train_quantizer(sample, total)
        log.info("trained on %d vectors sampled across the shards in %.1fs", len(sample), time.perf_counter() - t)


def _gather(ray: Any, refs: list[Any], bar: Any) -> list[dict[str, Any]]:
    """The tasks' results in the order of ``refs``, the bar moved as each one finishes."""
    pending, done = list(refs), {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            result = ray.get(ref)
            done[ref] = result
            bar.update(result["documents"])
    return [done[r] for r in refs]
