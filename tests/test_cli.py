from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "pooledir.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_index_search_add_delete_info(tmp_path, tiny_ckpt, tiny_beir):
    out = tmp_path / "idx"
    r = run("index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--pool-factor", "2", "--device", "cpu")
    assert "40 documents" in r.stdout and "after pooling x2" in r.stdout
    r = run("search", out, "cancer cells", "vitamin", "-k", "3", "--json", "--device", "cpu")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["query"] for x in lines] == ["cancer cells", "vitamin"]
    assert all(len(x["results"]) == 3 for x in lines)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "n1", "text": "brain heart study"}) + "\n")
    assert "now holds 41" in run("add", out, new, "--device", "cpu").stdout
    assert "now holds 39" in run("delete", out, "n1", "c0").stdout
    info = json.loads(run("info", out, "--json").stdout)
    assert info["documents"] == 39 and info["pool_factor"] == 2


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_ckpt, tiny_beir):
    out = tmp_path / "idx"
    run("index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--index", "flat", "--device", "cpu")
    cases = [
        (("search", out, "q", "-k", "0"), "k=0 must be a positive integer"),
        (("search", tmp_path / "missing", "q"), "no index at"),
        (("delete", out, "nope"), "unknown document id(s): 'nope'"),
        (
            ("index", tiny_beir, "--out", tmp_path / "b", "--checkpoint", tiny_ckpt, "--pool-factor", "0"),
            "pool_factor=0",
        ),
        (("index", tmp_path / "nothing.jsonl", "--out", tmp_path / "c", "--checkpoint", tiny_ckpt), "corpus not found"),
    ]
    for args, msg in cases:
        r = run(*args, check=False)
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert json.loads(run("info", out, "--json").stdout)["documents"] == 40  # nothing lost


def test_help_is_fast_and_lists_commands():
    r = run("--help")
    for cmd in ("index", "search", "add", "delete", "info", "convert-checkpoint"):
        assert cmd in r.stdout


def test_convert_checkpoint_minilm(tmp_path):
    r = run("convert-checkpoint", "--minilm", tmp_path / "ck", "--dim", "64")
    assert "dim 64" in r.stdout
    meta = json.loads((tmp_path / "ck" / "artifact.metadata").read_text())
    assert meta["dim"] == 64 and meta["query_token_id"] == "[unused0]"


# -- in-process runs: the same main() as the console script, without a new interpreter per call -------------------
def cli(capsys, *args):
    """Run ``pooledir ARGS`` in this process; returns (exit code, stdout, stderr)."""
    from pooledir.cli import main

    capsys.readouterr()
    argv = sys.argv
    sys.argv = ["pooledir", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, expected, exit_code=2):
    """The exit code, and one message line after whatever progress bars were drawn; no traceback."""
    assert code == exit_code, err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and "doc/s" not in x]
    assert len(lines) == 1 and expected in lines[0], err


@pytest.fixture()
def built(tmp_path, tiny_ckpt, tiny_beir, capsys):
    out = tmp_path / "idx"
    code, _, err = cli(
        capsys, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--index", "flat", "--device", "cpu"
    )
    assert code == 0, err
    return out


def test_version(capsys):
    from pooledir import __version__

    assert cli(capsys, "--version")[:2] == (0, f"pooledir {__version__}\n")


def test_a_failed_index_leaves_nothing_that_blocks_the_retry(tmp_path, tiny_ckpt, tiny_beir, capsys):
    out = tmp_path / "new" / "idx"
    code, _, err = cli(
        capsys, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--pq-m", "7", "--device", "cpu"
    )
    one_error_line(code, err, "pq_m=7 must divide the vector dimension 16")
    assert not (tmp_path / "new").exists()  # both folders it made are gone
    # a folder that existed empty is kept, and only what the build wrote in it is removed
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(
        capsys, "index", tiny_beir, "--out", empty, "--checkpoint", tiny_ckpt, "--pq-m", "7", "--device", "cpu"
    )
    assert code == 2 and empty.is_dir() and not any(empty.iterdir())
    code, out_text, err = cli(capsys, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu")
    assert code == 0 and "40 documents" in out_text, err


def test_index_records_the_pq_shape_it_was_given(tmp_path, tiny_ckpt, tiny_beir, capsys):
    out = tmp_path / "idx"
    args = ("index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu", "--pq-m", "8")
    code, _, err = cli(capsys, *args, "--pq-nbits", "6")
    assert code == 0, err
    code, text, _ = cli(capsys, "info", out, "--json")
    config = json.loads(text)["config"]
    assert code == 0 and (config["pq_m"], config["pq_nbits"]) == (8, 6)
    code, _, err = cli(capsys, *args[:3], tmp_path / "bad", *args[4:], "--pq-nbits", "17")
    one_error_line(code, err, "pq_nbits=17 must be between 1 and 16")
    assert not (tmp_path / "bad").exists()  # refused before anything was made


def test_out_that_cannot_be_an_index_folder(tmp_path, tiny_ckpt, tiny_beir, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out, msg in [
        (afile, "is a file, not a folder"),
        (afile / "sub", "Not a directory"),
        (tiny_beir, "exists and is not empty"),
    ]:
        code, _, err = cli(capsys, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu")
        one_error_line(code, err, msg)
    assert afile.read_text() == "keep me" and (tiny_beir / "corpus.jsonl").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_without_write_permission(tmp_path, tiny_ckpt, tiny_beir, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = cli(capsys, "index", tiny_beir, "--out", locked / "idx", "--checkpoint", tiny_ckpt)
    one_error_line(code, err, "Permission denied")


def test_bad_corpus_files_are_one_line(tmp_path, built, capsys):
    cases = [
        (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n', "new.jsonl:2: not UTF-8 text"),
        (b'{"_id": "a", "text": "ok", "metadata": [1]}\n', "new.jsonl:1: field 'metadata' must be a JSON object"),
        (b'{"_id": "a", "text": "a\\ud800"}\n', "new.jsonl:1: document 'a': text is not valid Unicode"),
        (b'{"_id": [1, 2], "text": "ok"}\n', "must be a string or a number, got list"),
    ]
    for content, msg in cases:
        (tmp_path / "new.jsonl").write_bytes(content)
        code, _, err = cli(capsys, "add", built, tmp_path / "new.jsonl", "--device", "cpu")
        one_error_line(code, err, msg)
    code, out, _ = cli(capsys, "info", built, "--json")
    assert json.loads(out)["documents"] == 40


def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path, built, capsys, monkeypatch):
    from tests.test_pooled_index import disk_full_after

    disk_full_after(monkeypatch, 64)
    (tmp_path / "new.jsonl").write_text(json.dumps({"_id": "n1", "text": "brain heart study"}) + "\n")
    code, _, err = cli(capsys, "add", built, tmp_path / "new.jsonl", "--device", "cpu")
    one_error_line(code, err, ".faiss: No space left on device (free some space")
    monkeypatch.undo()
    assert not list(built.rglob("*.tmp"))
    code, out, _ = cli(capsys, "info", built, "--json")
    assert json.loads(out)["documents"] == 40


def test_a_file_size_limit_fails_the_write_instead_of_committing_a_truncated_file(tmp_path, built):
    """A real failed write (the OS refuses bytes past RLIMIT_FSIZE): faiss's own writer only printed it."""
    import resource

    from tests.conftest import random_text

    rng = np.random.default_rng(0)
    with open(tmp_path / "new.jsonl", "w") as f:
        for i in range(400):
            f.write(json.dumps({"_id": f"n{i}", "text": random_text(rng, 40)}) + "\n")
    segments = sorted(built.rglob("*.faiss"))
    limit = 64 * 1024  # above sqlite's files (and its 32 kB shared-memory file), below the new segment
    proc = subprocess.run(
        [sys.executable, "-m", "pooledir.cli", "add", str(built), str(tmp_path / "new.jsonl"), "--device", "cpu"],
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    one_error_line(proc.returncode, proc.stderr, "File too large")
    assert sorted(built.rglob("*.faiss")) == segments and not list(built.rglob("*.tmp"))
    info = json.loads(run("info", built, "--json").stdout)
    assert info["documents"] == 40 and info["commit"] == 1


def test_corrupt_indexes_are_one_line_for_every_command(built, capsys):
    import sqlite3

    with sqlite3.connect(built / "docs.sqlite") as conn:
        conn.execute("UPDATE meta SET value = 'two' WHERE key = 'commit'")
    code, _, err = cli(capsys, "info", built)
    one_error_line(code, err, "commit 'two' is not a number")
    with sqlite3.connect(built / "docs.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'commit'")
    vectors = next(built.rglob("*.faiss"))
    vectors.write_bytes(vectors.read_bytes()[:300])
    code, _, err = cli(capsys, "serve", built, "--port", "1")  # fails before any server starts
    one_error_line(code, err, "is corrupt or truncated")


def test_search_checks_queries_before_loading_the_model(built, capsys, monkeypatch):
    from pooledir import encoder

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the queries were checked")

    monkeypatch.setattr(encoder.ColBERTEncoder, "__init__", no_model)
    code, _, err = cli(capsys, "search", built, "fine", "  ")
    one_error_line(code, err, "query 1 is empty")


def test_search_prune_reaches_the_search_params(built, capsys, monkeypatch):
    from pooledir.pooled_index import PooledIndex

    seen = []
    real = PooledIndex.search

    def spy(self, queries, *args, params=None, **kwargs):
        seen.append(params)
        return real(self, queries, *args, params=params, **kwargs)

    monkeypatch.setattr(PooledIndex, "search", spy)
    for flags in ((), ("--prune",)):
        code, out, _ = cli(capsys, "search", built, "cancer", "-k", "2", "--json", *flags)
        assert code == 0 and len(json.loads(out.splitlines()[0])["results"]) == 2
    assert [p.prune for p in seen] == [False, True]


def test_info_names_the_device(built, capsys):
    code, out, _ = cli(capsys, "info", built)
    assert code == 0 and "device: cpu" in out


def test_long_documents_are_counted_and_can_be_split(tmp_path, tiny_ckpt, capsys):
    from tests.conftest import WORDS

    filler, needle = WORDS[: len(WORDS) // 2], " ".join(WORDS[len(WORDS) // 2 :][:10])
    rng = np.random.default_rng(0)
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as f:
        for i in range(40):
            f.write(json.dumps({"_id": f"d{i}", "text": " ".join(rng.choice(filler, 30))}) + "\n")
        tail = " ".join(rng.choice(filler, 400)) + " " + needle + " " + " ".join(rng.choice(filler, 10))
        f.write(json.dumps({"_id": "long", "text": tail}) + "\n")
    base = ("--checkpoint", tiny_ckpt, "--index", "flat", "--device", "cpu")
    code, out, err = cli(capsys, "index", corpus, "--out", tmp_path / "plain", *base)
    assert code == 0, err
    assert "1 documents were longer than doc_maxlen=64 tokens and were truncated (see --split-passages)" in out
    code, out, err = cli(capsys, "index", corpus, "--out", tmp_path / "split", "--split-passages", *base)
    assert code == 0, err
    assert out.startswith("41 documents (") and "were split into overlapping passages" in out
    code, out, _ = cli(capsys, "search", tmp_path / "split", needle, "-k", "3", "--json", "--device", "cpu")
    assert json.loads(out)["results"][0]["id"] == "long"
    code, out, _ = cli(capsys, "search", tmp_path / "plain", needle, "-k", "3", "--json", "--device", "cpu")
    assert "long" not in [r["id"] for r in json.loads(out)["results"]]


# -- Ctrl-C: a real signal to a real process -----------------------------------------------------------------------
def test_ctrl_c_during_index_exits_130_and_the_retry_works(tmp_path, tiny_ckpt, capsys):
    """SIGINT while the build waits for more input: it cannot have finished, however fast the machine is."""
    import signal
    import threading
    import time

    from tests.conftest import random_text
    from tests.pipes import CorpusPipe

    rng = np.random.default_rng(0)
    lines = [json.dumps({"_id": f"d{i}", "text": random_text(rng, 50)}) + "\n" for i in range(200)]
    corpus = tmp_path / "big.jsonl"
    corpus.write_text("".join(lines))
    pipe = CorpusPipe(tmp_path / "pipe.jsonl", lines, lambda written: written < 100)  # then no more, no EOF
    assert sum(map(len, lines[:100])) > 2 * 8192
    out = tmp_path / "idx"
    # one chunk, so nothing is committed before the signal: the build is removed, not kept for --resume
    args = ["index", pipe.path, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu", "--chunk-docs", "10000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pooledir.cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    err = bytearray()
    working = threading.Event()

    def read_stderr():
        while chunk := proc.stderr.read1(4096):
            err.extend(chunk)
            if b"index:" in err:  # the build's progress bar: the model is loaded and the build reads its input
                working.set()
        working.set()

    reader = threading.Thread(target=read_stderr)
    reader.start()
    try:
        assert working.wait(600) and proc.poll() is None, err.decode()
        # every line written and read: the build read past its first line (> one 8 KiB buffer), so it is in
        # its chunk loop, inside the clean-up's reach, and now waits for more input
        while pipe.written < 100 or pipe.unread():
            assert proc.poll() is None, err.decode()
            time.sleep(0.02)  # a poll interval: the build cannot finish meanwhile
        proc.send_signal(signal.SIGINT)
    finally:
        pipe.close()  # end of input after the signal, so no reading can block an exit
        proc.wait(120)
        reader.join(10)
    text = err.decode()
    assert proc.returncode == 130, text
    assert text.rstrip().splitlines()[-1] == "interrupted" and "Traceback" not in text
    assert not out.exists()  # the folder it made is gone, so the same command runs again
    args[1] = corpus
    code, stdout, err_text = cli(capsys, *args, "--limit", "50")
    assert code == 0 and "50 documents" in stdout, err_text


def test_index_reads_a_named_pipe_once_and_ends(tmp_path, tiny_ckpt, capsys):
    """A corpus from a pipe is read once: no count for the bar, no second pass for the long-document count."""
    from tests.conftest import random_text
    from tests.pipes import CorpusPipe

    rng = np.random.default_rng(3)
    lines = [json.dumps({"_id": f"p{i}", "text": random_text(rng, 20)}) + "\n" for i in range(30)]
    pipe = CorpusPipe(tmp_path / "pipe.jsonl", lines, lambda written: True, end=True)
    try:
        code, out, err = cli(
            capsys,
            "index",
            pipe.path,
            "--out",
            tmp_path / "idx",
            "--checkpoint",
            tiny_ckpt,
            "--index",
            "flat",
            "--device",
            "cpu",
        )
    finally:
        pipe.close()
    assert code == 0 and out.startswith("30 documents"), err


def test_index_with_a_pool_threshold(tmp_path, tiny_ckpt, tiny_beir, capsys):
    out = tmp_path / "idx"
    base = ("index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--index", "flat", "--device", "cpu")
    code, _, err = cli(capsys, *base, "--pool-threshold", "0.3", "--pool-factor", "2")
    one_error_line(code, err, "--pool-threshold 0.3 and --pool-factor 2 both choose how far documents are pooled")
    assert not out.exists()
    code, text, err = cli(capsys, *base, "--pool-threshold", "0.3")
    assert code == 0 and "after pooling <= 0.3 (adaptive)" in text, err
    info = json.loads(cli(capsys, "info", out, "--json")[1])
    assert info["pool_threshold"] == 0.3 and info["config"]["pool_threshold"] == 0.3
    code, _, err = cli(capsys, *base, "--pool-factor", "2", "--resume")
    one_error_line(code, err, "pools <= 0.3, not x2; resume it without --pool-factor/--pool-threshold")
    code, text, err = cli(capsys, *base, "--pool-threshold", "0.3", "--resume")
    assert code == 0 and "already in the index" in text, err


def test_damaged_segment_or_store_is_one_line_on_every_command_and_nothing_is_written(tmp_path, built, capsys):
    """Issue 22, item 11: bit rot in a segment or in a page of docs.sqlite; no traceback, no write goes in."""
    from tests.index.test_segments_corruption import rot, snapshot_of

    (tmp_path / "new.jsonl").write_text(json.dumps({"_id": "n1", "text": "brain heart study"}) + "\n")
    commands = [
        ("info", built),
        ("search", built, "cancer", "--device", "cpu"),
        ("add", built, tmp_path / "new.jsonl", "--device", "cpu"),
        ("delete", built, "c1"),
        ("compact", built),
        ("serve", built, "--port", "1"),
    ]
    pristine = {p: p.read_bytes() for p in built.rglob("*") if p.is_file()}
    seg = next(built.rglob("*.faiss"))
    for damaged, offset, n, message in [(seg, seg.stat().st_size // 2, 64, "is corrupt: its bytes no longer match")]:
        rot(damaged, offset, n)
        before = snapshot_of(built)
        for args in commands:
            code, _, err = cli(capsys, *args)
            one_error_line(code, err, message)
        assert snapshot_of(built) == before
        for p, data in pristine.items():
            p.write_bytes(data)
    rot(built / "docs.sqlite", 100, 2000)
    for args in commands:
        code, _, err = cli(capsys, *args)
        one_error_line(code, err, f"{built}/docs.sqlite is corrupt: ")


def test_a_full_disk_at_the_sqlite_commit_is_one_line_and_loses_nothing(tmp_path, built, capsys, monkeypatch):
    from pooledir import store

    real = store.DocStore.__init__

    def small_disk(self, path):  # sqlite's own "database or disk is full" (SQLITE_FULL), at the commit
        real(self, path)
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count = {pages + 1}")

    monkeypatch.setattr(store.DocStore, "__init__", small_disk)
    with open(tmp_path / "new.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"_id": f"n{i}", "text": "brain heart study " * 300}) + "\n")
    segments = sorted(built.rglob("*.faiss"))
    code, _, err = cli(capsys, "add", built, tmp_path / "new.jsonl", "--device", "cpu")
    one_error_line(code, err, "no space left on device for ")
    assert "nothing of this write was committed" in err
    monkeypatch.undo()
    assert sorted(built.rglob("*.faiss")) == segments
    code, out, _ = cli(capsys, "info", built, "--json")
    assert json.loads(out)["documents"] == 40


@pytest.fixture()
def no_server(monkeypatch):
    """uvicorn.run records (the app, its keywords, the indexes served) instead of serving.

    One process is handed an app made from the settings record (``create_app`` records it here); worker
    processes load the service by name and read the environment, which is restored afterwards.
    """
    uvicorn = pytest.importorskip("uvicorn")
    service_main = pytest.importorskip("pooledir.service.main")
    for key in ("POOLEDIR_INDEXES", "POOLEDIR_DEVICE", "POOLEDIR_QUERY_BACKEND", "POOLEDIR_DOCUMENT_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    calls = []

    def run(app, **kw):
        served = json.loads(os.environ["POOLEDIR_INDEXES"]) if isinstance(app, str) else app.settings.indexes
        calls.append((app, kw, [str(p) for p in served]))

    monkeypatch.setattr(service_main, "create_app", lambda settings=None: SimpleNamespace(settings=settings))
    monkeypatch.setattr(uvicorn, "run", run)
    return calls


def test_serve_checks_its_settings_port_and_indexes_before_starting(tmp_path, built, capsys, monkeypatch, no_server):
    """Issue 22, items 11 and 13: each a line and exit 2 before any model loads or any port is bound.

    A checkpoint of another dimension: see test_pooledir_checkpoint_is_the_checkpoint_used_where_none_is_given_or_found.
    """
    import socket

    (tmp_path / "a").symlink_to(built)
    (tmp_path / "b").symlink_to(built)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            ((built, "--port", "99999"), {}, "--port 99999 is not a TCP port; pass 1..65535"),
            ((built, "--port", "0"), {}, "--port 0 is not a TCP port"),
            ((built, "--port", "8123"), {"POOLEDIR_MAX_K": "abc"}, "POOLEDIR_MAX_K='abc' is not valid"),
            ((tmp_path / "a", tmp_path / "b"), {}, "are the same index folder"),
            ((built, "--port", str(port)), {}, f"port {port} is in use on 127.0.0.1"),
        ]
        for args, env, message in cases:
            with monkeypatch.context() as m:
                for key, value in env.items():
                    m.setenv(key, value)
                code, _, err = cli(capsys, "serve", *args)
            one_error_line(code, err, message)
    assert no_server == []


def test_serve_names_a_symlinked_index_by_the_link(tmp_path, built, capsys, no_server, monkeypatch):
    from pooledir.cli import serve as serve_module

    # 8123 may be taken on this machine
    monkeypatch.setattr(serve_module, "_check_port_free", lambda host, port: None, raising=False)
    link = tmp_path / "served-name"
    link.symlink_to(built)
    code, _, err = cli(capsys, "serve", link, "--port", "8123")
    assert code == 0, err
    (_, kwargs, indexes) = no_server[0]
    assert kwargs["port"] == 8123 and [Path(p).name for p in indexes] == ["served-name"]


def test_serve_hands_one_process_its_settings_as_a_record_and_workers_the_environment(
    tmp_path, built, capsys, no_server, monkeypatch
):
    """Issue 18, item 6: no environment variables where the process boundary allows (on main, always them)."""
    from pooledir.cli import serve as serve_module
    from pooledir.service.settings import Settings

    monkeypatch.setattr(serve_module, "_check_port_free", lambda host, port: None, raising=False)
    monkeypatch.setenv("POOLEDIR_MAX_K", "77")  # what no option sets still comes from the environment
    args = ("serve", built, "--port", "8123", "--device", "cpu", "--query-backend", "torch")
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    app, kwargs, indexes = no_server[0]
    assert isinstance(app.settings, Settings) and "workers" not in kwargs
    assert (app.settings.device, app.settings.query_backend, app.settings.max_k) == ("cpu", "torch", 77)
    assert indexes == [str(built)] and "POOLEDIR_INDEXES" not in os.environ and "POOLEDIR_DEVICE" not in os.environ

    code, _, err = cli(capsys, *args, "--workers", "2")
    assert code == 0, err
    app, kwargs, indexes = no_server[1]
    assert (app, kwargs["factory"], kwargs["workers"]) == ("pooledir.service.main:create_app", True, 2)
    assert indexes == [str(built)] and os.environ["POOLEDIR_DEVICE"] == "cpu"
    assert Settings().query_backend == "torch"  # each worker reads the same settings from the environment


def test_pooledir_checkpoint_is_the_checkpoint_used_where_none_is_given_or_found(
    tmp_path, tiny_ckpt, tiny_beir, capsys, monkeypatch, no_server
):
    """Issue 18, item 7: one meaning in the CLI and the service (on main, a build's default here, an override there)."""
    import shutil

    from pooledir.checkpoint import convert_checkpoint
    from pooledir.cli import serve as serve_module
    from tests.conftest import make_tiny_bert

    monkeypatch.setattr(serve_module, "_check_port_free", lambda host, port: None, raising=False)
    ckpt, out = tmp_path / "ckpt", tmp_path / "idx"
    shutil.copytree(tiny_ckpt, ckpt)
    other = convert_checkpoint(make_tiny_bert(tmp_path / "bert"), tmp_path / "ck8", dim=8, doc_maxlen=64)
    search = ("search", out, "title 3", "-k", "5", "--json", "--device", "cpu", "--query-backend", "torch")

    monkeypatch.setenv("POOLEDIR_CHECKPOINT", str(ckpt))
    code, _, err = cli(capsys, "index", tiny_beir, "--out", out, "--index", "flat", "--device", "cpu")
    assert code == 0, err  # a build given no --checkpoint builds with it
    assert json.loads(cli(capsys, "info", out, "--json")[1])["checkpoint"] == str(ckpt.resolve())
    code, expected, err = cli(capsys, *search)
    assert code == 0 and len(json.loads(expected)["results"]) == 5, err

    # the index's own checkpoint is on this machine: the variable never replaces it, for search or serve
    monkeypatch.setenv("POOLEDIR_CHECKPOINT", str(other))
    assert cli(capsys, *search)[:2] == (0, expected)
    code, _, err = cli(capsys, "serve", out, "--port", "8123")
    assert code == 0 and len(no_server) == 1, err

    # built elsewhere (its recorded folder is not here): the index reads its weights from the variable
    moved = tmp_path / "mounted"
    ckpt.rename(moved)
    monkeypatch.delenv("POOLEDIR_CHECKPOINT")
    one_error_line(*cli(capsys, *search)[::2], "checkpoint not found")
    monkeypatch.setenv("POOLEDIR_CHECKPOINT", str(moved))
    assert cli(capsys, *search)[:2] == (0, expected)
    monkeypatch.setenv("POOLEDIR_CHECKPOINT", str(other))  # ... and is refused when it makes other vectors
    one_error_line(*cli(capsys, *search)[::2], "the encoder makes 8-d vectors; this index holds 16-d ones")
    one_error_line(*cli(capsys, "serve", out)[::2], "holds 16-d vectors but $POOLEDIR_CHECKPOINT")
    assert len(no_server) == 1


def test_the_help_says_what_pooledir_checkpoint_means():
    meaning = "$POOLEDIR_CHECKPOINT is the checkpoint to use where none is given or found"
    for command in ([], ["index"], ["search"], ["add"], ["serve"]):
        assert meaning in " ".join(run(*command, "--help").stdout.split())


def test_help_keeps_the_extras_in_brackets():
    """Issue 22, item 14: rich markup swallowed [distributed] and [onnx]."""
    assert "pooledir[distributed]" in run("index", "--help").stdout.replace("\n", " ").replace("  ", "")
    assert "pooledir[onnx]" in run("search", "--help").stdout


def test_counts_are_pluralised_and_a_passage_index_says_documents_and_passages(tmp_path, built, tiny_ckpt, capsys):
    (tmp_path / "one.jsonl").write_text(json.dumps({"_id": "n1", "text": "brain heart study"}) + "\n")
    code, out, err = cli(capsys, "add", built, tmp_path / "one.jsonl", "--device", "cpu")
    assert code == 0 and "added 1 document; the index now holds 41 documents" in out, err
    code, out, err = cli(capsys, "delete", built, "n1")
    assert code == 0 and "deleted 1 document; the index now holds 40 documents" in out, err

    from tests.conftest import WORDS

    rng = np.random.default_rng(0)
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as f:
        for i in range(5):
            f.write(json.dumps({"_id": f"d{i}", "text": " ".join(rng.choice(WORDS, 20))}) + "\n")
        f.write(json.dumps({"_id": "long", "text": " ".join(rng.choice(WORDS, 300))}) + "\n")
    split = tmp_path / "split"
    code, out, err = cli(
        capsys, "index", corpus, "--out", split, "--checkpoint", tiny_ckpt, "--index", "flat", "--split-passages"
    )
    assert code == 0, err
    assert json.loads(cli(capsys, "info", split, "--json")[1])["documents"] == 6  # documents, not rows
    rows = int(re.match(r"6 documents \((\d+) passages\): ", out).group(1))
    assert rows > 6  # the long document is several passage rows
    held = f"6 documents ({rows} passages)"
    assert out.startswith(f"{held}: ")
    assert cli(capsys, "info", split)[1].startswith(f"{held}: ")
    code, out, err = cli(capsys, "add", split, tmp_path / "one.jsonl", "--device", "cpu")
    assert code == 0 and f"added 1 document; the index now holds 7 documents ({rows + 1} passages)" in out, err
    code, out, err = cli(capsys, "delete", split, "long")
    assert code == 0 and "deleted 1 document; the index now holds 6 documents (6 passages)" in out, err


def test_a_format_version_of_the_wrong_type_says_so(built, capsys):
    manifest = json.loads((built / "manifest.json").read_text())
    (built / "manifest.json").write_text(json.dumps(manifest | {"format_version": "2"}))
    code, _, err = cli(capsys, "info", built)
    one_error_line(code, err, 'has format_version "2" (a string), this pooledir reads 2')


def test_encode_checks_out_before_the_model_and_leaves_nothing_on_failure(tmp_path, tiny_beir, capsys, monkeypatch):
    from pooledir import encoder

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    with monkeypatch.context() as m:
        m.setattr(encoder.ColBERTEncoder, "__init__", lambda *a, **kw: pytest.fail("the model loaded first"))
        for out, message in [(afile, "is a file; pick a folder for the shards"), (tmp_path / "full", "is not empty")]:
            code, _, err = cli(capsys, "encode", tiny_beir, "--out", out, "--checkpoint", tmp_path / "ck")
            one_error_line(code, err, message)
    assert afile.read_text() == "keep me" and (tmp_path / "full" / "notes.txt").read_text() == "keep me"
    out = tmp_path / "new" / "shards"
    code, _, err = cli(capsys, "encode", tiny_beir, "--out", out, "--checkpoint", tmp_path / "no-such-checkpoint")
    one_error_line(code, err, "no-such-checkpoint")
    assert not (tmp_path / "new").exists()  # the folders it made for the failed encode are gone


def test_an_encode_that_fails_after_it_started_removes_the_folders_it_made(tmp_path, tiny_ckpt, capsys):
    """The shard folder was claimed with a context manager never entered: nothing was removed (mypy found it)."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"_id": "d0", "text": "cancer cells"}) + "\n{not json\n")
    out = tmp_path / "new" / "shards"
    code, _, err = cli(capsys, "encode", corpus, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu")
    assert code == 2 and "error: " in err and "malformed JSON" in err, err
    assert not (tmp_path / "new").exists()  # the folders it made for the failed encode are gone
