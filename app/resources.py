"""The composition root: every long-lived client of a process, opened once and closed once.

The API's lifespan (`app/main.py`), the worker's start-up (`app/worker/settings.py`) and each
command behind `billing ...` open one `Resources` and hand its parts to the services they build;
nothing else creates engines, Redis clients, HTTP clients, the Stripe gateway or the token
verifier. Each part connects lazily, so opening costs no round trip.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.auth import TokenVerifier
from app.config import Settings
from app.db import create_engine, create_job_engine, create_read_sessionmaker, create_sessionmaker
from app.db.packed_redis import EntitlementsRedis
from app.db.redis import create_entitlements_redis, create_redis
from app.stripe import StripeGateway


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    # Autocommit sessions for reads (no BEGIN/COMMIT round trips).
    read_sessionmaker: async_sessionmaker[AsyncSession]
    redis: ArqRedis
    # The entitlement checks' own client, with their timeout and hiredis-packed commands.
    entitlements_redis: EntitlementsRedis
    http: httpx.AsyncClient
    stripe: StripeGateway
    verifier: TokenVerifier
    _owns_http: bool = field(default=True, repr=False)

    @classmethod
    def open(
        cls, settings: Settings, *, jobs: bool = False, http: httpx.AsyncClient | None = None
    ) -> Resources:
        """The clients of one process. `jobs`: the engine of worker jobs and commands (longer
        statements) instead of the API's; `http`: a client the caller owns (the simulation's
        stand-ins for the sibling services), left open by `close`."""
        engine = create_job_engine(settings) if jobs else create_engine(settings)
        client = http or httpx.AsyncClient(timeout=settings.sibling_timeout_seconds)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            read_sessionmaker=create_read_sessionmaker(engine),
            redis=create_redis(settings),
            entitlements_redis=create_entitlements_redis(settings),
            http=client,
            stripe=StripeGateway(settings),
            verifier=TokenVerifier(settings, client),
            _owns_http=http is None,
        )

    async def close(self) -> None:
        await self.redis.aclose()
        await self.entitlements_redis.aclose()
        if self._owns_http:
            await self.http.aclose()
        await self.engine.dispose()


@asynccontextmanager
async def opened(
    settings: Settings, *, jobs: bool = True, http: httpx.AsyncClient | None = None
) -> AsyncIterator[Resources]:
    """`Resources` open for the block: what each `billing ...` command runs inside."""
    resources = Resources.open(settings, jobs=jobs, http=http)
    try:
        yield resources
    finally:
        await resources.close()


# Net allocations between two collections of the youngest generation (CPython's default: 700).
# A request or job waiting on PostgreSQL or Redis keeps its frames, scope and buffers alive, so
# under load each young collection walks every waiting request's objects and frees almost none:
# at 700, 35 such walks per 1,000 webhook deliveries (30 us of each delivery's time); at 5,000,
# five (13 us), each still a pause of a few milliseconds at most.
GC_YOUNG_THRESHOLD = 5000


def freeze_startup_heap() -> None:
    """Once a process has opened its resources, everything it loaded lives as long as it: keep
    the garbage collector off it, so full collections stay short and do not show up as pauses of
    whatever request or job runs when one falls (the API's lifespan and the worker's start-up).
    Young collections run every GC_YOUNG_THRESHOLD allocations instead of every 700."""
    gc.collect()
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)
