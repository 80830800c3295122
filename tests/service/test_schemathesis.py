"""Property-based API test: schemathesis generates requests from the OpenAPI schema; no answer may be a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow

#: generated cases per operation (hypothesis may stop early on small input spaces, e.g. GET /healthz)
EXAMPLES = 40


def _on_served_index(case):
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = "tiny"
    return case


def test_no_server_errors(served_index):
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    app = create_app(Settings(indexes=[served_index], device="cpu", max_batch_queries=8, max_batch_documents=8))
    with TestClient(app):  # runs the lifespan: the indexes are open while schemathesis calls the app
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 9
        calls = 0
        for operation in operations:
            # random index names only reach the 404 path (tested elsewhere): aim every case at the real index
            strategy = operation.as_strategy().map(_on_served_index)

            @given(case=strategy)
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                nonlocal calls
                calls += 1
                case.call_and_validate(checks=[not_a_server_error])

            check()
        print(f"\nschemathesis: {calls} cases over {len(operations)} operations, none a 5xx")
        assert calls >= len(operations) * EXAMPLES // 2
