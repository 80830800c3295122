from __future__ import annotations

import pytest

from pooledir.errors import InputError
from pooledir.evaluation import load_beir, load_qrels, load_queries


def test_qrels_keep_every_judgment(tiny_beir):
    qrels = load_qrels(tiny_beir)
    assert qrels["q0"] == {"c0": 1, "c10": 2}
    assert len(load_queries(tiny_beir)) == 5


def test_bad_qrels_line(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tc1\n")
    with pytest.raises(InputError, match=r"test\.tsv:2: expected"):
        load_qrels(tmp_path)


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
