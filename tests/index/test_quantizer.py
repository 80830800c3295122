"""The shared quantizer's file: float16 coarse centroids on disk, the same codes and assignment after a reload.

tests/fixtures/format3_f32 was made by s8-quant at 1c02996 (main's code before float16 centroids): 300 documents
of 3-11 random unit 16-d vectors (pool_factor 1, train_min_vectors 1000, max_segments 4), added in three batches
of 100, then d7 replaced (seed 7007) and d5 deleted: three ``pq3`` segments, nlist 37, pq_m 2, float32 centroids.
format3_f32.expected.json holds that code's exhaustive search results for four seeded queries.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from pooledir.errors import IndexCorruptError
from pooledir.index.coarse import assign_lists, spherical_kmeans
from pooledir.index.segments import (
    FOOTER,
    coarse_centroids,
    read_quantizer,
    sa_encode,
    train_quantizer,
    write_faiss,
)
from pooledir.pooled_index import PooledIndex
from tests.conftest import FakeEncoder
from tests.index.test_folder import add, results

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DIM = 16


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def centroids(q) -> np.ndarray:
    return faiss.downcast_index(q.quantizer).reconstruct_n(0, q.nlist)


def coarse_on_disk(path: Path):
    """The coarse quantizer as the file stores it (read_quantizer decodes it)."""
    index = faiss.read_index(str(path))
    coarse = faiss.downcast_index(index.quantizer)
    coarse.referenced_objects = [index]  # the index owns it: keep the owner alive as long as this reference
    return coarse


@pytest.fixture(scope="module")
def trained():
    return train_quantizer(unit(6000, 0, 32), 6000, nlist=64, pq_m=4, pq_nbits=8)


def test_new_quantizer_files_hold_float16_centroids_and_encode_alike_after_a_reload(tmp_path, trained):
    c = centroids(trained)
    assert np.array_equal(c.astype(np.float16).astype(np.float32), c)  # rounded at training
    x = unit(2000, 1, 32)
    before = trained.sa_encode(x)
    path = tmp_path / "q.faiss"
    write_faiss(trained, path)
    on_disk = coarse_on_disk(path)
    assert isinstance(on_disk, faiss.IndexScalarQuantizer) and on_disk.sq.qtype == faiss.ScalarQuantizer.QT_fp16
    assert isinstance(faiss.downcast_index(trained.quantizer), faiss.IndexFlatIP)  # the writer put it back
    again = read_quantizer(path)
    assert isinstance(faiss.downcast_index(again.quantizer), faiss.IndexFlatIP)  # the fast assignment path
    assert np.array_equal(centroids(again), c)
    assert np.array_equal(again.sa_encode(x), before)
    assert np.array_equal(faiss.vector_to_array(again.pq.centroids), faiss.vector_to_array(trained.pq.centroids))
    D0, I0 = trained.quantizer.search(x[:50], 8)
    D1, I1 = again.quantizer.search(x[:50], 8)
    assert np.array_equal(I0, I1) and np.array_equal(D0, D1)
    # float16 saves 2 B per centroid value against the same quantizer written with float32 centroids, less
    # the scalar quantizer's header (36 B measured) and the checksum footer
    f32 = tmp_path / "f32.faiss"
    faiss.write_index(trained, str(f32))
    assert f32.stat().st_size - (path.stat().st_size - FOOTER.size) >= 64 * 32 * 2 - 64


def test_centroids_float16_cannot_hold_are_written_as_float32_bit_for_bit(tmp_path, trained):
    old = faiss.clone_index(trained)
    coarse = faiss.downcast_index(old.quantizer)
    c = centroids(old) + np.float32(1e-4)  # not float16 values: a quantizer trained before the rounding
    coarse.reset()
    coarse.add(c)
    path = tmp_path / "q.faiss"
    write_faiss(old, path)
    assert isinstance(coarse_on_disk(path), faiss.IndexFlatIP)
    assert np.array_equal(centroids(read_quantizer(path)), c)


def test_a_quantizer_whose_centroids_do_not_fill_its_lists_is_corrupt(tmp_path, trained):
    bad = faiss.clone_index(trained)
    coarse = faiss.downcast_index(bad.quantizer)
    keep = centroids(bad)[:10]
    coarse.reset()
    coarse.add(keep)
    path = tmp_path / "q.faiss"
    write_faiss(bad, path)
    with pytest.raises(IndexCorruptError, match="10 32-d centroids for 64 lists"):
        read_quantizer(path)


def test_a_format_3_index_with_float32_centroids_opens_searches_and_retrains_to_float16(tmp_path):
    path = tmp_path / "old"
    shutil.copytree(FIXTURES / "format3_f32", path)
    expected = json.loads((FIXTURES / "format3_f32.expected.json").read_text())
    rng = np.random.default_rng(expected["queries_seed"])
    Q = rng.standard_normal((4, 5, DIM)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=2, keepdims=True)
    idx = PooledIndex.open(path, device="cpu", encoder=FakeEncoder())
    assert isinstance(coarse_on_disk(path / "quantizer.1.faiss"), faiss.IndexFlatIP)
    assert results(idx, Q) == [[tuple(h) for h in hits] for hits in expected["results"]]
    add(idx, ["new"], [5])  # encoded with the float32 quantizer it was trained with
    assert len(idx) == 300
    idx.compact(retrain=True)
    info = idx.info()
    assert {s["kind"] for s in info["segments"]} == {"pq3"} and len(idx) == 300
    assert idx.get("d7").metadata == {"seed": 7007}  # the replaced document's second version
    q2 = path / "quantizer.2.faiss"
    assert isinstance(coarse_on_disk(q2), faiss.IndexScalarQuantizer)
    assert info["bytes"]["quantizer.2.faiss"] == q2.stat().st_size  # what the evaluation counts: the file on disk
    hits = results(idx, Q)
    assert all(len(h) == 10 for h in hits)
    again = PooledIndex.open(path, device="cpu", encoder=FakeEncoder())
    assert results(again, Q) == hits  # the reloaded float16 centroids give the codes the new segment holds


# -- training and encoding on numpy's BLAS ----------------------------------------------------------------------
def clustered(n: int, seed: int, k: int = 50, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(k, 99, dim)
    x = centres[rng.integers(0, k, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_blas_sa_encode_writes_faiss_own_codes(trained):
    """The codes pq3 segments store are faiss's ``sa_encode`` codes: list number first, then the residual's PQ code."""
    x = unit(3000, 2, 32)
    assert np.array_equal(sa_encode(trained, x), trained.sa_encode(x))
    assert sa_encode(trained, x[:0]).shape == (0, trained.sa_code_size())


def test_assign_lists_is_the_flat_quantizers_nearest_list_in_blocks(trained, monkeypatch):
    import pooledir.index.coarse as coarse

    x = unit(1000, 3, 32)
    _, want = trained.quantizer.search(x, 1)
    monkeypatch.setattr(coarse, "ASSIGN_BLOCK_BYTES", 4 * 64 * 100)  # blocks of 100 rows: several GEMMs
    assert np.array_equal(assign_lists(coarse_centroids(trained), x), want[:, 0])


def test_spherical_kmeans_fits_as_well_as_faiss_clustering():
    """Same objective as faiss's spherical k-means (what IndexIVF.train ran before): held-out mean max inner product."""
    train, held = unit(8000, 4), unit(2000, 5)  # no planted clusters: the fit does not hinge on the seeding
    mine = spherical_kmeans(train, 64, 10)
    cp = faiss.ClusteringParameters()
    cp.niter, cp.spherical, cp.min_points_per_centroid = 10, True, 1
    clus = faiss.Clustering(DIM, 64, cp)
    clus.train(train, faiss.IndexFlatIP(DIM))
    theirs = faiss.vector_to_array(clus.centroids).reshape(64, DIM)
    assert mine.shape == (64, DIM) and np.allclose(np.linalg.norm(mine, axis=1), 1, atol=1e-5)

    def fit(c: np.ndarray) -> float:
        return float((held @ c.T).max(axis=1).mean())

    assert fit(mine) >= fit(theirs) - 0.002, (fit(mine), fit(theirs))


def test_spherical_kmeans_splits_empty_clusters_off_large_ones():
    """Three distinct points repeated, eight centroids: clusters fall empty and are split, never NaN."""
    x = np.repeat(unit(3, 6), 200, axis=0)
    c = spherical_kmeans(x, 8, 5)
    assert np.isfinite(c).all() and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    assert len(np.unique(assign_lists(c, x))) == 3  # every point keeps a centroid of its own
