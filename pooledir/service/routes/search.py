"""MaxSim search, one query or a batch (plain ``def``: encoding and the read lock run in the thread pool)."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException

from pooledir.search import SearchParams
from pooledir.service.deps import IndexDep, SettingsDep
from pooledir.service.handles import IndexHandle
from pooledir.service.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    Hit,
    SearchOptions,
    SearchRequest,
    SearchResponse,
)
from pooledir.service.settings import Settings

router = APIRouter(prefix="/indexes/{name}/search", tags=["search"])


def _params(opts: SearchOptions, max_k: int) -> SearchParams:
    if opts.k > max_k:
        raise HTTPException(422, f"k={opts.k} is above this service's limit {max_k}")
    return SearchParams.from_optional(opts.k, opts.nprobe, opts.candidates_per_token, opts.rerank, opts.prune)


def _run(handle: IndexHandle, queries: list[str], opts: SearchOptions, settings: Settings) -> list[list[Hit]]:
    for i, q in enumerate(queries):
        if len(q) > settings.max_query_chars:
            raise HTTPException(
                422, f"query {i} has {len(q)} characters; this service takes at most {settings.max_query_chars}"
            )
    params = _params(opts, settings.max_k)
    _check_size(len(queries), opts, settings)
    results = handle.search(queries, params, with_text=opts.with_text, filter=opts.filter, mode=opts.mode)
    if opts.with_text:
        chars = sum(len(h.text or "") for hits in results for h in hits)
        if chars > settings.max_response_text_chars:
            raise HTTPException(
                422,
                f"the hits' texts add up to {chars} characters; this service returns at most "
                f"{settings.max_response_text_chars}: ask for fewer results or leave with_text off",
            )
    return [[Hit(**h.__dict__) for h in hits] for hits in results]


def _check_size(n_queries: int, opts: SearchOptions, settings: Settings) -> None:
    """Bound the response before searching: queries x k results, fewer when they carry their text."""
    total = n_queries * opts.k
    limit = settings.max_text_results if opts.with_text else settings.max_results
    if total > limit:
        text = " with with_text" if opts.with_text else ""
        raise HTTPException(
            422,
            f"{n_queries} queries x k={opts.k} asks for {total} results{text}; this service returns at most "
            f"{limit} per request: lower k or send fewer queries per batch",
        )


@router.post("", response_model=SearchResponse, response_model_exclude_none=True)
def search(req: SearchRequest, handle: IndexDep, settings: SettingsDep) -> SearchResponse:
    """Top-k documents for one query by MaxSim."""
    t = time.perf_counter()
    results = _run(handle, [req.query], req, settings)
    return SearchResponse(results=results[0], took_ms=(time.perf_counter() - t) * 1000)


@router.post("/batch", response_model=BatchSearchResponse, response_model_exclude_none=True)
def search_batch(req: BatchSearchRequest, handle: IndexDep, settings: SettingsDep) -> BatchSearchResponse:
    """Top-k documents for each of several queries; one result list per query, in order."""
    if len(req.queries) > settings.max_batch_queries:
        raise HTTPException(
            413,
            f"{len(req.queries)} queries in one batch; at most {settings.max_batch_queries}",
        )
    t = time.perf_counter()
    results = _run(handle, req.queries, req, settings)
    return BatchSearchResponse(results=results, took_ms=(time.perf_counter() - t) * 1000)
