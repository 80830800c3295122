"""Property-based API test: schemathesis generates requests from the OpenAPI schema; no answer may be a 5xx.

Besides the plain run: requests outside the schema (negative mode: filters over the field cap, k past
the limits), a service with tight response-size limits, and an index whose newest segment is corrupt
(there only a JSON 503 with a message may stand for a 5xx).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow

#: generated cases per operation (hypothesis may stop early on small input spaces, e.g. GET /healthz)
EXAMPLES = 40


def _on_served_index(case):
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = "tiny"
    return case


def run_schemathesis(app_or_schema, examples: int, mode=GenerationMode.POSITIVE, check=None) -> int:
    """Every operation of the app's schema, ``examples`` cases each; ``check(case, response)`` per answer.

    Operations with nothing to generate in ``mode`` (no parameters to break in negative mode) are skipped.
    """
    schema = app_or_schema
    if not hasattr(schema, "get_all_operations"):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app_or_schema)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9
    calls = 0
    for operation in operations:
        # random index names only reach the 404 path (tested elsewhere): aim every case at the real index
        strategy = operation.as_strategy(generation_mode=mode).map(_on_served_index)

        @given(case=strategy)
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def one(case):
            nonlocal calls
            calls += 1
            if check is None:
                case.call_and_validate(checks=[not_a_server_error])
            else:
                check(case, case.call())

        try:
            one()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label
    print(f"\nschemathesis ({mode.value}): {calls} cases over {len(operations)} operations")
    return calls


def make_app(path, **overrides):
    from pooledir.service.main import create_app
    from pooledir.service.settings import Settings

    return create_app(Settings(indexes=[path], device="cpu", max_batch_queries=8, max_batch_documents=8, **overrides))


def test_no_server_errors(served_index):
    from fastapi.testclient import TestClient

    app = make_app(served_index)
    with TestClient(app):  # runs the lifespan: the indexes are open while schemathesis calls the app
        assert run_schemathesis(app, EXAMPLES) >= 9 * EXAMPLES // 2


def test_no_server_errors_outside_the_schema(served_index):
    """Negative mode: oversized filters, bad k, wrong types... every one a 4xx."""
    from fastapi.testclient import TestClient

    app = make_app(served_index)
    with TestClient(app):
        assert run_schemathesis(app, EXAMPLES // 2, GenerationMode.NEGATIVE) >= 9 * EXAMPLES // 8


def test_tight_response_limits_are_4xx_not_5xx(served_index):
    from fastapi.testclient import TestClient

    app = make_app(served_index, max_results=30, max_text_results=5, max_response_text_chars=200)

    def check(case, response):
        assert response.status_code < 500, (case.path, response.status_code, response.text[:300])
        assert len(response.content) < 100_000  # whatever was asked, the answer stays small

    with TestClient(app):
        assert run_schemathesis(app, EXAMPLES // 2, check=check) >= 9 * EXAMPLES // 4


def test_a_corrupt_index_answers_json_503_never_500(served_index, tiny_encoder):
    from fastapi.testclient import TestClient

    from pooledir import Document, PooledIndex

    app = make_app(served_index)
    codes: set[int] = set()

    def check(case, response):
        codes.add(response.status_code)
        assert response.status_code < 500 or response.status_code == 503, (case.path, response.text[:300])
        if response.status_code >= 400:
            assert response.json()["detail"]

    with TestClient(app) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # its lifespan opens the index: still sound
        before = set((served_index / "segments").iterdir())
        with PooledIndex.open(served_index, device="cpu", encoder=tiny_encoder) as other:
            other.add([Document("late", "bone density", {})])
        (new,) = set((served_index / "segments").iterdir()) - before
        new.write_bytes(new.read_bytes()[: new.stat().st_size // 3])
        assert run_schemathesis(schema, EXAMPLES // 2, check=check) >= 9 * EXAMPLES // 4
        assert client.get("/readyz").status_code == 503
    assert 503 in codes
