from __future__ import annotations

import json
import re

import pytest

from pooledir.corpus import Document, check_documents, read_corpus
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


def test_a_named_pipe_is_read_once_and_not_counted(tmp_path):
    """A pipe can be read only once: counting it would swallow the corpus, so its total is unknown."""
    from pooledir.corpus import count_documents, iter_corpus
    from tests.pipes import CorpusPipe

    lines = ['{"_id": "a", "text": "one"}\n', '{"_id": "b", "text": "two"}\n']
    pipe = CorpusPipe(tmp_path / "p.jsonl", lines, lambda written: True, end=True)  # EOF after both lines
    assert count_documents(pipe.path) is None
    docs = iter_corpus(pipe.path)
    assert next(docs).id == "a"  # count_documents read nothing from it
    assert [d.id for d in docs] == ["b"]
    pipe.close()


# -- bad input found while reading: one InputError naming the file and the line --------------------------------
def test_non_utf8_jsonl_and_tsv_name_the_line(tmp_path):
    good = json.dumps({"_id": "1", "text": "ok"}).encode() + b"\n"
    fp = tmp_path / "c.jsonl"
    fp.write_bytes(good * 3 + b'{"_id": "4", "text": "caf\xe9"}\n' + good)
    with pytest.raises(InputError, match=r"c\.jsonl:4: not UTF-8 text \(invalid continuation byte at byte 25"):
        read_corpus(fp)
    tsv = tmp_path / "c.tsv"
    tsv.write_bytes(b"1\tfine\n2\t\xff\xfe bad\n")
    with pytest.raises(InputError, match=r"c\.tsv:2: not UTF-8 text"):
        read_corpus(tsv)
    single = tmp_path / "one.txt"
    single.write_bytes(b"\xff")
    with pytest.raises(InputError, match=r"one\.txt: not UTF-8 text"):
        read_corpus(single)


def test_utf8_bom_is_not_part_of_the_first_record(tmp_path):
    fp = tmp_path / "c.jsonl"
    fp.write_bytes(b"\xef\xbb\xbf" + json.dumps({"_id": "1", "text": "ok"}).encode() + b"\n")
    assert read_corpus(fp) == [Document("1", "ok", {})]


@pytest.mark.parametrize(
    "record, msg",
    [
        ({"_id": "1", "text": "a", "metadata": [1, 2]}, "field 'metadata' must be a JSON object, got list"),
        ({"_id": "1", "text": "a", "metadata": "x"}, "field 'metadata' must be a JSON object, got str"),
        ({"_id": [1, 2], "text": "a"}, "must be a string or a number, got list"),
        ({"_id": True, "text": "a"}, "must be a string or a number, got bool"),
        ({"id": {"x": 1}, "text": "a"}, "must be a string or a number, got dict"),
        ({"_id": "   ", "text": "a"}, "missing document id"),
    ],
)
def test_bad_fields_name_the_line(tmp_path, record, msg):
    fp = tmp_path / "c.jsonl"
    fp.write_text(json.dumps({"_id": "ok", "text": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError, match=r"c\.jsonl:2: .*" + re.escape(msg)):
        read_corpus(fp)


def test_lone_surrogates_are_refused_with_the_line(tmp_path):
    fp = tmp_path / "c.jsonl"
    bad_fields = (
        '"text": "a\\ud800b"',
        '"text": "ok", "title": "\\udfff"',
        '"text": "ok", "metadata": {"k": "\\ud800"}',
    )
    for field in bad_fields:
        fp.write_text('{"_id": "ok", "text": "fine"}\n{"_id": "x", ' + field + "}\n")
        with pytest.raises(InputError, match=r"c\.jsonl:2: document 'x'.*lone surrogate"):
            read_corpus(fp)
    fp.write_text('{"_id": "a\\ud800", "text": "fine"}\n')
    with pytest.raises(InputError, match=r"c\.jsonl:1: document id is not valid Unicode: a lone surrogate"):
        read_corpus(fp)


def test_json_number_ids_become_strings(tmp_path):
    fp = tmp_path / "c.jsonl"
    fp.write_text('{"_id": 7, "text": "a"}\n{"id": 1.5, "text": "b"}\n')
    assert [d.id for d in read_corpus(fp)] == ["7", "1.5"]


def test_documents_check_their_fields_when_built():
    for args, msg in [
        ((5, "text"), "document id is int, expected a string"),
        (("  ", "text"), "document id '  ' is blank"),
        (("a", None), "document 'a': text is NoneType, expected a string"),
        (("a", "x\ud800"), "document 'a': text is not valid Unicode: a lone surrogate"),
        (("a", "x", [1]), "document 'a': metadata must be an object (dict)"),
        (("a", "x", {"k": {1, 2}}), "document 'a': metadata holds a set"),
    ]:
        with pytest.raises(InputError, match=re.escape(msg)):
            Document(*args)
    d = Document("a", "x", {"k": 1})
    d.metadata["k"] = float("nan")  # changed after it was built: check_documents checks again
    with pytest.raises(InputError, match=r"docs: document 'a': metadata holds nan"):
        check_documents([d], "docs")


def test_check_documents_refuses_what_is_not_a_document():
    with pytest.raises(InputError, match=r"item 1 is a dict, not a Document; build one with Document"):
        check_documents([Document("a", "x"), {"id": "b", "text": "y"}])
    with pytest.raises(InputError, match="got one Document"):
        check_documents(Document("a", "x"))


# -- parquet: the same documents as the .jsonl holding the same records ---------------------------------------
def write_parquet(path, records, row_group_size=7):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


def test_parquet_equals_the_same_corpus_as_jsonl(tmp_path, tiny_beir):
    from pooledir.corpus import _read_parquet, iter_corpus

    records = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    for i, r in enumerate(records):
        r["metadata"] = {"lang": "en" if i % 2 else None}  # a struct column; "lang" null on even rows
        r["year"] = 2000 + i if i % 3 else None  # another column: a metadata field where it is not null
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    parquet = write_parquet(tmp_path / "c.parquet", records)  # 6 row groups of 7 rows (the last 5)
    expected = read_corpus(jsonl)
    for d, r in zip(expected, records):  # what the jsonl reader makes of "year": nothing; parquet: metadata
        if r["year"] is not None:
            d.metadata["year"] = r["year"]
    assert read_corpus(parquet) == expected
    assert expected[1].metadata == {"lang": "en", "year": 2001, "title": "title 1"}
    beir = tmp_path / "pq-beir"
    beir.mkdir()
    write_parquet(beir / "corpus.parquet", records)
    assert read_corpus(beir, limit=3) == expected[:3]  # a BEIR folder holding corpus.parquet
    for start in (0, 1, 6, 7, 8, 20, 39, 40, 41):  # starts on, inside and past row groups
        assert list(_read_parquet(parquet, start)) == expected[start:]
    ids = write_parquet(tmp_path / "ids.parquet", [{"id": 7, "text": "a"}, {"id": 8, "text": "b"}])
    assert [d.id for d in iter_corpus(ids)] == ["7", "8"]  # an integer `id` column, as .jsonl numbers


def test_a_bad_parquet_row_is_named_and_count_reads_only_the_footer(tmp_path, monkeypatch):
    from pooledir.corpus import count_documents, iter_corpus

    rows = [{"_id": "a", "text": "one"}, {"_id": "b", "text": "two"}, {"_id": "c", "text": None}]
    path = write_parquet(tmp_path / "c.parquet", [*rows, {"_id": "d", "text": "x"}], row_group_size=2)
    docs = iter_corpus(path)
    assert [next(docs).id, next(docs).id] == ["a", "b"]  # lazy: the bad third row is not read yet
    with pytest.raises(InputError, match=r"c\.parquet: row 3: field 'text' must be a string, got NoneType"):
        next(docs)
    assert count_documents(path) == 4  # rows, from the footer, not parsed
    blank = write_parquet(tmp_path / "b.parquet", [{"_id": "a", "text": "x"}, {"_id": " ", "text": "y"}])
    with pytest.raises(InputError, match=r"b\.parquet: row 2: missing document id"):
        read_corpus(blank)
    meta = write_parquet(tmp_path / "m.parquet", [{"_id": "a", "text": "x", "when": b"\x00"}])
    with pytest.raises(InputError, match=r"m\.parquet: row 1: .*metadata holds a bytes"):
        read_corpus(meta)
    no_text = write_parquet(tmp_path / "n.parquet", [{"_id": "a", "body": "x"}])
    with pytest.raises(
        InputError, match=r"n\.parquet: a parquet corpus needs a column 'text'; it has \['_id', 'body'\]"
    ):
        iter_corpus(no_text)  # refused when opened, before any document is asked for
    fake = tmp_path / "f.parquet"
    fake.write_text('{"_id": "a", "text": "x"}\n')
    for call in (iter_corpus, count_documents):
        with pytest.raises(InputError, match=r"f\.parquet: not a readable parquet file"):
            call(fake)
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # as in an install without the extra
    with pytest.raises(InputError, match=re.escape('pip install "pooledir[parquet]"')):
        iter_corpus(path)
