"""Settings from the environment, validated once at start-up."""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STRIPE_API_VERSION = "2026-10-28.endive"
DEFAULT_INVOICE_ISSUER = "API Marketplace"


class ConfigError(Exception):
    """A missing or malformed setting, described in one line without any secret value."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    # `billing worker` serves its own /metrics here (on HOST); 0 turns it off.
    worker_metrics_port: int = Field(9091, ge=0, le=65535)
    database_url: str
    redis_url: str
    stripe_secret_key: SecretStr
    # Several secrets, comma separated, so the webhook secret can rotate without losing events.
    stripe_webhook_secret: SecretStr
    jwt_secret: SecretStr
    api_key_service_url: str
    metering_service_url: str

    stripe_api_base: str | None = None
    stripe_api_version: str = DEFAULT_STRIPE_API_VERSION
    stripe_max_network_retries: int = Field(2, ge=0, le=10)
    # How long a call waits for an earlier Stripe request with its idempotency key to finish
    # (Stripe answers 409 idempotency_key_in_use meanwhile) before answering 503.
    stripe_in_flight_wait_seconds: float = Field(10.0, ge=0, le=60)
    stripe_rate_limit_per_second: int = Field(25, ge=1)

    platform_commission: Decimal = Field(Decimal("0.20"), ge=0, le=1)
    # Stripe Tax (`automatic_tax`) on new invoices and subscriptions; needs Stripe Tax set up on the account.
    stripe_tax_enabled: bool = False
    # The issuer printed on the invoices we render ourselves (when Stripe has no PDF).
    invoice_issuer_name: str = DEFAULT_INVOICE_ISSUER
    invoice_issuer_address: str = "1 Market Street, San Francisco, CA 94105, United States"
    invoice_issuer_email: str = "billing@marketplace.example"
    invoice_days_until_due: int = Field(30, ge=0, le=365)
    # Earnings become available for payout once refunds and disputes are unlikely.
    payout_refund_window_days: int = Field(14, ge=0, le=180)
    dunning_grace_days: int = Field(7, ge=0)
    # Business time: `system` (production), or `stripe-test-clock:<clock id>` to follow a Stripe
    # test clock's frozen time (simulations against the emulator or Stripe test mode only).
    billing_clock: str = "system"

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_user_id_claims: str = "sub,cognito:username"
    jwt_email_claim: str = "email"
    jwt_role_claim: str = "custom:user_type"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # FastAPI's own OpenTelemetry spans, metrics and logs, for a process that configures an
    # OpenTelemetry SDK. Off, no request looks for one (three environment reads each).
    opentelemetry: bool = False
    db_pool_size: int = Field(10, ge=1)
    # A stalled database fails fast: a request gets 503 within about connect + command timeout.
    db_connect_timeout_seconds: float = Field(1.0, gt=0, le=60)
    db_command_timeout_seconds: float = Field(1.0, gt=0, le=600)
    db_checkout_timeout_seconds: float = Field(1.0, gt=0, le=60)
    # Worker jobs and CLI commands run longer statements than a request does.
    db_worker_command_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    # Request bodies above these sizes get 413 before they are read.
    api_max_body_bytes: int = Field(256 * 1024, ge=1024)
    webhook_max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # A webhook is answered within this bound even while Redis stalls; the sweeper enqueues later.
    webhook_enqueue_timeout_seconds: float = Field(0.5, gt=0, le=10)
    sibling_timeout_seconds: float = Field(2.0, gt=0, le=30)
    # Outbox delivery: exponential backoff with jitter, then `failed` after this many attempts.
    outbox_max_attempts: int = Field(12, ge=1, le=100)
    outbox_retry_base_seconds: float = Field(5.0, gt=0)
    outbox_retry_max_seconds: float = Field(3600.0, gt=0)
    # Entitlements (the gateway's check/track): service tokens, comma separated, so they can rotate.
    gateway_service_tokens: SecretStr = SecretStr("")
    # When Redis is unreachable a check answers allowed (fail_open) or refused (fail_closed).
    entitlements_redis_policy: Literal["fail_open", "fail_closed"] = "fail_open"
    entitlements_redis_timeout_seconds: float = Field(0.5, gt=0, le=10)
    # A process reuses a subscription's snapshot this long (a change is seen within a second).
    entitlements_local_snapshot_seconds: float = Field(0.5, ge=0, le=1)
    # Marketplace events: endpoints (comma separated) and signing secrets (the first signs; all
    # are sent as v1 signatures while rotating).
    marketplace_webhook_urls: str = ""
    marketplace_webhook_secrets: SecretStr = SecretStr("")
    marketplace_webhook_max_attempts: int = Field(10, ge=1, le=100)
    marketplace_webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the usual postgres:// forms and use the asyncpg driver."""
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        raise ValueError("must be a postgresql:// URL")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("api_key_service_url", "metering_service_url", "stripe_api_base", "jwt_jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s):// URL")
        return value.rstrip("/") if value else value

    @field_validator("stripe_secret_key")
    @classmethod
    def _stripe_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("sk_", "rk_")):
            raise ValueError("must be a Stripe secret key (sk_... or rk_...)")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _jwt_secret_strength(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("billing_clock")
    @classmethod
    def _clock_setting(cls, value: str) -> str:
        if not re.fullmatch(r"system|stripe-test-clock:clock_\w+", value):
            raise ValueError("must be system or stripe-test-clock:<test clock id>")
        return value

    @model_validator(mode="after")
    def _test_clock_in_test_mode(self) -> Settings:
        live = self.stripe_secret_key.get_secret_value().startswith(("sk_live_", "rk_live_"))
        if live and self.billing_clock != "system":
            raise ValueError(
                "BILLING_CLOCK must be system with a live Stripe key (test clocks are test mode only)"
            )
        return self

    @model_validator(mode="after")
    def _jwks_for_rs256(self) -> Settings:
        if self.jwt_algorithm == "RS256" and not self.jwt_jwks_url:
            raise ValueError("JWT_JWKS_URL is required when JWT_ALGORITHM is RS256")
        return self

    @property
    def webhook_secrets(self) -> list[str]:
        return [s.strip() for s in self.stripe_webhook_secret.get_secret_value().split(",") if s.strip()]

    @property
    def gateway_tokens(self) -> list[str]:
        return [t.strip() for t in self.gateway_service_tokens.get_secret_value().split(",") if t.strip()]

    @property
    def marketplace_endpoints(self) -> list[str]:
        return [u.strip() for u in self.marketplace_webhook_urls.split(",") if u.strip()]

    @property
    def marketplace_secrets(self) -> list[str]:
        raw = self.marketplace_webhook_secrets.get_secret_value()
        return [s.strip() for s in raw.split(",") if s.strip()]

    @property
    def user_id_claims(self) -> list[str]:
        return [c.strip() for c in self.jwt_user_id_claims.split(",") if c.strip()]


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and overrides), or raise ConfigError in one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            message = (
                "is required" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
            )
            problems.append(f"{name} {message}" if error["loc"] else message)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
