from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.config import ConfigError, load_settings
from tests.support.settings import make_settings

REQUIRED = (
    "DATABASE_URL",
    "REDIS_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "JWT_SECRET",
    "API_KEY_SERVICE_URL",
    "METERING_SERVICE_URL",
)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED and not k.startswith(("STRIPE_", "JWT_"))}
    env["PATH"] = os.environ.get("PATH", "")
    return env


def test_defaults_follow_the_design() -> None:
    settings = make_settings()
    assert settings.port == 8080
    assert str(settings.platform_commission) == "0.20"
    assert settings.jwt_algorithm == "HS256"
    assert settings.database_url.startswith("postgresql+asyncpg://")


def test_missing_settings_are_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REQUIRED:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    for name in REQUIRED:
        assert f"{name} is required" in message


def test_malformed_settings_never_echo_secret_values() -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(stripe_secret_key="pk_live_leaky_value_123", jwt_secret="short-secret-x")
    message = str(caught.value)
    assert "STRIPE_SECRET_KEY" in message
    assert "JWT_SECRET must be at least 16 characters" in message or "JWT_SECRET" in message
    assert "leaky_value" not in message
    assert "short-secret-x" not in message


def test_settings_repr_masks_secrets() -> None:
    settings = make_settings(jwt_secret="a-very-secret-jwt-key-123")
    assert "a-very-secret-jwt-key-123" not in repr(settings)


def test_rs256_needs_a_jwks_url() -> None:
    with pytest.raises(ConfigError, match="JWT_JWKS_URL"):
        make_settings(jwt_algorithm="RS256")


def test_commission_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="PLATFORM_COMMISSION"):
        make_settings(platform_commission="1.5")


@pytest.mark.parametrize("command", ["api", "worker"])
def test_cli_refuses_to_start_without_settings(command: str) -> None:
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "app", command],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("billing: invalid configuration:")
    assert "DATABASE_URL is required" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_rejects_a_malformed_url_without_echoing_secrets() -> None:
    env = _clean_env() | {
        "DATABASE_URL": "mysql://nope",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "STRIPE_SECRET_KEY": "sk_test_do_not_print_me",
        "STRIPE_WEBHOOK_SECRET": "whsec_do_not_print_me",
        "JWT_SECRET": "do-not-print-me-0123456789",
        "API_KEY_SERVICE_URL": "http://keys",
        "METERING_SERVICE_URL": "http://metering",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app", "api"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "DATABASE_URL must be a postgresql:// URL" in result.stderr
    assert "do_not_print_me" not in result.stderr
    assert "do-not-print-me" not in result.stderr
