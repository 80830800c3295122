from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pooledir.errors import InputError
from pooledir.pooling import n_clusters, pool_embeddings, ward_labels


def unit(rng, n, d=16):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def canonical(labels) -> list[int]:
    """Relabel by first appearance so partitions compare equal whatever the label numbers."""
    seen: dict[int, int] = {}
    return [seen.setdefault(int(v), len(seen)) for v in labels]


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_counts_norms_and_protected_token(factor):
    rng = np.random.default_rng(1)
    docs = [unit(rng, n) for n in (1, 2, 3, 10, 57, 200)]
    pooled = pool_embeddings(docs, factor, protected_tokens=1)
    for d, p in zip(docs, pooled):
        assert len(p) == n_clusters(len(d), factor, 1) == (1 + max(1, (len(d) - 1) // factor) if len(d) > 1 else 1)
        assert p.dtype == np.float16
        assert np.allclose(np.linalg.norm(p.astype(np.float32), axis=1), 1, atol=2e-3)
        assert np.allclose(p[0], d[0], atol=1e-3)  # [CLS] kept as it is


def test_torch_path_matches_cpu_path():
    rng = np.random.default_rng(3)
    docs = [unit(rng, n) for n in (1, 2, 9, 33, 70)]
    cpu = pool_embeddings(docs, 2)
    tor = pool_embeddings(docs, 2, method="torch", batch_size=2)
    for a, b in zip(cpu, tor):
        rows_a = sorted(map(tuple, np.round(a.astype(np.float32), 2)))
        rows_b = sorted(map(tuple, np.round(b.astype(np.float32), 2)))
        assert rows_a == rows_b


def test_identity_and_edge_documents():
    rng = np.random.default_rng(4)
    docs = [unit(rng, 12), unit(rng, 1)]
    same = pool_embeddings(docs, 1)
    assert all(np.array_equal(a.astype(np.float16), b) for a, b in zip(docs, same))
    protected_only = pool_embeddings([unit(rng, 2)], 2, protected_tokens=2)[0]
    assert len(protected_only) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_pool_factor(bad):
    with pytest.raises(InputError, match="pool_factor"):
        pool_embeddings([np.ones((3, 4), np.float32)], bad)


#: GPU pooling runs Ward in float32, the CPU path (scipy) in float64: pooled unit vectors agree to this (max abs)
GPU_POOLING_ATOL = 1e-4


def assert_same_rows(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """The same set of rows, in any order (cluster numbering differs between paths), each within ``atol``."""
    assert a.shape == b.shape
    match = np.argmax(a.astype(np.float64) @ b.astype(np.float64).T, axis=1)
    assert sorted(match.tolist()) == list(range(len(b))), "the rows do not pair up one to one"
    assert np.abs(a - b[match]).max() <= atol


def test_assert_same_rows_sees_a_different_row():
    x = unit(np.random.default_rng(0), 4)
    assert_same_rows(x[::-1], x, 0.0)
    with pytest.raises(AssertionError):
        assert_same_rows(x, np.concatenate([x[:3], -x[3:]]), 1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pooling_matches_cpu():
    """Batched Ward on the GPU (float32) pools every document as scipy does on the CPU, within GPU_POOLING_ATOL."""
    rng = np.random.default_rng(5)
    docs = [unit(rng, n, 128) for n in (1, 2, 5, 80, 240)]
    for factor in (2, 4):
        gpu = pool_embeddings(docs, factor, device="cuda")
        cpu = pool_embeddings(docs, factor, device="cpu")
        for a, b in zip(gpu, cpu):
            assert_same_rows(a.astype(np.float32), b.astype(np.float32), GPU_POOLING_ATOL)


@pytest.mark.parametrize("bad", [0, -1, True, np.bool_(True), 2.0, np.float32(2), "2", None])
def test_one_pool_factor_rule_for_pooling_and_index_config(bad):
    from pooledir.pooled_index import IndexConfig

    x = unit(np.random.default_rng(0), 6)
    with pytest.raises(InputError, match=r"pool_factor=.* must be an integer >= 1"):
        pool_embeddings([x], bad)
    with pytest.raises(InputError, match=r"pool_factor=.* must be an integer >= 1"):
        IndexConfig(pool_factor=bad).check()


def test_numpy_int_pool_factor_is_accepted_everywhere(tiny_encoder, tiny_docs, tmp_path):
    import json

    from pooledir.pooled_index import IndexConfig, PooledIndex

    x = unit(np.random.default_rng(0), 9)
    assert len(pool_embeddings([x], np.int64(2))[0]) == len(pool_embeddings([x], 2)[0])
    config = IndexConfig(backend="flat", pool_factor=np.int64(2))
    with PooledIndex.create(tmp_path / "i", config=config, device="cpu", encoder=tiny_encoder) as idx:
        idx.add(tiny_docs[:5])
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert manifest["config"]["pool_factor"] == 2


# --- adaptive pooling: a per-document budget from Ward's merge heights


@given(n=st.integers(3, 50), seed=st.integers(0, 10_000), data=st.data())
@settings(max_examples=40, deadline=None)
def test_threshold_between_merge_heights_equals_fixed_k(n, seed, data):
    from pooledir.pooling import ward_threshold_labels, ward_tree

    X = unit(np.random.default_rng(seed), n)
    heights = ward_tree(X)[:, 2]
    k = data.draw(st.integers(2, n - 1))
    lo, hi = heights[n - k - 1], heights[n - k]  # after n - k merges there are k clusters
    if hi - lo < 1e-9:  # tied heights: no threshold separates them
        return
    labels = ward_threshold_labels(X, (lo + hi) / 2)
    assert labels.max() + 1 == k
    assert labels.tolist() == ward_labels(X, k).tolist()  # the same labels as maxclust, not only the same partition


def test_threshold_pooling_equals_fixed_factor_pooling_for_one_document():
    from pooledir.pooling import pool_document, ward_tree

    X = unit(np.random.default_rng(3), 41)  # [CLS] + 40 tokens: factor 2 keeps 1 + 20
    heights = ward_tree(X[1:])[:, 2]
    t = (heights[40 - 20 - 1] + heights[40 - 20]) / 2
    [fixed] = pool_embeddings([X], pool_factor=2)
    [adaptive] = pool_embeddings([X], pool_threshold=t)
    assert adaptive.shape == (21, 16)
    np.testing.assert_array_equal(adaptive, fixed)
    np.testing.assert_array_equal(adaptive, pool_document(X, 5, 1, t))  # the factor is ignored


def test_vector_counts_fall_as_the_threshold_rises():
    rng = np.random.default_rng(4)
    docs = [unit(rng, int(n)) for n in rng.integers(1, 60, size=30)]
    counts = [sum(len(p) for p in pool_embeddings(docs, pool_threshold=t)) for t in (0.0, 0.2, 0.5, 1.0, 2.0, 1e9)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == sum(len(d) for d in docs)  # random unit vectors: no merge of height 0
    assert counts[-1] == sum(min(len(d), 2) for d in docs)  # [CLS] + one cluster each
    assert len(set(counts)) > 3
    for p in pool_embeddings(docs, pool_threshold=0.5):
        np.testing.assert_allclose(np.linalg.norm(p.astype(np.float32), axis=1), 1, atol=1e-2)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1", True])
def test_bad_pool_threshold(bad):
    with pytest.raises(InputError, match="pool_threshold"):
        pool_embeddings([np.ones((3, 4), np.float32)], pool_threshold=bad)
