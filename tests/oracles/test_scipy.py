"""Oracle: Ward pooling (CPU and batched torch) against scipy's hierarchical clustering."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from pooledir.pooling import pool_embeddings, ward_labels, ward_labels_torch
from tests.test_pooling import canonical, unit


def scipy_labels(X, k):
    """Ward on condensed cosine distances (PyLate 1.6's input), scipy's reference implementation."""
    return fcluster(linkage(pdist(X.astype(np.float64), "cosine"), "ward"), k, "maxclust") - 1


@given(n=st.integers(2, 60), k=st.integers(1, 60), seed=st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_cpu_labels_equal_scipy(n, k, seed):
    X = unit(np.random.default_rng(seed), n)
    k = min(k, n)
    assert canonical(ward_labels(X, k)) == canonical(scipy_labels(X, k))


def test_torch_batched_labels_equal_scipy():
    rng = np.random.default_rng(0)
    docs = [unit(rng, n) for n in (1, 2, 5, 17, 40, 64)]
    width = max(len(d) for d in docs)
    X = torch.zeros(len(docs), width, 16, dtype=torch.float64)
    for i, d in enumerate(docs):
        X[i, : len(d)] = torch.from_numpy(d).double()
    lengths = torch.tensor([len(d) for d in docs])
    for factor in (2, 3, 4):
        k = (lengths // factor).clamp(min=1)
        labels, alive = ward_labels_torch(X, lengths, k)
        for i, d in enumerate(docs):
            ref = scipy_labels(d, int(k[i])) if len(d) > 1 else [0]
            assert canonical(labels[i, : len(d)].tolist()) == canonical(ref)
            assert int(alive[i].sum()) == min(int(k[i]), len(d))


def test_pooled_means_are_cluster_means():
    rng = np.random.default_rng(2)
    d = unit(rng, 30)
    p = pool_embeddings([d], 3, protected_tokens=0)[0].astype(np.float32)
    labels = scipy_labels(d, 10)
    expected = np.stack([d[labels == c].mean(0) for c in range(10)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(p, expected, atol=2e-3)
