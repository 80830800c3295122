"""The coarse quantizer's numerics (pooledir.index.coarse): two-level k-means and grouped list assignment.

From ``TWO_LEVEL_LISTS`` lists on (16,384, which a ``train_sample`` of 638,976 allows past 2**20 vectors) training
is two-level and batches are assigned through centroid groups (eval/results/scale_rule.md). The tests lower the
mark so small data crosses it.
"""

from __future__ import annotations

import numpy as np
import pytest

import pooledir.index.coarse as coarse
from pooledir.index.coarse import _shares, assign_lists, exact_lists, group_index, spherical_kmeans, two_level_kmeans
from pooledir.index.segments import MIN_POINTS_PER_LIST
from tests.index.test_folder import EVERYTHING, add, create, doc_vectors, queries, results

DIM = 16


def clustered(n: int, seed: int, k: int = 40, dim: int = DIM) -> np.ndarray:
    centres = np.random.default_rng(99).standard_normal((k, dim)).astype(np.float32)  # the same clusters
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, k, n)] / np.sqrt(dim) + 0.15 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fit(x: np.ndarray, c: np.ndarray) -> float:
    """Mean inner product of each vector with its nearest centroid: what the residual codes have left to encode."""
    return float((x @ c.T).max(axis=1).mean())


def test_two_level_kmeans_trains_k_unit_centroids_that_fit_about_as_well_as_flat():
    """Measured on this data: held-out fit 0.8762 two-level, 0.8761 flat at 200 lists; random centroids 0.8224."""
    train, held = clustered(12_000, 1), clustered(3_000, 2)
    two = two_level_kmeans(train, 200, 10)
    flat = spherical_kmeans(train, 200, 10)
    assert two.shape == (200, DIM) and two.dtype == np.float32
    assert np.allclose(np.linalg.norm(two, axis=1), 1, atol=1e-5)
    assert len(np.unique(two, axis=0)) == 200
    assert fit(held, two) >= fit(held, flat) - 0.02, (fit(held, two), fit(held, flat))
    assert fit(held, two) > fit(held, train[:200]) + 0.01  # better than centroids drawn at random


def test_two_level_kmeans_needs_a_vector_a_centroid():
    with pytest.raises(ValueError, match="at least 50 training vectors"):
        two_level_kmeans(clustered(40, 3), 50, 5)


@pytest.mark.parametrize(
    ("sizes", "k"), [([10, 10, 10], 7), ([1, 1, 1000], 900), ([5, 0, 3], 8), ([100, 1, 1, 1], 103), ([7], 3)]
)
def test_a_groups_share_is_proportional_sums_to_k_and_never_exceeds_its_points(sizes, k):
    sizes = np.array(sizes, dtype=np.int64)
    share = _shares(sizes, k)
    assert int(share.sum()) == k and (share <= sizes).all() and (share >= 0).all()
    assert (np.abs(share - sizes * k / sizes.sum()) < 1).all()  # floor or ceiling of its proportional share


def test_grouped_assignment_mostly_finds_the_exact_nearest_list_and_is_cached(monkeypatch):
    """256 centroids in 16 groups. Measured: probing 2 groups finds 0.986 of the exact lists (0.0022 lower mean fit),
    1 group 0.947 (0.0103), 8 groups all of them."""
    monkeypatch.setattr(coarse, "TWO_LEVEL_LISTS", 256)
    monkeypatch.setattr(coarse, "GROUP_PROBE", 2)
    monkeypatch.setattr(coarse, "_groups", type(coarse._groups)())
    c = spherical_kmeans(clustered(20_000, 4), 256, 10)
    x = clustered(5_000, 5)
    exact = exact_lists(c, x)
    grouped = assign_lists(c, x)
    assert grouped.dtype == np.int64 and grouped.min() >= 0 and grouped.max() < 256
    assert 0.95 <= np.mean(grouped == exact) < 1, np.mean(grouped == exact)  # groups were searched, not all lists
    loss = float(np.mean(np.einsum("ij,ij->i", x, c[exact]) - np.einsum("ij,ij->i", x, c[grouped])))
    assert 0 <= loss < 0.005, loss
    assert group_index(c) is group_index(c.copy())  # same centroids: built once
    assert group_index(c) is not group_index(c[::-1].copy())
    assert np.array_equal(exact_lists(c[:100], x), assign_lists(c[:100], x))  # below the mark: exact


def test_an_index_past_the_mark_trains_two_level_and_keeps_the_flat_oracles_answers(tmp_path, monkeypatch):
    """With the mark lowered to 64 lists, 700 documents (~4,900 vectors) get min(PLAID's 1,024, 4,900 / 39) lists.

    Those are trained two-level and assigned through groups (a spy counts the two-level trainings). The
    searches keep most of the flat index's top 10 (uniform random 16-d vectors, pq_m 8 at 6 bits, 3 of 11 groups
    probed; measured: 0.750 overlap, largest MaxSim error 0.274; flat k-means at 125 lists: 0.783 and 0.192).
    """
    calls: list[int] = []
    real = coarse.two_level_kmeans

    def spy(x: np.ndarray, k: int, niter: int) -> np.ndarray:
        calls.append(k)
        return real(x, k, niter)

    monkeypatch.setattr(coarse, "TWO_LEVEL_LISTS", 64)
    monkeypatch.setattr(coarse, "GROUP_PROBE", 3)
    monkeypatch.setattr(coarse, "two_level_kmeans", spy)
    flat = create(tmp_path / "flat", backend="flat")
    pq3 = create(tmp_path / "pq3", backend="ivfpq", train_min_vectors=4500, pq_m=8)
    ids, seeds = [f"d{i}" for i in range(700)], list(range(700))
    add(flat, ids, seeds)
    add(pq3, ids, seeds)
    n = pq3.info()["vectors"]
    nlist = pq3.info()["backend"]["nlist"]
    assert nlist == n // MIN_POINTS_PER_LIST >= 64 and calls == [nlist]
    Q = queries(12)
    exact, approx = results(flat, Q), results(pq3, Q)
    overlap = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(exact, approx)])
    assert overlap >= 0.7, overlap
    truth = {i: doc_vectors(s) for i, s in zip(ids, seeds)}
    errors = [abs(s - float((q @ truth[d].T).max(axis=1).sum())) for q, hits in zip(Q, approx) for d, s in hits]
    assert max(errors) < 0.35, max(errors)
    assert results(pq3, Q, EVERYTHING) == approx


def test_a_row_no_probed_group_answers_gets_its_exact_list(monkeypatch):
    """faiss answers -1 when every probed group is empty; such rows fall back to the exact nearest list."""

    class EmptyGroups:
        def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            labels = np.full((len(x), k), -1, dtype=np.int64)
            labels[::2] = 3  # every other row found list 3
            return np.zeros((len(x), k), dtype=np.float32), labels

    monkeypatch.setattr(coarse, "TWO_LEVEL_LISTS", 8)
    monkeypatch.setattr(coarse, "group_index", lambda centroids: EmptyGroups())
    c = spherical_kmeans(clustered(2_000, 6), 16, 5)
    x = clustered(50, 7)
    got = assign_lists(c, x)
    assert (got[::2] == 3).all() and np.array_equal(got[1::2], exact_lists(c, x[1::2]))
