"""The lexical lane (FTS5 BM25 in docs.sqlite) and the search modes lexical / hybrid."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from pooledir import lexical
from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.fusion import Fusion
from pooledir.hybrid import search as hybrid_search
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams
from tests.conftest import WORDS, FakeEncoder

DIM = 16


def vectors(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((int(rng.integers(3, 9)), DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_index(path, **config) -> PooledIndex:
    return PooledIndex.create(path, config=IndexConfig(pool_factor=1, **config), device="cpu", encoder=FakeEncoder())


def add(idx: PooledIndex, ids: list[str], seeds: list[int], group: str = "a") -> None:
    docs = [Document(i, f"text of {i} zz{s}", {"group": group, "seed": s}) for i, s in zip(ids, seeds)]
    idx.add(docs, embeddings=[vectors(s) for s in seeds], pooled=True)


def lanes_agree(idx: PooledIndex) -> set[str]:
    """Both lanes hold exactly the stored rows, with their text; returns the ids."""
    conn = idx.doc_store.conn
    docs = dict(conn.execute("SELECT doc_int, text FROM docs").fetchall())
    lex = dict(conn.execute(f"SELECT rowid, body FROM {lexical.TABLE}").fetchall())
    assert lex == docs
    assert len(idx) == len(docs)  # the dense lane's snapshot counts the same rows
    return set(idx.doc_store.ext_ids(list(docs)))


def lexical_ids(idx: PooledIndex, query: str, k: int = 10, **kw) -> list[str]:
    return [h.id for h in hybrid_search(idx, [query], SearchParams(k=k), "lexical", **kw)[0]]


@pytest.mark.parametrize("backend", ["flat", "ivfpq"])
def test_lanes_agree_after_upserts_deletes_and_compaction(tmp_path, backend):
    idx = fake_index(tmp_path / "i", backend=backend, train_min_vectors=100, max_segments=3)
    for b in range(5):
        add(idx, [f"d{b}_{i}" for i in range(8)], [b * 100 + i for i in range(8)])
    add(idx, ["d0_1", "d1_1"], [901, 902])  # replaced: old text out of the lexical lane
    idx.delete(["d2_2", "d3_3"])
    assert lanes_agree(idx) == {f"d{b}_{i}" for b in range(5) for i in range(8)} - {"d2_2", "d3_3"}
    assert lexical_ids(idx, "zz901") == ["d0_1"] and lexical_ids(idx, "zz1") == []  # replaced text is gone
    assert lexical_ids(idx, "zz202") == []  # deleted
    idx.compact(retrain=backend == "ivfpq")
    ids = lanes_agree(idx)
    assert len(ids) == 38 and lexical_ids(idx, "d4_7") == ["d4_7"]
    # another process's view: reopening reads the same agreement from disk
    idx.close()
    again = PooledIndex.open(tmp_path / "i", device="cpu", encoder=FakeEncoder())
    assert lanes_agree(again) == ids and again.info()["lexical"] is True


def test_fts5_syntax_is_searched_as_plain_terms(tmp_path):
    idx = fake_index(tmp_path / "i", backend="flat")
    add(idx, ["near", "and", "star"], [1, 2, 3])
    nasty = [
        '"unbalanced',
        "text AND",
        "AND OR NOT",
        "NEAR(text",
        "te* OR *",
        "((text of",
        "text) of)",
        "^text : body:text",
        "'; DROP TABLE docs; --",
        "-zz1 +zz2",
        "ünïcödé 𝔘 中文 zz3",
        "...",
    ]
    for q in nasty:
        ids = lexical_ids(idx, q)
        assert len(set(ids)) == len(ids)
    assert lexical_ids(idx, "NEAR(zz1") == ["near"]  # 'near' is a plain word, the id of doc zz1
    assert set(lexical_ids(idx, 'AND zz2 "')) == {"and"}
    assert lexical_ids(idx, "...") == []  # no words: nothing, no error
    assert lanes_agree(idx) == {"near", "and", "star"}


def test_fts_query_quotes_every_word_and_drops_lone_surrogates():
    assert lexical.fts_query('a "b" NEAR(c* AND a') == '"a" OR "b" OR "near" OR "c" OR "and"'
    assert lexical.fts_query("x\ud800y") == '"x" OR "y"'
    assert lexical.fts_query(" ,;() ") is None


def test_a_lone_surrogate_query_is_an_input_error_in_every_mode(tmp_path, tiny_encoder):
    idx = PooledIndex.create(tmp_path / "i", config=IndexConfig(backend="flat"), device="cpu", encoder=tiny_encoder)
    idx.add([Document("a", "cancer cells")])
    for mode in ("lexical", "hybrid"):
        with pytest.raises(InputError, match="lone surrogate"):
            idx.search("cancer \ud800", mode=mode)
    with pytest.raises(InputError, match="search mode 'bm25' is not one of dense, lexical, hybrid"):
        idx.search("cancer", mode="bm25")
    with pytest.raises(InputError, match="fusion weight=2"):
        idx.search("cancer", mode="hybrid", fusion=Fusion(weight=2))


@pytest.fixture(scope="module")
def real(tmp_path_factory, tiny_encoder):
    rng = np.random.default_rng(5)
    docs = [
        Document(f"d{i}", " ".join(rng.choice(WORDS, 12)) + f" code{i}", {"half": i % 2, "i": i}) for i in range(60)
    ]
    idx = PooledIndex.create(
        tmp_path_factory.mktemp("real") / "i", config=IndexConfig(backend="flat"), device="cpu", encoder=tiny_encoder
    )
    idx.add(docs)
    return idx


@pytest.mark.parametrize("method", ["rrf", "convex"])
def test_hybrid_finds_an_exact_code_and_honours_filters(real, method):
    fusion = Fusion(method=method, weight=0.3)
    hits = real.search(["code17", "code18"], k=5, mode="hybrid", fusion=fusion, with_text=True)
    assert hits[0][0].id == "d17" and hits[1][0].id == "d18"
    assert hits[0][0].text.endswith("code17") and hits[0][0].metadata["i"] == 17
    for mode in ("dense", "lexical", "hybrid"):
        for filt in ({"half": 1}, {"half": 0, "i": 18}):
            got = real.search(["code18 cancer cells"], k=10, mode=mode, filter=filt, with_text=True)[0]
            assert got and all(all(h.metadata[f] == v for f, v in filt.items()) for h in got)
            assert len({h.id for h in got}) == len(got)
    assert [h.id for h in real.search("code18", k=3, mode="hybrid", filter={"half": 0})[0]][0] == "d18"
    assert real.search("code18", k=3, mode="lexical", filter={"half": 1})[0] == []


def test_hybrid_with_precomputed_query_vectors_matches_encoding(real):
    Q = real.encoder.encode_queries(["code3 gene"])
    a = hybrid_search(real, ["code3 gene"], SearchParams(k=7), "hybrid", Q=Q)
    b = real.search("code3 gene", k=7, mode="hybrid")
    assert [(h.id, h.score) for h in a[0]] == [(h.id, h.score) for h in b[0]] and "d3" in [h.id for h in a[0]]


def test_passages_are_scored_per_parent(tmp_path, tiny_encoder):
    rng = np.random.default_rng(0)
    filler = WORDS[:20]
    long = " ".join(rng.choice(filler, 300)) + " zebrafish " + " ".join(rng.choice(filler, 20))
    docs = [Document(f"s{i}", " ".join(rng.choice(filler, 20))) for i in range(10)] + [Document("long", long)]
    idx = PooledIndex.create(
        tmp_path / "i", config=IndexConfig(backend="flat", passage_stride=30), device="cpu", encoder=tiny_encoder
    )
    idx.add(docs)
    conn = idx.doc_store.conn
    rows = conn.execute(
        f"SELECT d.ext_id, d.metadata, l.body FROM docs d JOIN {lexical.TABLE} l ON l.rowid = d.doc_int "
        "WHERE d.ext_id LIKE 'long#p%'"
    ).fetchall()
    assert len(rows) > 3
    import json

    for _, meta, body in rows:  # each passage row indexes its own span, p0 included (not the whole document)
        a, b = json.loads(meta)["span"]
        assert body == long[a:b]
    hits = idx.search("zebrafish", k=5, mode="lexical", with_text=True)[0]
    assert [h.id for h in hits] == ["long"] and hits[0].text == long
    assert len({h.id for h in idx.search("cancer cells", k=11, mode="lexical")[0]}) <= 11
    assert idx.search("zebrafish", k=3, mode="hybrid")[0][0].id == "long"
    idx.delete(["long"])
    assert idx.search("zebrafish", k=3, mode="lexical")[0] == []
    assert lanes_agree(idx) == {f"s{i}" for i in range(10)}


def drop_lexical(path) -> None:
    """What an index made before the lexical lane looks like: no table, no triggers."""
    conn = sqlite3.connect(path / "docs.sqlite")
    for trigger in ("docs_lex_insert", "docs_lex_delete", "docs_lex_update"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute(f"DROP TABLE {lexical.TABLE}")
    conn.commit()
    conn.close()


def test_an_old_index_gets_its_table_on_the_first_write_open(tmp_path):
    idx = fake_index(tmp_path / "i", backend="flat")
    add(idx, ["a", "b"], [1, 2])
    idx.close()
    drop_lexical(tmp_path / "i")
    # a read-only connection cannot build it: no error, no table
    ro = sqlite3.connect(f"file:{tmp_path / 'i' / 'docs.sqlite'}?mode=ro", uri=True, isolation_level=None)
    assert lexical.ensure_table(ro) is False and not lexical.has_table(ro) and not ro.in_transaction
    ro.close()
    again = PooledIndex.open(tmp_path / "i", device="cpu", encoder=FakeEncoder())
    assert again.info()["lexical"] is True
    assert lanes_agree(again) == {"a", "b"} and lexical_ids(again, "zz2") == ["b"]
    add(again, ["c"], [3])  # the triggers are there: later writes reach both lanes
    assert lanes_agree(again) == {"a", "b", "c"}


def test_a_failed_build_leaves_no_half_table(tmp_path, monkeypatch):
    idx = fake_index(tmp_path / "i", backend="flat")
    add(idx, ["a"], [1])
    idx.close()
    drop_lexical(tmp_path / "i")
    conn = sqlite3.connect(tmp_path / "i" / "docs.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE boom (x)")  # the build's fill fails half-way: a trigger aborts it
    conn.execute("CREATE TRIGGER stop BEFORE INSERT ON boom BEGIN SELECT RAISE(ABORT, 'crash'); END")
    real_statements = lexical._statements
    monkeypatch.setattr(lexical, "_statements", lambda s: [*real_statements(s), "INSERT INTO boom VALUES (1)"])
    with pytest.raises(sqlite3.IntegrityError, match="crash"):
        lexical.ensure_table(conn)
    assert not lexical.has_table(conn)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'docs_lex%'").fetchone()[0] == 0
    monkeypatch.undo()
    assert lexical.ensure_table(conn) and conn.execute(f"SELECT COUNT(*) FROM {lexical.TABLE}").fetchone()[0] == 1
    conn.close()


def test_tokenize_matches_the_index_terms():
    assert lexical.tokenize(["The Foxes JUMPED, quickly!", ""]) == [["the", "fox", "jump", "quickli"], []]


def test_lexical_modes_on_an_index_without_the_table_say_what_to_do(tmp_path, monkeypatch):
    idx = fake_index(tmp_path / "i", backend="flat")
    add(idx, ["a"], [1])
    monkeypatch.setattr(lexical, "has_table", lambda conn: False)  # as an old index opened read-only
    with pytest.raises(InputError, match="no lexical table .* open it once with write access"):
        hybrid_search(idx, ["zz1"], SearchParams(k=3), "lexical")


def test_cli_search_modes(tmp_path, tiny_ckpt, tiny_beir):
    import json
    import subprocess
    import sys

    out = tmp_path / "idx"
    cli = [sys.executable, "-m", "pooledir.cli"]
    r = subprocess.run(
        [*cli, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--index", "flat", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    for mode in ("dense", "lexical", "hybrid"):
        r = subprocess.run(
            [*cli, "search", out, 'title 7 "AND', "-k", "3", "--json", "--mode", mode, "--device", "cpu"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        hits = json.loads(r.stdout)["results"]
        assert len(hits) == 3 and (mode == "dense" or hits[0]["id"] == "c7")
    r = subprocess.run([*cli, "search", out, "x", "--mode", "bm25"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: search mode 'bm25' is not one of dense, lexical, hybrid"
    ]
    info = json.loads(subprocess.run([*cli, "info", out, "--json"], capture_output=True, text=True).stdout)
    assert info["lexical"] is True
    r = subprocess.run([*cli, "info", out], capture_output=True, text=True)
    assert "lexical table: yes" in r.stdout


def test_eval_runs_every_mode_and_the_bm25s_reference(tiny_beir, tiny_ckpt, tmp_path):
    pytest.importorskip("bm25s")
    pytest.importorskip("pytrec_eval")
    from pooledir.evaluation import EvalConfig, evaluate

    cfg = EvalConfig(
        dataset=tiny_beir,
        checkpoint=str(tiny_ckpt),
        pool_factors=[1],
        indexes=["flat"],
        modes=["dense", "lexical", "hybrid"],
        fusions=[None, Fusion("rrf", 0.8, 20)],  # the default (convex) and the other method
        compare=["bm25s"],
        device="cpu",
        cache_dir=tmp_path / "cache",
        latency_queries=2,
        search=SearchParams(k=20),
    )
    runs = evaluate(cfg)["runs"]
    assert len(runs) == 6
    modes = sorted(str(r["mode"]) for r in runs)
    assert modes == ["dense", "hybrid", "hybrid", "lexical", "lexical", "lexical"]
    lex = next(r for r in runs if r["system"] == "pooledir" and r["mode"] == "lexical")
    ref = next(r for r in runs if r["system"] == "bm25s" and r["index"].startswith("robertson"))
    assert lex["ndcg@10"] == pytest.approx(ref["ndcg@10"], abs=0.05)  # same tokens, same formula
    assert {r["fusion"]["method"] for r in runs if r["mode"] == "hybrid"} == {"rrf", "convex"}


def test_skipping_words_in_half_the_rows_changes_no_ranking(real):
    conn = real.doc_store.conn
    n = len(real)
    for q in ["the cancer of cells", "a study of the blood and the heart code9", "the of and", "code7 the"]:
        full_ids, full_scores = lexical.search(conn, q, 60)
        fast_ids, fast_scores = lexical.search(conn, q, 60, n_rows=n)
        # words in half the rows or more have idf 1e-6 in FTS5: the rows they alone match score ~0
        keep = full_scores > 1e-3
        assert fast_ids[: keep.sum()].tolist() == full_ids[keep].tolist()
        np.testing.assert_allclose(fast_scores[: keep.sum()], full_scores[keep], atol=1e-4)


def test_useful_words_keeps_every_word_when_none_is_rare(tmp_path):
    idx = fake_index(tmp_path / "i", backend="flat")
    add(idx, ["a", "b", "c"], [1, 2, 3])  # "text" and "of" are in every row
    conn, n = idx.doc_store.conn, len(idx)
    assert lexical.useful_words(conn, ["text", "of", "zz1"], n) == ["zz1"]
    assert lexical.useful_words(conn, ["text", "of", "zzzz"], n) == ["text", "of", "zzzz"]
    assert lexical_ids(idx, "text of") != []  # a query of common words still finds the rows


FIXTURE = Path(__file__).parent / "fixtures" / "format2_no_lexical"


def test_a_committed_format_2_index_gets_its_table_on_the_first_write_open(tmp_path):
    """tests/fixtures/format2_no_lexical: made by pooledir before the lexical lane (3 documents, one replaced)."""
    conn = sqlite3.connect(FIXTURE / "docs.sqlite")
    assert not lexical.has_table(conn)
    conn.close()
    path = tmp_path / "old"
    shutil.copytree(FIXTURE, path)
    idx = PooledIndex.open(path, device="cpu", encoder=FakeEncoder())
    assert idx.info()["lexical"] is True
    assert lanes_agree(idx) == {"alpha", "beta", "gamma"}
    assert lexical_ids(idx, "zebrafish regeneration") == ["alpha"]
    assert lexical_ids(idx, "bone revised") == ["beta"] and lexical_ids(idx, "older adults") == []
    assert lexical_ids(idx, "retrieval", filter={"kind": "ir"}) == ["gamma"]
    dense = idx.search_embeddings(np.stack([vectors(1)[:2]]), SearchParams(k=3))[0]
    assert sorted(h.id for h in dense) == ["alpha", "beta", "gamma"]
    add(idx, ["delta"], [4])
    assert lanes_agree(idx) == {"alpha", "beta", "gamma", "delta"}


def test_kill_9_during_writes_keeps_both_lanes_in_step(tmp_path):
    """kill -9 during upserts, replacements, deletes and compactions: every acknowledged write is in both lanes.

    The writer prints each write once it returned (durable); the test kills it after 30 of them, whatever it
    is doing then. Only the write in flight at the kill may or may not be there, so the last three document
    numbers (which it could touch) are not checked.
    """
    from tests.index.test_folder import _child, assert_lanes_agree

    path = tmp_path / "i"
    with fake_index(path, backend="ivfpq", train_min_vectors=100, max_segments=4) as idx:
        add(idx, ["seed"], [0])
    writer = """
        from pooledir.corpus import Document
        def put(doc_id, word, seed):
            idx.add([Document(doc_id, f"text of {word}", {"seed": seed})], embeddings=[doc_vectors(seed)], pooled=True)
            print(f"+ {doc_id} {word}", flush=True)
        i = 0
        while True:
            put(f"w{i}", f"alpha{i}", i + 1)
            if i % 4 == 3:
                put(f"w{i - 1}", f"beta{i - 1}", 500 + i)  # replaced: alpha{i-1} must leave the lexical lane
            if i % 5 == 4:
                idx.delete([f"w{i - 2}"])
                print(f"- w{i - 2} -", flush=True)
            if i % 6 == 5:
                idx.compact()
            i += 1
    """
    proc = _child(writer, path)
    acked = [proc.stdout.readline().split() for _ in range(30)]  # blocks on the writer's own lines, no clock
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(len(a) == 3 for a in acked), proc.stderr.read()
    state: dict[str, str | None] = {}
    for op, doc_id, word in acked:
        state[doc_id] = word if op == "+" else None
    last = max(int(d[1:]) for d in state)
    again = PooledIndex.open(path, device="cpu", encoder=FakeEncoder())
    assert_lanes_agree(again)
    checked = 0
    for doc_id, word in state.items():
        if int(doc_id[1:]) >= last - 2:
            continue  # the write in flight may have touched it
        n = doc_id[1:]
        if word is None:
            assert doc_id not in again.doc_store.lookup([doc_id])
            assert lexical_ids(again, f"alpha{n} beta{n}") == []
        else:
            assert again.get(doc_id).text == f"text of {word}"
            assert lexical_ids(again, word) == [doc_id]
            other = f"alpha{n}" if word.startswith("beta") else f"beta{n}"
            assert lexical_ids(again, other) == []  # a replaced text is gone from the lexical lane
        checked += 1
    assert checked >= 15
    again.close()
    conn = sqlite3.connect(path / "docs.sqlite")
    conn.execute(f"INSERT INTO {lexical.TABLE} ({lexical.TABLE}) VALUES ('integrity-check')")  # raises if corrupt
    conn.close()


@pytest.mark.parametrize("where", [None, {"group": "a"}])
def test_lexical_search_takes_its_top_k_without_fts5s_sort_of_every_match(tmp_path, where):
    """``ORDER BY rank`` makes FTS5 sort every matching row in a nested query before the LIMIT; bm25() in
    sqlite's own ORDER BY ... LIMIT keeps a top-k (40% less time a query on SciFact). Same scores."""
    idx = fake_index(tmp_path / "i", backend="flat")
    add(idx, [f"d{i}" for i in range(12)], list(range(12)))
    add(idx, ["x", "y"], [50, 51], group="b")
    conn = idx.doc_store.conn
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        doc_ints, scores = lexical.search(conn, "text of zz3 zz50", 4, where)
    finally:
        conn.set_trace_callback(None)
    assert seen and not [s for s in seen if "ORDER BY bm25" in s], seen[:5]  # FTS5's nested sort
    match = lexical.fts_query("text of zz3 zz50")
    ref = conn.execute(f"SELECT rowid, rank FROM {lexical.TABLE} WHERE {lexical.TABLE} MATCH ? ORDER BY rank", (match,))
    ref = [(r, -s) for r, s in ref.fetchall() if where is None or idx.doc_store.rows([r])[0].metadata["group"] == "a"]
    np.testing.assert_allclose(scores, [s for _, s in ref[:4]], rtol=1e-6)
    assert "d3" in idx.doc_store.ext_ids(doc_ints[:2]) and len(doc_ints) == 4
    ties = [(a, b) for a, b, s, t in zip(doc_ints, doc_ints[1:], scores, scores[1:]) if s == t]
    assert ties and all(a < b for a, b in ties)  # equal scores: smaller doc_int first


@pytest.mark.parametrize("method", ["rrf", "convex"])
def test_hybrid_lanes_in_parallel_give_the_sequential_results(real, method):
    fusion = Fusion(method=method, weight=0.3, depth=20)
    queries = ["code17 cancer", "gene cells code3", "nothing-matches-this", "code18"]
    Q = real.encoder.encode_queries(queries)
    for filt in (None, {}, {"half": 1}):
        for k in (1, 5, 30):
            for q in (None, Q):
                args = (real, queries, SearchParams(k=k), "hybrid", True, filt, fusion, q)
                par, seq = hybrid_search(*args), hybrid_search(*args, parallel=False)
                assert [[(h.id, h.score, h.text) for h in r] for r in par] == [
                    [(h.id, h.score, h.text) for h in r] for r in seq
                ]
                assert any(par)


def lanes_meet(monkeypatch, idx: PooledIndex, in_dense) -> dict:
    """Hold the lexical lane at its start until the dense lane, once it sees the lexical lane started, ran ``in_dense``.

    With lanes that ran in turn the dense lane would wait in vain: the timeouts only turn that hang into a failure.
    """
    from pooledir import hybrid

    started, dense_done, seen = threading.Event(), threading.Event(), {}
    lexical_hits, search_embeddings = hybrid.lexical_hits, idx.search_embeddings

    def lexical_lane(*a, **kw):
        seen["lexical_thread"] = threading.current_thread().name
        started.set()
        assert dense_done.wait(60)
        try:
            return lexical_hits(*a, **kw)
        finally:
            seen["lexical_finished"] = True

    def dense_lane(*a, **kw):
        seen["overlap"] = started.wait(60)
        try:
            in_dense()
            return search_embeddings(*a, **kw)
        finally:
            dense_done.set()

    monkeypatch.setattr(hybrid, "lexical_hits", lexical_lane)
    monkeypatch.setattr(idx, "search_embeddings", dense_lane)
    return seen


def test_the_lexical_lane_overlaps_the_dense_one_and_reads_the_pinned_commit(tmp_path, monkeypatch):
    idx = fake_index(tmp_path / "i")
    add(idx, ["a", "b", "c"], [1, 2, 3])
    idx.pin()
    commit = idx.commit
    writer = PooledIndex.open(tmp_path / "i", device="cpu")

    def write():  # lands while both lanes are in flight, before the lexical lane's query
        add(writer, ["new"], [99])
        assert writer.commit == commit + 1

    seen = lanes_meet(monkeypatch, idx, write)
    hits = hybrid_search(idx, ["zz99 zz1"], SearchParams(k=10), "hybrid", Q=vectors(99)[None])[0]
    assert seen["overlap"] and seen["lexical_thread"] != threading.current_thread().name
    assert {h.id for h in hits} == {"a", "b", "c"}  # zz99 is only in "new": neither lane saw the later commit
    assert idx.commit == commit and lexical_ids(idx, "zz99") == []
    monkeypatch.undo()
    idx.pin()  # the newest commit: now both lanes see it
    assert lexical_ids(idx, "zz99") == ["new"]
    assert "new" in {h.id for h in hybrid_search(idx, ["zz99"], SearchParams(k=10), "hybrid", Q=vectors(99)[None])[0]}
    writer.close()
    idx.close()


def test_an_error_in_either_lane_propagates_and_the_dense_one_wins(tmp_path, monkeypatch):
    from pooledir import hybrid

    idx = fake_index(tmp_path / "i")
    add(idx, ["a", "b"], [1, 2])
    Q = vectors(1)[None]

    def fail():
        raise InputError("dense lane failed")

    seen = lanes_meet(monkeypatch, idx, fail)
    with pytest.raises(InputError, match="dense lane failed"):
        hybrid_search(idx, ["zz1"], SearchParams(k=3), "hybrid", Q=Q)
    assert seen["overlap"] and seen["lexical_finished"]  # waited for: the lexical lane ended before the call did

    monkeypatch.undo()

    def lexical_fails(*a, **kw):
        raise sqlite3.OperationalError("lexical lane failed")

    monkeypatch.setattr(hybrid, "lexical_hits", lexical_fails)
    for parallel in (True, False):
        with pytest.raises(sqlite3.OperationalError, match="lexical lane failed"):
            hybrid_search(idx, ["zz1"], SearchParams(k=3), "hybrid", Q=Q, parallel=parallel)
    monkeypatch.setattr(idx, "search_embeddings", lambda *a, **kw: fail())
    with pytest.raises(InputError, match="dense lane failed"):  # both failed: the dense error, as in turn
        hybrid_search(idx, ["zz1"], SearchParams(k=3), "hybrid", Q=Q)
    idx.close()
