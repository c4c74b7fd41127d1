"""Settings for tests: the test secrets and unreachable defaults, overridden per test."""

from __future__ import annotations

from typing import Any

from app.config import Settings, load_settings
from tests.support.factories import JWT_SECRET, WEBHOOK_SECRET


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": "postgresql://unused",
        "redis_url": "redis://127.0.0.1:1/0",
        "stripe_secret_key": "sk_test_billing_tests",
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "jwt_secret": JWT_SECRET,
        "api_key_service_url": "http://apikeys.test",
        "metering_service_url": "http://metering.test",
        "stripe_max_network_retries": 0,
        "log_level": "WARNING",
        "db_pool_size": 5,
    }
    values.update(overrides)
    return load_settings(**values)
