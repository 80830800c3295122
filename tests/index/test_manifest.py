"""manifest.json and the encoder record: one typed record, the JSON on disk unchanged."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from pooledir.errors import IndexCorruptError
from pooledir.index.manifest import ENCODER_SETTINGS, EncoderRecord, read_manifest, record_encoder
from pooledir.shards import ShardSpec, read_shard_manifest
from tests.conftest import FakeEncoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("fixture", ["format2_ivfpq", "format2_no_lexical"])
def test_committed_manifests_read_and_write_back_byte_for_byte(fixture, tmp_path):
    """Folders made by earlier pooledir versions: the record reads them and writes the same JSON."""
    on_disk = json.loads((FIXTURES / fixture / "manifest.json").read_text())
    manifest = read_manifest(FIXTURES / fixture)
    assert isinstance(manifest.encoder, EncoderRecord) and manifest.dim == 16
    assert manifest.to_json() == on_disk
    assert list(manifest.to_json()["encoder"]) == list(on_disk["encoder"])  # same key order too
    manifest.write(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == on_disk


def test_the_record_is_frozen_typed_and_built_by_one_rule():
    enc = FakeEncoder()
    checkpoint, record = record_encoder(enc)
    assert checkpoint == str(Path(".").resolve())
    assert record == EncoderRecord(16, "colbert-ai", 300, 32, False, False, False)
    assert record.settings() == {k: getattr(enc.settings, k) for k in ENCODER_SETTINGS}
    assert EncoderRecord.from_json(record.to_json()) == record
    with pytest.raises(FrozenInstanceError):
        record.dim = 8  # type: ignore[misc]


def test_settings_an_older_record_lacks_are_none():
    record = EncoderRecord.from_json({"dim": 8, "doc_maxlen": 64})
    assert record.doc_maxlen == 64 and record.markers is None and record.layout is None


@pytest.mark.parametrize("bad", [None, [], {"doc_maxlen": 3}, {"dim": "16"}, {"dim": True}])
def test_a_mangled_record_is_a_corrupt_index_not_a_type_error(bad, tmp_path):
    with pytest.raises(IndexCorruptError, match="'dim'"):
        EncoderRecord.from_json(bad)
    data = json.loads((FIXTURES / "format2_no_lexical" / "manifest.json").read_text()) | {"encoder": bad}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexCorruptError, match="lacks or mangles a field"):
        read_manifest(tmp_path)


def test_an_index_and_its_shards_record_the_same_json(tmp_path, tiny_encoder, tiny_docs):
    """The manifest and a shard folder hold the record the same way: ``{"dim": .., <settings>}``."""
    from pooledir import PooledIndex
    from pooledir.build_shards import EncodeConfig, encode_corpus

    PooledIndex.create(tmp_path / "i", encoder=tiny_encoder, device="cpu").close()
    encode_corpus(tiny_docs[:2], tmp_path / "s", tiny_encoder, EncodeConfig(shard_docs=2), show_progress=False)
    index_json = json.loads((tmp_path / "i" / "manifest.json").read_text())["encoder"]
    shards = read_shard_manifest(tmp_path / "s")
    assert isinstance(shards.spec.encoder, EncoderRecord)
    assert shards.spec.encoder.to_json() == index_json == EncoderRecord.of(tiny_encoder).to_json()
    assert list(index_json) == ["dim", *ENCODER_SETTINGS]
    spec = ShardSpec(**{**shards.spec.__dict__, "encoder": index_json})  # a dict (JSON, another process) is read
    assert spec == shards.spec
