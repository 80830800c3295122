"""The HTTP service over a partitioned index on Ray Serve (``pooledir serve --ray``).

One deployment per partition (each replica opens the partition's folder) and one ingress: the same
FastAPI app as ``pooledir serve`` (:func:`pooledir.service.main.create_app`), whose registry holds a
:class:`ShardedHandle` per partitioned index instead of one open index. The ingress encodes each
query once (micro-batched with concurrent ones), sends the query vectors to every partition and
merges their top-k by score. Lexical (BM25) queries go out twice: every partition reports its
statistics for the query's words, and then scores its rows with their sums, so that the merged top-k
is one index's; hybrid queries merge both lanes to the fusion depth and fuse them here. It runs the
write pipeline on upserted documents (passages, encode, pool: :mod:`pooledir.pipeline`) and sends each
document's rows to the partition that owns its id (:func:`pooledir.distributed.partition.partition_of`),
which commits them; deletes likewise.

Guarantees, as ``pooledir serve``: a write is answered after every partition it touched committed
it to disk; a partition's searches never see half of its writes (the library's snapshots). A write
that spans partitions commits once per partition, so a concurrent search may see one partition's
part of it before another's, and a crash between them keeps the parts already committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from pooledir import hybrid, pipeline
from pooledir.corpus import Document, check_documents
from pooledir.distributed.partition import partition_of, read_partitions
from pooledir.errors import DocumentNotFoundError, IndexCorruptError, InputError, PooledirError
from pooledir.fusion import Fusion, fuse
from pooledir.index_info import IndexInfo
from pooledir.lexical import Stats
from pooledir.pipeline import WriteBatch
from pooledir.pooled_index import Hit, IndexConfig, PooledIndex, read_manifest
from pooledir.search import SearchParams
from pooledir.service.handles import Problem

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application

    from pooledir.encoder import ColBERTEncoder
    from pooledir.service.concurrency import QueryBatcher
    from pooledir.service.registry import Registry
    from pooledir.service.settings import Settings

T = TypeVar("T")

_ERRORS = {c.__name__: c for c in (InputError, DocumentNotFoundError, IndexCorruptError, PooledirError)}


class PartitionUnavailableError(PooledirError):
    """A partition did not answer (its actor died, no replica runs): the service answers 503, retry later."""


#: how long ``/readyz`` waits for the partitions' answers before it calls the ones still silent unreachable
PROBE_TIMEOUT_S = 10.0


def _answer(fn: Callable[[], object]) -> dict[str, Any]:
    """Run ``fn`` in a partition; a pooledir error travels back as its class name and message."""
    try:
        return {"ok": fn()}
    except PooledirError as e:
        name = type(e).__name__ if type(e).__name__ in _ERRORS else "PooledirError"
        return {"error": name, "message": str(e)}


def _unwrap(answer: dict[str, Any]) -> Any:
    if "error" in answer:
        raise _ERRORS[answer["error"]](answer["message"])
    return answer["ok"]


class Partition:
    """A Ray Serve deployment body: one partition's index; writes come with their vectors (no encoder here)."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        self.index = PooledIndex.open(path, device=device)
        self.lock = threading.Lock()  # one call at a time inside a replica; replicas share the folder's lock

    def _fresh(self) -> PooledIndex:
        self.index.refresh()  # another replica of this partition may have written
        return self.index

    def search(
        self, Q: np.ndarray, params: SearchParams, with_text: bool, filter: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Top-k of this partition's documents for already-encoded queries."""
        with self.lock:
            return _answer(lambda: self._fresh().search_embeddings(Q, params, with_text=with_text, filter=filter))

    def lexical_stats(self, queries: list[str]) -> dict[str, Any]:
        """BM25 statistics of this partition for each query's words (the ingress sums them)."""
        with self.lock:
            return _answer(lambda: hybrid.lexical_stats(self._fresh(), queries))

    def lexical_search(
        self, queries: list[str], stats: list[Stats], k: int, filter: dict[str, Any] | None
    ) -> dict[str, Any]:
        """BM25 top-k of this partition's documents, scored with the collection-wide ``stats``."""
        with self.lock:
            return _answer(lambda: hybrid.lexical_hits_with(self._fresh(), queries, stats, k, filter))

    def settings(self) -> dict[str, Any]:
        """The partition's index settings (every partition has the same), for the ingress's write pipeline."""
        return _answer(lambda: self.index.config)

    def write(self, batch: WriteBatch) -> dict[str, Any]:
        """Commit a batch the ingress prepared, encoded and pooled (:mod:`pooledir.pipeline`); durable on return."""
        with self.lock:
            return _answer(lambda: self._fresh().write(batch).documents)

    def missing(self, ids: list[str]) -> dict[str, Any]:
        """The ids of ``ids`` this partition does not hold."""
        with self.lock:
            return _answer(lambda: [i for i in ids if i not in self._fresh().known_ids(ids)])

    def delete(self, ids: list[str]) -> dict[str, Any]:
        """Delete documents (all must be here); durable on return."""
        with self.lock:
            return _answer(lambda: self._fresh().delete(ids))

    def get(self, doc_id: str) -> dict[str, Any]:
        """One stored document."""
        with self.lock:
            return _answer(lambda: self._fresh().get(doc_id))

    def count(self) -> dict[str, Any]:
        """Documents held."""
        with self.lock:
            return _answer(lambda: len(self._fresh()))

    def describe(self) -> dict[str, Any]:
        """The partition's :meth:`PooledIndex.describe`."""
        with self.lock:
            return _answer(lambda: self._fresh().describe())

    def verify(self) -> dict[str, Any]:
        """The partition's :meth:`PooledIndex.verify` on its newest commit (an error answer if a file is damaged)."""
        with self.lock:
            return _answer(lambda: self._fresh().verify())


class PartitionsView:
    """What the routes' ``handle.read(fn)`` and stats see: the partitions as one index (len, get, describe, device)."""

    def __init__(self, handle: ShardedHandle) -> None:
        self.handle = handle
        self.device = handle.device

    def __len__(self) -> int:
        return sum(self.handle.each("count"))

    def get(self, doc_id: str) -> Document:
        """The document, from the partition that owns its id."""
        doc: Document = self.handle.call(self.handle.owner(doc_id), "get", doc_id)
        return doc

    def describe(self) -> IndexInfo:
        """Summed counts and bytes; backend and settings from the first partition, plus the partition count."""
        return IndexInfo.merged(self.handle.each("describe"))


class ShardedHandle:
    """The registry entry of a partitioned index: implements :class:`pooledir.service.handles.IndexHandle`."""

    def __init__(
        self,
        name: str,
        partitions: list[Any],  # Ray Serve deployment handles: handle.method.remote(*args).result()
        encoder: ColBERTEncoder,
        batcher: QueryBatcher | None,
        device: str,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.probe_timeout_s = probe_timeout_s
        self.partitions = partitions
        self.encoder = encoder
        self.batcher = batcher
        self.device = device
        self.write_lock = threading.Lock()  # this ingress replica's commits, one at a time (encoding runs outside)
        self.index = PartitionsView(self)
        self._settings: IndexConfig | None = None

    def owner(self, doc_id: str) -> int:
        """The partition that owns ``doc_id``."""
        return partition_of(doc_id, len(self.partitions))

    def call(self, i: int, method: str, *args: Any) -> Any:
        """Call one partition and wait for its answer."""
        return self._wait(i, self._send(i, method, *args))

    def each(self, method: str, *args: Any) -> list[Any]:
        """Call every partition at once; their answers in partition order."""
        calls = [self._send(i, method, *args) for i in range(len(self.partitions))]
        return [self._wait(i, c) for i, c in enumerate(calls)]

    def _send(self, i: int, method: str, *args: Any) -> Any:
        """Start a call of partition ``i`` (Ray's response); Ray's failure as :class:`PartitionUnavailableError`."""
        try:
            return getattr(self.partitions[i], method).remote(*args)
        except Exception as e:  # Ray's: the deployment is gone
            raise self._unavailable(i, e) from e

    def _wait(self, i: int, response: Any) -> Any:
        """Partition ``i``'s answer: its pooledir error raised here; Ray's (a dead actor) a 503, not a traceback."""
        try:
            answer = response.result()
        except Exception as e:  # Ray's: the actor died, no replica is running
            raise self._unavailable(i, e) from e
        return _unwrap(answer)

    def _unavailable(self, i: int, error: Exception) -> PartitionUnavailableError:
        return PartitionUnavailableError(
            f"partition {i} of {self.name} does not answer ({_reason(error)}); retry later"
        )

    def _by_owner(self, items: list[T], key: Callable[[T], str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for j, item in enumerate(items):
            groups.setdefault(self.owner(key(item)), []).append(j)
        return groups

    def search(
        self,
        queries: list[str],
        params: SearchParams,
        with_text: bool,
        filter: dict[str, Any] | None = None,
        mode: str = "dense",
    ) -> list[list[Hit]]:
        """Search every partition and merge, as one index over all their documents would answer.

        ``dense``: encode once, merge the partitions' top-k by MaxSim. ``lexical``: BM25 with statistics
        summed over the partitions, so scores compare across them. ``hybrid``: both lanes merged to the
        fusion depth, then fused (:func:`pooledir.fusion.fuse`), as :func:`pooledir.hybrid.search` does.
        """
        hybrid.check_mode(mode)
        if mode == "dense":
            return self._dense(queries, params, with_text, filter)
        fusion = Fusion()
        if mode == "lexical":
            return self._with_text(self._lexical(queries, params.k, filter), with_text)
        depth = max(params.k, fusion.depth)
        lex = self._lexical(queries, depth, filter)
        dense = self._dense(queries, replace(params, k=depth), False, filter)
        fused = [
            [Hit(i, s) for i, s in fuse([(h.id, h.score) for h in d], [(h.id, h.score) for h in x], fusion, params.k)]
            for d, x in zip(dense, lex)
        ]
        return self._with_text(fused, with_text)

    def _dense(
        self, queries: list[str], params: SearchParams, with_text: bool, filter: dict[str, Any] | None
    ) -> list[list[Hit]]:
        Q = self.batcher.encode(queries) if self.batcher is not None else self.encoder.encode_queries(queries)
        return self._merge(self.each("search", Q, params, with_text, filter), len(queries), params.k)

    def _lexical(self, queries: list[str], k: int, filter: dict[str, Any] | None) -> list[list[Hit]]:
        """BM25 over the partitions: their statistics summed first (a write between the two calls may skew them)."""
        per_partition = self.each("lexical_stats", queries)
        stats = [sum((part[q] for part in per_partition), Stats()) for q in range(len(queries))]
        return self._merge(self.each("lexical_search", queries, stats, k, filter), len(queries), k)

    @staticmethod
    def _merge(per_partition: list[list[list[Hit]]], n_queries: int, k: int) -> list[list[Hit]]:
        merged = []
        for q in range(n_queries):
            hits = [h for part in per_partition for h in part[q]]
            hits.sort(key=lambda h: -h.score)  # stable: equal scores keep partition order
            merged.append(hits[:k])
        return merged

    def _with_text(self, results: list[list[Hit]], with_text: bool) -> list[list[Hit]]:
        if not with_text:
            return results
        out = []
        for hits in results:
            docs = [self.index.get(h.id) for h in hits]
            out.append([Hit(h.id, h.score, d.text, d.metadata) for h, d in zip(hits, docs)])
        return out

    def upsert(self, documents: list[Document]) -> int:
        """Prepare (passages), encode and pool here, then each partition commits its documents; durable on return.

        A document's passages go with it to the partition that owns its id.
        """
        config = self._config()
        docs = check_documents(documents, "documents")
        prepared = pipeline.prepare(docs, config.passage_stride, self.encoder)
        batch = pipeline.encode_and_pool(prepared, self.encoder, pipeline.PoolSpec.of(config), self.device)
        with self.write_lock:
            parts = batch.split(self.owner)
            calls = [(p, self._send(p, "write", part)) for p, part in parts.items()]
            return sum(self._wait(p, c) for p, c in calls)

    def _config(self) -> IndexConfig:
        """The partitions' index settings (asked once)."""
        if self._settings is None:
            self._settings = self.call(0, "settings")
        return self._settings

    def delete(self, ids: list[str]) -> int:
        """Delete by id: every id is checked first (any unknown: 404, nothing deleted), then deleted."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise InputError("no document ids given")
        with self.write_lock:
            groups = self._by_owner(ids, lambda i: i)
            missing = [i for p, js in groups.items() for i in self.call(p, "missing", [ids[j] for j in js])]
            if missing:
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                raise DocumentNotFoundError(f"unknown document id(s): {', '.join(map(repr, missing[:5]))}{more}")
            calls = [(p, self._send(p, "delete", [ids[j] for j in js])) for p, js in groups.items()]
            for p, c in calls:
                self._wait(p, c)
        return len(ids)

    def read(self, fn: Callable[[PartitionsView], T]) -> T:
        """Run ``fn`` on the partitions seen as one index (len, get, info)."""
        return fn(self.index)

    def problem(self) -> Problem | None:
        """Why this index cannot serve now, else None: every partition verifies its files, all at once.

        Names each partition that answers with an error (a damaged or missing file: ``corrupt``) or does not
        answer (its actor died, no replica runs, nothing within ``probe_timeout_s``: ``unreachable``), with
        the reason. The problem is ``corrupt`` if any partition is, else ``unreachable``.
        """
        deadline = time.monotonic() + self.probe_timeout_s
        corrupt: dict[int, str] = {}
        unreachable: dict[int, str] = {}
        calls = []
        for i, partition in enumerate(self.partitions):
            try:
                calls.append((i, partition.verify.remote()))
            except Exception as e:  # Ray's: the deployment is gone
                unreachable[i] = f"unreachable ({_reason(e)})"
        for i, call in calls:
            try:
                _unwrap(call.result(timeout_s=max(0.0, deadline - time.monotonic())))
            except PooledirError as e:
                corrupt[i] = str(e)
            except Exception as e:  # Ray's: the actor died, no replica is running, a timeout
                unreachable[i] = f"unreachable ({_reason(e)})"
        if not corrupt and not unreachable:
            return None
        message = "; ".join(f"partition {i}: {why}" for i, why in sorted((corrupt | unreachable).items()))
        return Problem("corrupt" if corrupt else "unreachable", message)

    def close(self) -> None:
        """Nothing to close here: the partitions are Ray Serve's, the batcher the registry's."""


def _reason(error: Exception) -> str:
    """Ray's failure, in short: its class and the start of its message."""
    return f"{type(error).__name__}: {str(error)[:200]}"


class Ingress:
    """The ingress deployment body: the pooledir FastAPI app over sharded handles."""

    def __init__(self, name: str, folder: str, partitions: list[Any], settings: dict[str, Any]) -> None:
        from pooledir.service.settings import Settings

        self.name = name
        self.folder = folder
        self.partitions = partitions
        self.settings = Settings(**settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from pooledir.service.concurrency import QueryBatcher
        from pooledir.service.main import create_app
        from pooledir.service.registry import Registry, served_encoder

        def open_registry(settings: Settings) -> Registry:
            layout = read_partitions(self.folder)
            manifest = read_manifest(layout.part(0))
            encoder = served_encoder(
                self.name,
                manifest,
                settings.device,
                settings.checkpoint,
                settings.query_backend,
                settings.document_backend,
            )
            batcher = None
            if settings.micro_batching:
                batcher = QueryBatcher(encoder, settings.batch_window_ms, settings.max_batch_queries)
            handle = ShardedHandle(self.name, self.partitions, encoder, batcher, encoder.device)
            return Registry({self.name: handle}, [batcher] if batcher is not None else [])

        return create_app(self.settings, open_registry=open_registry)


def build_app(
    folder: str | Path, settings: dict[str, Any] | None = None, replicas: int = 1, device: str = "cpu"
) -> Application:
    """The Ray Serve application for a partitioned index folder (served under the folder's name)."""
    from ray import serve

    folder = Path(folder).resolve()
    layout = read_partitions(folder)
    partition = serve.deployment(name="partition", num_replicas=replicas, ray_actor_options={"num_cpus": 0})(Partition)
    handles = [partition.options(name=f"partition-{i}").bind(str(p), device) for i, p in enumerate(layout.parts)]
    ingress = serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0})(serve.ingress()(Ingress))
    settings = (settings or {}) | {"device": device}
    return ingress.bind(folder.name, str(folder), handles, settings)
