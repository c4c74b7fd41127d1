"""What every job receives in ctx: the settings, a session factory, the Stripe gateway, an HTTP client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import create_job_engine, create_sessionmaker
from app.stripe import StripeGateway


@dataclass
class WorkerResources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    stripe: StripeGateway
    http: httpx.AsyncClient

    @classmethod
    def open(cls, settings: Settings) -> WorkerResources:
        engine = create_job_engine(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            stripe=StripeGateway(settings),
            http=httpx.AsyncClient(timeout=settings.sibling_timeout_seconds),
        )

    async def close(self) -> None:
        await self.http.aclose()
        await self.engine.dispose()


def resources(ctx: dict[str, Any]) -> WorkerResources:
    res: WorkerResources = ctx["resources"]
    return res
