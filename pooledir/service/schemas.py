"""Request and response models: the HTTP API's contract (shown at /docs).

Every string a request carries must be storable as UTF-8 (no lone surrogates),
numbers are strict (``"3"`` and ``true`` are not a ``k``), and filter values
fit sqlite's 64-bit integers: bad input is a 422 here, never a 5xx later.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from pooledir.corpus import check_metadata, check_utf8
from pooledir.pooled_index import MAX_FILTER_FIELDS


def _utf8(v: str) -> str:
    return check_utf8(v, "the string")


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or whitespace")
    return v


def _not_an_int(v: Any) -> Any:
    if isinstance(v, int):  # strict floats take ints: keep them in the 64-bit integer branch and its bounds
        raise ValueError("an integer is not a float here")
    return v


_PATH_UNSAFE = re.compile(r'["\\\x00-\x1f]')


def _filter_field(v: str) -> str:
    if _PATH_UNSAFE.search(v):
        raise ValueError("a filter field name may not contain quotes, backslashes or control characters")
    return v


Text = Annotated[StrictStr, AfterValidator(_utf8)]
NonBlank = Annotated[StrictStr, StringConstraints(min_length=1), AfterValidator(_utf8), AfterValidator(_not_blank)]
DocId = Annotated[NonBlank, StringConstraints(max_length=512)]
Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False), BeforeValidator(_not_an_int)]
FilterValue = Text | Int64 | FiniteFloat | StrictBool
FilterField = Annotated[
    StrictStr, StringConstraints(max_length=256), AfterValidator(_utf8), AfterValidator(_filter_field)
]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class SearchOptions(BaseModel):
    """Knobs shared by single and batch search; unset ones take the library defaults."""

    model_config = ConfigDict(extra="forbid")

    k: PositiveInt = Field(10, description="results per query (at most the service's max_k)")
    nprobe: PositiveInt | None = Field(None, description="IVF lists probed per query token")
    candidates_per_token: Annotated[StrictInt, Field(ge=1, le=4096)] | None = None
    rerank: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = Field(
        None, description="candidates scored by full MaxSim"
    )
    prune: StrictBool = Field(
        False, description="centroid-score pruning in format-3 indexes' candidate lists (faster; SearchParams.prune)"
    )
    with_text: StrictBool = False
    filter: dict[FilterField, FilterValue] | None = Field(
        None,
        max_length=MAX_FILTER_FIELDS,
        description="rank only documents whose metadata equals every given field (exact MaxSim over them)",
    )
    mode: Literal["dense", "lexical", "hybrid"] = Field(
        "dense", description="dense (MaxSim), lexical (BM25 over the stored text) or hybrid (both, fused)"
    )


class SearchRequest(SearchOptions):
    """One query (at most the service's max_query_chars characters)."""

    query: NonBlank


class BatchSearchRequest(SearchOptions):
    """Several queries with the same options."""

    queries: list[NonBlank] = Field(..., min_length=1)


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

    id: DocId
    text: Text
    title: Text | None = None
    metadata: Metadata | None = None


class UpsertRequest(BaseModel):
    """A batch of documents to add or replace by id."""

    documents: list[DocumentIn] = Field(..., min_length=1)


class UpsertResponse(BaseModel):
    """How many were written and the index's new size."""

    upserted: int
    documents: int


class DeleteRequest(BaseModel):
    """Ids to delete; all must exist."""

    ids: list[NonBlank] = Field(..., min_length=1)


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
    #: index name -> why it cannot serve (readiness only)
    detail: dict[str, str] | None = None
