from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pooledir.errors import InputError
from pooledir.evaluation.harness import RUN_KEYS, EvalConfig, cache_key, evaluate, load_beir


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


def test_cache_key_changes_with_text_checkpoint_and_settings(tiny_ckpt, tmp_path):
    import shutil

    key = cache_key(tiny_ckpt, ["a", "b"], {"doc_maxlen": 64})
    assert key == cache_key(tiny_ckpt, ["a", "b"], {"doc_maxlen": 64})
    assert key != cache_key(tiny_ckpt, ["a", "c"], {"doc_maxlen": 64})
    assert key != cache_key(tiny_ckpt, ["a", "b"], {"doc_maxlen": 65})
    other = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, other)
    meta = json.loads((other / "artifact.metadata").read_text()) | {"note": "changed"}
    (other / "artifact.metadata").write_text(json.dumps(meta))
    assert key != cache_key(other, ["a", "b"], {"doc_maxlen": 64})


def test_query_id_hits_are_dropped(tiny_beir, tiny_ckpt, tmp_path):
    # a corpus document whose id is a query id and whose text is that query: BEIR drops it from results
    queries = [json.loads(x) for x in (tiny_beir / "queries.jsonl").read_text().splitlines()]
    with open(tiny_beir / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "q0", "title": "", "text": queries[0]["text"]}) + "\n")
    evaluate(make_config(tiny_beir, tiny_ckpt, tmp_path, pool_factors=[1], indexes=["flat"]))
    lines = (tmp_path / "runs" / "beir.pooledir-flat-pf1.trec").read_text().splitlines()
    assert lines and not any(line.split()[0] == "q0" and line.split()[2] == "q0" for line in lines)


def test_corpus_sample_keeps_judged_documents(tiny_beir):
    data = load_beir(tiny_beir, corpus_sample=12, seed=3)
    judged = {d for rel in data.qrels.values() for d in rel}
    ids = {d.id for d in data.documents}
    assert judged <= ids and len(ids) == 12
    assert [d.id for d in load_beir(tiny_beir, corpus_sample=12, seed=3).documents] == [d.id for d in data.documents]
    assert len(load_beir(tiny_beir, queries_sample=2).queries) == 2


def test_bad_dataset_folders(tiny_beir):
    (tiny_beir / "qrels" / "test.tsv").rename(tiny_beir / "qrels" / "dev.tsv")
    with pytest.raises(InputError, match=r"qrels/test.tsv is missing"):
        load_beir(tiny_beir)
    (tiny_beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq9\tc1\t1\n")
    with pytest.raises(InputError, match="missing from queries.jsonl, e.g. 'q9'"):
        load_beir(tiny_beir)
    (tiny_beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(InputError, match="has no judgments"):
        load_beir(tiny_beir)
    (tiny_beir / "qrels" / "test.tsv").write_text("q1\tc1\t1\n")
    with open(tiny_beir / "queries.jsonl", "a") as f:
        f.write("{broken\n")
    with pytest.raises(InputError, match=r"queries.jsonl:6: malformed query line"):
        load_beir(tiny_beir)


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
