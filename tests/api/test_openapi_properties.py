"""Property-based tests over our OpenAPI document (schemathesis), as a consumer, a creator and an admin.

Real HTTP against the app served by uvicorn on 127.0.0.1 (its own event loop, in a thread), with
the session's PostgreSQL, Redis and Stripe emulator. Bounded and seeded (derandomized), so each
run sends the same requests: every answer must be no 5xx, one of the operation's documented
status codes, with the documented content type and body schema.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.dev.processes import free_port
from app.main import create_app
from tests.support.auth import bearer
from tests.support.factories import TokenFactory

EXAMPLES_PER_OPERATION = 6
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_api(settings: Settings) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("role", ["consumer", "creator", "admin"])
def test_every_operation_answers_as_documented(live_api: str, role: str, mode: GenerationMode) -> None:
    spec = httpx.get(f"{live_api}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    headers = bearer(TokenFactory().make(role=role, user_id=f"props-{role}"))
    httpx.post(f"{live_api}/api/v1/consumers/register", headers=headers, timeout=10)
    failures: list[str] = []
    statuses: list[int] = []
    tested = 0
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"the document has an invalid operation: {result.err()}")
            continue
        operation = result.ok()
        tested += 1

        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call(base_url=live_api, headers=headers, timeout=30)
            statuses.append(response.status_code)
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except Unsatisfiable:
            tested -= 1  # nothing to make invalid (an operation without parameters)
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
    assert len(statuses) >= 3 * tested  # it did test: several requests per operation
