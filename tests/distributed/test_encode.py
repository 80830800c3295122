"""Distributed encode on a local Ray cluster: the same shards as one process, and a killed actor loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pooledir.corpus import iter_corpus
from pooledir.shards import iter_shards, read_shard_manifest
from tests.distributed.conftest import SHARDS_CONFIG
from tests.test_package import ROOT

pytestmark = pytest.mark.slow


def run_cli(argv):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pooledir.cli", *argv], capture_output=True, text=True, env=env)


def assert_same_shards(a, b):
    ma, mb = read_shard_manifest(a), read_shard_manifest(b)
    assert ma.spec == mb.spec
    assert ma.complete and mb.complete and ma.end == mb.end
    assert [(s.number, s.start, s.documents, s.ids_sha256) for s in ma.shards] == [
        (s.number, s.start, s.documents, s.ids_sha256) for s in mb.shards
    ]
    for x, y in zip(iter_shards(a), iter_shards(b)):
        assert [d.id for d in x.documents()] == [d.id for d in y.documents()]
        assert [d.text for d in x.documents()] == [d.text for d in y.documents()]
        assert np.array_equal(x.lengths, y.lengths) and np.array_equal(x.n_tokens, y.n_tokens)
        np.testing.assert_allclose(np.asarray(x.vectors, np.float32), np.asarray(y.vectors, np.float32), atol=2e-3)


def test_plan_finds_each_shards_offset(small_corpus):
    from pooledir.distributed.encode import plan_shards, read_shard_documents

    plan = plan_shards(small_corpus, 8)
    assert [(t.start, t.documents) for t in plan] == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 4)]
    every = [d.id for t in plan for d in read_shard_documents(small_corpus, t)]
    assert every == [d.id for d in iter_corpus(small_corpus)]
    assert [(t.start, t.documents) for t in plan_shards(small_corpus, 8, limit=10)] == [(0, 8), (8, 2)]


def test_ray_encode_equals_single_process_and_a_killed_actor_loses_nothing(
    ray_cluster, tmp_path, tiny_ckpt, small_corpus, small_shards
):
    from pooledir.distributed.encode import encode_corpus_ray

    out, marker = tmp_path / "shards", tmp_path / "killed"
    report = encode_corpus_ray(
        small_corpus, out, tiny_ckpt, SHARDS_CONFIG, actors=2, device="cpu", show_progress=False, fault_marker=marker
    )
    assert report.documents == report.encoded == 36 and report.shards_written == [0, 1, 2, 3, 4]
    assert marker.exists()  # an actor did kill itself in the middle of a shard
    assert report.abandoned_tries == 1  # its try was abandoned, its temporary files removed
    assert_same_shards(out, small_shards)
    assert not list(out.glob("*.tmp"))


def test_cli_resume_on_the_running_cluster_skips_completed_shards(ray_cluster, tmp_path, small_corpus, small_shards):
    """`pooledir encode --ray --address ... --resume`: a second driver joins the session's cluster."""
    import shutil

    out = tmp_path / "shards"
    shutil.copytree(small_shards, out)
    for name in ("shard-00001.json", "shard-00004.json", "manifest.json", "end.json"):
        (out / name).unlink()  # two shards "not written yet"
    address = ray_cluster.get_runtime_context().gcs_address
    argv = ["encode", str(small_corpus), "--out", str(out), "--resume", "--shard-docs", "8", "--chunk-docs", "3"]
    r = run_cli([*argv, "--device", "cpu", "--ray", "--address", address, "--actors", "1"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "encoded 12 documents into 2 shards with 1 Ray actors" in r.stdout
    assert "3 shards were already complete" in r.stdout
    assert_same_shards(out, small_shards)


def test_a_bad_corpus_line_is_one_clear_error(ray_cluster, tmp_path, tiny_ckpt, small_corpus):
    from pooledir.distributed.encode import encode_corpus_ray
    from pooledir.errors import InputError

    corpus = tmp_path / "corpus.jsonl"
    lines = small_corpus.read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n".join([*lines[:20], '{"_id": "bad", "text": ', *lines[20:]]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"corpus\.jsonl:21: malformed JSON"):
        encode_corpus_ray(
            corpus, tmp_path / "out", tiny_ckpt, SHARDS_CONFIG, actors=1, device="cpu", show_progress=False
        )


def test_a_parquet_corpus_is_cut_at_rows_and_encodes_to_the_same_shards(
    ray_cluster, tmp_path, tiny_ckpt, small_corpus, small_shards
):
    """The small corpus as parquet (row groups of 5, so shards start inside them): the single-process shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pooledir.distributed.encode import encode_corpus_ray, plan_shards, read_shard_documents

    records = [
        {"_id": d.id, "title": d.metadata["title"], "text": d.text[len(d.metadata["title"]) + 1 :]}
        for d in iter_corpus(small_corpus)
    ]
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(records), corpus, row_group_size=5)
    assert list(iter_corpus(corpus)) == list(iter_corpus(small_corpus))
    plan = plan_shards(corpus, 8, limit=30)
    assert [(t.start, t.documents, t.offset) for t in plan] == [(0, 8, -1), (8, 8, -1), (16, 8, -1), (24, 6, -1)]
    assert [d.id for d in read_shard_documents(corpus, plan[1])] == [f"d{i}" for i in range(8, 16)]
    out = tmp_path / "shards"
    report = encode_corpus_ray(corpus, out, tiny_ckpt, SHARDS_CONFIG, actors=2, device="cpu", show_progress=False)
    assert report.documents == report.encoded == 36 and report.shards_written == [0, 1, 2, 3, 4]
    assert_same_shards(out, small_shards)
