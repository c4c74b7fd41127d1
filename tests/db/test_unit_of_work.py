"""The unit of work commits, then runs its after-commit hooks; a rollback drops them.

Checked through the webhook worker's entry point (`process_stripe_event`) with a handler that
registers a hook, against the real database, and as a convention over `app/`: nobody but the unit
of work commits or runs the hooks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.unit_of_work import after_commit, unit_of_work
from app.models import StripeEvent
from app.webhooks import table
from app.webhooks.context import EventContext
from app.webhooks.jobs import process_stripe_event
from tests.support.worker import Ctx

APP = Path(__file__).resolve().parents[2] / "app"
EVENT_TYPE = "billing.test_hook"


async def _stored_event(engine: AsyncEngine, event_id: str) -> None:
    async with unit_of_work(async_sessionmaker(engine)) as session:
        session.add(
            StripeEvent(
                id=event_id,
                type=EVENT_TYPE,
                stripe_created=1,
                payload={"id": event_id, "type": EVENT_TYPE, "data": {"object": {"id": "obj_1"}}},
            )
        )


async def _status(engine: AsyncEngine, event_id: str) -> str:
    async with AsyncSession(engine) as session:
        return (
            await session.execute(select(StripeEvent.status).where(StripeEvent.id == event_id))
        ).scalar_one()


@pytest.fixture
def hook_handler(engine: AsyncEngine) -> Iterator[dict[str, Any]]:
    """A handler for a test event type: registers a hook that records what it saw, may then fail."""
    seen: dict[str, Any] = {"ran": False, "status_then": None, "fail": False}

    async def handler(context: EventContext, obj: dict[str, Any]) -> str:
        async def hook() -> None:
            seen["ran"] = True
            # Read on a connection of its own: the hook must see the committed work.
            seen["status_then"] = await _status(engine, context.event_id)

        after_commit(context.session, hook)
        if seen["fail"]:
            raise RuntimeError("the handler failed after registering its hook")
        return "processed"

    table.HANDLERS[EVENT_TYPE] = handler
    yield seen
    del table.HANDLERS[EVENT_TYPE]


async def test_a_jobs_after_commit_hook_runs_once_its_unit_of_work_committed(
    engine: AsyncEngine, worker_ctx: Ctx, hook_handler: dict[str, Any]
) -> None:
    await _stored_event(engine, "evt_hook_commit")

    assert await process_stripe_event(worker_ctx, "evt_hook_commit") == "processed"

    assert hook_handler["ran"]
    assert hook_handler["status_then"] == "processed"


async def test_a_jobs_after_commit_hook_never_runs_when_its_unit_of_work_rolled_back(
    engine: AsyncEngine, worker_ctx: Ctx, hook_handler: dict[str, Any]
) -> None:
    await _stored_event(engine, "evt_hook_rollback")
    hook_handler["fail"] = True

    with pytest.raises(Retry):
        await process_stripe_event(worker_ctx, "evt_hook_rollback")

    assert not hook_handler["ran"]
    assert await _status(engine, "evt_hook_rollback") == "pending"


async def test_a_dry_run_unit_of_work_keeps_nothing_and_runs_no_hook(engine: AsyncEngine) -> None:
    ran: list[str] = []

    async def hook() -> None:
        ran.append("hook")

    async with unit_of_work(async_sessionmaker(engine), dry_run=True) as session:
        session.add(StripeEvent(id="evt_dry", type=EVENT_TYPE, stripe_created=1, payload={}))
        after_commit(session, hook)

    assert ran == []
    async with AsyncSession(engine) as session:
        assert await session.get(StripeEvent, "evt_dry") is None


HAND_RUN_CALLS = {"commit", "begin"}
HOOK_RUNNERS = {"_run_hooks", "run_after_commit"}


def _hand_run_transactions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.relative_to(APP.parent)}:{getattr(node, 'lineno', 0)}"
        called = node.func if isinstance(node, ast.Call) else None
        if isinstance(called, ast.Attribute) and called.attr in HAND_RUN_CALLS:
            found.append(f"{where} .{called.attr}()")
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        if name in HOOK_RUNNERS:
            found.append(f"{where} {name}")
    return found


def test_only_the_unit_of_work_commits_or_runs_after_commit_hooks() -> None:
    """A job, command or handler that commits by hand would skip (or run early) the hooks."""
    found = [
        line
        for path in sorted(APP.rglob("*.py"))
        if path != APP / "db" / "unit_of_work.py"
        for line in _hand_run_transactions(path)
    ]
    assert found == []
