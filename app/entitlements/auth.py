"""The gateway's service token: a shared secret (several while rotating), never a consumer JWT."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from app.config import Settings
from app.errors import Unauthorized

_HEADER = b"authorization"


def token_matches(presented: bytes, tokens: tuple[bytes, ...]) -> bool:
    """Constant time in the token's content: every configured token is compared, none short-circuits."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token)
    return matched


def _configured_tokens(request: Request) -> tuple[bytes, ...]:
    """The app's tokens, split and encoded once per app (not on every call) and kept with it."""
    state = request.app.state
    settings: Settings = state.settings
    cached: tuple[Settings, tuple[bytes, ...]] | None = getattr(state, "gateway_token_bytes", None)
    if cached is None or cached[0] is not settings:
        cached = (settings, tuple(token.encode() for token in settings.gateway_tokens))
        state.gateway_token_bytes = cached
    return cached[1]


class GatewayToken(HTTPBearer):
    """`Authorization: Bearer <service token>`, checked in this one dependency (a bearer scheme in
    OpenAPI): the header read straight from the request, the configured tokens encoded once."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        header: bytes | None = None
        for name, value in request.scope["headers"]:
            if name == _HEADER:
                header = value
                break
        scheme, _, credentials = (header or b"").partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials:
            raise Unauthorized("Missing service token", code="missing_token")
        if not token_matches(credentials, _configured_tokens(request)):
            raise Unauthorized("Invalid service token", code="invalid_service_token")


GatewayCaller = Depends(
    GatewayToken(
        auto_error=False,
        scheme_name="GatewayServiceToken",
        description="A token from GATEWAY_SERVICE_TOKENS (service to service; consumer JWTs are refused)",
    )
)
