from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from pooledir.build import BuildConfig, build_index, build_index_from_shards, create_index_for_shards
from pooledir.build_shards import EncodeConfig, encode_corpus
from pooledir.corpus import Document
from pooledir.pooled_index import IndexConfig, PooledIndex
from pooledir.search import SearchParams
from pooledir.shards import (
    MANIFEST,
    ShardError,
    ShardSpec,
    ShardWriter,
    iter_shards,
    read_shard_header,
    read_shard_manifest,
)

EXACT = SearchParams(k=10, nprobe=1, candidates_per_token=1000, rerank=120)


def encode(tiny_encoder, docs, out, resume=False, **config):
    config = {"shard_docs": 25, "chunk_docs": 10} | config
    return encode_corpus(iter(docs), out, tiny_encoder, EncodeConfig(**config), resume=resume, show_progress=False)


def index_from(paths, out, pool_factor=2, **build):
    spec = read_shard_manifest(paths[0]).spec
    idx = create_index_for_shards(out, spec, IndexConfig(backend="flat", pool_factor=pool_factor), device="cpu")
    build_index_from_shards(paths, idx, BuildConfig(**build), show_progress=False)
    return idx


@pytest.fixture(scope="module")
def direct(tmp_path_factory, tiny_encoder, tiny_docs):
    """Flat indexes built straight from the documents, at pool factors 1 and 2."""
    root = tmp_path_factory.mktemp("direct")
    out = {}
    for f in (1, 2):
        idx = PooledIndex.create(
            root / f"x{f}", config=IndexConfig(backend="flat", pool_factor=f), device="cpu", encoder=tiny_encoder
        )
        build_index(iter(tiny_docs), idx, BuildConfig(chunk_docs=40), show_progress=False)
        out[f] = idx
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_encoder, tiny_docs):
    out = tmp_path_factory.mktemp("shards") / "s"
    encode(tiny_encoder, tiny_docs, out)
    return out


def same_search(a: PooledIndex, b: PooledIndex, encoder, texts):
    Q = encoder.encode_queries(texts)
    for x, y in zip(a.search_embeddings(Q, EXACT), b.search_embeddings(Q, EXACT)):
        assert [h.id for h in x] == [h.id for h in y]
        assert np.allclose([h.score for h in x], [h.score for h in y], atol=1e-4)


def test_shard_folder_layout(shards, tiny_ckpt, tiny_docs):
    m = read_shard_manifest(shards)
    assert m.complete and m.end == 120 and [s.number for s in m.shards] == [0, 1, 2, 3, 4]
    assert [s.documents for s in m.shards] == [25, 25, 25, 25, 20] and m.documents == 120
    assert m.spec.dim == 16 and m.spec.pool_factor == 2 and m.spec.checkpoint == str(tiny_ckpt.resolve())
    assert m.spec.encoder.doc_maxlen == 64 and m.spec.encoder.markers is True
    # every shard is self-describing: its header alone says how its vectors were made
    spec, info = read_shard_header(shards / "shard-00002.json")
    assert spec == m.spec and info.start == 50 and info.documents == 25
    shard = list(iter_shards(shards))[2]
    assert isinstance(shard.vectors, np.memmap) and shard.vectors.dtype == np.float16
    assert np.load(shards / "shard-00002.lengths.npy").dtype == np.int32
    assert int(shard.lengths.sum()) == len(shard.vectors) == info.vectors
    assert (shard.n_tokens >= shard.lengths).all() and int(shard.n_tokens.sum()) == info.tokens
    docs = list(shard.documents())
    assert docs == tiny_docs[50:75]
    assert not list(shards.glob("*.tmp"))


def test_index_from_shards_equals_direct_build(tmp_path, shards, direct, tiny_encoder, tiny_docs):
    idx = index_from([shards], tmp_path / "i", chunk_docs=16)
    ref = direct[2]
    assert len(idx) == 120 and idx.info()["vectors"] == ref.info()["vectors"]
    assert idx.info()["vectors_before_pooling"] == ref.info()["vectors_before_pooling"]
    assert all(idx.get(d.id) == d for d in tiny_docs)
    same_search(idx, ref, tiny_encoder, ["protein expression in brain cells", tiny_docs[9].text])
    idx.close()
    # the index recorded the shards' checkpoint and encoder settings: it encodes queries as the documents were
    again = PooledIndex.open(tmp_path / "i", device="cpu")
    assert again.info()["checkpoint"] == str(read_shard_manifest(shards).spec.checkpoint)
    assert [h.id for h in again.search(tiny_docs[9].text, params=replace(EXACT, k=5))[0]] == [
        h.id for h in ref.search(tiny_docs[9].text, params=replace(EXACT, k=5))[0]
    ]


def test_unpooled_shards_are_pooled_at_index_time(tmp_path, tiny_encoder, tiny_docs, direct):
    raw = tmp_path / "raw"
    encode(tiny_encoder, tiny_docs, raw, pool_factor=1, shard_docs=50)
    assert read_shard_manifest(raw).vectors == direct[1].info()["vectors"]
    same_search(index_from([raw], tmp_path / "x2", pool_factor=2), direct[2], tiny_encoder, [tiny_docs[3].text])
    same_search(index_from([raw], tmp_path / "x1", pool_factor=1), direct[1], tiny_encoder, [tiny_docs[3].text])


def test_pooled_shards_need_the_same_factor(tmp_path, shards):
    spec = read_shard_manifest(shards).spec
    with pytest.raises(ShardError, match=r"pooled x2; an index over them needs pool_factor=2 \(got 3\)"):
        create_index_for_shards(tmp_path / "i", spec, IndexConfig(pool_factor=3), device="cpu")
    assert not (tmp_path / "i").exists()


def test_parts_written_separately_index_together(tmp_path, tiny_encoder, tiny_docs, shards, direct):
    one = tmp_path / "one"  # two writers, one folder
    for part in (1, 0):
        encode(tiny_encoder, tiny_docs, one, part=part, parts=2)
        if part == 1:
            m = read_shard_manifest(one)
            assert [s.number for s in m.shards] == [1, 3] and m.missing() == [0, 2, 4] and not m.complete
    m = read_shard_manifest(one)
    assert m.complete and [s.sha256 for s in m.shards] == [s.sha256 for s in read_shard_manifest(shards).shards]
    # two writers, two folders: each indexes on its own, and both into one index
    a, b = tmp_path / "a", tmp_path / "b"
    encode(tiny_encoder, tiny_docs, a, part=0, parts=2)
    encode(tiny_encoder, tiny_docs, b, part=1, parts=2)
    alone = index_from([b], tmp_path / "ib")
    assert len(alone) == 50 and alone.get("d25") == tiny_docs[25]
    both = index_from([a, b], tmp_path / "iab")
    assert all(both.get(d.id) == d for d in tiny_docs)
    same_search(both, direct[2], tiny_encoder, [tiny_docs[30].text])


def test_manifest_is_rederived_from_headers(tmp_path, tiny_encoder, tiny_docs):
    out = tmp_path / "s"
    encode(tiny_encoder, tiny_docs[:60], out)
    before = read_shard_manifest(out)
    (out / MANIFEST).unlink()
    assert read_shard_manifest(out) == before
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json .* is corrupt"):
        read_shard_manifest(out)
    (out / MANIFEST).write_text(json.dumps({"format": "pooledir-shards", "format_version": 1}))
    with pytest.raises(ShardError, match="lacks the field"):
        read_shard_manifest(out)


def synthetic_shards(path, dim, n_docs=30, shard_docs=10, seed=0):
    """Shards written without an encoder, the way another process or machine could write them."""
    rng = np.random.default_rng(seed)
    spec = ShardSpec(
        dim=dim,
        pool_factor=1,
        protected_tokens=1,
        checkpoint="/elsewhere/ckpt",
        encoder={"dim": dim, "doc_maxlen": 64},
        shard_docs=shard_docs,
    )
    w = ShardWriter.open(path, spec)
    for n in range(n_docs // shard_docs):
        w.begin(n, n * shard_docs)
        docs = [Document(f"s{i}", f"text {i}") for i in range(n * shard_docs, (n + 1) * shard_docs)]
        vecs = [rng.standard_normal((int(rng.integers(2, 9)), dim)).astype(np.float16) for _ in docs]
        vecs = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vecs]
        w.append(docs, vecs, [len(v) for v in vecs])
        w.commit()
    w.finish(n_docs)
    return path


def rewrite_header(folder, name, **changes):
    h = folder / f"{name}.json"
    h.write_text(json.dumps(json.loads(h.read_text()) | changes))
    (folder / MANIFEST).unlink()


def test_bad_shards_give_clear_errors_and_lose_nothing(tmp_path):
    good = synthetic_shards(tmp_path / "good", 16)
    idx = create_index_for_shards(tmp_path / "i", read_shard_manifest(good).spec, IndexConfig(backend="flat"), "cpu")
    build_index_from_shards([good], idx, show_progress=False)
    assert len(idx) == 30 and idx.info()["checkpoint"] == "/elsewhere/ckpt"

    def fails(folder, match, resume=True):
        with pytest.raises(ShardError, match=match):
            build_index_from_shards([folder], idx, resume=resume, show_progress=False)
        assert len(idx) == 30 and idx.get("s29").text == "text 29"  # nothing indexed is lost

    bad = synthetic_shards(tmp_path / "lengths", 16)
    np.save(bad / "shard-00001.lengths.npy", np.load(bad / "shard-00001.lengths.npy") + 1)
    fails(bad, r"shard-00001.lengths.npy does not match the sha256")
    rewrite_header(bad, "shard-00001", sha256={})  # a hand-made shard without checksums
    fails(bad, r"lengths add up to \d+ vectors but the shard holds \d+")

    missing = synthetic_shards(tmp_path / "missing", 16)
    (missing / "shard-00002.npy").unlink()
    fails(missing, r"shard-00002.npy is missing")

    fails(synthetic_shards(tmp_path / "dim8", 8), "the shards hold 8-d vectors; the index holds 16-d ones")
    with pytest.raises(ShardError, match="made differently .*dim: 8 vs 16"):
        build_index_from_shards([good, tmp_path / "dim8"], idx, resume=True, show_progress=False)
    wrong_dim = synthetic_shards(tmp_path / "wrongdim", 16)
    rewrite_header(wrong_dim, "shard-00002", dim=8)
    fails(wrong_dim, r"shard-00002.json does not match the other shards .*dim: 8 vs 16")

    corrupt = synthetic_shards(tmp_path / "corrupt", 16)
    (corrupt / MANIFEST).write_text('{"format": "pooledir-shards", "format_version": 1, "dim": 16, "shards": [')
    fails(corrupt, r"manifest.json \(shard folder manifest\) is corrupt")
    assert len(idx) == 30


def test_cli_encode_in_two_processes_then_index(tmp_path, tiny_ckpt, tiny_beir):
    shards, out = tmp_path / "shards", tmp_path / "idx"
    cmd = [
        sys.executable,
        "-m",
        "pooledir.cli",
        "encode",
        str(tiny_beir),
        "--out",
        str(shards),
        "--checkpoint",
        str(tiny_ckpt),
        "--shard-docs",
        "8",
        "--device",
        "cpu",
    ]
    procs = [
        subprocess.Popen(cmd + ["--part", f"{k}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    m = read_shard_manifest(shards)
    assert m.complete and m.documents == 40 and len(m.shards) == 5
    index = [sys.executable, "-m", "pooledir.cli", "index", "--embeddings", str(shards), "--out", str(out)]
    r = subprocess.run(index + ["--pool-factor", "3"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: the shards are pooled x2")
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = subprocess.run(index + ["--index", "flat", "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "40 documents" in r.stdout and "after pooling x2" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "pooledir.cli", "search", str(out), "title 3", "-k", "2", "--json", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"]) == 2


def test_an_adaptive_index_takes_unpooled_shards_only(tmp_path, tiny_encoder, tiny_docs, shards):
    from pooledir.pooling import pool_embeddings

    with pytest.raises(ShardError, match=r"pooled x2; an index with pool_threshold=0.3 pools adaptively"):
        create_index_for_shards(tmp_path / "i", read_shard_manifest(shards).spec, IndexConfig(pool_threshold=0.3))
    assert not (tmp_path / "i").exists()
    raw = tmp_path / "raw"
    encode(tiny_encoder, tiny_docs[:30], raw, pool_factor=1)
    config = IndexConfig(backend="flat", pool_threshold=0.3)
    idx = create_index_for_shards(tmp_path / "a", read_shard_manifest(raw).spec, config, device="cpu")
    build_index_from_shards([raw], idx, BuildConfig(chunk_docs=10), show_progress=False)
    want = pool_embeddings(tiny_encoder.encode_documents([d.text for d in tiny_docs[:30]]), pool_threshold=0.3)
    assert idx.info()["vectors"] == sum(len(p) for p in want)


def test_a_local_and_a_ray_encode_make_the_same_spec(tmp_path, tiny_ckpt, tiny_encoder, tiny_docs):
    """Issue 18: build_shards and distributed/encode each built a ShardSpec field by field; one rule now.

    The Ray driver's spec (its probe encoder, loaded on CPU without Ray) equals the folder a local encode
    wrote with the same checkpoint and config, and both equal EncodeConfig.shard_spec of the encoder's record.
    """
    from pooledir.build_shards import encoder_record
    from pooledir.distributed.encode import _shard_spec

    config = EncodeConfig(pool_factor=3, protected_tokens=2, shard_docs=7, chunk_docs=5)
    encode_corpus(iter(tiny_docs[:10]), tmp_path / "s", tiny_encoder, config, show_progress=False)
    local = read_shard_manifest(tmp_path / "s").spec
    assert local == _shard_spec(tiny_ckpt, {}, config) == config.shard_spec(*encoder_record(tiny_encoder))
    assert (local.dim, local.pool_factor, local.protected_tokens, local.shard_docs) == (tiny_encoder.dim, 3, 2, 7)


def test_split_encodes_with_different_part_counts_are_refused(tmp_path, tiny_encoder, tiny_docs, shards):
    """Issue 18: `--part 0/2` and `--part 1/3` shared one folder (each held its own part lock), before or after.

    The later one is refused with one line naming both counts: while the first runs (its part lock is held),
    and after it finished (its shards' headers record parts=2); nothing of the folder changes; K/2 goes on.
    """
    from pooledir.build_shards import encode_shard_folder
    from pooledir.errors import InputError

    out = tmp_path / "split"

    def part(k, n):
        return EncodeConfig(shard_docs=25, chunk_docs=10, part=k, parts=n)

    refused = []

    def while_part_0_of_2_runs():
        with pytest.raises(InputError) as e:
            encode_shard_folder(tiny_docs, out, tiny_encoder, part(1, 3), show_progress=False)
        refused.append(str(e.value))
        return tiny_encoder

    assert encode_shard_folder(tiny_docs, out, while_part_0_of_2_runs, part(0, 2), show_progress=False).encoded
    assert refused == [
        f"{out} is split into 2 parts (part 0/2 is encoding it now), but this encode is part 1/3: every part of "
        "one folder needs the same part count; run it as K/2, or pick another folder"
    ]
    assert sorted(p.name for p in out.glob("shard-*.json")) == [f"shard-0000{n}.json" for n in (0, 2, 4)]
    assert json.loads((out / "shard-00002.json").read_text())["parts"] == 2
    assert "parts" not in json.loads((shards / "shard-00000.json").read_text())  # an unsplit encode's, unchanged
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError) as e:
        encode_shard_folder(tiny_docs, out, tiny_encoder, part(2, 3), show_progress=False)
    assert str(e.value).startswith(f"{out} is split into 2 parts (shard 0 was written as part 0/2), but this encode")
    assert "is part 2/3: every part" in str(e.value) and "\n" not in str(e.value)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before and not any(out.glob("*.tmp"))
    assert encode_shard_folder(tiny_docs, out, tiny_encoder, part(1, 2), show_progress=False).encoded
    assert read_shard_manifest(out).complete
    # the command line says it in one line, exit 2, before a model loads
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in tiny_docs))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["encode", str(corpus), "--out", str(out), "--part", "0/3", "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "pooledir.cli", *argv], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {out} is split into 2 parts (shard 0 was written")
    assert len(r.stderr.strip().splitlines()) == 1 and "part 0/3" in r.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before
