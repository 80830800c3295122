"""Fusing two ranked lists (dense MaxSim, lexical BM25) into one: pure functions over ``(id, score)`` lists.

Two methods, both common in hybrid retrieval:

- reciprocal rank fusion (Cormack et al. 2009): ``w / (c + rank_dense) + (1 - w) / (c + rank_lexical)``,
  ranks from 1, a lane that missed a document adds nothing; only ranks count, so the scales of the
  two scores never matter.
- a convex combination of normalised scores: each lane's scores min-max scaled to [0, 1] over the list
  it returned, then ``w * dense + (1 - w) * lexical``, a lane that missed a document adding 0.

``w`` is the dense lane's weight. Ties keep the order of first appearance (dense list first), so the
result is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pooledir.errors import InputError

#: one lane's result: (id, score) pairs, best first
Ranked = Sequence[tuple[str, float]]

METHODS = ("rrf", "convex")


@dataclass(frozen=True)
class Fusion:
    """How hybrid search fuses its lanes.

    Attributes
    ----------
    method : ``"rrf"`` or ``"convex"``.
    weight : the dense lane's weight in [0, 1] (the lexical lane gets ``1 - weight``).
    depth : documents each lane returns before fusion (at least the ``k`` asked for).
    rrf_c : the constant of reciprocal rank fusion (60 in the paper).
    """

    # chosen on tuning qrels only (SciFact train, NFCorpus dev) by eval/results/hybrid_rule.md: the largest
    # worst-case gain over the better lane (+0.5 pt NFCorpus dev, +2.8 pt SciFact train; eval/results/hybrid_tune/)
    method: str = "convex"
    weight: float = 0.5
    depth: int = 50
    rrf_c: int = 60

    def check(self) -> None:
        """Raise InputError naming a bad value and the allowed range."""
        if self.method not in METHODS:
            raise InputError(f"fusion method {self.method!r} is not one of {', '.join(METHODS)}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 <= self.weight <= 1:
            raise InputError(f"fusion weight={self.weight!r} must be a number in [0, 1]")
        for name in ("depth", "rrf_c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"fusion {name}={value!r} must be a positive integer")


def rrf(dense: Ranked, lexical: Ranked, weight: float = 0.5, c: int = 60) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of two lists; every id of either, best first."""
    scores: dict[str, float] = {}
    for lane, w in ((dense, weight), (lexical, 1.0 - weight)):
        for rank, (doc, _) in enumerate(_unique(lane), 1):
            scores[doc] = scores.get(doc, 0.0) + w / (c + rank)
    return _sorted(scores)


def minmax(scores: Sequence[float]) -> list[float]:
    """Scores scaled to [0, 1] (the best 1); all equal -> all 1 (a lane that agrees with itself)."""
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi <= lo:
        return [1.0] * len(scores)
    return [(s - lo) / (hi - lo) for s in scores]


def convex(dense: Ranked, lexical: Ranked, weight: float = 0.5) -> list[tuple[str, float]]:
    """Convex combination of min-max normalised scores; every id of either, best first."""
    scores: dict[str, float] = {}
    for lane, w in ((dense, weight), (lexical, 1.0 - weight)):
        lane = _unique(lane)
        for (doc, _), s in zip(lane, minmax([s for _, s in lane])):
            scores[doc] = scores.get(doc, 0.0) + w * s
    return _sorted(scores)


def fuse(dense: Ranked, lexical: Ranked, fusion: Fusion, k: int) -> list[tuple[str, float]]:
    """The ``k`` best of the two lists by ``fusion``'s method and weight."""
    if fusion.method == "rrf":
        return rrf(dense, lexical, fusion.weight, fusion.rrf_c)[:k]
    return convex(dense, lexical, fusion.weight)[:k]


def _unique(lane: Ranked) -> list[tuple[str, float]]:
    """A lane's first (best) entry per id: a duplicate id would otherwise count twice."""
    seen: dict[str, float] = {}
    for doc, s in lane:
        seen.setdefault(doc, float(s))
    return list(seen.items())


def _sorted(scores: dict[str, float]) -> list[tuple[str, float]]:
    # sorted() is stable: equal scores keep first appearance (dense lane first)
    return sorted(scores.items(), key=lambda item: -item[1])
