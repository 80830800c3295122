from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pooledir.evaluation import RUN_KEYS, EvalConfig, evaluate, markdown_table


def make_config(tiny_beir, tiny_ckpt, tmp_path, **kw):
    from pooledir.search import SearchParams

    base = dict(
        dataset=tiny_beir,
        checkpoint=str(tiny_ckpt),
        pool_factors=[1, 2],
        indexes=["flat", "ivfpq"],
        device="cpu",
        cache_dir=tmp_path / "cache",
        runs_dir=tmp_path / "runs",
        latency_queries=3,
        search=SearchParams(k=20),
    )
    return EvalConfig(**(base | kw))


def test_end_to_end_keys_runs_cache(tiny_beir, tiny_ckpt, tmp_path):
    cfg = make_config(tiny_beir, tiny_ckpt, tmp_path)
    result = evaluate(cfg)
    assert set(result) == {
        "dataset",
        "checkpoint",
        "documents",
        "queries",
        "split",
        "corpus_sample",
        "machine",
        "tokens",
        "runs",
        "skipped",
    }
    assert result["skipped"] == [] and result["split"] == "test"
    assert result["documents"] == 40 and result["queries"] == 5 and set(result["machine"]) == {"cpu", "gpu"}
    assert [(r["index"], r["pool_factor"]) for r in result["runs"]] == [
        ("flat", 1),
        ("flat", 2),
        ("ivfpq", 1),
        ("ivfpq", 2),
    ]
    for r in result["runs"]:
        assert tuple(r) == RUN_KEYS
        assert 0 <= r["ndcg@10"] <= 1 and 0 <= r["recall@100"] <= 1
        assert r["index_bytes"] > 0 and r["qps"] > 0 and r["vectors"] > 0
        # bytes per original token: what a query needs (text apart) over the unpooled token count
        assert 0 < r["search_bytes"] < r["index_bytes"]
        assert r["bytes_per_token"] == pytest.approx(r["search_bytes"] / result["tokens"])
    flat1, flat2 = result["runs"][0], result["runs"][1]
    assert flat2["vectors"] < flat1["vectors"]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == [
        "beir.pooledir-flat-pf1.trec",
        "beir.pooledir-flat-pf2.trec",
        "beir.pooledir-ivfpq-pf1.trec",
        "beir.pooledir-ivfpq-pf2.trec",
    ]
    first = (tmp_path / "runs" / runs[0]).read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "pooledir-flat-pf1"
    # a second run reuses the cached vectors (same keys, same encode time, same scores)
    entries = sorted((tmp_path / "cache").iterdir())
    again = evaluate(cfg)
    assert sorted((tmp_path / "cache").iterdir()) == entries
    assert again["runs"][0]["encode_s"] == flat1["encode_s"]
    assert again["runs"][0]["ndcg@10"] == flat1["ndcg@10"]


def test_query_id_hits_are_dropped(tiny_beir, tiny_ckpt, tmp_path):
    # a corpus document whose id is a query id and whose text is that query: BEIR drops it from results
    queries = [json.loads(x) for x in (tiny_beir / "queries.jsonl").read_text().splitlines()]
    with open(tiny_beir / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "q0", "title": "", "text": queries[0]["text"]}) + "\n")
    evaluate(make_config(tiny_beir, tiny_ckpt, tmp_path, pool_factors=[1], indexes=["flat"]))
    lines = (tmp_path / "runs" / "beir.pooledir-flat-pf1.trec").read_text().splitlines()
    assert lines and not any(line.split()[0] == "q0" and line.split()[2] == "q0" for line in lines)


def test_cli_eval_and_report(tiny_beir, tiny_ckpt, tmp_path):
    out = tmp_path / "res" / "tiny.json"
    cmd = [
        sys.executable,
        "-m",
        "pooledir.cli",
        "eval",
        "beir",
        str(tiny_beir),
        "--out",
        str(out),
        "--checkpoint",
        str(tiny_ckpt),
        "--pool-factors",
        "1,2",
        "--index",
        "flat",
        "--device",
        "cpu",
        "--latency-queries",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| pooledir flat pool x2 |" in r.stdout
    assert len(json.loads(out.read_text())["runs"]) == 2
    r = subprocess.run(
        [sys.executable, "-m", "pooledir.cli", "eval", "report", str(out), "--out-dir", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {
        "report.md",
        "ndcg_vs_pool_factor.png",
        "ndcg_vs_bytes.png",
        "ndcg_vs_bytes_per_token.png",
        "latency_vs_ndcg.png",
    }
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "pooledir.cli",
            "eval",
            "beir",
            str(tmp_path),
            "--out",
            str(out),
            "--checkpoint",
            str(tiny_ckpt),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "is not a BEIR dataset folder" in bad.stderr


class ExactSystem:
    """A peer written outside pooledir: brute-force MaxSim over the unpooled vectors."""

    name = "exact-peer"

    def build(self, context, documents, vectors):
        from pooledir.maxsim import maxsim

        self.encoder, self.ids = context.encoder, [d.id for d in documents]
        self.vectors = np.concatenate(vectors).astype(np.float32)
        self.offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])])
        self.maxsim = maxsim

    def search(self, queries, k, vectors=None):
        from pooledir import Hit

        Q = self.encoder.encode_queries(list(queries)) if vectors is None else vectors
        scores = self.maxsim(Q, self.vectors, self.offsets)
        return [[Hit(self.ids[i], float(row[i])) for i in np.argsort(-row)[:k]] for row in scores]

    def describe(self):
        return {"system": "exact", "index": "exact", "pool_factor": 1, "nbits": None, "vectors": len(self.vectors)}

    def bytes(self):
        return {"index_bytes": self.vectors.nbytes, "vector_bytes": self.vectors.nbytes}

    def close(self):
        pass


def test_peers_are_pluggable_systems(tiny_beir, tiny_ckpt, tmp_path, monkeypatch):
    from pooledir.evaluation import systems

    monkeypatch.setitem(systems.SYSTEMS, "exact", lambda: [ExactSystem()])
    cfg = make_config(tiny_beir, tiny_ckpt, tmp_path, pool_factors=[1], indexes=["flat"], compare=["exact"])
    result = evaluate(cfg)
    runs = result["runs"]
    assert [r["system"] for r in runs] == ["pooledir", "exact"]
    assert "| exact | " in markdown_table([result])
    exact, flat = runs[1], runs[0]
    assert tuple(exact) == RUN_KEYS and exact["pool_s"] is None and exact["build_s"] >= 0
    # the same vectors scored exactly by both: the same quality
    assert exact["ndcg@10"] == pytest.approx(flat["ndcg@10"], abs=1e-6)
    assert (tmp_path / "runs" / "beir.exact-peer.trec").is_file()


def test_unknown_system_and_bad_options_fail_before_any_work(tiny_beir, tmp_path):
    from pooledir.errors import InputError

    missing = tmp_path / "no-checkpoint"  # never loaded: the systems are checked first
    with pytest.raises(InputError, match="unknown system 'colbert'; known systems: .*plaid"):
        evaluate(make_config(tiny_beir, missing, tmp_path, compare=["colbert"]))
    with pytest.raises(InputError, match="pool_factor=0"):
        evaluate(make_config(tiny_beir, missing, tmp_path, pool_factors=[0]))
    with pytest.raises(InputError, match="backend='hnsw'"):
        evaluate(make_config(tiny_beir, missing, tmp_path, indexes=["hnsw"]))
    with pytest.raises(InputError, match="PLAID nbits=3"):
        evaluate(make_config(tiny_beir, missing, tmp_path, compare={"plaid": {"nbits": [3]}}))


def test_adaptive_pooling_and_codec_variants(tiny_beir, tiny_ckpt, tmp_path):
    cfg = make_config(
        tiny_beir,
        tiny_ckpt,
        tmp_path,
        pool_factors=[1],
        pool_thresholds=[0.5, 3.0],
        indexes=["flat"],
        latency_queries=1,
    )
    runs = evaluate(cfg)["runs"]
    assert [(r["pool_factor"], r["pool_threshold"]) for r in runs] == [(1, None), (None, 0.5), (None, 3.0)]
    flat1, flat_low, flat_high = runs
    assert flat1["vectors"] > flat_low["vectors"] > flat_high["vectors"]  # a higher threshold merges more
    assert flat_high["pool_s"] > 0
    cfg = make_config(
        tiny_beir, tiny_ckpt, tmp_path, pool_factors=[1], indexes=["ivfpq"], pq_ms=[4], refine=[False, True]
    )
    runs = evaluate(cfg)["runs"]
    assert [(r["index"], r["pq_m"], r["refine"]) for r in runs] == [("ivfpq", 4, False), ("ivfpq", 4, True)]
    plain, refined = runs
    assert refined["vectors"] == plain["vectors"] and refined["vector_bytes"] > plain["vector_bytes"]
    # the refine stage re-scores with the float16 copy: tiny indexes keep exact segments, so both agree here
    assert refined["ndcg@10"] == pytest.approx(flat1["ndcg@10"], abs=1e-6)


def test_peers_that_cannot_run_are_skipped_with_their_reason(tiny_beir, tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "colbert", None)  # as if colbert-ai were not installed
    monkeypatch.setenv("POOLEDIR_FAST_PLAID_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    cfg = make_config(
        tiny_beir, tiny_ckpt, tmp_path, pool_factors=[1], indexes=["flat"], compare=["plaid", "fast-plaid"]
    )
    result = evaluate(cfg)
    assert [r["system"] for r in result["runs"]] == ["pooledir"]
    skipped = {s["system"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"plaid", "fast-plaid"}
    assert "colbert-ai is not installed" in skipped["plaid"]
    assert "fast-plaid's virtual environment is missing" in skipped["fast-plaid"] and "no-venv" in skipped["fast-plaid"]
    assert "fast-plaid not run: fast-plaid's virtual environment is missing" in markdown_table([result])


FAKE_FAST_PLAID = '''
"""A stand-in for fast-plaid's search module: exact MaxSim, the same calls and answers."""
import torch


class FastPlaid:
    def __init__(self, index, device=None):
        self.index = index

    def create(self, documents_embeddings, nbits=4):
        import os
        os.makedirs(self.index, exist_ok=True)
        self.docs = documents_embeddings
        torch.save(self.docs, os.path.join(self.index, "docs.pt"))
        return self

    def search(self, queries_embeddings, top_k=10, show_progress=True):
        out = []
        for q in queries_embeddings:
            scores = torch.stack([(q @ d.T).max(dim=1).values.sum() for d in self.docs])
            best = torch.argsort(scores, descending=True)[:top_k]
            out.append([(int(i), float(scores[i])) for i in best])
        return out
'''


def test_fast_plaid_runner_exchanges_vectors_through_files(tiny_beir, tiny_ckpt, tmp_path, monkeypatch):
    # fast-plaid's own environment is another python; here the same python with a stand-in fast_plaid package
    pkg = tmp_path / "fake" / "fast_plaid"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "search.py").write_text(FAKE_FAST_PLAID)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.setenv("POOLEDIR_FAST_PLAID_PYTHON", sys.executable)
    cfg = make_config(
        tiny_beir,
        tiny_ckpt,
        tmp_path,
        pool_factors=[2],
        indexes=["flat"],
        latency_queries=1,
        compare={"fast-plaid": {"nbits": [2], "pool_factors": [2]}},
    )
    result = evaluate(cfg)
    runs = result["runs"]
    assert [(r["system"], r["pool_factor"]) for r in runs] == [("pooledir", 2), ("fast-plaid", 2)]
    for r in runs:
        assert tuple(r) == RUN_KEYS and r["bytes_per_token"] > 0
    # identical pooled vectors, both scored exactly: identical quality
    assert runs[1]["ndcg@10"] == pytest.approx(runs[0]["ndcg@10"], abs=1e-6)
    assert runs[1]["vectors"] == runs[0]["vectors"]
    assert (tmp_path / "runs" / "beir.fast-plaid-nbits2-pf2.trec").is_file()


def test_report_merges_the_files_of_one_experiment_and_keeps_first_rows():
    from pooledir.evaluation import merge_results

    def res(dataset, documents, runs, skipped=()):
        return {
            "dataset": dataset,
            "split": "test",
            "documents": documents,
            "queries": 5,
            "runs": runs,
            "skipped": list(skipped),
        }

    def run(system, ndcg, **kw):
        return {"system": system, "index": kw.pop("index", None), "pool_factor": 2, "ndcg@10": ndcg, **kw}

    old = res(
        "a",
        10,
        [run("pooledir", 0.5, index="ivfpq", pq_m=16), run("pooledir", 0.6, index="flat")],
        [{"system": "fast-plaid", "reason": "missing"}],
    )
    new = res(
        "a",
        10,
        [
            run("pooledir", 0.7, index="ivfpq", pq_m=64),
            run("pooledir", 0.1, index="flat"),
            run("fast-plaid", 0.65, nbits=2),
        ],
    )
    other = res("a", 99, [run("pooledir", 0.4, index="flat")])
    merged = merge_results([old, new, other])
    assert [m["documents"] for m in merged] == [10, 99]  # another sample is another experiment
    rows = {(r["system"], r["index"], r.get("pq_m")): r["ndcg@10"] for r in merged[0]["runs"]}
    assert rows == {
        ("pooledir", "ivfpq", 16): 0.5,
        ("pooledir", "flat", None): 0.6,
        ("pooledir", "ivfpq", 64): 0.7,
        ("fast-plaid", None, None): 0.65,
    }
    assert merged[0]["skipped"] == []  # fast-plaid ran in the later file
    assert len(old["runs"]) == 2  # the inputs are left alone
