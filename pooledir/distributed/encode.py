"""Distributed encode: a pool of Ray actors writes a corpus's shards, one shard per task.

The driver plans the shards (shard n = corpus positions [n·shard_docs, (n+1)·shard_docs), as in
:func:`pooledir.build_shards.encode_corpus`), and Ray Data streams the plan through ``map_batches`` over an
actor pool: each actor loads the encoder once, reads its shard's documents from the corpus (a
``.jsonl`` shard starts at a byte offset the driver found, a ``.parquet`` one at its row, so no actor
re-reads what precedes it),
encodes them in length-sorted batches, pools them, and commits the shard with
:class:`~pooledir.shards.ShardWriter`. The shard's header is its commit, so

* documents are never duplicated: a shard holds exactly the documents of its positions, and a
  retried shard replaces its files with the same content;
* nothing is lost: Ray Data restarts an actor that died (a preempted worker, a killed process) and
  retries its task; each try writes to temporary files of its own, so a dead try's leftovers never
  mix with a live one's; the driver checks at the end that every shard is complete, runs any missing
  ones again, and removes the dead tries' temporary files;
* ``resume`` skips completed shards after an actor checked that the corpus still holds the same ids
  at their positions.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from pooledir import pipeline
from pooledir.build import batches
from pooledir.build_folder import BuildHooks
from pooledir.build_shards import EncodeConfig, EncodeReport, encoder_record, raise_keeping_shards
from pooledir.corpus import Document, _parquet_file, _read_parquet, _resolve, document_from_json_line, iter_corpus
from pooledir.errors import CheckpointError, InputError, PooledirError
from pooledir.outdir import claim_shard_folder
from pooledir.shards import ShardError, ShardInfo, ShardSpec, ShardWriter, ids_digest, read_shard_header, shard_name

log = logging.getLogger(__name__)

_ERRORS = {c.__name__: c for c in (InputError, ShardError, CheckpointError, PooledirError)}
#: rounds of the Ray Data pass before the driver gives up on shards that never completed
MAX_ROUNDS = 3


@dataclass(frozen=True)
class ShardTask:
    """One shard to write (or, when ``ids_sha256`` is set, a completed one to check on resume)."""

    number: int
    start: int
    documents: int
    offset: int = -1  # byte offset of the first document in a .jsonl corpus (-1: read from the start)
    lineno: int = 0  # its line number, for error messages
    ids_sha256: str = ""


@dataclass
class DistributedEncodeReport(EncodeReport):
    """:class:`~pooledir.build_shards.EncodeReport` plus what the cluster did.

    ``shard_seconds`` is each written shard's time inside its actor (encode + pool + write),
    ``abandoned_tries`` the shard tries whose actor died (their temporary files were removed).
    """

    actors: int = 0
    rounds: int = 0
    abandoned_tries: int = 0
    shard_seconds: dict[int, float] = field(default_factory=dict)


# -- planning: where each shard starts ---------------------------------------------------------------------------
def plan_shards(corpus: str | Path, shard_docs: int, limit: int | None = None) -> list[ShardTask]:
    """Cut a corpus into shard tasks; for a ``.jsonl`` corpus, with each shard's byte offset.

    The ``.jsonl`` pass reads bytes and counts non-blank lines (as the reader does) without parsing
    JSON; a ``.parquet`` corpus's rows are counted from its footer (a shard starts at row ``start``);
    other formats are read once through :func:`pooledir.corpus.iter_corpus`.
    """
    kind, source = _resolve(Path(corpus))
    tasks: list[ShardTask] = []
    total = 0
    if kind == "jsonl":
        with open(source, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, 1):
                here, offset = offset, offset + len(raw)
                if _blank(raw, lineno):
                    continue
                if limit is not None and total >= limit:
                    break
                if total % shard_docs == 0:
                    tasks.append(ShardTask(len(tasks), total, 0, here, lineno))
                total += 1
    elif kind == "parquet":
        total = _parquet_file(source).metadata.num_rows
        total = total if limit is None else min(total, limit)
        tasks = [ShardTask(n, start, 0) for n, start in enumerate(range(0, total, shard_docs))]
    else:
        for _ in islice(iter_corpus(corpus), limit):
            if total % shard_docs == 0:
                tasks.append(ShardTask(len(tasks), total, 0))
            total += 1
    if not tasks:
        raise InputError(f"{corpus}: no documents found")
    sizes = [min(shard_docs, total - t.start) for t in tasks]
    return [ShardTask(t.number, t.start, n, t.offset, t.lineno) for t, n in zip(tasks, sizes)]


def _blank(raw: bytes, lineno: int) -> bool:
    """Whether the jsonl reader skips this line (it strips Unicode whitespace and a leading BOM)."""
    if raw.isascii():
        return not raw.strip()
    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8", errors="replace")
    return not text.strip()


def read_shard_documents(corpus: str | Path, task: ShardTask) -> Iterator[Document]:
    """The documents of one shard task, read from the corpus (from its byte offset for .jsonl, its row for .parquet)."""
    kind, source = _resolve(Path(corpus))
    if kind == "parquet":
        n = 0
        for d in islice(_read_parquet(source, task.start), task.documents):
            yield d
            n += 1
        if n != task.documents:
            raise ShardError(f"{source} ended after {n} documents of shard {task.number}; the corpus changed")
        return
    if task.offset < 0:
        yield from islice(iter_corpus(corpus), task.start, task.start + task.documents)
        return
    n = 0
    with open(source, "rb") as f:
        f.seek(task.offset)
        for lineno, raw in enumerate(f, task.lineno):
            if n == task.documents:
                return
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                where = f"{source}:{lineno}"
                raise InputError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            if not line.strip():
                continue
            yield document_from_json_line(line, f"{source}:{lineno}")
            n += 1
    if n != task.documents:
        raise ShardError(f"{source} ended after {n} documents of shard {task.number}; the corpus changed")


# -- the actor ---------------------------------------------------------------------------------------------------
class ShardEncoder:
    """A Ray Data actor: loads the encoder once, then writes one shard per row of its batches."""

    def __init__(
        self,
        corpus: str,
        out: str,
        spec: dict[str, Any],
        settings: dict[str, Any],
        device: str,
        batch_size: int,
        chunk_docs: int,
        run_id: str,
        threads: int | None = None,
        fault_marker: str | None = None,
    ) -> None:
        from pooledir.encoder import ColBERTEncoder

        if threads:  # the CPUs this actor reserved: torch would otherwise size its pool for the whole machine
            import torch

            torch.set_num_threads(threads)

        self.corpus = corpus
        self.spec = ShardSpec(**spec)
        self.out = Path(out)
        self.chunk_docs = chunk_docs
        self.run_id = run_id
        self.fault_marker = fault_marker
        self.encoder = ColBERTEncoder(self.spec.checkpoint, device=device, batch_size=batch_size, **settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Write (or, on resume, check) the shards of a batch of :class:`ShardTask` rows; one result row each."""
        rows = []
        for i in range(len(batch["number"])):
            task = ShardTask(**{k: _py(batch[k][i]) for k in ShardTask.__dataclass_fields__})
            try:
                rows.append(self._check(task) if task.ids_sha256 else self._write(task))
            except PooledirError as e:  # sent back as data: Ray's wrapping of an exception loses its type
                rows.append(_row(task.number, error=type(e).__name__, message=str(e)))
        return {k: np.array([r[k] for r in rows]) for k in _row(0)}

    def _check(self, task: ShardTask) -> dict[str, Any]:
        n, digest = ids_digest(d.id for d in read_shard_documents(self.corpus, task))
        if n != task.documents or digest != task.ids_sha256:
            raise ShardError(
                f"cannot resume {self.out}: shard {task.number} holds other documents than positions {task.start} "
                f"to {task.start + task.documents - 1} of the input (the input changed, or its order, or the "
                "limit); resume with the same input, or encode into a new folder"
            )
        return _row(task.number)

    def _write(self, task: ShardTask) -> dict[str, Any]:
        t0 = time.perf_counter()
        spec = self.spec
        pooling = pipeline.PoolSpec(spec.pool_factor, spec.protected_tokens)
        # a try of its own: a dead try's temporary files never mix with this one's
        writer = ShardWriter(self.out, spec, tmp_suffix=f".{self.run_id}-{uuid.uuid4().hex[:8]}.tmp")
        writer.begin(task.number, task.start)
        tokens = vectors = n = 0
        ids: set[str] = set()
        try:
            for chunk in batches(read_shard_documents(self.corpus, task), self.chunk_docs):
                for i, d in enumerate(chunk, task.start + n):
                    if d.id in ids:
                        raise InputError(f"duplicate document id {d.id!r} (again at document {i} of the input)")
                    ids.add(d.id)
                vecs = pipeline.encode([d.text for d in chunk], self.encoder)
                n_tokens = [len(v) for v in vecs]
                if pooling.pools:
                    vecs = pipeline.pool(vecs, pooling, self.encoder.device)
                writer.append(chunk, vecs, n_tokens)
                tokens += sum(n_tokens)
                vectors += sum(len(v) for v in vecs)
                n += len(chunk)
                self._maybe_fail()
            if n != task.documents:
                raise ShardError(f"shard {task.number}: read {n} documents, expected {task.documents}")
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return _row(task.number, n, tokens, vectors, time.perf_counter() - t0)

    def _maybe_fail(self) -> None:
        """Fault injection for tests: the first actor to claim the marker file dies mid-shard (SIGKILL)."""
        if self.fault_marker is None:
            return
        try:
            os.close(os.open(self.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def _row(
    number: int,
    documents: int = 0,
    tokens: int = 0,
    vectors: int = 0,
    seconds: float = 0.0,
    error: str = "",
    message: str = "",
) -> dict[str, Any]:
    """One result row of :class:`ShardEncoder`: counts, or the pooledir error that stopped the shard."""
    return {
        "number": number,
        "documents": documents,
        "tokens": tokens,
        "vectors": vectors,
        "seconds": seconds,
        "error": error,
        "message": message,
    }


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- the driver --------------------------------------------------------------------------------------------------
def encode_corpus_ray(
    corpus: str | Path,
    out: str | Path,
    checkpoint: str | Path | Callable[[], str | Path],
    config: EncodeConfig | None = None,
    *,
    settings: dict[str, Any] | None = None,
    actors: int | None = None,
    device: str = "auto",
    batch_size: int = 32,
    resume: bool = False,
    show_progress: bool = True,
    address: str | None = None,
    hooks: BuildHooks | None = None,
    fault_marker: str | Path | None = None,
) -> DistributedEncodeReport:
    """Encode (and pool) ``corpus`` into the shard folder ``out`` on a Ray cluster.

    The same shards as :func:`pooledir.build_shards.encode_corpus` (ids, lengths, vectors to float16
    rounding), written by ``actors`` encoder actors (default: one per GPU, else one per CPU), each
    with one GPU where the cluster has GPUs. The corpus and ``out`` must be paths every worker can
    reach (a shared file system). ``out`` is claimed first, as by :func:`pooledir.build_shards.encode_shard_folder`
    (:func:`pooledir.outdir.claim_shard_folder`): an encode into a folder another encode (local or Ray)
    writes is refused at once, and one that fails before completing a shard leaves nothing it made.

    Parameters
    ----------
    corpus, out, config
        As for :func:`pooledir.build_shards.encode_corpus` (``config.parts`` must be 1).
    checkpoint
        The encoder's checkpoint, or a callable that gives it, called once the folder is claimed.
    actors, device, batch_size
        Encoder actors; their device (``auto``: CUDA where the cluster has GPUs); documents per encoder batch.
    resume, show_progress
        Skip completed shards (checked against the input); a progress bar on the driver.
    settings
        Encoder settings (lengths, conventions) overriding the checkpoint's, as a resumed encode
        reads them from the folder.
    address
        The cluster to join once the folder is claimed (:func:`pooledir.distributed.connect`; None: a
        local one), unless this process is connected already.
    hooks
        ``resume_hint`` and ``stopped`` of :class:`pooledir.build_folder.BuildHooks`: an encode that fails
        after completing shards keeps them and says how to continue, as a local encode does.
    fault_marker
        For tests: the first actor that can create this file kills its own process in the middle of
        a shard, as a preempted worker would.
    """
    from pooledir.distributed import connect, require_ray

    ray = require_ray()
    config = config or EncodeConfig()
    config.check()
    if config.parts != 1:
        raise InputError("a distributed encode writes every shard itself; parts must be 1")
    _resolve(Path(corpus))  # a missing corpus fails before anything is created
    t_start = time.perf_counter()
    out = Path(out)
    with claim_shard_folder(out, may_continue=resume):
        try:
            connect(address)  # after the claim: an encode that is refused starts no cluster
            spec = _shard_spec(checkpoint() if callable(checkpoint) else checkpoint, dict(settings or {}), config)
            writer = ShardWriter.open(out, spec, resume=True)  # the claim checked the folder (it holds its locks)
            plan = plan_shards(corpus, config.shard_docs, config.limit)
            pool = _actor_pool(ray.cluster_resources(), actors, device)
            run = _first_round(corpus, writer, config, pool, batch_size, fault_marker)
            report = _encode_claimed(ray, plan, writer, run, show_progress)
        except BaseException as e:
            raise_keeping_shards(e, out, hooks or BuildHooks())
            raise
    report.seconds = time.perf_counter() - t_start
    return report


def _first_round(
    corpus: str | Path,
    writer: ShardWriter,
    config: EncodeConfig,
    pool: _ActorPool,
    batch_size: int,
    fault_marker: str | Path | None,
) -> _Round:
    """What every round's actors are made with (:class:`ShardEncoder`'s arguments), for one run of the encode."""
    out = writer.path.resolve()
    ctor = {
        "corpus": str(Path(corpus).resolve()),
        "out": str(out),
        "spec": asdict(writer.spec),
        "settings": writer.spec.encoder.settings(),
        "device": pool.device,
        "batch_size": batch_size,
        "chunk_docs": config.chunk_docs,
        "run_id": uuid.uuid4().hex[:8],
        "threads": None if pool.gpus else pool.cpus_per_actor,
        "fault_marker": None if fault_marker is None else str(fault_marker),
    }
    return _Round(ctor, pool, out)


def _encode_claimed(
    ray: Any, plan: list[ShardTask], writer: ShardWriter, run: _Round, show_progress: bool
) -> DistributedEncodeReport:
    """The shards of ``plan`` not complete yet, written by rounds of actors; then checked and finished."""
    from tqdm.auto import tqdm

    from pooledir.distributed import user_error

    out = run.out
    done = writer.completed()
    report = DistributedEncodeReport(actors=run.pool.actors, shards_skipped=len(done))
    total = sum(t.documents for t in plan)
    bar = tqdm(total=total, desc="encode (ray)", unit="doc", disable=not show_progress, smoothing=0.05)
    bar.update(sum(t.documents for t in plan if t.number in done))
    todo = _resume_checks(out, plan, done) + [t for t in plan if t.number not in done]
    data_context = ray.data.DataContext.get_current()
    ray_bars = data_context.enable_progress_bars
    data_context.enable_progress_bars = ray_bars and not show_progress  # the driver's own bar instead
    try:
        _run_rounds(ray, todo, plan, writer, run, report, bar)
    except Exception as e:
        err = user_error(e)
        if err is not None:
            raise err from None
        raise
    finally:
        bar.close()
        data_context.enable_progress_bars = ray_bars
    report.abandoned_tries = _remove_dead_tries(out, run.ctor["run_id"])
    _check_complete(out, plan)
    writer.finish(total)
    report.documents = total
    report.shards_written.sort()
    return report


def _shard_spec(checkpoint: str | Path, settings: dict[str, Any], config: EncodeConfig) -> ShardSpec:
    """The spec every shard carries: the encoder's record (loaded once on the driver, on CPU) and the pooling."""
    from pooledir.encoder import ColBERTEncoder

    probe = ColBERTEncoder(checkpoint, device="cpu", **settings)
    record = encoder_record(probe)
    del probe
    return config.shard_spec(*record)


def _resume_checks(out: Path, plan: list[ShardTask], done: dict[int, ShardInfo]) -> list[ShardTask]:
    """Tasks that re-read the input of each completed shard (its ids' hash), after checking its size matches."""
    for number in done:
        if number >= len(plan) or done[number].documents != plan[number].documents:
            raise ShardError(
                f"cannot resume {out}: its shard {number} does not match the input's shard {number} "
                "(the input changed, or the limit); resume with the same input, or encode into a new folder"
            )
    return [ShardTask(**(asdict(t) | {"ids_sha256": done[t.number].ids_sha256})) for t in plan if t.number in done]


@dataclass(frozen=True)
class _ActorPool:
    """How many encoder actors run, on what: one GPU each where the cluster has GPUs, else a share of its CPUs."""

    actors: int
    gpus: int
    cpus_per_actor: int
    device: str


def _actor_pool(resources: dict[str, Any], actors: int | None, device: str) -> _ActorPool:
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    actors = actors or gpus or cpus
    if actors < 1:
        raise InputError(f"actors={actors} must be >= 1")
    cpus_per_actor = max(1, cpus // actors)  # CPU actors share the cluster's CPUs out between them
    return _ActorPool(actors, gpus, cpus_per_actor, "cuda" if gpus and device == "auto" else device)


@dataclass(frozen=True)
class _Round:
    """What every round of actors is started with."""

    ctor: dict[str, Any]
    pool: _ActorPool
    out: Path


def _run_rounds(
    ray: Any,
    todo: list[ShardTask],
    plan: list[ShardTask],
    writer: ShardWriter,
    run: _Round,
    report: DistributedEncodeReport,
    bar: Any,
) -> None:
    """Encode ``todo`` in rounds of actors until every shard of ``plan`` is complete (dead actors' shards redone)."""
    pool = run.pool
    while todo:
        if report.rounds == MAX_ROUNDS:
            missing = sorted(t.number for t in todo)
            raise ShardError(f"shards {missing[:10]} of {run.out} did not complete after {MAX_ROUNDS} rounds")
        report.rounds += 1
        ds = ray.data.from_items([asdict(t) for t in todo], override_num_blocks=len(todo)).map_batches(
            ShardEncoder,
            fn_constructor_kwargs=run.ctor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(pool.actors, len(todo))),
            num_gpus=1 if pool.gpus else None,
            num_cpus=None if pool.gpus else pool.cpus_per_actor,
        )
        for row in ds.iter_rows():
            _count_row(row, report, bar)
        have = writer.completed()
        todo = [t for t in plan if t.number not in have]


def _count_row(row: dict[str, Any], report: DistributedEncodeReport, bar: Any) -> None:
    """Add one shard's result row to the report and the bar; a row that carries an error raises it."""
    if row["error"]:
        raise _ERRORS.get(row["error"], PooledirError)(row["message"])
    report.tokens += int(row["tokens"])
    report.vectors += int(row["vectors"])
    if row["documents"]:
        report.encoded += int(row["documents"])
        report.shards_written.append(int(row["number"]))
        report.shard_seconds[int(row["number"])] = float(row["seconds"])
        bar.update(int(row["documents"]))


def _remove_dead_tries(out: Path, run_id: str) -> int:
    """Delete the temporary files of this run's tries that never committed; returns how many tries."""
    tries = set()
    for p in out.glob(f"shard-*.{run_id}-*.tmp"):
        tries.add(p.name.rsplit(".", 2)[-2])
        p.unlink(missing_ok=True)
    return len(tries)


def _check_complete(out: Path, plan: list[ShardTask]) -> None:
    """Every planned shard has a header with the planned start and count (nothing lost, nothing twice)."""
    for t in plan:
        header = out / (shard_name(t.number) + ".json")
        if not header.is_file():
            raise ShardError(f"shard {t.number} of {out} is missing after the encode")
        _, info = read_shard_header(header)
        if (info.start, info.documents) != (t.start, t.documents):
            raise ShardError(
                f"{header} holds positions {info.start}+{info.documents}, expected {t.start}+{t.documents}"
            )
