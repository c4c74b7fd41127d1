"""Stripe-Signature verification: the webhook's hot path, so a small pure function.

Stripe signs `"<t>.<raw body>"` with HMAC-SHA256 and sends `t=<unix time>,v1=<hex>[,v1=...]`.
Several secrets are accepted so a secret can rotate without losing events.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from app.errors import BadRequest

DEFAULT_TOLERANCE_SECONDS = 300


class InvalidSignature(BadRequest):
    code = "invalid_signature"


def verify_signature(
    body: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check `header` against `body` with any of `secrets`; return the signed timestamp.

    Raises InvalidSignature when the header is missing or malformed, the timestamp is outside
    `tolerance` seconds of `now`, or no v1 signature matches any secret.
    """
    if not header:
        raise InvalidSignature("Missing Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[bytes] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise InvalidSignature("Malformed Stripe-Signature timestamp") from None
        elif key == "v1":
            signatures.append(value.encode("ascii", "replace"))
    if timestamp is None or not signatures:
        raise InvalidSignature("Malformed Stripe-Signature header")
    if abs(now - timestamp) > tolerance:
        raise InvalidSignature("Stripe-Signature timestamp is outside the tolerance")
    signed = b"%d." % timestamp + body
    for secret in secrets:
        # The one-shot digest (OpenSSL's, no HMAC object per call): this runs for every delivery.
        expected = hmac.digest(secret.encode(), signed, "sha256").hex().encode()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return timestamp
    raise InvalidSignature("No valid Stripe-Signature for this payload")
