"""Oracle: colbert-ai's own Checkpoint encodes the tiny checkpoint as pooledir's encoder does."""

from __future__ import annotations

import json

import numpy as np

from tests.test_encoder import QUERIES, TEXTS


def test_equal_to_colbert_ai(tiny_ckpt, tiny_encoder):
    """Our loader + tokenization must reproduce colbert-ai's Checkpoint output."""
    from colbert.infra import ColBERTConfig
    from colbert.modeling.checkpoint import Checkpoint

    meta = json.loads((tiny_ckpt / "artifact.metadata").read_text())
    ck = Checkpoint(
        str(tiny_ckpt), colbert_config=ColBERTConfig(doc_maxlen=meta["doc_maxlen"], query_maxlen=meta["query_maxlen"])
    )
    ref, doclens = ck.docFromText(TEXTS, bsize=2, keep_dims="flatten")
    ours = tiny_encoder.encode_documents(TEXTS)
    assert [len(d) for d in ours] == list(doclens)
    assert np.allclose(np.concatenate(ours).astype(np.float32), ref.float().numpy(), atol=2e-3)
    q_ref = ck.queryFromText(QUERIES).float().numpy()
    q_ours = tiny_encoder.encode_queries(QUERIES)
    assert q_ours.shape == q_ref.shape == (3, 16, 16)
    assert np.allclose(q_ours, q_ref, atol=1e-5)
