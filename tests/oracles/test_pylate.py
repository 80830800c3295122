"""Oracle: pooledir's vectors against PyLate's own, on checkpoints PyLate saved.

The fixtures under tests/fixtures/pylate/ come from eval/make_pylate_fixtures.py (PyLate 1.6,
transformers 5, run once in its own virtual environment): two tiny random checkpoints (BERT with one
Dense, ModernBERT with two Dense modules, the first with bias and Tanh) and PyLate's ``encode`` of
texts.json with the checkpoint's settings and with each convention changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pooledir.encoder import ColBERTEncoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pylate"


TEXTS = json.loads((FIXTURES / "texts.json").read_text())


MODELS = ("bert", "modernbert")


#: how each PyLate reference variant reads in config_sentence_transformers.json
VARIANT_CONFIG = {
    "default": {},
    "no_expansion": {"do_query_expansion": False},
    "attend_expansion": {"attend_to_expansion_tokens": True},
    "no_skiplist": {"skiplist_words": []},
    "no_prefix": {"query_prefix": "", "document_prefix": ""},
}


#: the same variants as ColBERTEncoder overrides (attending to expansion tokens has none)
VARIANT_OVERRIDES = {
    "no_expansion": {"query_augmentation": False},
    "no_skiplist": {"mask_punctuation": False},
    "no_prefix": {"markers": False},
}


def reference(model: str, variant: str) -> dict:
    return dict(np.load(FIXTURES / f"{model}.{variant}.npz"))


def copy_with_config(tmp_path: Path, model: str, **changes) -> Path:
    """A copy of a fixture checkpoint with ``config_sentence_transformers.json`` changed."""
    out = tmp_path / model
    shutil.copytree(FIXTURES / model, out)
    cfg = out / "config_sentence_transformers.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | changes))
    return out


def assert_equal_to_pylate(enc: ColBERTEncoder, ref: dict) -> None:
    Q = enc.encode_queries(TEXTS["queries"])
    assert Q.shape[:2] == (len(TEXTS["queries"]), enc.settings.query_maxlen)
    q_lengths = ref["queries_lengths"]
    q_ref = np.split(ref["queries"], np.cumsum(q_lengths)[:-1])
    for q, r in zip(Q, q_ref):
        assert np.abs(q[: len(r)] - r).max() <= 1e-4
        assert not np.any(q[len(r) :])  # PyLate drops what pooledir zeroes: padding not expanded
    docs = enc.encode_documents(TEXTS["documents"], dtype="float32")
    assert [len(d) for d in docs] == list(ref["documents_lengths"])
    assert np.abs(np.concatenate(docs) - ref["documents"]).max() <= 1e-4


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", list(VARIANT_CONFIG))
def test_equal_to_pylate(tmp_path, model, variant):
    """Each convention, as the checkpoint's config states it, gives PyLate's vectors."""
    path = copy_with_config(tmp_path, model, **VARIANT_CONFIG[variant]) if variant != "default" else FIXTURES / model
    enc = ColBERTEncoder(path, device="cpu", batch_size=2)
    assert enc.settings.layout == "pylate"
    assert_equal_to_pylate(enc, reference(model, variant))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", list(VARIANT_OVERRIDES))
def test_overrides_equal_pylate_settings(model, variant):
    enc = ColBERTEncoder(FIXTURES / model, device="cpu", **VARIANT_OVERRIDES[variant])
    assert_equal_to_pylate(enc, reference(model, variant))


@pytest.mark.parametrize("model", MODELS)
def test_every_convention_changes_the_vectors(model):
    """The references differ from the default where PyLate's convention acts, so the tests above bite."""
    base = reference(model, "default")
    changed = {
        "no_expansion": ("queries",),
        "attend_expansion": ("queries",),
        "no_skiplist": ("documents",),
        "no_prefix": ("queries", "documents"),
    }
    for variant, parts in changed.items():
        ref = reference(model, variant)
        for part in parts:
            a, b = ref[part], base[part]
            assert a.shape != b.shape or np.abs(a - b).max() > 1e-3, (variant, part)
    assert list(reference(model, "no_skiplist")["documents_lengths"]) != list(base["documents_lengths"])
