"""The gateway's service token: a shared secret (several while rotating), never a consumer JWT."""

from __future__ import annotations

import hmac


def token_matches(presented: bytes, tokens: tuple[bytes, ...]) -> bool:
    """Constant time in the token's content: every configured token is compared, none short-circuits."""
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(presented, token)
    return matched
