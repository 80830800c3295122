"""End to end on real data: 500 SciFact documents, the MiniLM checkpoint, its test queries."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BEIR

SCIFACT = BEIR / "scifact"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason="needs ../shared/data/beir/scifact"),
]


def ndcg10(run: dict, qrels: dict) -> float:
    return float(np.mean(ndcg10_per_query(run, qrels)))


def ndcg10_per_query(run: dict, qrels: dict) -> np.ndarray:
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
    scores = evaluator.evaluate(run)
    return np.array([scores[q]["ndcg_cut_10"] for q in sorted(scores)])


@pytest.fixture(scope="module")
def scifact_sample(minilm_ckpt):
    from pooledir.corpus import read_corpus
    from pooledir.encoder import ColBERTEncoder
    from pooledir.evaluation import load_qrels, load_queries

    qrels = load_qrels(SCIFACT)
    docs = read_corpus(SCIFACT)
    judged = {d for rel in qrels.values() for d in rel}
    keep = [d for d in docs if d.id in judged]
    keep += [d for d in docs if d.id not in judged][: 500 - len(keep)]
    queries = load_queries(SCIFACT)
    qids = [q for q in qrels if q in queries]
    encoder = ColBERTEncoder(minilm_ckpt, device="cpu", batch_size=32)
    embeddings = encoder.encode_documents([d.text for d in keep])
    Q = encoder.encode_queries([queries[q] for q in qids])
    return encoder, keep, embeddings, qids, Q, {q: qrels[q] for q in qids}


def evaluate(tmp_path, scifact_sample, name, **config) -> float:
    from pooledir import IndexConfig, PooledIndex, SearchParams

    encoder, docs, embeddings, qids, Q, qrels = scifact_sample
    idx = PooledIndex.create(tmp_path / name, config=IndexConfig(**config), device="cpu", encoder=encoder)
    idx.add(docs, embeddings=embeddings)
    results = idx.search_embeddings(Q, SearchParams(k=10))
    run = {q: {h.id: h.score for h in hits if h.id != q} for q, hits in zip(qids, results)}
    return ndcg10(run, qrels)


def test_pooling_and_ivfpq_keep_quality(tmp_path, scifact_sample):
    exact = evaluate(tmp_path, scifact_sample, "flat1", backend="flat", pool_factor=1)
    pooled = evaluate(tmp_path, scifact_sample, "flat2", backend="flat", pool_factor=2)
    ivfpq = evaluate(tmp_path, scifact_sample, "ivf2", backend="ivfpq", pool_factor=2)
    print(f"nDCG@10 flat x1 {exact:.4f}  flat x2 {pooled:.4f}  ivfpq x2 {ivfpq:.4f}")
    assert exact > 0.5  # a working zero-shot pipeline on this sample; a broken one scores near 0
    assert pooled >= 0.98 * exact
    assert ivfpq >= 0.97 * pooled


def test_index_grown_one_document_at_a_time_ends_as_good_as_a_bulk_build(tmp_path, scifact_sample):
    """Exact until there are enough vectors to train, trained on a sample then, re-trained as it outgrows it."""
    from pooledir import IndexConfig, PooledIndex, SearchParams

    encoder, docs, embeddings, qids, Q, qrels = scifact_sample
    scores, exhaustive, per_query = {}, {}, {}
    for name in ("bulk", "grown"):
        idx = PooledIndex.create(tmp_path / name, config=IndexConfig(), device="cpu", encoder=encoder)
        if name == "bulk":
            idx.add(docs, embeddings=embeddings)
        else:
            for d, e in zip(docs, embeddings):
                idx.add([d], embeddings=[e])
            assert not idx.info()["retrain_recommended"]
        for out, params in ((scores, SearchParams(k=10)), (exhaustive, SearchParams(k=10, exhaustive=True))):
            results = idx.search_embeddings(Q, params)
            run = {q: {h.id: h.score for h in hits if h.id != q} for q, hits in zip(qids, results)}
            out[name] = ndcg10(run, qrels)
            if params.exhaustive:
                per_query[name] = ndcg10_per_query(run, qrels)
    # the index itself (exhaustive MaxSim over its decoded codes): the two train on different samples with
    # different list counts (1,028 lists grown, 1,740 bulk), and k-means follows the machine's float rounding:
    # 0.8455 grown against 0.8484 bulk on one machine, 0.8426 against 0.8553 on another (OpenBLAS's AVX2
    # kernels). So the grown index may not be worse than the bulk one by more than 3 standard errors of the
    # paired per-query difference (not a fixed margin that one machine's rounding passes and another's fails)
    diff = per_query["grown"] - per_query["bulk"]
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    print(f"nDCG@10 bulk {scores['bulk']:.4f}  grown one at a time {scores['grown']:.4f}  exhaustive {exhaustive}")
    print(f"exhaustive grown - bulk {diff.mean():+.4f}, standard error {se:.4f} over {len(diff)} queries")
    assert diff.mean() >= -3 * se
    # the default search over it: the centroid lane ranks by centroid scores before decoding, which the grown
    # index's coarser lists (about 66 vectors a list against 39) make less precise: 0.8293 against 0.8455
    # exhaustive measured (deeper search, candidates_per_token 128, recovers it); the bulk build loses nothing
    assert scores["grown"] >= 0.97 * exhaustive["grown"] and scores["bulk"] >= 0.99 * exhaustive["bulk"]
