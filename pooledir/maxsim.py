"""MaxSim (late interaction) over packed document vectors."""

from __future__ import annotations

import numpy as np


def maxsim(queries: np.ndarray, vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Score every query against every document by MaxSim.

    Parameters
    ----------
    queries : (nq, Lq, d) float
        Query token vectors.
    vectors : (N, d) float
        All documents' vectors, packed one document after another.
    offsets : (n_docs + 1,) int
        Document ``j`` owns ``vectors[offsets[j]:offsets[j + 1]]``; every document has >= 1 vector.

    Returns
    -------
    (nq, n_docs) float32
        ``sum over query tokens of max over the document's vectors of q · v``.
    """
    offsets = np.asarray(offsets)
    if offsets[-1] != len(vectors) or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
        raise ValueError("offsets must start at 0, end at len(vectors) and give every document >= 1 vector")
    nq, lq, d = queries.shape
    q = np.asarray(queries, dtype=np.float32).reshape(nq * lq, d)  # asarray: no copy when already float32
    # (N, nq*Lq): OpenBLAS runs this shape faster than q @ vectors.T (32 x 128 by 128 x 8k on one thread:
    # 0.71 vs 1.20 ms; on this machine the same floats, checked over 100 SciFact searches); the max over each
    # document's rows is exact, and the sum below runs in the old layout
    sims = np.asarray(vectors, dtype=np.float32) @ q.T
    per_doc = np.maximum.reduceat(sims, offsets[:-1], axis=0)  # (n_docs, nq*Lq): max over each doc's vectors
    scores: np.ndarray = np.ascontiguousarray(per_doc.T).reshape(nq, lq, -1).sum(axis=1)  # summed as before
    return scores
