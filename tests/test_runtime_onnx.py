"""The default query backend ("auto"): ONNX Runtime fp32 where it can run, torch otherwise, never an error."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pooledir.encoder import DEFAULT_QUERY_BACKEND, ColBERTEncoder

QUERIES = ["cancer cells", "vitamin bone study in mice", "brain heart"]


def test_default_query_backend_is_onnx_where_installed_and_matches_torch(tiny_ckpt):
    pytest.importorskip("onnxruntime")
    assert DEFAULT_QUERY_BACKEND == "auto"
    default = ColBERTEncoder(tiny_ckpt, device="cpu")
    got = default.encode_queries(QUERIES)
    assert default.query_backend == "onnx" and default._query_runtime is not None
    want = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="torch").encode_queries(QUERIES)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_an_explicit_torch_backend_wins(tiny_ckpt):
    enc = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="torch")
    enc.encode_queries(QUERIES)
    assert enc.query_backend == "torch" and enc._query_runtime is None


def test_default_falls_back_to_torch_without_onnxruntime(tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # importing it fails
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "onnxruntime" else object())
    enc = ColBERTEncoder(tiny_ckpt, device="cpu")  # no error
    got = enc.encode_queries(QUERIES)
    assert enc.query_backend == "torch"
    want = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="torch").encode_queries(QUERIES)
    assert np.array_equal(got, want)


def test_default_falls_back_to_torch_when_the_export_fails(tiny_ckpt, tmp_path, monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: the graph must be exported

    def broken(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr("pooledir.runtime_onnx.export_onnx", broken)
    enc = ColBERTEncoder(tiny_ckpt, device="cpu")
    with caplog.at_level("WARNING", logger="pooledir.encoder"):
        got = enc.encode_queries(QUERIES)
    assert enc.query_backend == "torch"
    assert "exporter broke" in caplog.text and "encoding queries with torch" in caplog.text
    want = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="torch").encode_queries(QUERIES)
    assert np.array_equal(got, want)
    with pytest.raises(RuntimeError, match="exporter broke"):  # asked for explicitly, the failure is not hidden
        ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="onnx")


def test_the_onnx_session_does_not_spin_between_queries(tiny_ckpt):
    """Idle ONNX Runtime threads sleep: spinning after each query's encoding took CPU from the search after it
    (2 shared cores: process CPU per query 39 -> 31 ms with the option off)."""
    pytest.importorskip("onnxruntime")
    from pooledir.runtime_onnx import SPINNING

    enc = ColBERTEncoder(tiny_ckpt, device="cpu", query_backend="onnx")
    enc.encode_queries(QUERIES)
    assert enc._query_runtime.session.get_session_options().get_session_config_entry(SPINNING) == "0"
