"""`billing usage backfill --from --to [--subscription]`: fills missing windows, once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
import respx
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from app import cli as cli_module
from app.config import Settings
from app.models import UsageRecord
from tests.support.billing_data import World, make_world
from tests.support.usage import Metering, meter_event_api, pay_per_use

TODAY = datetime.now(UTC).date()


@pytest.fixture
def services(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Metering, respx.Route]]:
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: settings)
    with respx.mock(assert_all_called=False) as mock:
        meter_events = mock.post(f"{settings.stripe_api_base}/v1/billing/meter_events")
        meter_events.side_effect = meter_event_api({})
        yield Metering(mock), meter_events


async def backfill(*args: str) -> Result:
    """The command in-process (in a thread: it runs its own event loop), on a wide terminal."""
    runner = CliRunner()
    return await asyncio.to_thread(
        lambda: runner.invoke(cli_module.cli, ["usage", "backfill", *args], env={"COLUMNS": "200"})
    )


def summary(result: Result) -> list[int]:
    """The figures row of the final table: days, subscriptions, written, already present, reported."""
    for line in result.output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 5 and all(c.isdigit() for c in cells):
            return [int(c) for c in cells]
    raise AssertionError(result.output)


async def days_recorded(engine: AsyncEngine, world: World) -> list[date]:
    async with engine.connect() as connection:
        statement = (
            select(UsageRecord.window_start)
            .where(UsageRecord.subscription_id == world.subscription_id)
            .order_by(UsageRecord.window_start)
        )
        return [w.date() for (w,) in (await connection.execute(statement)).all()]


async def test_backfill_fills_the_missing_days_and_a_rerun_adds_nothing(
    engine: AsyncEngine, services: tuple[Metering, respx.Route]
) -> None:
    _, meter_events = services
    world = await pay_per_use(engine, days_ago=6)
    first, last = TODAY - timedelta(days=6), TODAY - timedelta(days=1)
    result = await backfill("--from", str(first), "--to", str(last))
    assert result.exit_code == 0, result.output
    assert summary(result) == [6, 1, 6, 0, 6]
    # Metering was down on two days: their windows are lost, and backfilled again.
    async with engine.begin() as connection:
        gap = [first + timedelta(days=2), first + timedelta(days=3)]
        starts = [datetime.combine(d, datetime.min.time(), tzinfo=UTC) for d in gap]
        await connection.execute(delete(UsageRecord).where(UsageRecord.window_start.in_(starts)))
    result = await backfill("--from", str(first), "--to", str(last))
    assert result.exit_code == 0, result.output
    assert summary(result) == [6, 1, 2, 4, 2]
    assert await days_recorded(engine, world) == [first + timedelta(days=n) for n in range(6)]
    rerun = await backfill("--from", str(first), "--to", str(last))
    assert summary(rerun) == [6, 1, 0, 6, 0]
    sent = [httpx.QueryParams(call.request.content.decode())["identifier"] for call in meter_events.calls]
    assert len(sent) == 8  # six days, then the two backfilled again under their own identifiers


async def test_backfill_of_one_subscription_leaves_the_others_alone(
    engine: AsyncEngine, services: tuple[Metering, respx.Route]
) -> None:
    chosen = await pay_per_use(engine, days_ago=3)
    other = await pay_per_use(engine, days_ago=3)
    day = str(TODAY - timedelta(days=2))
    result = await backfill("--from", day, "--to", day, "--subscription", str(chosen.subscription_id))
    assert result.exit_code == 0, result.output
    assert summary(result) == [1, 1, 1, 0, 1]
    assert await days_recorded(engine, chosen) == [TODAY - timedelta(days=2)]
    assert await days_recorded(engine, other) == []


async def test_backfill_of_a_subscription_that_is_not_metered_says_so(
    engine: AsyncEngine, services: tuple[Metering, respx.Route]
) -> None:
    flat = await make_world(engine, status="active", started_at=datetime.now(UTC) - timedelta(days=3))
    day = str(TODAY - timedelta(days=1))
    result = await backfill("--from", day, "--to", day, "--subscription", str(flat.subscription_id))
    assert result.exit_code == 1
    assert summary(result) == [1, 0, 0, 0, 0]
    assert "is not a live pay-per-use or call-limited one" in result.output


async def test_backfill_with_metering_down_records_nothing_and_exits_1(
    engine: AsyncEngine, services: tuple[Metering, respx.Route]
) -> None:
    metering, _ = services
    metering.down = True
    await pay_per_use(engine, days_ago=2)
    day = str(TODAY - timedelta(days=1))
    result = await backfill("--from", day, "--to", day)
    assert result.exit_code == 1
    assert "metering did not answer for 1 subscriptions" in result.output
    async with engine.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(UsageRecord))).scalar_one() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-13-01", "--to", "2026-01-02"], "--from must be a day as YYYY-MM-DD"),
        (
            ["--from", str(TODAY - timedelta(days=1)), "--to", str(TODAY - timedelta(days=2))],
            f"--from {TODAY - timedelta(days=1)} is after --to",
        ),
        (["--from", str(TODAY), "--to", str(TODAY)], "--to must be a day that has ended"),
        (
            ["--from", str(TODAY - timedelta(days=36)), "--to", str(TODAY - timedelta(days=1))],
            "Stripe takes meter events up to 35 days old",
        ),
        (
            [
                "--from",
                str(TODAY - timedelta(days=1)),
                "--to",
                str(TODAY - timedelta(days=1)),
                "--subscription",
                "nope",
            ],
            "--subscription must be a subscription id",
        ),
    ],
)
def test_bad_backfill_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_module.cli, ["usage", "backfill", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
