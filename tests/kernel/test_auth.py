from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth import TokenVerifier
from app.errors import DomainError, Forbidden, Unauthorized
from tests.support.auth import Auth, bearer
from tests.support.factories import TokenFactory
from tests.support.settings import make_settings


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _assert_401(client: httpx.AsyncClient, headers: dict[str, str], code: str) -> None:
    response = await client.get("/api/v1/apis/some-api/plans", headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == code
    assert body["error"]
    assert body["request_id"] == response.headers["x-request-id"]


async def test_missing_token_is_401(client: httpx.AsyncClient) -> None:
    await _assert_401(client, {}, "missing_token")


async def test_expired_token_is_401(client: httpx.AsyncClient, tokens: TokenFactory) -> None:
    token = tokens.make(expires_in=timedelta(minutes=-5))
    await _assert_401(client, bearer(token), "token_expired")


async def test_wrongly_signed_token_is_401(client: httpx.AsyncClient) -> None:
    token = TokenFactory(secret="another-secret-0123456789abcdef-0123").make()
    await _assert_401(client, bearer(token), "invalid_token")


async def test_alg_none_token_is_401(client: httpx.AsyncClient) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'u1', 'exp': 9999999999})}."
    await _assert_401(client, bearer(token), "invalid_token")


async def test_token_without_exp_is_401(client: httpx.AsyncClient) -> None:
    token = jwt.encode({"sub": "u1"}, TokenFactory().secret, algorithm="HS256")
    await _assert_401(client, bearer(token), "invalid_token")


async def test_garbage_token_is_401(client: httpx.AsyncClient) -> None:
    await _assert_401(client, bearer("not.a.jwt"), "invalid_token")


async def test_consumer_on_a_creator_route_is_403(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.post(
        "/api/v1/apis/some-api/plans", json={"name": "Free", "type": "free"}, headers=auth("consumer")
    )
    assert response.status_code == 403
    assert response.json()["code"] == "wrong_role"


async def test_missing_role_claim_means_consumer(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.post(
        "/api/v1/apis/some-api/plans", json={"name": "Free", "type": "free"}, headers=auth(role=None)
    )
    assert response.status_code == 403


async def test_cognito_username_is_the_user_id_without_sub() -> None:
    verifier = TokenVerifier(make_settings())
    token = jwt.encode(
        {"cognito:username": "cog-user", "exp": 9999999999, "custom:user_type": "creator"},
        TokenFactory().secret,
        algorithm="HS256",
    )
    principal = await verifier.verify(token)
    assert principal.user_id == "cog-user"
    assert principal.role == "creator"


async def test_unknown_user_type_is_403() -> None:
    verifier = TokenVerifier(make_settings())
    with pytest.raises(Forbidden):
        await verifier.verify(TokenFactory().make(role="superuser"))


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [public | {"kid": kid, "use": "sig", "alg": "RS256"}]}


@respx.mock
async def test_rs256_tokens_are_checked_against_the_jwks(rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_url = "https://issuer.test/.well-known/jwks.json"
    route = respx.get(jwks_url).mock(return_value=httpx.Response(200, json=_jwks(rsa_key, "k1")))
    settings = make_settings(jwt_algorithm="RS256", jwt_jwks_url=jwks_url)
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(settings, http)
        token = jwt.encode(
            {"sub": "rs-user", "exp": 9999999999}, rsa_key, algorithm="RS256", headers={"kid": "k1"}
        )
        principal = await verifier.verify(token)
        assert principal.user_id == "rs-user"
        assert principal.role == "consumer"
        await verifier.verify(token)
        assert route.call_count == 1  # the key set is cached

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode({"sub": "x", "exp": 9999999999}, other, algorithm="RS256", headers={"kid": "k1"})
        with pytest.raises(Unauthorized):
            await verifier.verify(forged)
        hs_token = TokenFactory().make()
        with pytest.raises(Unauthorized):
            await verifier.verify(hs_token)


@respx.mock
async def test_rs256_unknown_kid_refetches_then_refuses(rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_url = "https://issuer.test/jwks"
    route = respx.get(jwks_url).mock(return_value=httpx.Response(200, json=_jwks(rsa_key, "k1")))
    settings = make_settings(jwt_algorithm="RS256", jwt_jwks_url=jwks_url)
    async with httpx.AsyncClient() as http:
        verifier = TokenVerifier(settings, http)
        token = jwt.encode({"sub": "u", "exp": 9999999999}, rsa_key, algorithm="RS256", headers={"kid": "k9"})
        with pytest.raises(DomainError) as caught:
            await verifier.verify(token)
        assert caught.value.status == 401
        assert route.call_count == 2
