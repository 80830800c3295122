"""The query/document backends (torch, ONNX Runtime) as a user picks them: library, CLI and service."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from pooledir.errors import InputError
from tests.test_cli import cli, one_error_line

QUERIES = ["cancer cells", "vitamin bone study", "brain heart"]


@pytest.fixture()
def onnx_cache(tmp_path, monkeypatch):
    """Exported graphs go to a fresh cache folder (never the user's)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "pooledir" / "onnx"


@pytest.fixture()
def no_onnxruntime(monkeypatch):
    """As if ONNX Runtime were not installed: importing it fails, and find_spec says so."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


@pytest.fixture()
def built(tmp_path, tiny_ckpt, tiny_beir, capsys):
    out = tmp_path / "idx"
    code, _, err = cli(capsys, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu")
    assert code == 0, err
    return out


def hits(stdout: str) -> list[list[tuple[str, float]]]:
    return [[(h["id"], h["score"]) for h in json.loads(x)["results"]] for x in stdout.splitlines()]


def same_hits(a, b, atol=1e-4):
    assert [[i for i, _ in q] for q in a] == [[i for i, _ in q] for q in b]
    assert np.allclose([s for q in a for _, s in q], [s for q in b for _, s in q], atol=atol)


# -- library -------------------------------------------------------------------------------------------------------
def test_check_backends_names_the_value_and_the_choices():
    from pooledir import check_backends

    check_backends()
    with pytest.raises(InputError, match="query_backend='tensorrt' is not one of auto, torch, onnx, onnx-int8"):
        check_backends("tensorrt")
    with pytest.raises(InputError, match=r"document_backend='onnx-int8' is not one of torch, onnx \(lossless only\)"):
        check_backends(document_backend="onnx-int8")


def test_missing_onnxruntime_says_which_extra_to_install(tmp_path, no_onnxruntime):
    from pooledir import ColBERTEncoder, check_backends

    check_backends("torch", "torch")  # torch needs no ONNX Runtime
    with pytest.raises(InputError, match=r"query_backend='onnx' needs ONNX Runtime.*pip install 'pooledir\[onnx\]'"):
        check_backends("onnx")
    # checked before the checkpoint is even looked at
    with pytest.raises(InputError, match=r"document_backend='onnx' needs ONNX Runtime"):
        ColBERTEncoder(tmp_path / "no-such-checkpoint", document_backend="onnx")


def test_open_with_a_query_backend_encodes_with_it(tmp_path, onnx_cache, tiny_encoder, tiny_docs):
    from pooledir import IndexConfig, PooledIndex

    path = tmp_path / "i"
    with PooledIndex.create(path, config=IndexConfig(backend="flat"), device="cpu", encoder=tiny_encoder) as idx:
        idx.add(tiny_docs[:40])
        want = idx.search(QUERIES, k=5)
    with PooledIndex.open(path, device="cpu", query_backend="onnx") as idx:
        got = idx.search(QUERIES, k=5)
        assert idx.encoder.query_backend == "onnx" and idx.encoder.document_backend == "torch"
    same_hits([[(h.id, h.score) for h in q] for q in got], [[(h.id, h.score) for h in q] for q in want])
    with pytest.raises(InputError, match="query_backend='fast'"):
        PooledIndex.open(path, device="cpu", query_backend="fast")
    with pytest.raises(InputError, match="either an encoder or the backends"):
        PooledIndex.open(path, device="cpu", encoder=tiny_encoder, query_backend="onnx")


# -- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_search_with_the_onnx_query_backend_gives_torchs_results(built, onnx_cache, capsys):
    code, want, err = cli(capsys, "search", built, *QUERIES, "-k", "5", "--json", "--device", "cpu")
    assert code == 0, err
    code, got, err = cli(
        capsys, "search", built, *QUERIES, "-k", "5", "--json", "--device", "cpu", "--query-backend", "onnx"
    )
    assert code == 0, err
    same_hits(hits(got), hits(want))
    assert len(list(onnx_cache.glob("*.onnx"))) == 1
    code, lossy, err = cli(
        capsys, "search", built, *QUERIES, "-k", "5", "--json", "--device", "cpu", "--query-backend", "onnx-int8"
    )
    assert code == 0 and all(len(q) == 5 for q in hits(lossy)), err


def test_cli_index_encode_and_add_with_the_onnx_document_backend(
    tmp_path, built, tiny_ckpt, tiny_beir, onnx_cache, capsys
):
    out = tmp_path / "onnx-idx"
    code, _, err = cli(
        capsys, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--device", "cpu",
        "--document-backend", "onnx",
    )  # fmt: skip
    assert code == 0, err
    searches = [cli(capsys, "search", d, *QUERIES, "-k", "5", "--json", "--device", "cpu") for d in (built, out)]
    same_hits(hits(searches[1][1]), hits(searches[0][1]), atol=2e-3)  # float16 storage of equal fp32 vectors
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "n1", "text": "brain heart study"}) + "\n")
    code, text, err = cli(capsys, "add", out, new, "--device", "cpu", "--document-backend", "onnx")
    assert code == 0 and "now holds 41" in text, err
    code, text, err = cli(
        capsys, "encode", tiny_beir, "--out", tmp_path / "shards", "--checkpoint", tiny_ckpt, "--device", "cpu",
        "--document-backend", "onnx",
    )  # fmt: skip
    assert code == 0 and "encoded 40 documents" in text, err


def test_cli_bad_backend_is_one_line_and_exit_2(tmp_path, built, tiny_ckpt, tiny_beir, capsys):
    cases = [
        (("search", built, "q", "--query-backend", "tensorrt"), "query_backend='tensorrt' is not one of"),
        (("add", built, tiny_beir, "--document-backend", "onnx-int8"), "(lossless only)"),
        (("encode", tiny_beir, "--out", tmp_path / "s", "--document-backend", "x"), "document_backend='x'"),
        (("serve", built, "--query-backend", "gpu"), "query_backend='gpu' is not one of"),
    ]
    for args, msg in cases:
        code, _, err = cli(capsys, *args)
        one_error_line(code, err, msg)
    out = tmp_path / "never"
    code, _, err = cli(capsys, "index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--document-backend", "y")
    one_error_line(code, err, "document_backend='y'")
    assert not out.exists() and not (tmp_path / "s").exists()  # refused before anything was made
    code, text, err = cli(capsys, "info", built, "--json")
    assert json.loads(text)["documents"] == 40  # nothing lost


def test_cli_without_onnxruntime_says_which_extra(tmp_path, built, tiny_ckpt, tiny_beir, capsys, no_onnxruntime):
    code, _, err = cli(capsys, "search", built, "q", "--query-backend", "onnx")
    one_error_line(code, err, "pip install 'pooledir[onnx]'")
    code, _, err = cli(capsys, "index", tiny_beir, "--out", tmp_path / "o", "--document-backend", "onnx")
    one_error_line(code, err, "pip install 'pooledir[onnx]'")
    code, _, err = cli(capsys, "serve", built, "--query-backend", "onnx-int8")
    one_error_line(code, err, "pip install 'pooledir[onnx]'")
