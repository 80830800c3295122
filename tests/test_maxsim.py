from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledir.maxsim import maxsim


def naive(Q, docs):
    out = np.zeros((len(Q), len(docs)))
    for qi, q in enumerate(Q):
        for di, d in enumerate(docs):
            out[qi, di] = sum(max(float(qt @ dt) for dt in d) for qt in q)
    return out


@given(
    nq=st.integers(1, 3),
    lq=st.integers(1, 6),
    dim=st.integers(1, 8),
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
)
@settings(max_examples=80, deadline=None)
def test_maxsim_equals_naive_loop(nq, lq, dim, lengths, seed):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((nq, lq, dim)).astype(np.float32)
    docs = [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    got = maxsim(Q, np.concatenate(docs), offsets)
    assert got.shape == (nq, len(docs))
    assert np.allclose(got, naive(Q, docs), atol=1e-4)


def test_empty_document_is_rejected():
    with pytest.raises(ValueError, match="every document >= 1 vector"):
        maxsim(np.ones((1, 2, 3)), np.ones((2, 3)), np.array([0, 0, 2]))
