"""What every webhook handler receives: the event's session, services, settings and Stripe time.

Handlers live in `handlers.py` and `reversal_handlers.py`; `table.py` maps event types to them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.dunning.service import DunningService
from app.outbox.service import Outbox
from app.stripe import StripeGateway
from app.usage.service import UsageService


@dataclass(frozen=True)
class EventContext:
    session: AsyncSession
    outbox: Outbox
    stripe: StripeGateway
    usage: UsageService
    dunning: DunningService
    settings: Settings
    event_id: str
    created: int


Handler = Callable[[EventContext, dict[str, Any]], Awaitable[str]]
Shape = TypeVar("Shape")


def parsed(
    parse: Callable[[dict[str, Any]], Shape], handle: Callable[[EventContext, Shape], Awaitable[str]]
) -> Handler:
    """The handler of an event whose `data.object` `parse` reads (a shape of `app/stripe/`): the
    handlers themselves never see Stripe's JSON."""

    async def handler(ctx: EventContext, obj: dict[str, Any]) -> str:
        return await handle(ctx, parse(obj))

    return handler
