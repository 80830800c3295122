"""Request and response models: the HTTP API's contract (shown at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

Scalar = str | int | float | bool


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or whitespace")
    return v


class SearchOptions(BaseModel):
    """Knobs shared by single and batch search; unset ones take the library defaults."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(10, ge=1, description="results per query (at most the service's max_k)")
    nprobe: int | None = Field(None, ge=1, description="IVF lists probed per query token")
    candidates_per_token: int | None = Field(None, ge=1, le=4096)
    rerank: int | None = Field(None, ge=1, le=100_000, description="candidates scored by full MaxSim")
    with_text: bool = False
    filter: dict[str, Scalar] | None = Field(
        None, description="rank only documents whose metadata equals every given field (exact MaxSim over them)"
    )


class SearchRequest(SearchOptions):
    """One query."""

    query: str = Field(..., min_length=1)

    _check = field_validator("query")(_not_blank)


class BatchSearchRequest(SearchOptions):
    """Several queries with the same options."""

    queries: list[str] = Field(..., min_length=1)

    @field_validator("queries")
    @classmethod
    def _each_not_blank(cls, v: list[str]) -> list[str]:
        for i, q in enumerate(v):
            if not q.strip():
                raise ValueError(f"query {i} must not be empty or whitespace")
        return v


class Hit(BaseModel):
    """One ranked document."""

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None


class SearchResponse(BaseModel):
    """Ranked hits of one query and the server-side time."""

    results: list[Hit]
    took_ms: float


class BatchSearchResponse(BaseModel):
    """One ranked list per query, in request order."""

    results: list[list[Hit]]
    took_ms: float


class DocumentIn(BaseModel):
    """A document to add or replace; ``title`` is prepended to ``text`` for encoding (BEIR's rule)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1, max_length=512)
    text: str
    title: str | None = None
    metadata: dict[str, Any] | None = None


class UpsertRequest(BaseModel):
    """A batch of documents to add or replace by id."""

    documents: list[DocumentIn] = Field(..., min_length=1)


class UpsertResponse(BaseModel):
    """How many were written and the index's new size."""

    upserted: int
    documents: int


class DeleteRequest(BaseModel):
    """Ids to delete; all must exist."""

    ids: list[str] = Field(..., min_length=1)


class DeleteResponse(BaseModel):
    """How many were deleted and the index's new size."""

    deleted: int
    documents: int


class DocumentOut(BaseModel):
    """A stored document."""

    id: str
    text: str
    metadata: dict[str, Any]


class IndexStats(BaseModel):
    """Counts, sizes and settings of one served index."""

    name: str
    documents: int
    vectors_before_pooling: int
    vectors: int
    pool_factor: int
    index_bytes: int
    backend: dict[str, Any]
    device: str
    checkpoint: str


class IndexList(BaseModel):
    """Every served index."""

    indexes: list[IndexStats]


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    indexes: list[str] = []
