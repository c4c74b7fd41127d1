"""One simulation run: our app in process (ASGI), the emulator behind a fault proxy, the worker's
jobs, the business clock on the simulation's time; then the oracle and the report."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from arq.connections import RedisSettings, create_pool

from app import clock
from app.config import Settings
from app.dev.siblings import build_app
from app.main import create_app
from app.resources import Resources
from app.simulate.driver import Driver, Progress, Stack
from app.simulate.faults import FaultRates, Faults, StripeFaults, commit_crashes
from app.simulate.oracle import expect
from app.simulate.report import Report, build_report
from app.simulate.scenario import Scenario
from app.worker.context import RESOURCES, job_context

SIBLINGS = "http://siblings.simulate"
DUNNING = {"retry_days[]": ["3", "5", "7"], "after": "canceled"}  # Stripe's default schedule


async def simulate(
    settings: Settings, scenario: Scenario, rates: FaultRates, progress: Progress | None = None
) -> Report:
    """Play `scenario` against the emulator at `settings.stripe_api_base` and report the drift."""
    faults = Faults(rates, random.Random(scenario.seed))  # noqa: S311 - reproducible, not secret
    emulator = str(settings.stripe_api_base)
    proxy = StripeFaults(emulator, faults)
    proxied = await proxy.start()
    try:
        run_settings = settings.model_copy(
            update={
                "stripe_api_base": proxied,
                "stripe_max_network_retries": 2,
                "api_key_service_url": SIBLINGS,
                "metering_service_url": SIBLINGS,
                "platform_commission": scenario.commission,
            }
        )
        async with _stack(run_settings, emulator, scenario) as stack:
            with clock.use(stack.business), commit_crashes():
                record = await Driver(stack, scenario, faults).run(progress)
                expected = expect(scenario, record.horizon)
                async with job_context(stack.worker).resources.sessionmaker() as session:
                    return await build_report(
                        session, stack.stripe, stack.siblings, record, expected, faults.counts
                    )
    finally:
        await proxy.stop()


@asynccontextmanager
async def _stack(settings: Settings, emulator: str, scenario: Scenario) -> AsyncIterator[Stack]:
    app = create_app(settings)
    siblings = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app()), base_url=SIBLINGS)
    key = (settings.stripe_secret_key.get_secret_value(), "")
    resources = Resources.open(settings, http=siblings)
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    ctx: dict[str, Any] = {RESOURCES: resources, "redis": redis, "job_try": 1}
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                base_url="http://billing.simulate",
                timeout=60,
            ) as api,
            httpx.AsyncClient(base_url=emulator, auth=key, timeout=60) as stripe,
        ):
            configured = await stripe.post("/_config/test_clocks/dunning", data=DUNNING)
            configured.raise_for_status()
            business = clock.ManualClock(datetime.fromtimestamp(scenario.start, UTC))
            yield Stack(api, stripe, siblings, ctx, settings, business)
    finally:
        await redis.aclose()
        await resources.close()
        await siblings.aclose()
