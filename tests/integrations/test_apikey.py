from __future__ import annotations

import httpx
import pytest
import respx

from app.integrations.apikey import ApiKeyClient, ApiKeyServiceError
from tests.support.settings import make_settings

KEYS_URL = "http://apikeys.test/api/v1/keys"


async def _create(client: ApiKeyClient) -> None:
    await client.create_key(user_id="u1", name="n", subscription_id="s1", idempotency_key="k1")


@pytest.mark.parametrize(
    ("response", "retryable", "ambiguous"),
    [
        (httpx.ConnectError("refused"), True, False),
        (httpx.ConnectTimeout("no route"), True, False),
        (httpx.ReadTimeout("slow"), True, True),
        (httpx.Response(503), True, True),
        (httpx.Response(429), True, False),
        (httpx.Response(401), True, False),
        (httpx.Response(400, json={"detail": "bad"}), False, False),
        (httpx.Response(409, json={"detail": "exists"}), False, False),
        (httpx.Response(201, json={"api_key": "mk_x"}), True, True),
    ],
)
@respx.mock
async def test_create_failures_say_whether_to_retry_and_whether_the_key_may_exist(
    response: httpx.Response | Exception, retryable: bool, ambiguous: bool
) -> None:
    respx.post(KEYS_URL).mock(side_effect=[response])
    async with httpx.AsyncClient() as http:
        client = ApiKeyClient(make_settings(), http)
        with pytest.raises(ApiKeyServiceError) as caught:
            await _create(client)
    assert (caught.value.retryable, caught.value.ambiguous) == (retryable, ambiguous)
    assert caught.value.status == 502


@respx.mock
async def test_calls_time_out_after_the_sibling_timeout() -> None:
    route = respx.delete(f"{KEYS_URL}/k1").mock(return_value=httpx.Response(204))
    async with httpx.AsyncClient() as http:
        client = ApiKeyClient(make_settings(sibling_timeout_seconds=1.5), http)
        assert await client.delete_key(user_id="u1", key_id="k1") is True
    assert route.calls.last.request.extensions["timeout"] == {
        "connect": 1.5,
        "read": 1.5,
        "write": 1.5,
        "pool": 1.5,
    }


@respx.mock
async def test_delete_of_an_unknown_key_is_not_an_error() -> None:
    respx.delete(f"{KEYS_URL}/gone").mock(return_value=httpx.Response(404))
    async with httpx.AsyncClient() as http:
        assert await ApiKeyClient(make_settings(), http).delete_key(user_id="u1", key_id="gone") is False
