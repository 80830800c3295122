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
    assert set(result) == {"dataset", "checkpoint", "documents", "queries", "machine", "runs"}
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
