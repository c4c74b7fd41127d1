"""Small factories for tests: tokens, signed webhook payloads."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import orjson

JWT_SECRET = "test-jwt-secret-0123456789abcdef-0123"
WEBHOOK_SECRET = "whsec_test_secret"


class TokenFactory:
    def __init__(self, secret: str = JWT_SECRET) -> None:
        self.secret = secret

    def make(
        self,
        *,
        role: str | None = "consumer",
        user_id: str | None = None,
        email: str | None = None,
        expires_in: timedelta = timedelta(minutes=15),
        **claims: Any,
    ) -> str:
        user_id = user_id or f"user-{uuid.uuid4().hex[:12]}"
        payload: dict[str, Any] = {"sub": user_id, "exp": datetime.now(UTC) + expires_in}
        payload["email"] = email or f"{user_id}@example.com"
        if role is not None:
            payload["custom:user_type"] = role
        payload.update(claims)
        return jwt.encode(payload, self.secret, algorithm="HS256")


def sign_webhook(
    payload: dict[str, Any] | bytes, secret: str = WEBHOOK_SECRET, at: int | None = None
) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send for this payload."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    timestamp = at if at is not None else int(time.time())
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return body, f"t={timestamp},v1={signature}"
