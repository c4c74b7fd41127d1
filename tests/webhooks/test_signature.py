"""The Stripe-Signature check, as a pure function."""

from __future__ import annotations

import pytest

from app.webhooks.signature import InvalidSignature, verify_signature
from tests.support.factories import sign_webhook

BODY = b'{"id": "evt_1", "type": "customer.created"}'
NOW = 1_800_000_000


def test_valid_signature_returns_its_timestamp() -> None:
    _, header = sign_webhook(BODY, secret="whsec_a", at=NOW)
    assert verify_signature(BODY, header, ["whsec_a"], now=NOW) == NOW


def test_any_of_the_rotated_secrets_is_accepted() -> None:
    _, old = sign_webhook(BODY, secret="whsec_old", at=NOW)
    _, new = sign_webhook(BODY, secret="whsec_new", at=NOW)
    for header in (old, new):
        assert verify_signature(BODY, header, ["whsec_new", "whsec_old"], now=NOW) == NOW


def test_header_with_several_v1_signatures_matches_any() -> None:
    _, header = sign_webhook(BODY, secret="whsec_a", at=NOW)
    mixed = f"t={NOW},v1={'0' * 64},{header.split(',')[1]},v0=ignored"
    assert verify_signature(BODY, mixed, ["whsec_a"], now=NOW) == NOW


@pytest.mark.parametrize(
    "header",
    [None, "", "garbage", f"t={NOW}", "v1=abc", f"t=soon,v1={'0' * 64}", f"t={NOW},v1={'0' * 64}"],
)
def test_missing_malformed_or_wrong_headers_are_rejected(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, header, ["whsec_a"], now=NOW)


def test_signature_from_an_unknown_secret_is_rejected() -> None:
    _, header = sign_webhook(BODY, secret="whsec_other", at=NOW)
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, header, ["whsec_a"], now=NOW)


def test_tampered_body_is_rejected() -> None:
    _, header = sign_webhook(BODY, secret="whsec_a", at=NOW)
    with pytest.raises(InvalidSignature):
        verify_signature(BODY + b" ", header, ["whsec_a"], now=NOW)


@pytest.mark.parametrize(("offset", "accepted"), [(300, True), (-300, True), (301, False), (-301, False)])
def test_timestamps_are_accepted_within_300_seconds_only(offset: int, accepted: bool) -> None:
    _, header = sign_webhook(BODY, secret="whsec_a", at=NOW + offset)
    if accepted:
        assert verify_signature(BODY, header, ["whsec_a"], now=NOW) == NOW + offset
    else:
        with pytest.raises(InvalidSignature):
            verify_signature(BODY, header, ["whsec_a"], now=NOW)
