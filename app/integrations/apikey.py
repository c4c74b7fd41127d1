"""httpx client of the API key service (CONTRACT.md, "Services we call").

The contract has two calls: `POST /api/v1/keys` and `DELETE /api/v1/keys/{id}`. Every call carries
a short-lived service token: an HS256 JWT signed with JWT_SECRET, role admin, `sub` = the consumer.
Errors are typed so the outbox can tell a retryable failure from a permanent one, and a failure
whose outcome is unknown (the request may have reached the service) from one that surely did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import jwt

from app import clock
from app.config import Settings
from app.errors import UpstreamError

SERVICE_TOKEN_TTL = timedelta(minutes=2)
# 4xx answers that a later attempt may not get (throttling, auth during a secret rotation).
_RETRYABLE_CLIENT_STATUSES = frozenset({401, 403, 408, 425, 429})


class ApiKeyServiceError(UpstreamError):
    """The API key service failed. `retryable`: a later attempt may succeed.

    `ambiguous`: the request may have been applied although we got no answer (a read timeout).
    """

    code = "api_key_service_error"

    def __init__(self, message: str, *, retryable: bool, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.ambiguous = ambiguous


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key the service issued. The secret itself goes to the consumer there, never to our store."""

    id: str
    key_prefix: str | None


class ApiKeyClient:
    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._base = settings.api_key_service_url
        self._timeout = settings.sibling_timeout_seconds

    def service_token(self, user_id: str) -> str:
        """An admin token acting for `user_id`, valid for a couple of minutes."""
        now = clock.now()
        claims = {
            "sub": user_id,
            self._settings.jwt_role_claim: "admin",
            "iat": now,
            "exp": now + SERVICE_TOKEN_TTL,
        }
        return jwt.encode(claims, self._settings.jwt_secret.get_secret_value(), algorithm="HS256")

    async def create_key(
        self, *, user_id: str, name: str, subscription_id: str, idempotency_key: str
    ) -> IssuedKey:
        """Issue a key for a subscription.

        The contract has no idempotency for this call; we still send `Idempotency-Key` (a service
        that honours it dedupes our retries, one that does not ignores the header).
        """
        response = await self._request(
            "POST",
            "/api/v1/keys",
            user_id,
            json={"name": name, "subscription_id": subscription_id},
            headers={"Idempotency-Key": idempotency_key},
        )
        if response.status_code not in (200, 201):
            raise _status_error("create", response)
        try:
            info = response.json()["key_info"]
            return IssuedKey(id=str(info["id"]), key_prefix=info.get("key_prefix"))
        except (ValueError, KeyError, TypeError):
            # Created, but we cannot know its id: retrying could make a second key, so say so.
            raise ApiKeyServiceError(
                "API key service answered create without key_info.id", retryable=True, ambiguous=True
            ) from None

    async def delete_key(self, *, user_id: str, key_id: str) -> bool:
        """Revoke a key; False if the service did not know it (404 counts as done)."""
        response = await self._request("DELETE", f"/api/v1/keys/{quote(key_id, safe='')}", user_id)
        if response.status_code == 404:
            return False
        if response.status_code in (200, 202, 204):
            return True
        raise _status_error("delete", response)

    async def _request(
        self,
        method: str,
        path: str,
        user_id: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {self.service_token(user_id)}", **(headers or {})}
        try:
            return await self._http.request(
                method, self._base + path, json=json, headers=all_headers, timeout=self._timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ApiKeyServiceError(
                f"API key service unreachable: {type(exc).__name__}", retryable=True
            ) from exc
        except httpx.TimeoutException as exc:
            raise ApiKeyServiceError(
                f"API key service timed out: {type(exc).__name__}", retryable=True, ambiguous=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ApiKeyServiceError(
                f"API key service call failed: {type(exc).__name__}: {exc}", retryable=True, ambiguous=True
            ) from exc


def _status_error(action: str, response: httpx.Response) -> ApiKeyServiceError:
    status = response.status_code
    retryable = status >= 500 or status in _RETRYABLE_CLIENT_STATUSES
    return ApiKeyServiceError(
        f"API key service {action} answered {status}: {response.text[:300]}",
        retryable=retryable,
        ambiguous=status >= 500,
    )
