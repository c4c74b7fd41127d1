"""The simulation's injected crashes and killed jobs are counted, not logged as errors, and a
worker job that fails is counted while the worker goes on."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from random import Random
from types import SimpleNamespace
from typing import cast

import pytest
from arq import Retry
from sqlalchemy.ext.asyncio import create_async_engine

from app import clock
from app.simulate import driver as driver_module
from app.simulate.driver import Driver, Stack
from app.simulate.faults import API_LOGGER, FaultRates, Faults, SimulatedCrash, commit_crashes
from app.simulate.scenario import build_scenario


def _unhandled(exc: BaseException) -> None:
    logging.getLogger(API_LOGGER).error("unhandled error", exc_info=exc)


def test_an_injected_crash_is_not_logged_as_an_unhandled_error_while_a_run_injects_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crash = SimulatedCrash("simulated crash between Stripe's answer and our commit")
    with caplog.at_level(logging.ERROR, logger=API_LOGGER), commit_crashes():
        _unhandled(crash)
        _unhandled(RuntimeError("a real defect"))
    _unhandled(crash)  # outside a run nothing is filtered

    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert len(logged) == 2
    assert isinstance(logged[0], RuntimeError)
    assert logged[1] is crash


async def test_a_killed_jobs_cancelled_connection_close_is_not_logged_while_a_run_kills_jobs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_async_engine("postgresql+asyncpg://billing@127.0.0.1:9/unused")
    pool_log = engine.sync_engine.pool.logger  # the logger a close that failed is logged to
    try:
        assert isinstance(pool_log, logging.Logger)

        def close_failed(exc: BaseException) -> None:
            pool_log.error("Exception closing connection %r", "conn", exc_info=exc)

        with caplog.at_level(logging.ERROR, logger=pool_log.name), commit_crashes():
            close_failed(asyncio.CancelledError())
            close_failed(OSError("connection reset by peer"))
        close_failed(asyncio.CancelledError())  # outside a run nothing is filtered
    finally:
        await engine.dispose()

    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert [type(exc) for exc in logged] == [OSError, asyncio.CancelledError]


async def test_a_failing_worker_job_is_counted_and_the_worker_goes_on_as_arq_does() -> None:
    faults = Faults(FaultRates.none(), Random(1))  # noqa: S311 - reproducible, not secret
    driver = Driver(cast("Stack", None), build_scenario(consumers=0, months=1, seed=1), faults)

    async def no_connection_in_time() -> int:
        raise TimeoutError("QueuePool limit of size 5 overflow 5 reached, connection timed out")

    async def works() -> int:
        return 1

    async def asks_for_a_retry() -> None:
        raise Retry(defer=1)

    assert await driver._job(no_connection_in_time) is None
    assert await driver._job(works) == 1
    assert driver.record.jobs_failed == 1
    with pytest.raises(Retry):  # a retry is arq's to schedule, not a failure
        await driver._job(asks_for_a_retry)
    assert driver.record.jobs_failed == 1


async def test_the_usage_cron_runs_again_within_the_moment_until_every_window_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = [{"stripe_failures": 2, "unavailable": 0}, {"stripe_failures": 0, "unavailable": 0}]
    runs: list[object] = []

    async def aggregate_usage(ctx: object) -> dict[str, int]:
        runs.append(ctx)
        return outcomes[len(runs) - 1]

    monkeypatch.setattr(driver_module, "aggregate_usage", aggregate_usage)
    business = clock.ManualClock(datetime(2027, 1, 1, tzinfo=UTC))
    stack = cast("Stack", SimpleNamespace(worker={}, business=business))
    faults = Faults(FaultRates.none(), Random(1))  # noqa: S311 - reproducible, not secret
    driver = Driver(stack, build_scenario(consumers=0, months=1, seed=1), faults)

    await driver._usage_cron()
    assert len(runs) == 2  # the windows Stripe failed are sent minutes later, in the same moment
    await driver._usage_cron()
    assert len(runs) == 2  # once all is sent, the cron has nothing more to do at this moment
