"""Fixtures shared by several test modules (registered for all tests by `tests/conftest.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx
from arq.connections import RedisSettings, create_pool
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.models import Consumer
from app.resources import Resources
from tests.support import rows
from tests.support.asgi import running
from tests.support.custom_invoices import FakeStripeInvoices, StripeInvoices
from tests.support.stripe_payments import Payments, mocked_payments
from tests.support.worker import Ctx


@pytest.fixture
async def worker_ctx(settings: Settings, redis_url: str) -> AsyncIterator[Ctx]:
    """The context arq hands the worker's jobs: opened resources, a Redis pool, a first try."""
    resources = Resources.open(settings, jobs=True)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    yield {"resources": resources, "redis": redis, "job_try": 1}
    await redis.aclose()
    await resources.close()


@pytest.fixture
async def stripe_http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Direct access to the Stripe emulator, to arrange or read what Stripe holds behind our back."""
    key = (settings.stripe_secret_key.get_secret_value(), "")
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base), auth=key, timeout=30) as http:
        yield http


@pytest.fixture
def stripe_payments(settings: Settings) -> Iterator[Payments]:
    """Stripe's payment objects (invoices, charges, refunds, disputes) answered by a fake at the
    HTTP boundary."""
    with mocked_payments(settings) as payments:
        yield payments


@pytest.fixture
def stripe_invoices(settings: Settings) -> Iterator[StripeInvoices]:
    """Stripe's invoice and invoice-item calls answered by a fake at the HTTP boundary: the fake
    and its routes by name."""
    fake = FakeStripeInvoices()
    with respx.mock(base_url=settings.stripe_api_base, assert_all_called=False) as mock:
        yield fake, fake.install(mock)


@pytest.fixture
async def alice(engine: AsyncEngine) -> Consumer:
    """A consumer row (user "alice", with a Stripe customer id) stored directly."""
    consumer = rows.consumer("alice")
    await rows.add(engine, consumer)
    return consumer


@pytest.fixture
async def taxed_client(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app with STRIPE_TAX_ENABLED, over ASGI."""
    async with running(settings.model_copy(update={"stripe_tax_enabled": True})) as (_, http):
        yield http
