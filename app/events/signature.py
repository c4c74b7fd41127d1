"""Signatures of our outbound webhooks, in Stripe's scheme.

Header `Marketplace-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`: each `v1` is
HMAC-SHA256 of `"<t>.<raw body>"` with one of our signing secrets (one per secret while they
rotate), so a receiver holding either the old or the new secret can verify. A receiver checks
one `v1` against its secret in constant time and refuses a `t` older than its tolerance.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Marketplace-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: list[str], timestamp: int) -> str:
    """The header value for `body`, signed with every secret."""
    return ",".join([f"t={timestamp}", *(f"v1={signature(s, timestamp, body)}" for s in secrets)])


def verify(
    body: bytes, header: str, secret: str, *, now: int, tolerance: int = DEFAULT_TOLERANCE_SECONDS
) -> bool:
    """What a receiver does: a `v1` matches its secret and `t` is within the tolerance."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    return matched
