"""Schemathesis over the app's own OpenAPI document, against the real app on the tiny bundle served on
127.0.0.1: no 5xx, every response matches the documented schema, status codes and headers; data that violates
the schema is refused with a 4xx (negative mode)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from test_bundle_fixtures import make_tiny_bundle
from test_server_fixtures import serve_in_thread

from server.app import create_app
from server.settings import ServerSettings


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("fuzz"))
    app = create_app(ServerSettings(bundle=bundle, max_wait_ms=0, request_timeout_s=60))
    with serve_in_thread(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_contract(api_schema: Any, mode: GenerationMode) -> None:
    @given(case=api_schema.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case: Any) -> None:
        case.call_and_validate()

    run()
