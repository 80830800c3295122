"""BEIR evaluation: one encoding, many systems, the same JSON every time.

``evaluate(EvalConfig(...))`` loads a BEIR folder (optionally a seeded sample
of it), encodes documents and queries once (cached on disk, keyed by the exact
checkpoint files and texts), then builds every system (pooledir per backend and
pool factor, and any peer named in ``compare``) from those vectors and measures
quality (nDCG@10, Recall@100 with pytrec_eval), size, build time and
single-query latency. Systems follow one small protocol
(:class:`~pooledir.evaluation.systems.base.System`); the harness knows none of
them by name. Hits whose id equals the query id are dropped (BEIR's rule).
A peer that cannot run here (say, not installed) is listed under ``skipped``
with its reason instead of failing the run.

Sizes are also given per original token: ``bytes_per_token`` is the bytes a
query needs (``search_bytes``: documents' text counted apart) divided by the
unpooled token count, so pooled and unpooled indexes and peers share one unit.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pooledir.evaluation.beir import BeirData, load_beir
from pooledir.evaluation.cache import encode_cached
from pooledir.evaluation.machine import machine_info
from pooledir.evaluation.metrics import latency, run_from_hits, score_run, write_trec_run
from pooledir.evaluation.systems import Context, System, SystemUnavailable, get_system
from pooledir.fusion import Fusion
from pooledir.search import SearchParams

log = logging.getLogger(__name__)

#: the keys of every run in the output JSON, in this order (other tools read them)
RUN_KEYS = (
    "system",
    "index",
    "pool_factor",
    "pool_threshold",
    "pq_m",
    "refine",
    "mode",
    "fusion",
    "nbits",
    "vectors",
    "index_bytes",
    "vector_bytes",
    "search_bytes",
    "bytes_per_token",
    "encode_s",
    "pool_s",
    "build_s",
    "latency_ms_p50",
    "latency_ms_p95",
    "qps",
    "ndcg@10",
    "recall@100",
)


@dataclass
class EvalConfig:
    """What to evaluate and how.

    ``indexes`` x (``pool_factors`` + ``pool_thresholds``) x ``pq_ms`` x ``refine`` are pooledir's
    own systems (``pq_ms`` and ``refine``, the float16 copy that re-scores candidates exactly, apply to
    IVF-PQ only); ``compare`` names peers on the same vectors, each with its factory's options, e.g.
    ``{"plaid": {"nbits": [2, 4], "pool_factors": [1, 2]}}`` (a list of names takes their defaults).
    """

    dataset: Path
    checkpoint: str
    pool_factors: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    indexes: list[str] = field(default_factory=lambda: ["ivfpq", "flat"])
    pool_thresholds: list[float] = field(default_factory=list)
    pq_ms: list[int | None] = field(default_factory=lambda: [None])
    refine: list[bool] = field(default_factory=lambda: [False])
    modes: list[str] = field(default_factory=lambda: ["dense"])
    fusions: list[Fusion | None] = field(default_factory=lambda: [None])
    split: str = "test"
    corpus_sample: int | None = None
    queries_sample: int | None = None
    seed: int = 0
    search: SearchParams = field(default_factory=lambda: SearchParams(k=100))
    latency_queries: int = 100
    compare: dict[str, dict[str, Any]] | list[str] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 32
    cache_dir: Path = Path(".cache/pooledir-eval")
    runs_dir: Path | None = None
    show_progress: bool = False

    def systems(self) -> list[System]:
        """Every system to measure, pooledir's first; unknown names and bad options fail here, before any work."""
        return self.plan()[0]

    def plan(self) -> tuple[list[System], list[dict[str, str]]]:
        """(systems to measure, ``{"system", "reason"}`` of each peer that cannot run here)."""
        peers = dict.fromkeys(self.compare, {}) if isinstance(self.compare, list) else dict(self.compare)
        own = {
            "indexes": self.indexes,
            "pool_factors": self.pool_factors,
            "params": self.search,
            "pool_thresholds": self.pool_thresholds,
            "pq_ms": self.pq_ms,
            "refine": self.refine,
            "modes": self.modes,
            "fusions": self.fusions,
        }
        out: list[System] = []
        skipped: list[dict[str, str]] = []
        for name, options in ({"pooledir": own} | peers).items():
            factory = get_system(name)
            try:
                out += factory(**options)
            except SystemUnavailable as e:
                log.warning("skipping %s: %s", name, e)
                skipped.append({"system": name, "reason": str(e)})
        return out, skipped


def measure(
    system: System, context: Context, data: BeirData, doc_vecs: list[np.ndarray], Q: np.ndarray, cfg: EvalConfig
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Build ``system`` from the cached vectors and measure it; returns (row, run)."""
    tokens = sum(len(v) for v in doc_vecs)
    t = time.perf_counter()
    system.build(context, data.documents, doc_vecs)
    elapsed = time.perf_counter() - t
    try:
        row = system.describe()
        qids = list(data.queries)
        k = min(cfg.search.k, len(data.documents))
        run = run_from_hits(qids, system.search([data.queries[q] for q in qids], k, vectors=Q))
        lat_queries = [data.queries[q] for q in qids[: cfg.latency_queries]]
        k_lat = min(10, len(data.documents))
        sizes = system.bytes()
        sizes.setdefault("search_bytes", sizes["index_bytes"])
        row |= sizes | {"bytes_per_token": sizes["search_bytes"] / tokens}
        row["build_s"] = elapsed - (row.get("pool_s") or 0.0)
        row |= latency(lambda q: system.search([q], k_lat), lat_queries) | score_run(run, data.qrels)
    finally:
        system.close()
    return row, run


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run every system of ``cfg``; returns the result dict (see RUN_KEYS)."""
    from pooledir.encoder import ColBERTEncoder

    systems, skipped = cfg.plan()
    data = load_beir(cfg.dataset, cfg.split, cfg.corpus_sample, cfg.queries_sample, cfg.seed)
    encoder = ColBERTEncoder(cfg.checkpoint, device=cfg.device, batch_size=cfg.batch_size)
    doc_vecs, encode_s, Q = encode_cached(encoder, data, cfg.cache_dir, cfg.show_progress)

    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="pooledir-eval-") as tmp:
        context = Context(encoder=encoder, device=cfg.device, workdir=Path(tmp))
        for system in systems:
            log.info("%s", system.name)
            row, runs[system.name] = measure(system, context, data, doc_vecs, Q, cfg)
            rows.append(row | {"encode_s": encode_s})
    if cfg.runs_dir is not None:
        for tag, run in runs.items():
            write_trec_run(Path(cfg.runs_dir) / f"{data.name}.{tag}.trec", run, tag)
    return {
        "dataset": data.name,
        "checkpoint": str(encoder.path),
        "documents": len(data.documents),
        "queries": len(data.queries),
        "split": cfg.split,
        "corpus_sample": cfg.corpus_sample,
        "machine": machine_info(),
        "tokens": sum(len(v) for v in doc_vecs),
        "runs": [{k: r.get(k) for k in RUN_KEYS} for r in rows],
        "skipped": skipped,
    }
