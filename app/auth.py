"""Bearer JWT -> Principal, and the role dependencies routes declare in their signatures."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt

from app.config import Settings
from app.errors import Forbidden, Unauthorized
from app.validation import InvalidInput, check_text

Role = Literal["consumer", "creator", "admin"]
ROLES: frozenset[str] = frozenset({"consumer", "creator", "admin"})
JWKS_CACHE_SECONDS = 300
# Verified tokens are remembered (until their exp, at most this long) so a client's repeated
# calls skip the signature check; bounded so a flood of distinct tokens cannot grow memory.
TOKEN_CACHE_SECONDS = 300
TOKEN_CACHE_SIZE = 10_000
MAX_USER_ID = 255  # consumers.user_id, apis.creator_id
MAX_EMAIL = 320  # consumers.email


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    email: str | None
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class TokenVerifier:
    """Checks a bearer token's signature, expiry and claims; knows nothing of HTTP."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        self._http = http
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_fetched_at = 0.0
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, valid_until = cached
            if time.time() < valid_until:  # wall clock: token expiry is real time
                return principal
            del self._verified[token]
        principal, expires_at = await self._verify_uncached(token)
        if len(self._verified) >= TOKEN_CACHE_SIZE:
            self._verified.clear()
        # wall clock: a token's exp is real time, whatever the business clock says.
        self._verified[token] = (principal, min(expires_at, time.time() + TOKEN_CACHE_SECONDS))  # wall clock
        return principal

    async def _verify_uncached(self, token: str) -> tuple[Principal, float]:
        settings = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("Malformed bearer token", code="invalid_token") from None
        if header.get("alg") != settings.jwt_algorithm:
            raise Unauthorized("Token algorithm not accepted", code="invalid_token")
        key: Any = (
            await self._signing_key(header.get("kid"))
            if settings.jwt_algorithm == "RS256"
            else settings.jwt_secret.get_secret_value()
        )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                options={"require": ["exp"], "verify_aud": settings.jwt_audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token has expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthorized("Invalid bearer token", code="invalid_token") from None
        return self._principal(claims), float(claims["exp"])

    def _principal(self, claims: dict[str, Any]) -> Principal:
        user_id = next(
            (str(claims[c]) for c in self._settings.user_id_claims if isinstance(claims.get(c), str | int)),
            None,
        )
        if not user_id:
            raise Unauthorized("Token has no user id", code="invalid_token")
        raw_role = claims.get(self._settings.jwt_role_claim) or "consumer"
        if not isinstance(raw_role, str):
            raise Unauthorized("Token has an invalid user type", code="invalid_token")
        if raw_role not in ROLES:
            raise Forbidden(f"Unknown user type {raw_role[:32]!r}", code="unknown_role")
        email = claims.get(self._settings.jwt_email_claim)
        email = email if isinstance(email, str) else None
        # Claims are stored (user ids, emails): ones the database cannot hold are a bad token.
        for name, value, longest in (("user id", user_id, MAX_USER_ID), ("email", email, MAX_EMAIL)):
            if value is not None:
                try:
                    check_text(name, value, longest)
                except InvalidInput as exc:
                    raise Unauthorized(
                        f"Token has an invalid {name}: it {exc.message}", code="invalid_token"
                    ) from None
        role: Role = raw_role  # type: ignore[assignment]
        return Principal(user_id=user_id, email=email, role=role)

    async def _signing_key(self, kid: object) -> Any:
        if not isinstance(kid, str):
            raise Unauthorized("Token has no key id", code="invalid_token")
        jwks = await self._load_jwks(force=False)
        if kid not in {k.key_id for k in jwks.keys}:
            jwks = await self._load_jwks(force=True)  # the issuer may have rotated its keys
        for candidate in jwks.keys:
            if candidate.key_id == kid:
                return candidate.key
        raise Unauthorized("Token signed with an unknown key", code="invalid_token")

    async def _load_jwks(self, *, force: bool) -> jwt.PyJWKSet:
        fresh = time.monotonic() - self._jwks_fetched_at < JWKS_CACHE_SECONDS
        if self._jwks is not None and fresh and not force:
            return self._jwks
        if self._http is None or self._settings.jwt_jwks_url is None:
            raise Unauthorized("Token keys are not configured", code="invalid_token")
        try:
            response = await self._http.get(self._settings.jwt_jwks_url, timeout=5.0)
            response.raise_for_status()
            self._jwks = jwt.PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, jwt.PyJWTError, ValueError):
            if self._jwks is None:
                raise Unauthorized("Token keys are unavailable", code="invalid_token") from None
        self._jwks_fetched_at = time.monotonic()
        return self._jwks
