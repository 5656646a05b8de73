"""Schema-driven fuzzing (schemathesis) of the API over real servers: no 500s, and every
status code, content type, header and body matches the OpenAPI spec.

Every operation is fuzzed with valid and invalid inputs, once with an admin key (so
provisioning runs against the real broker) and once without a key. Examples per
operation are bounded and the run is derandomized, so it stays around a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from contract.settings import Settings
from nakhon.procs import Service
from tests.api.conftest import Keys
from tests.conftest import start_ingest
from tests.helpers import wait_until

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES = 25


def _fuzz(client: TestClient, strategy: st.SearchStrategy[schemathesis.Case], headers: dict[str, str]) -> None:
    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        if headers:
            case.headers = {**(case.headers or {}), **headers}
        # sent with FastAPI's own httpx client; schemathesis checks the answer against the spec
        kw = case.as_transport_kwargs(base_url="http://testserver")
        kw.pop("cookies", None)
        body = {k: kw.pop(k) for k in ("json", "content", "data", "files") if k in kw}
        response = client.request(kw.pop("method"), kw.pop("url"), headers=kw.pop("headers", None), params=kw.pop("params", None),
                                  **body)
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.fixture
def ingest_running(api_settings: Settings, workdir: Path) -> Iterator[Service]:
    """The whole platform behind the API: /readyz answers 200 only while an ingest moves readings."""
    svc = start_ingest(api_settings, workdir)
    yield svc
    svc.stop()


@pytest.mark.timeout(240)
def test_fuzz_openapi(app: FastAPI, client: TestClient, keys: Keys, ingest_running: Service) -> None:
    wait_until(lambda: client.get("/readyz").status_code == 200, 60, what="the platform ready")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    tested = 0
    for op in operations:
        strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))
        for headers in ({"X-API-Key": keys.admin}, {}):
            _fuzz(client, strategy, headers)
            tested += 1
    assert tested == 2 * len(operations)
