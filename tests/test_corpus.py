from __future__ import annotations

import json

import pytest

from pooledir.corpus import Document, read_corpus
from pooledir.errors import InputError


def test_beir_folder_joins_title_and_text(tiny_beir):
    docs = read_corpus(tiny_beir)
    assert len(docs) == 40
    assert docs[0].id == "c0"
    assert docs[0].text.startswith("title 0 ")
    assert docs[0].metadata["title"] == "title 0"


def test_limit_keeps_first_documents(tiny_beir):
    assert [d.id for d in read_corpus(tiny_beir, limit=3)] == ["c0", "c1", "c2"]


def test_tsv_and_txt_folder(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\ttext\ttitle\n1\thello world\tgreeting\n2\tsecond doc\n")
    docs = read_corpus(tsv)
    assert docs == [Document("1", "greeting hello world", {"title": "greeting"}), Document("2", "second doc", {})]
    folder = tmp_path / "txt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    assert [(d.id, d.text) for d in read_corpus(folder)] == [("a", "alpha"), ("sub/b", "beta")]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    fp = tmp_path / "c.jsonl"
    fp.write_text(json.dumps({"_id": "1", "text": "ok"}) + "\n{not json\n")
    with pytest.raises(InputError, match=r"c\.jsonl:2: malformed JSON"):
        read_corpus(fp)


def test_missing_text_field_names_line(tmp_path):
    fp = tmp_path / "c.jsonl"
    fp.write_text(json.dumps({"_id": "1", "body": "no text"}) + "\n")
    with pytest.raises(InputError, match=r"c\.jsonl:1: field 'text' must be a string"):
        read_corpus(fp)


def test_duplicate_ids_empty_and_missing(tmp_path):
    fp = tmp_path / "c.jsonl"
    fp.write_text(json.dumps({"_id": "1", "text": "a"}) + "\n" + json.dumps({"_id": "1", "text": "b"}) + "\n")
    with pytest.raises(InputError, match="duplicate document id '1'"):
        read_corpus(fp)
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no documents found"):
        read_corpus(empty)
    with pytest.raises(InputError, match="corpus not found"):
        read_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="unknown corpus format"):
        (tmp_path / "x.csv").write_text("a,b")
        read_corpus(tmp_path / "x.csv")


def test_one_title_and_text_rule():
    from pooledir.corpus import document_from_record, document_text

    assert document_text("Bone", "vitamin d") == "Bone vitamin d"
    assert document_text(None, "vitamin d") == document_text("", "vitamin d") == "vitamin d"
    record = {"_id": 7, "title": "Bone", "text": "vitamin d", "metadata": {"src": "x", "title": "old"}}
    doc = Document.from_parts("7", "vitamin d", "Bone", {"src": "x", "title": "old"})
    assert doc == document_from_record(record) == Document("7", "Bone vitamin d", {"src": "x", "title": "Bone"})


def test_readers_are_lazy_and_count_is_cheap(tmp_path):
    from pooledir.corpus import count_documents, iter_corpus

    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "one"}\n{"_id": "b", "text": "two"}\n{not json\n{"_id": "c", "text": "x"}')
    docs = iter_corpus(path)
    assert [next(docs).id, next(docs).id] == ["a", "b"]  # the bad third line is not read yet
    with pytest.raises(InputError, match="c.jsonl:3: malformed JSON"):
        next(docs)
    assert count_documents(path) == 4  # lines, not parsed
    tsv = tmp_path / "c.tsv"
    tsv.write_text("1\tx\n2\ty\n")
    assert count_documents(tsv) == 2
    folder = tmp_path / "txt"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.txt", "sub/b.txt", "sub/c.txt"):
        (folder / name).write_text("text")
    assert count_documents(folder) == 3
    with pytest.raises(InputError, match="corpus not found"):
        count_documents(tmp_path / "nope.jsonl")
