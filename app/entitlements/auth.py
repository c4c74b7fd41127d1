"""The gateway's service token: a shared secret (several while rotating), never a consumer JWT."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized

_service_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="GatewayServiceToken",
    description="A token from GATEWAY_SERVICE_TOKENS (service to service; consumer JWTs are refused)",
)


def token_matches(presented: str, tokens: list[str]) -> bool:
    """Constant time in the token's content: every configured token is compared, none short-circuits."""
    candidate = presented.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token.encode())
    return matched


async def require_gateway(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_service_bearer)],
) -> None:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Missing service token", code="missing_token")
    if not token_matches(credentials.credentials, request.app.state.settings.gateway_tokens):
        raise Unauthorized("Invalid service token", code="invalid_service_token")


GatewayCaller = Depends(require_gateway)
