"""colbert-ai's PLAID (Indexer + Searcher) on the very vectors pooledir indexes.

colbert-ai would encode the collection itself; instead its collection-encoding
step is replaced for the run by a lookup into our cached embeddings, so both
engines index identical vectors and encoding is not paid twice. Queries are
encoded by our encoder (equal to colbert-ai's Checkpoint under colbert-ai's
conventions, tested; and it also honours a checkpoint that switches them
off), inside the timed search, as in pooledir's latency numbers.
"""

from __future__ import annotations

import contextlib
import io
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pooledir.evaluation.harness import BeirData, EvalConfig, drop_self_hits, folder_bytes, latency, score_run


def _query_encoder(encoder):
    """colbert-ai's ``Searcher.encode`` through our encoder: (1, live tokens, dim), zero padding rows dropped."""
    import torch

    def encode(text, full_length_search=False):
        Q = encoder.encode_queries(text if isinstance(text, list) else [text])
        live = np.any(Q != 0, axis=2).any(axis=0)
        return torch.from_numpy(np.ascontiguousarray(Q[:, live]))

    return encode


@contextmanager
def _precomputed_passages(texts: list[str], vectors: list[np.ndarray]):
    """Make colbert-ai's CollectionEncoder return our vectors for the passages it is asked to encode."""
    import torch
    from colbert.indexing import collection_encoder

    row = {t: i for i, t in enumerate(texts)}  # equal texts encode equally, so any of them will do

    def encode_passages(self, passages):
        if len(passages) == 0:
            return None, None
        idx = [row[p] for p in passages]
        embs = torch.from_numpy(np.concatenate([vectors[i] for i in idx]).astype(np.float32))
        return (embs.half() if torch.cuda.is_available() else embs), [len(vectors[i]) for i in idx]

    original = collection_encoder.CollectionEncoder.encode_passages
    collection_encoder.CollectionEncoder.encode_passages = encode_passages
    try:
        yield
    finally:
        collection_encoder.CollectionEncoder.encode_passages = original


def run_plaid(
    data: BeirData,
    encoder,
    doc_vecs: list[np.ndarray],
    nbits: int,
    cfg: EvalConfig,
    workdir: Path,
    pool_factor: int = 1,
) -> tuple[dict, dict]:
    """Index ``doc_vecs`` with PLAID at ``nbits`` and measure it like a pooledir run; returns (row, run)."""
    from colbert import Indexer, Searcher
    from colbert.infra import ColBERTConfig, Run, RunConfig

    from pooledir.pooling import pool_embeddings

    t = time.perf_counter()
    vecs = pool_embeddings(doc_vecs, pool_factor, device=cfg.device) if pool_factor > 1 else doc_vecs
    pool_s = time.perf_counter() - t
    texts = [d.text for d in data.documents]
    name = f"plaid-nbits{nbits}-pf{pool_factor}"
    s = encoder.settings
    config = ColBERTConfig(
        nbits=nbits,
        dim=s.dim,
        doc_maxlen=s.doc_maxlen,
        query_maxlen=s.query_maxlen,
        avoid_fork_if_possible=True,
        index_root=str(workdir / "plaid"),
    )
    quiet = contextlib.redirect_stdout(io.StringIO())  # colbert-ai prints a great deal
    run_config = RunConfig(nranks=1, experiment="pooledir-eval", root=str(workdir), avoid_fork_if_possible=True)
    with Run().context(run_config), quiet:
        t = time.perf_counter()
        with _precomputed_passages(texts, vecs):
            indexer = Indexer(checkpoint=str(encoder.path), config=config, verbose=0)
            indexer.index(name=name, collection=texts, overwrite=True)
        build_s = time.perf_counter() - t
        searcher = Searcher(index=name, config=config, collection=texts, verbose=0)
        searcher.encode = _query_encoder(encoder)
        qids = list(data.queries)
        k = min(cfg.search.k, len(texts))
        run = {}
        for qid in qids:
            pids, _, scores = searcher.search(data.queries[qid], k=k)
            run[qid] = drop_self_hits(qid, {data.documents[p].id: float(sc) for p, sc in zip(pids, scores)})
        lat = latency(lambda q: searcher.search(q, k=10), [data.queries[q] for q in qids[: cfg.latency_queries]])
    index_path = Path(indexer.get_index())
    row = {
        "system": "plaid",
        "index": "plaid",
        "pool_factor": pool_factor,
        "nbits": nbits,
        "vectors": int(sum(len(v) for v in vecs)),
        "index_bytes": folder_bytes(index_path),
        "vector_bytes": folder_bytes(index_path, "*.codes.pt")
        + folder_bytes(index_path, "*.residuals.pt")
        + folder_bytes(index_path, "centroids.pt")
        + folder_bytes(index_path, "buckets.pt"),
        "encode_s": None,
        "pool_s": pool_s,
        "build_s": build_s,
        **lat,
        **score_run(run, data.qrels),
    }
    return row, run
