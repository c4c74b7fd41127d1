"""`billing sync` on the command line, and the pace it keeps with Stripe."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from app import cli as cli_module
from app.config import Settings
from app.sync.ratelimit import RateLimiter


@pytest.fixture
def dry_run_output(settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> str:
    """What `billing sync --dry-run` prints, having succeeded."""
    monkeypatch.setattr(cli_module, "settings_or_exit", lambda: settings)
    result = CliRunner().invoke(cli_module.cli, ["sync", "--dry-run"])
    assert result.exit_code == 0, result.output
    return result.output


def test_sync_prints_a_table_of_what_it_checked(dry_run_output: str) -> None:
    assert "dry run" in dry_run_output
    for resource in ("customers", "subscriptions", "invoices"):
        assert resource in dry_run_output


def test_sync_explains_each_column_of_its_table(dry_run_output: str) -> None:
    legend = {line.split(":")[0].strip() for line in dry_run_output.splitlines() if ": " in line}
    assert {column for column, _ in cli_module.SYNC_COLUMNS} <= legend


async def test_rate_limiter_spaces_calls_to_the_configured_pace() -> None:
    limiter = RateLimiter(per_second=50)
    started = time.monotonic()
    await asyncio.gather(*(limiter.wait() for _ in range(11)))
    # Eleven calls at 50/s: the last may start no sooner than 10 intervals (0.2 s) after the first.
    assert time.monotonic() - started >= 0.19
