"""search.py's helpers; move these two into tests/test_search.py (edited on another branch right now).

Everything else this file held tests PooledIndex and moved to tests/test_pooled_index.py (issue 18: one test file
per module); the segment defaults moved to tests/index/test_segments.py.
"""

from __future__ import annotations

import numpy as np

from pooledir.search import SearchParams, approximate_scores


def test_search_params_from_optional_keeps_defaults_for_missing_knobs():
    default = SearchParams()
    p = SearchParams.from_optional(5, nprobe=None, candidates_per_token=7, rerank=None)
    assert (p.k, p.nprobe, p.candidates_per_token, p.rerank) == (5, default.nprobe, 7, default.rerank)


def test_approximate_scores_imputes_missing_tokens():
    scores = np.array([[0.9, 0.5], [0.8, 0.7]], dtype=np.float32)
    docs = np.array([[1, 2], [2, -1]])
    cands, approx = approximate_scores(scores, docs)
    assert cands.tolist() == [1, 2]
    # doc 1 missed token 1: imputed with that token's lowest returned score (0.8)
    assert np.allclose(approx, [0.9 + 0.8, 0.5 + 0.8])
