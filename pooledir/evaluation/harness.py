"""BEIR evaluation: one encoding, many index configurations, the same JSON every time.

``evaluate(EvalConfig(...))`` loads a BEIR folder (optionally a seeded sample
of it), encodes documents and queries once (cached on disk, keyed by the exact
checkpoint files and texts), then builds one index per (backend, pool factor)
from those vectors and measures quality (nDCG@10, Recall@100 with
pytrec_eval), size, build time and single-query latency. Baselines (PLAID) run
on the very same vectors. Hits whose id equals the query id are dropped
(BEIR's rule).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pooledir.evaluation.beir import load_qrels, load_queries
from pooledir.corpus import Document, read_corpus
from pooledir.errors import InputError
from pooledir.search import SearchParams

log = logging.getLogger(__name__)

#: the keys of every run in the output JSON, in this order (other tools read them)
RUN_KEYS = (
    "system",
    "index",
    "pool_factor",
    "nbits",
    "vectors",
    "index_bytes",
    "vector_bytes",
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
    """What to evaluate and how."""

    dataset: Path
    checkpoint: str
    pool_factors: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    indexes: list[str] = field(default_factory=lambda: ["ivfpq", "flat"])
    split: str = "test"
    corpus_sample: int | None = None
    queries_sample: int | None = None
    seed: int = 0
    search: SearchParams = field(default_factory=lambda: SearchParams(k=100))
    latency_queries: int = 100
    compare: list[str] = field(default_factory=list)
    plaid_nbits: list[int] = field(default_factory=lambda: [2, 4])
    device: str = "auto"
    batch_size: int = 32
    cache_dir: Path = Path(".cache/pooledir-eval")
    runs_dir: Path | None = None
    show_progress: bool = False


@dataclass
class BeirData:
    """A (sampled) BEIR split: documents, the judged queries and their qrels."""

    name: str
    documents: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(
    dataset: Path,
    split: str = "test",
    corpus_sample: int | None = None,
    queries_sample: int | None = None,
    seed: int = 0,
) -> BeirData:
    """Load a BEIR folder, keeping judged queries; samples keep every judged document."""
    dataset = Path(dataset)
    for part in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (dataset / part).is_file():
            raise InputError(f"{dataset} is not a BEIR dataset folder: {part} is missing")
    qrels = load_qrels(dataset, split)
    queries = load_queries(dataset)
    unknown = sorted(set(qrels) - set(queries))
    if unknown:
        raise InputError(
            f"{dataset}/qrels/{split}.tsv judges {len(unknown)} query id(s) missing from queries.jsonl, "
            f"e.g. {unknown[0]!r}"
        )
    if not qrels:
        raise InputError(f"{dataset}/qrels/{split}.tsv has no judgments")
    rng = np.random.default_rng(seed)
    qids = sorted(qrels)
    if queries_sample is not None and queries_sample < len(qids):
        qids = sorted(rng.choice(qids, queries_sample, replace=False).tolist())
    documents = read_corpus(dataset)
    if corpus_sample is not None and corpus_sample < len(documents):
        judged = {d for q in qids for d in qrels[q]}
        keep = [i for i, d in enumerate(documents) if d.id in judged]
        rest = [i for i, d in enumerate(documents) if d.id not in judged]
        extra = max(0, corpus_sample - len(keep))
        keep += rng.choice(rest, min(extra, len(rest)), replace=False).tolist()
        documents = [documents[i] for i in sorted(keep)]
    return BeirData(dataset.name, documents, {q: queries[q] for q in qids}, {q: qrels[q] for q in qids})


# -- the embedding cache ------------------------------------------------------------------------------------------
def _sha(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def cache_key(checkpoint_dir: Path, texts: list[str], settings: dict) -> str:
    """A key that changes with any checkpoint file, any encoded text or any encoding setting."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for p in sorted(checkpoint_dir.iterdir()):
        if p.is_file():
            h.update(p.name.encode())
            _sha(h, p)
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def cached(cache_dir: Path, key: str, compute: Callable[[], list[np.ndarray]]) -> tuple[list[np.ndarray], float]:
    """Load ``key``'s arrays from the cache or compute and store them; returns (arrays, seconds to compute)."""
    folder = cache_dir / key
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        flat = np.load(folder / "vectors.npy", mmap_mode="r")
        offsets = np.concatenate([[0], np.cumsum(meta["lengths"])])
        return [np.asarray(flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:])], meta["seconds"]
    t = time.perf_counter()
    arrays = compute()
    seconds = time.perf_counter() - t
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".tmp-"))
    try:
        np.save(tmp / "vectors.npy", np.concatenate(arrays).astype(np.float16))
        (tmp / "meta.json").write_text(json.dumps({"lengths": [len(a) for a in arrays], "seconds": seconds}))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return arrays, seconds


def encode_cached(encoder, data: BeirData, cache_dir: Path, show_progress: bool = False):
    """Document vectors, the seconds their encoding took, and query vectors (nq, Lq, dim), through the cache."""
    texts = [d.text for d in data.documents]
    key = cache_key(encoder.path, texts, encoder.settings.__dict__ | {"kind": "documents"})
    doc_vecs, encode_s = cached(cache_dir, key, lambda: encoder.encode_documents(texts, show_progress=show_progress))
    qtexts = list(data.queries.values())
    qkey = cache_key(encoder.path, qtexts, encoder.settings.__dict__ | {"kind": "queries"})
    (qflat,), _ = cached(cache_dir, qkey, lambda: [encoder.encode_queries(qtexts).reshape(-1, encoder.dim)])
    return doc_vecs, encode_s, np.asarray(qflat, dtype=np.float32).reshape(len(qtexts), -1, encoder.dim)


# -- metrics ------------------------------------------------------------------------------------------------------
def score_run(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10 and Recall@100 over the judged queries (pytrec_eval)."""
    try:
        import pytrec_eval
    except ImportError:
        raise InputError('metrics need the eval extra: pip install "pooledir[eval]"') from None
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    per_query = evaluator.evaluate({q: run.get(q, {}) for q in qrels})
    return {
        "ndcg@10": float(np.mean([m["ndcg_cut_10"] for m in per_query.values()])),
        "recall@100": float(np.mean([m["recall_100"] for m in per_query.values()])),
    }


def drop_self_hits(qid: str, hits: dict[str, float]) -> dict[str, float]:
    """BEIR's rule: a document with the query's own id is not a result."""
    return {d: s for d, s in hits.items() if d != qid}


def run_from_hits(qids, results) -> dict[str, dict[str, float]]:
    """A run (qid -> doc id -> score) from one ranked list of hits per query, BEIR's self-hit rule applied."""
    return {q: drop_self_hits(q, {h.id: h.score for h in hits}) for q, hits in zip(qids, results)}


def write_trec_run(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    """A TREC run file: ``qid Q0 docid rank score tag``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for qid, hits in run.items():
            for rank, (doc, score) in enumerate(sorted(hits.items(), key=lambda x: -x[1]), 1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def latency(search_one: Callable[[str], object], queries: list[str]) -> dict[str, float]:
    """Single-query latency (encoding included): p50, p95 in ms and queries per second."""
    search_one(queries[0])  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        search_one(q)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "qps": float(len(times) / sum(times)),
    }


def folder_bytes(path: Path, pattern: str = "*") -> int:
    """Bytes of the files under ``path`` matching ``pattern``."""
    return sum(p.stat().st_size for p in Path(path).rglob(pattern) if p.is_file())


def machine() -> dict[str, str | None]:
    """What the numbers were measured on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "gpu": gpu}


# -- runs ---------------------------------------------------------------------------------------------------------
def run_pooledir(
    data: BeirData,
    encoder,
    doc_vecs: list[np.ndarray],
    Q: np.ndarray,
    backend: str,
    pool_factor: int,
    cfg: EvalConfig,
    workdir: Path,
) -> tuple[dict, dict]:
    """Build one pooledir index from cached vectors and measure it; returns (row, run)."""
    from pooledir.pooled_index import IndexConfig, PooledIndex

    path = workdir / f"pooledir-{backend}-pf{pool_factor}"
    shutil.rmtree(path, ignore_errors=True)
    index = PooledIndex.create(
        path, config=IndexConfig(backend=backend, pool_factor=pool_factor), device=cfg.device, encoder=encoder
    )
    t = time.perf_counter()
    index.add(data.documents, embeddings=doc_vecs)
    build_s = time.perf_counter() - t - index.last_timings["pool_s"]
    pool_s = index.last_timings["pool_s"]
    params = replace(cfg.search, k=min(cfg.search.k, len(index)))
    qids = list(data.queries)
    results = index.search_embeddings(Q, params)
    run = run_from_hits(qids, results)
    lat_queries = [data.queries[q] for q in qids[: cfg.latency_queries]]
    info = index.info()
    row = {
        "system": "pooledir",
        "index": backend,
        "pool_factor": pool_factor,
        "nbits": None,
        "vectors": info["vectors"],
        "index_bytes": sum(v for k, v in info["bytes"].items() if k.startswith(("vectors.", "docs.sqlite", "exact"))),
        "vector_bytes": sum(v for k, v in info["bytes"].items() if k.startswith(("vectors.", "exact"))),
        "encode_s": None,
        "pool_s": pool_s,
        "build_s": build_s,
        **latency(lambda q: index.search(q, k=10, params=params), lat_queries),
        **score_run(run, data.qrels),
    }
    index.close()
    return row, run


def evaluate(cfg: EvalConfig) -> dict:
    """Run every configuration of ``cfg``; returns the result dict (see RUN_KEYS)."""
    from pooledir.encoder import ColBERTEncoder

    for f in cfg.pool_factors:
        if f < 1:
            raise InputError(f"pool factor {f} must be >= 1")
    for b in cfg.indexes:
        if b not in ("ivfpq", "flat"):
            raise InputError(f"index {b!r} is not one of 'ivfpq', 'flat'")
    data = load_beir(cfg.dataset, cfg.split, cfg.corpus_sample, cfg.queries_sample, cfg.seed)
    encoder = ColBERTEncoder(cfg.checkpoint, device=cfg.device, batch_size=cfg.batch_size)
    doc_vecs, encode_s, Q = encode_cached(encoder, data, cfg.cache_dir, cfg.show_progress)

    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="pooledir-eval-") as tmp:
        for backend in cfg.indexes:
            for pf in cfg.pool_factors:
                log.info("pooledir %s pool factor %d", backend, pf)
                row, run = run_pooledir(data, encoder, doc_vecs, Q, backend, pf, cfg, Path(tmp))
                row["encode_s"] = encode_s
                rows.append(row)
                runs[f"pooledir-{backend}-pf{pf}"] = run
        if "plaid" in cfg.compare:
            from pooledir.evaluation.systems.plaid import run_plaid

            for nbits in cfg.plaid_nbits:
                log.info("PLAID nbits=%d", nbits)
                row, run = run_plaid(data, encoder, doc_vecs, nbits, cfg, Path(tmp))
                row["encode_s"] = encode_s
                rows.append(row)
                runs[f"plaid-nbits{nbits}"] = run
    if cfg.runs_dir is not None:
        for tag, run in runs.items():
            write_trec_run(Path(cfg.runs_dir) / f"{data.name}.{tag}.trec", run, tag)
    return {
        "dataset": data.name,
        "checkpoint": str(encoder.path),
        "documents": len(data.documents),
        "queries": len(data.queries),
        "machine": machine(),
        "runs": [{k: r.get(k) for k in RUN_KEYS} for r in rows],
    }
