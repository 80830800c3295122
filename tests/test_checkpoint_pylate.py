"""PyLate-layout checkpoints: loading, layout traps, malformed folders, indexes and the CLI over them.

The comparisons with PyLate's own vectors (the oracle) are in tests/oracles/test_pylate.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pooledir.encoder import ColBERTEncoder
from pooledir.errors import CheckpointError
from tests.oracles.test_pylate import FIXTURES, MODELS, TEXTS, assert_equal_to_pylate, copy_with_config, reference


def test_layout_traps_are_read(tmp_path):
    """Saved by transformers 5: gamma/beta LayerNorm names, added prefix tokens, [MASK] padding, rope_parameters."""
    from safetensors.numpy import load_file

    keys = set(load_file(str(FIXTURES / "bert" / "model.safetensors")))
    assert any(k.endswith("LayerNorm.gamma") for k in keys) and not any(k.startswith("bert.") for k in keys)
    enc = ColBERTEncoder(FIXTURES / "bert", device="cpu")
    assert enc.tokenizer.pad_token == "[MASK]"
    assert enc.tokenizer.convert_ids_to_tokens(int(enc.q_marker)) == "[Q] "
    config = json.loads((FIXTURES / "modernbert" / "config.json").read_text())
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 160000.0
    assert ColBERTEncoder(FIXTURES / "modernbert", device="cpu").model.config.global_rope_theta == 160000.0


def test_fixed_padding_and_truncation_in_tokenizer_json_do_not_leak(tmp_path):
    """Published tokenizer.json files keep the base model's fixed padding/truncation; each call sets its own."""
    path = copy_with_config(tmp_path, "bert")
    tok_file = path / "tokenizer.json"
    tok = json.loads(tok_file.read_text())
    tok["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = {
        "strategy": {"Fixed": 64},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    tok_file.write_text(json.dumps(tok))
    assert_equal_to_pylate(ColBERTEncoder(path, device="cpu"), reference("bert", "default"))


def test_encoder_weights_with_a_base_prefix_load_too(tmp_path):
    """Folders that ship both layouts (``bert.``-prefixed weights + linear.weight, and 1_Dense/) load as PyLate."""
    import torch
    from safetensors.torch import load_file, save_file

    path = copy_with_config(tmp_path, "bert")
    state = load_file(str(path / "model.safetensors"))
    state = {f"bert.{k}": v for k, v in state.items()} | {"linear.weight": torch.zeros(16, 32)}
    save_file(state, str(path / "model.safetensors"))
    assert_equal_to_pylate(ColBERTEncoder(path, device="cpu"), reference("bert", "default"))


def _edit_json(file: Path, fn) -> None:
    file.write_text(json.dumps(fn(json.loads(file.read_text()))))


def test_malformed_folders_name_the_file(tmp_path):
    path = copy_with_config(tmp_path, "modernbert")

    (path / "2_Dense" / "model.safetensors").rename(tmp_path / "moved")
    with pytest.raises(CheckpointError, match=r"2_Dense/model\.safetensors is missing"):
        ColBERTEncoder(path, device="cpu")
    (tmp_path / "moved").rename(path / "2_Dense" / "model.safetensors")

    _edit_json(path / "2_Dense" / "config.json", lambda c: c | {"in_features": 32})
    with pytest.raises(CheckpointError, match=r"2_Dense/config\.json: in_features=32 but .* outputs 24"):
        ColBERTEncoder(path, device="cpu")
    _edit_json(path / "2_Dense" / "config.json", lambda c: c | {"in_features": 24, "out_features": 8})
    with pytest.raises(CheckpointError, match=r"2_Dense: linear.weight has shape \(16, 24\), config.json says \(8"):
        ColBERTEncoder(path, device="cpu")
    _edit_json(path / "2_Dense" / "config.json", lambda c: c | {"out_features": 16, "activation_function": "os.system"})
    with pytest.raises(CheckpointError, match=r"2_Dense/config\.json: unknown activation_function 'os.system'"):
        ColBERTEncoder(path, device="cpu")
    _edit_json(path / "2_Dense" / "config.json", lambda c: c | {"activation_function": "torch.nn.Identity"})

    modules = json.loads((path / "modules.json").read_text())
    pooled = modules + [{"idx": 3, "name": "3", "path": "3_Pooling", "type": "sentence_transformers.models.Pooling"}]
    (path / "modules.json").write_text(json.dumps(pooled))
    with pytest.raises(CheckpointError, match=r"modules\.json: module 3 has type 'sentence_transformers.models.Pool"):
        ColBERTEncoder(path, device="cpu")
    (path / "modules.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"modules\.json: not a sentence-transformers module list"):
        ColBERTEncoder(path, device="cpu")


def test_hub_id_offline_says_to_pass_a_local_folder():
    with pytest.raises(CheckpointError, match="pass a local checkpoint folder"):
        ColBERTEncoder("lightonai/GTE-ModernColBERT-v1", device="cpu")


def test_index_records_the_layout_and_refuses_another(tmp_path, tiny_ckpt):
    from pooledir import Document, IndexConfig, PooledIndex

    docs = [Document(f"d{i}", t) for i, t in enumerate(TEXTS["documents"])]
    with PooledIndex.create(
        tmp_path / "idx",
        checkpoint=FIXTURES / "modernbert",
        device="cpu",
        config=IndexConfig(backend="flat", pool_factor=1),
    ) as index:
        index.add(docs)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["encoder"]["layout"] == "pylate" and manifest["encoder"]["query_maxlen"] == 12
    with PooledIndex.open(tmp_path / "idx", device="cpu") as index:
        hits = index.search([TEXTS["queries"][0]], k=2)[0]
        assert len(hits) == 2
    with pytest.raises(CheckpointError, match="is a colbert-ai checkpoint but the vectors were made with a pylate"):
        ColBERTEncoder(tiny_ckpt, device="cpu", layout="pylate")


def exact_top(encoder: ColBERTEncoder, queries: list[str], docs, k: int) -> list[list[tuple[str, float]]]:
    """The k best documents per query by exact MaxSim over the encoder's vectors (ids, scores)."""
    from pooledir.maxsim import maxsim

    vecs = encoder.encode_documents([d.text for d in docs], dtype="float32")
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vecs])])
    scores = maxsim(encoder.encode_queries(queries), np.concatenate(vecs), offsets)
    return [[(docs[j].id, float(row[j])) for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


@pytest.mark.parametrize("model", ["colbert-ai", *MODELS])
def test_cli_indexes_and_searches_with_a_pylate_checkpoint_as_with_a_colbert_ai_one(
    tmp_path, tiny_beir, tiny_ckpt, capsys, model
):
    """index, search, add and delete through the CLI; search gives exact MaxSim over the checkpoint's vectors."""
    from pooledir.corpus import read_corpus
    from tests.test_cli import cli

    ckpt = tiny_ckpt if model == "colbert-ai" else FIXTURES / model
    out = tmp_path / "idx"
    code, text, err = cli(
        capsys, "index", tiny_beir, "--out", out, "--checkpoint", ckpt, "--index", "flat", "--pool-factor", "1",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0 and "40 documents" in text, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"] == str(ckpt.resolve())
    assert manifest["encoder"]["layout"] == ("colbert-ai" if model == "colbert-ai" else "pylate")
    encoder = ColBERTEncoder(ckpt, device="cpu")
    assert manifest["encoder"]["query_maxlen"] == encoder.settings.query_maxlen
    assert manifest["encoder"]["markers"] is True and manifest["encoder"]["query_augmentation"] is True

    queries = ["cancer cells", "vitamin bone study", "immune response of t cells"]
    code, text, err = cli(capsys, "search", out, *queries, "-k", "5", "--json", "--device", "cpu")
    assert code == 0, err
    got = [[(h["id"], h["score"]) for h in json.loads(x)["results"]] for x in text.splitlines()]
    want = exact_top(encoder, queries, read_corpus(tiny_beir), k=6)
    for g, w in zip(got, want):
        exact = dict(w)
        assert len(g) == 5 and all(abs(score - exact.get(i, -1)) < 5e-3 for i, score in g), (g, w)  # float16 storage
        assert [i for i, _ in g] == [i for i, _ in w[:5]] or min(s for _, s in w[:5]) - w[5][1] < 5e-3  # ties only

    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "n1", "text": "vitamin bone study"}) + "\n")
    code, text, err = cli(capsys, "add", out, new, "--device", "cpu")
    assert code == 0 and "now holds 41" in text, err
    code, text, err = cli(capsys, "search", out, "vitamin bone study", "-k", "41", "--json", "--device", "cpu")
    found = {h["id"]: h["score"] for h in json.loads(text)["results"]}
    new_doc = read_corpus(new)
    n1 = exact_top(encoder, ["vitamin bone study"], new_doc, k=1)[0][0][1]
    assert abs(found["n1"] - n1) < 5e-3
    code, text, err = cli(capsys, "delete", out, "n1", "c0")
    assert code == 0 and "now holds 39" in text, err
    code, text, err = cli(capsys, "search", out, "vitamin bone study", "-k", "50", "--json", "--device", "cpu")
    ids = {h["id"] for h in json.loads(text)["results"]}
    assert len(ids) == 39 and not ids & {"n1", "c0"}


@pytest.mark.parametrize("model", MODELS)
def test_onnx_query_backend_equals_torch(tmp_path, monkeypatch, model):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch_enc = ColBERTEncoder(FIXTURES / model, device="cpu", query_backend="torch")
    onnx_enc = ColBERTEncoder(FIXTURES / model, device="cpu", query_backend="onnx")
    queries = TEXTS["queries"] + ["a query long enough to be cut at the query length of twelve tokens, surely"]
    assert np.abs(onnx_enc.encode_queries(queries) - torch_enc.encode_queries(queries)).max() <= 1e-4
    assert_equal_to_pylate(onnx_enc, reference(model, "default"))
    assert len(list((tmp_path / "cache" / "pooledir" / "onnx").glob("*.onnx"))) == 1  # exported once, cached
    again = ColBERTEncoder(FIXTURES / model, device="cpu", query_backend="onnx")
    assert again._query_runtime.path == onnx_enc._query_runtime.path
