from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest

from pooledir import build
from pooledir.build import BuildConfig, build_index
from pooledir.corpus import Document, iter_corpus
from pooledir.errors import InputError, PooledirError
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams
from tests.pipes import CorpusPipe


def new_index(path, encoder, **config):
    return PooledIndex.create(path, config=IndexConfig(**config), device="cpu", encoder=encoder)


def assert_same_index(a: PooledIndex, b: PooledIndex, ids):
    """Same documents (every expected id, nothing else) and the same vectors before and after pooling."""
    assert len(a) == len(b) == len(ids)
    for i in ids:
        assert a.get(i) == b.get(i)
    ia, ib = a.info(), b.info()
    assert (ia["vectors"], ia["vectors_before_pooling"]) == (ib["vectors"], ib["vectors_before_pooling"])


def test_streamed_build_equals_one_add(tmp_path, tiny_encoder, tiny_docs):
    bulk = new_index(tmp_path / "bulk", tiny_encoder, backend="flat")
    bulk.add(tiny_docs)
    streamed = new_index(tmp_path / "stream", tiny_encoder, backend="flat")
    report = build_index(iter(tiny_docs), streamed, BuildConfig(chunk_docs=17), show_progress=False)
    assert (report.documents, report.added, report.skipped, report.commits) == (120, 120, 0, 8)
    assert report.vectors == streamed.info()["vectors"] and report.tokens == streamed.info()["vectors_before_pooling"]
    assert_same_index(streamed, bulk, [d.id for d in tiny_docs])
    Q = tiny_encoder.encode_queries(["protein expression in brain cells", tiny_docs[7].text])
    exact = SearchParams(k=10, nprobe=1, candidates_per_token=1000, rerank=120)
    for a, b in zip(streamed.search_embeddings(Q, exact), bulk.search_embeddings(Q, exact)):
        assert [h.id for h in a] == [h.id for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


def test_limit_and_empty_input(tmp_path, tiny_encoder, tiny_docs):
    idx = new_index(tmp_path / "i", tiny_encoder, backend="flat")
    build_index(iter(tiny_docs), idx, BuildConfig(chunk_docs=7, limit=30), show_progress=False)
    assert len(idx) == 30 and idx.get("d29").id == "d29"
    with pytest.raises(InputError, match="no documents"):
        build_index(iter([]), new_index(tmp_path / "e", tiny_encoder), show_progress=False)
    with pytest.raises(InputError, match="chunk_docs=0"):
        build_index(iter(tiny_docs), idx, BuildConfig(chunk_docs=0))


def test_memory_is_bounded_by_one_chunk(tmp_path, tiny_encoder, tiny_docs, monkeypatch):
    """A corpus 12 chunks long: the build never holds more than one chunk (plus the IVF-PQ training buffer)."""
    chunk_docs, train_sample = 10, 300
    alive: weakref.WeakSet = weakref.WeakSet()
    read = [0]
    calls = []  # per write: (documents, vectors, documents read but not committed, Chunk objects alive)
    committed = [0]

    def corpus():
        for d in tiny_docs:
            read[0] += 1
            yield d

    real_init, real_write = build.Chunk.__init__, PooledIndex.write

    def tracked_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        alive.add(self)

    def tracked_write(self, batch):
        calls.append((len(batch.documents), batch.n_vectors, read[0] - committed[0], len(alive)))
        out = real_write(self, batch)
        committed[0] += len(batch.documents)
        return out

    monkeypatch.setattr(build.Chunk, "__init__", tracked_init)
    monkeypatch.setattr(PooledIndex, "write", tracked_write)
    idx = new_index(tmp_path / "i", tiny_encoder, backend="ivfpq", train_sample=train_sample)
    report = build_index(corpus(), idx, BuildConfig(chunk_docs=chunk_docs), show_progress=False)
    assert len(idx) == 120 and committed[0] == 120 and len(calls) >= 6
    first, rest = calls[0], calls[1:]
    # the first add holds the training buffer: chunks until train_sample vectors, at most one chunk past it
    max_chunk_vectors = max(v for _, v, _, _ in rest)
    assert train_sample <= first[1] < train_sample + max_chunk_vectors
    assert first[2] == first[0]
    # afterwards: one chunk of documents read ahead of the index, one Chunk alive, one chunk's vectors per add
    max_tokens = 64  # the tiny checkpoint's doc_maxlen: no document has more token vectors
    for docs, vectors, pending, n_alive in rest:
        assert docs <= chunk_docs and pending <= chunk_docs and n_alive <= 1
        assert vectors <= docs * max_tokens
    assert report.max_vectors_held <= first[1] + 2 * max_tokens * chunk_docs


def crashing(docs, after):
    for i, d in enumerate(docs):
        if i == after:
            raise RuntimeError("simulated crash")
        yield d


def test_resume_skips_what_was_committed(tmp_path, tiny_encoder, tiny_docs):
    ref = new_index(tmp_path / "ref", tiny_encoder, backend="ivfpq", train_sample=200)
    build_index(iter(tiny_docs), ref, BuildConfig(chunk_docs=10), show_progress=False)
    idx = new_index(tmp_path / "i", tiny_encoder, backend="ivfpq", train_sample=200)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(crashing(tiny_docs, 75), idx, BuildConfig(chunk_docs=10), show_progress=False)
    assert 0 < len(idx) <= 70 and len(idx) % 10 == 0  # whole chunks only
    committed = len(idx)
    idx = PooledIndex.open(tmp_path / "i", device="cpu", encoder=tiny_encoder)
    # a different chunk size on resume is fine: documents are matched by id
    report = build_index(iter(tiny_docs), idx, BuildConfig(chunk_docs=13), resume=True, show_progress=False)
    assert (report.skipped, report.added, report.documents) == (committed, 120 - committed, 120)
    assert_same_index(idx, ref, [d.id for d in tiny_docs])
    again = build_index(iter(tiny_docs), idx, BuildConfig(chunk_docs=13), resume=True, show_progress=False)
    assert (again.skipped, again.added) == (120, 0)


def test_resume_refuses_another_input(tmp_path, tiny_encoder, tiny_docs):
    idx = new_index(tmp_path / "i", tiny_encoder, backend="flat")
    with pytest.raises(RuntimeError):
        build_index(crashing(tiny_docs, 45), idx, BuildConfig(chunk_docs=10), show_progress=False)
    assert len(idx) == 40
    with pytest.raises(InputError, match="cannot resume: document 0 of the input"):
        build_index(iter(tiny_docs[::-1]), idx, BuildConfig(chunk_docs=10), resume=True, show_progress=False)
    with pytest.raises(InputError, match="never came up"):
        build_index(iter(tiny_docs[:30]), idx, BuildConfig(chunk_docs=10), resume=True, show_progress=False)
    assert len(idx) == 40  # the refused resumes added nothing and lost nothing
    with pytest.raises(InputError, match="already in the index"):  # without resume, a committed id is a duplicate
        build_index(iter(tiny_docs), idx, BuildConfig(chunk_docs=10), show_progress=False)


def test_duplicate_ids_fail_and_keep_what_was_committed(tmp_path, tiny_encoder, tiny_docs):
    idx = new_index(tmp_path / "i", tiny_encoder, backend="flat")
    same_chunk = tiny_docs[:5] + [Document("d2", "again")] + tiny_docs[5:20]
    with pytest.raises(InputError, match=r"duplicate document id 'd2' \(again at document 5"):
        build_index(iter(same_chunk), idx, BuildConfig(chunk_docs=10), show_progress=False)
    assert len(idx) == 0
    later_chunk = tiny_docs[:25] + [Document("d3", "again")]
    with pytest.raises(InputError, match="'d3' .* already in the index"):
        build_index(iter(later_chunk), idx, BuildConfig(chunk_docs=10), show_progress=False)
    assert len(idx) == 20 and idx.get("d19").id == "d19"


# -- the command line ------------------------------------------------------------------------------------------
CLI = [sys.executable, "-m", "pooledir.cli"]


def write_corpus(path, n, rng):
    from tests.conftest import random_text

    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"_id": f"c{i}", "title": f"t{i}", "text": random_text(rng, 30)}) + "\n")


def committed(out) -> int:
    """Documents committed in ``out`` as another process sees them (0 while it cannot be opened yet)."""
    try:
        with PooledIndex.open(out, device="cpu") as idx:
            return len(idx)
    except (PooledirError, OSError, RuntimeError):
        return 0


#: lines the pipe runs ahead of what the build has committed: enough for a training sample and a chunk,
#: well short of the corpus, so a build stopped at a target has always read only part of its input
AHEAD = 200


def start_and_stop(args, corpus_lines, pipe_path, out, sig, at_least):
    """Run ``pooledir index`` on a pipe and send ``sig`` once ``at_least`` documents are committed.

    The pipe gives the build at most ``AHEAD`` lines beyond what it has committed, and none after the
    target is reached: the build is stopped in the middle of its input whatever the machine's speed.
    Returns (exit code, stderr, lines written).
    """
    seen = [0]

    def may_write(written: int) -> bool:  # opens the index only when the pipe is AHEAD lines ahead
        if written >= seen[0] + AHEAD:
            seen[0] = max(seen[0], committed(out))
        return written < seen[0] + AHEAD

    pipe = CorpusPipe(pipe_path, corpus_lines, may_write)
    command = CLI + [args[0], str(pipe_path), *args[2:]]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a hung build shows its threads' stacks (SIGABRT below)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while committed(out) < at_least:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)  # a poll interval: the build cannot get past the pipe meanwhile
        written = pipe.stop()
        os.kill(proc.pid, sig)
    finally:
        pipe.close()
        try:
            _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr
            _, stderr = proc.communicate()
            pytest.fail(f"the build did not end after {sig!r}; its stacks:\n{stderr}")
    return proc.returncode, stderr, written


def test_cli_ctrl_c_then_kill_9_then_resume(tmp_path, tiny_ckpt, tiny_encoder):
    """Stopped twice (Ctrl-C, then kill -9 mid-build), resumed: the same index as an uninterrupted build."""
    corpus = tmp_path / "corpus.jsonl"
    n_docs = 600
    write_corpus(corpus, n_docs, np.random.default_rng(5))
    lines = corpus.read_text().splitlines(keepends=True)
    out = tmp_path / "idx"
    args = ["index", str(corpus), "--out", str(out), "--checkpoint", str(tiny_ckpt), "--device", "cpu"]
    args += ["--chunk-docs", "20", "--train-sample", "1000"]

    rc, stderr, written = start_and_stop(args, lines, tmp_path / "a.jsonl", out, signal.SIGINT, 1)
    assert rc == 130, stderr
    first = committed(out)
    assert 0 < first <= written < n_docs
    lines_err = stderr.rstrip().splitlines()
    assert lines_err[-1] == "interrupted" and lines_err[-2].endswith("--resume"), stderr
    assert "continue with: pooledir index" in lines_err[-2], stderr
    r = subprocess.run(CLI + args, capture_output=True, text=True)  # without --resume the folder is refused
    assert r.returncode == 2 and "already holds an index" in r.stderr

    rc, _, written = start_and_stop(args + ["--resume"], lines, tmp_path / "b.jsonl", out, signal.SIGKILL, first + 20)
    assert rc == -signal.SIGKILL
    second = committed(out)
    assert first < second <= written < n_docs, "the build must be killed in the middle"

    r = subprocess.run(CLI + args + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resumed: {second} documents were already in the index" in r.stdout

    ref = new_index(tmp_path / "ref", tiny_encoder, train_sample=1000)
    build_index(iter_corpus(corpus), ref, BuildConfig(chunk_docs=20), show_progress=False)
    with PooledIndex.open(out, device="cpu") as idx:
        assert_same_index(idx, ref, [f"c{i}" for i in range(n_docs)])


def test_a_passage_index_is_built_by_the_index_and_not_resumed(tmp_path, tiny_encoder, tiny_docs):
    """Long documents are split by PooledIndex.add; the streamed build hands it whole documents."""
    long = Document("long", " ".join(["cell cancer"] * 200))
    idx = new_index(tmp_path / "p", tiny_encoder, backend="flat", passage_stride=30)
    report = build_index([*tiny_docs[:20], long], idx, BuildConfig(chunk_docs=8), show_progress=False)
    assert report.added == 21 and len(idx) == 21 and idx.n_rows > 21  # the long document is several rows
    assert idx.get("long") == long
    with pytest.raises(InputError, match="resuming is not supported for an index that splits"):
        build_index([*tiny_docs[:20], long], idx, BuildConfig(chunk_docs=8), resume=True, show_progress=False)


def test_the_bar_names_each_stage_and_what_is_committed_and_faiss_is_quiet(tmp_path, tiny_encoder, tiny_docs, capfd):
    """Issue 22, item 14: no silent 0% while the training sample buffers, no silent 100% while IVF-PQ trains."""
    idx = new_index(tmp_path / "i", tiny_encoder, train_sample=600, train_min_vectors=300, nlist=4)
    capfd.readouterr()
    report = build_index(iter(tiny_docs), idx, BuildConfig(chunk_docs=40), show_progress=True)
    err = capfd.readouterr().err
    assert idx.info()["backend"]["trained"] and report.added == len(tiny_docs)
    assert "encode; committed 0 documents, 0 vectors" in err
    assert "pool; committed 0 documents, 0 vectors, 40 held for training" in err
    assert "train IVF-PQ on " in err and ", write; committed 0 documents" in err
    assert f"done; committed {len(tiny_docs)} documents, {report.vectors:,} vectors" in err
    assert "WARNING clustering" not in err  # faiss's raw C++ warning about a small training sample


def test_the_tokenizer_does_not_warn_about_long_texts(tiny_encoder, monkeypatch):
    """Texts are clipped to doc_maxlen (and counted) by pooledir: transformers' own warning only alarms users."""
    from transformers import tokenization_utils_base

    warnings = []
    monkeypatch.setattr(tokenization_utils_base.logger, "warning", lambda *a, **kw: warnings.append(a))
    monkeypatch.setattr(tiny_encoder.tokenizer, "model_max_length", 8)
    ids = tiny_encoder.tokenizer("cancer cells " * 40)["input_ids"]
    assert len(ids) > 8 and warnings == []
