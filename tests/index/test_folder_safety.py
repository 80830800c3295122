"""What an index folder never does: take a damaged store for a new one, remove a user's files, let two
builds share it, or refuse to be read from a read-only volume (issue 22, items 3, 4, 5 and 12)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from pooledir.errors import IndexCorruptError, InputError
from pooledir.index.folder import FolderBusyError
from pooledir.outdir import claim_output_folder
from pooledir.pooled_index import PooledIndex
from pooledir.search import SearchParams
from tests.engine import engine
from tests.index.test_folder import add, create, queries, results
from tests.pipes import CorpusPipe

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pooledir.cli"]


def files_of(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (but the lock and sqlite's side files) with its bytes."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".lock" and not p.name.endswith(("-wal", "-shm"))
    }


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, env=env, **kw)


def assert_one_error_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], r.stderr


@pytest.fixture()
def trained(tmp_path) -> Path:
    """A closed IVF-PQ index with a trained quantizer and two segments."""
    path = tmp_path / "i"
    with create(path, backend="ivfpq", train_min_vectors=200, nlist=4, pq_m=4) as idx:
        add(idx, [f"d{i}" for i in range(60)], list(range(60)))
        add(idx, ["x1", "x2"], [101, 102])
        assert idx.quantizer is not None and len(engine(idx).snapshot.rows) >= 1
    return path


# -- item 3: a damaged store is an error, never a new index -------------------------------------------------------
def _empty(db: Path) -> None:
    db.write_bytes(b"")


def _garbage(db: Path) -> None:
    db.write_bytes(np.random.default_rng(0).bytes(8192))


def _foreign(db: Path) -> None:  # a valid sqlite database, but not a pooledir store
    db.unlink()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (x)")
    conn.close()


@pytest.mark.parametrize("damage", [_empty, _garbage, _foreign])
def test_a_damaged_store_is_corruption_and_nothing_is_written(trained, damage):
    db = trained / "docs.sqlite"
    damage(db)
    before = files_of(trained)
    with pytest.raises(IndexCorruptError, match="docs.sqlite"):
        PooledIndex.open(trained, device="cpu")
    r = cli("info", str(trained))
    assert_one_error_line(r, "docs.sqlite")
    r = cli("delete", str(trained), "d1")
    assert_one_error_line(r, "docs.sqlite")
    assert files_of(trained) == before  # the segments and the quantizer are still there, the store unchanged


def test_an_empty_store_keeps_the_wal_beside_it(trained):
    """sqlite deletes the WAL of a 0-byte database it opens: the check comes before sqlite sees the file."""
    (trained / "docs.sqlite-wal").write_bytes(b"committed pages")
    (trained / "docs.sqlite").write_bytes(b"")
    with pytest.raises(IndexCorruptError, match="empty"):
        PooledIndex.open(trained, device="cpu")
    assert (trained / "docs.sqlite-wal").read_bytes() == b"committed pages"


# -- item 4: writes remove only their own files ---------------------------------------------------------------------
def test_writes_leave_the_users_files_and_remove_only_their_own(trained):
    user = {
        "quantizer.1.faiss.bak": b"my backup",
        "notes.bak": b"notes",
        "segments/NOTES.txt": b"keep me",
        "segments/00000001.faiss.bak": b"another backup",
    }
    for name, data in user.items():
        (trained / name).write_bytes(data)
    (trained / "segments" / "my-folder").mkdir()
    stale = [trained / "segments" / "99999999.faiss", trained / "segments" / "99999999.f16.tmp"]
    stale += [trained / "quantizer.77.faiss", trained / "quantizer.78.faiss.tmp"]
    for f in stale:  # what a crashed write leaves: the protocol's own names, referenced by no commit
        f.write_bytes(b"left by a crash")
    with PooledIndex.open(trained, device="cpu") as idx:
        add(idx, ["y"], [500])
        idx.delete(["d3"])
        idx.compact(retrain=True)  # drops every old segment file and the old quantizer
        q = engine(idx).snapshot.quantizer_id
    assert {n: (trained / n).read_bytes() for n in user} == user
    assert (trained / "segments" / "my-folder").is_dir()
    assert not any(f.exists() for f in stale)
    assert [p.name for p in trained.glob("quantizer.*.faiss")] == [f"quantizer.{q}.faiss"]


# -- item 5: one build at a time in a folder --------------------------------------------------------------------------
@contextmanager
def held(folder: Path):
    """Hold the folder's writer lock as another process would (its own descriptor)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def test_a_claim_is_refused_while_another_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    with held(out):
        (out / "manifest.json").write_text("{}")  # what the first build wrote so far
        with pytest.raises(FolderBusyError, match="another pooledir process"):
            with claim_output_folder(out):
                pass
        with pytest.raises(FolderBusyError):
            with claim_output_folder(out, resume=True):
                pass
        assert (out / "manifest.json").read_text() == "{}"
    (out / "manifest.json").unlink()
    with claim_output_folder(out) as claim:  # the lock file alone leaves the folder empty
        assert claim.created is None and not claim.resuming


def test_a_claim_that_created_the_folder_removes_it_when_nothing_was_written(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with claim_output_folder(out):
            raise RuntimeError("a bad option")
    assert not (tmp_path / "a").exists()


def test_a_second_index_run_into_the_same_new_folder_is_refused(tmp_path, tiny_ckpt):
    """Two `pooledir index` runs into one new folder: the first commits a chunk, then waits on a named pipe."""
    from tests.test_build import committed, write_corpus

    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, 30, np.random.default_rng(1))
    lines = corpus.read_text().splitlines(keepends=True)
    out = tmp_path / "new" / "idx"
    args = ["--out", str(out), "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--index", "flat"]
    args += ["--chunk-docs", "5"]
    pipe = CorpusPipe(tmp_path / "pipe.jsonl", lines, lambda n: n < 5)  # one chunk, then the build waits
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    first = subprocess.Popen(
        [*CLI, "index", str(pipe.path), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        while committed(out) < 5:  # polls state the first build commits; it cannot get past the pipe meanwhile
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        before = files_of(out)
        second = cli("index", str(corpus), *args)
        assert_one_error_line(second, "being written by another pooledir process")
        assert files_of(out) == before and committed(out) == 5
        first.send_signal(signal.SIGINT)
    finally:
        pipe.close()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err
    assert committed(out) == 5  # the first build's work is kept, for --resume


# -- item 12: a read-only folder is searched; writes say why they cannot ---------------------------------------------
READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pooledir.errors import InputError
    from pooledir.pooled_index import PooledIndex
    with PooledIndex.open(sys.argv[1], device="cpu") as idx:
        Q = np.load(sys.argv[2])
        hits = [[(h.id, round(h.score, 4)) for h in r] for r in idx.search_embeddings(Q)]
        info = idx.info()
        try:
            idx.delete(["d1"])
            refused = None
        except InputError as e:
            refused = str(e)
        print(json.dumps({"hits": hits, "documents": info["documents"], "refused": refused}))
    """
)


def as_reader(command: list[str], top: Path, how: str) -> list[str]:
    """``command`` run where the folders under ``top`` cannot be written.

    ``permissions``: as a user without write permission (this one, or nobody when this is root, for
    whom chmod does not bind); ``mount``: as root with ``top`` bind-mounted read-only (EROFS, as a
    `:ro` volume), in a mount namespace of its own.
    """
    if how == "mount":
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("a read-only bind mount needs root and unshare")
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("no mount namespaces here")
        return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(top), *command]
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root (chmod does not bind) and setpriv is missing")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]


@contextmanager
def read_only_copy(src: Path):
    """``src`` copied into a folder anyone may read and no one but root may write."""
    top = Path(tempfile.mkdtemp(prefix="pooledir-ro-"))
    try:
        top.chmod(0o755)
        dst = top / "idx"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
        for p in [dst, *dst.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        yield dst
    finally:
        for p in [top, *top.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(top)


def run_as_reader(command: list[str], ro: Path, how: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(as_reader(command, ro.parent, how), capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.mark.parametrize("how", ["permissions", "mount"])
@pytest.mark.parametrize("with_wal", [False, True])
def test_a_read_only_folder_is_searched_and_writes_say_read_only(trained, tmp_path, with_wal, how):
    """Without a WAL (an index closed cleanly) sqlite cannot make its -shm file there: `unable to open`."""
    Q = queries(3)
    idx = PooledIndex.open(trained, device="cpu")
    if with_wal:  # a commit still in the WAL, as a live index mounted read-only elsewhere has
        idx.doc_store.conn.execute("PRAGMA wal_autocheckpoint = 0")
        add(idx, ["in-wal"], [777])
        assert (trained / "docs.sqlite-wal").stat().st_size > 0
    expected, n = results(idx, Q, SearchParams()), len(idx)
    if not with_wal:
        idx.close()
        assert not (trained / "docs.sqlite-wal").exists()
    try:
        with read_only_copy(trained) as ro:
            np.save(ro.parent / "q.npy", Q)
            r = run_as_reader([sys.executable, "-c", READER, str(ro), str(ro.parent / "q.npy")], ro, how)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            assert [[tuple(h) for h in q] for q in got["hits"]] == expected
            assert got["documents"] == n
            assert "read-only file system" in got["refused"]
            info = run_as_reader([*CLI, "info", str(ro), "--json"], ro, how)
            assert info.returncode == 0 and json.loads(info.stdout)["documents"] == n, info.stderr
            assert_one_error_line(run_as_reader([*CLI, "delete", str(ro), "d1"], ro, how), "read-only file system")
            assert sorted(p.name for p in ro.iterdir()) == sorted(
                p.name for p in trained.iterdir() if p.name != ".lock"
            )
    finally:
        idx.close()


def test_a_store_is_never_created_by_opening_it(tmp_path):
    with pytest.raises(IndexCorruptError, match="missing"):
        from pooledir.store import DocStore

        DocStore(tmp_path / "docs.sqlite")
    assert not (tmp_path / "docs.sqlite").exists()
    with pytest.raises(InputError, match="already exists"):
        (tmp_path / "x.sqlite").write_bytes(b"")
        DocStore.create(tmp_path / "x.sqlite")
