"""pooledir/build_shards.py: a corpus encoded into shard folders, resumed after a crash, checked as it goes."""

from __future__ import annotations

import pytest

from pooledir.build_shards import DEFAULT_SHARD_DOCS, EncodeConfig, encode_corpus
from pooledir.corpus import Document
from pooledir.errors import InputError
from pooledir.shards import ShardError, iter_shards, read_shard_manifest


def encode(tiny_encoder, docs, out, resume=False, **config):
    config = {"shard_docs": 25, "chunk_docs": 10} | config
    return encode_corpus(iter(docs), out, tiny_encoder, EncodeConfig(**config), resume=resume, show_progress=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_encoder, tiny_docs):
    out = tmp_path_factory.mktemp("shards") / "s"
    encode(tiny_encoder, tiny_docs, out)
    return out


def test_shards_hold_the_documents_in_order_with_their_vectors(shards, tiny_docs, tiny_encoder):
    manifest = read_shard_manifest(shards)
    assert manifest.complete and [s.number for s in manifest.shards] == list(range(-(-len(tiny_docs) // 25)))
    assert manifest.spec.shard_docs == 25 and manifest.spec.pool_factor == 2 and manifest.spec.dim == tiny_encoder.dim
    shards_read = list(iter_shards(shards))
    assert [d for shard in shards_read for d in shard.documents()] == list(tiny_docs)
    assert sum(len(shard.n_tokens) for shard in shards_read) == len(tiny_docs)
    assert EncodeConfig().shard_docs == DEFAULT_SHARD_DOCS


def test_encode_resumes_after_a_crash(tmp_path, tiny_encoder, tiny_docs, shards):
    def crashing():
        for i, d in enumerate(tiny_docs):
            if i == 60:
                raise RuntimeError("simulated crash")
            yield d

    out = tmp_path / "s"
    with pytest.raises(RuntimeError):
        encode_corpus(crashing(), out, tiny_encoder, EncodeConfig(shard_docs=25, chunk_docs=10), show_progress=False)
    assert [s.number for s in read_shard_manifest(out).shards] == [0, 1]
    assert not read_shard_manifest(out).complete
    (out / "shard-00002.npy.tmp").write_bytes(b"left over by a kill -9")
    with pytest.raises(ShardError, match="not empty"):
        encode(tiny_encoder, tiny_docs, out)
    report = encode(tiny_encoder, tiny_docs, out, resume=True)
    assert report.shards_skipped == 2 and report.shards_written == [2, 3, 4] and report.encoded == 70
    a, b = read_shard_manifest(out), read_shard_manifest(shards)
    assert a.complete and [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    # resuming with another corpus, or other settings, is refused
    with pytest.raises(ShardError, match="shard 0 holds other documents"):
        encode(tiny_encoder, tiny_docs[::-1], out, resume=True)
    with pytest.raises(ShardError, match="other settings .*pool_factor: 2 vs 3"):
        encode(tiny_encoder, tiny_docs, out, resume=True, pool_factor=3)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"shard_docs": 0}, "shard_docs=0 must be a positive integer"),
        ({"limit": -1}, "limit=-1 must be a positive integer"),
        ({"protected_tokens": -1}, "protected_tokens=-1 must be >= 0"),
        ({"part": 2, "parts": 2}, "part=2 must be between 0 and parts - 1 = 1"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, tiny_encoder, tiny_docs, config, message):
    with pytest.raises(InputError, match=message):
        encode(tiny_encoder, tiny_docs, tmp_path / "s", **config)
    assert not (tmp_path / "s").exists()


def test_a_duplicate_id_in_a_shard_and_an_empty_input_are_refused(tmp_path, tiny_encoder, tiny_docs):
    docs = [*tiny_docs[:30], Document(tiny_docs[27].id, "again")]
    with pytest.raises(InputError, match=f"duplicate document id {tiny_docs[27].id!r} \\(again at document 30"):
        encode(tiny_encoder, docs, tmp_path / "dup")
    assert [s.number for s in read_shard_manifest(tmp_path / "dup").shards] == [0]  # the shard before it stays
    with pytest.raises(InputError, match="the input holds no documents"):
        encode(tiny_encoder, [], tmp_path / "empty")


# -- encode_shard_folder: the folder claimed, cleaned up, resumed (what `pooledir encode` runs) ---------------------
def stopping(docs, at, error):
    """The documents, then ``error`` raised when document ``at`` is due (a Ctrl-C or a bad line mid-corpus)."""
    for i, d in enumerate(docs):
        if i == at:
            raise error
        yield d


def test_a_second_encode_into_the_same_new_folder_is_refused(tmp_path, tiny_encoder, tiny_docs):
    """Issue 18: the claim lived in the CLI; a library caller had none (two encodes wrote one folder)."""
    from pooledir.build_shards import encode_shard_folder

    out = tmp_path / "new" / "s"
    config = EncodeConfig(shard_docs=25, chunk_docs=10)
    refused = []

    def second_encode_while_the_first_holds_the_folder():
        with pytest.raises(InputError, match="is being written by another encode") as e:
            encode_shard_folder(tiny_docs, out, tiny_encoder, config, show_progress=False)
        refused.append(str(e.value))
        return tiny_encoder

    report = encode_shard_folder(
        tiny_docs, out, second_encode_while_the_first_holds_the_folder, config, show_progress=False
    )
    assert refused and report.encoded == len(tiny_docs) and read_shard_manifest(out).complete
    with pytest.raises(InputError, match="exists and is not empty; pick a new folder, or resume the encode there"):
        encode_shard_folder(tiny_docs, out, tiny_encoder, config, show_progress=False)
    # the parts of a split encode share a folder; one part twice is refused
    split = tmp_path / "split"
    part0 = EncodeConfig(shard_docs=25, chunk_docs=10, part=0, parts=2)

    def other_parts():
        part1 = EncodeConfig(shard_docs=25, chunk_docs=10, part=1, parts=2)
        assert encode_shard_folder(tiny_docs, split, tiny_encoder, part1, show_progress=False).encoded > 0
        with pytest.raises(InputError, match="is being written by another encode"):
            encode_shard_folder(tiny_docs, split, tiny_encoder, part0, show_progress=False)
        return tiny_encoder

    encode_shard_folder(tiny_docs, split, other_parts, part0, show_progress=False)
    assert read_shard_manifest(split).complete


def test_a_stopped_encode_keeps_its_shards_and_resumes(tmp_path, tiny_encoder, tiny_docs, shards):
    from pooledir.build_folder import BuildHooks
    from pooledir.build_shards import encode_shard_folder

    out = tmp_path / "s"
    config = EncodeConfig(shard_docs=25, chunk_docs=10)
    said = []
    hooks = BuildHooks(resume_hint="run it again", stopped=said.append)
    with pytest.raises(KeyboardInterrupt):
        encode_shard_folder(
            stopping(tiny_docs, 60, KeyboardInterrupt()), out, tiny_encoder, config, hooks=hooks, show_progress=False
        )
    assert said == [f"stopped; the 2 completed shards in {out} are kept; continue with: run it again"]
    with pytest.raises(InputError, match="malformed") as e:
        encode_shard_folder(
            stopping(tiny_docs, 80, InputError("line 81: malformed JSON")),
            out,
            tiny_encoder,
            config,
            resume=True,
            show_progress=False,
        )
    assert "the 3 completed shards" in str(e.value) and "continue with: the same call with resume=True" in str(e.value)
    report = encode_shard_folder(tiny_docs, out, tiny_encoder, config, resume=True, show_progress=False)
    assert report.shards_skipped == 3 and report.encoded == len(tiny_docs) - 75
    got, want = read_shard_manifest(out), read_shard_manifest(shards)
    assert got.complete and [s.sha256 for s in got.shards] == [s.sha256 for s in want.shards]


@pytest.mark.parametrize("existed", [False, True])
def test_an_encode_that_stops_before_a_shard_leaves_what_it_found(tmp_path, tiny_encoder, tiny_docs, existed):
    from pooledir.build_shards import encode_shard_folder

    out = tmp_path / "new" / "s"
    if existed:
        out.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        encode_shard_folder(stopping(tiny_docs, 5, KeyboardInterrupt()), out, tiny_encoder, show_progress=False)
    assert (list(out.iterdir()) == []) if existed else not (tmp_path / "new").exists()
    loaded = []
    with pytest.raises(InputError, match="no documents given"):  # checked before the folder or the model
        encode_shard_folder([], tmp_path / "other", lambda: loaded.append(1), show_progress=False)
    assert not (tmp_path / "other").exists() and not loaded
