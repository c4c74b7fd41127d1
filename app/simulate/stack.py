"""The throwaway stack one simulation runs on: a fresh PostgreSQL database (migrated), Redis, the
Stripe emulator and the sibling stand-ins, all on 127.0.0.1 under the run's data folder, stopped at
the end. It reads no DATABASE_URL, REDIS_URL or STRIPE_* setting: nothing outside the run is touched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from app.config import Settings


@asynccontextmanager
async def embedded_stack(data_dir: Path) -> AsyncIterator[Settings]:
    """A throwaway stack for one run: PostgreSQL (a fresh database), Redis, the Stripe emulator and
    the API key and metering stand-ins, all on 127.0.0.1, stopped at the end."""
    import asyncpg

    from app.config import load_settings
    from app.db.migrate import upgrade
    from app.dev.processes import (
        EmbeddedPostgres,
        free_port,
        redis_server,
        siblings_emulator,
        stripe_emulator,
    )
    from app.dev.stack import DEV_JWT_SECRET, DEV_STRIPE_KEY, DEV_WEBHOOK_SECRET

    postgres = EmbeddedPostgres(data_dir / "pg")
    children = []
    try:
        uri = await asyncio.to_thread(postgres.start)
        name = f"billing_sim_{uuid.uuid4().hex[:8]}"
        connection = await asyncpg.connect(uri.replace("postgresql://", "postgres://"))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        database_url = uri.replace("/postgres?", f"/{name}?")
        await asyncio.to_thread(upgrade, database_url)
        ports = {part: free_port() for part in ("redis", "stripe", "siblings")}
        children = [
            redis_server(data_dir / "redis", ports["redis"], persist=False),
            stripe_emulator(ports["stripe"], None, data_dir / "stripe.log"),
            siblings_emulator(ports["siblings"], None, data_dir / "siblings.log"),
        ]
        for child in children:
            await asyncio.to_thread(child.start, 30)
        siblings = f"http://127.0.0.1:{ports['siblings']}"
        yield load_settings(
            database_url=database_url,
            redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
            stripe_secret_key=DEV_STRIPE_KEY,
            stripe_api_base=f"http://127.0.0.1:{ports['stripe']}",
            stripe_webhook_secret=DEV_WEBHOOK_SECRET,
            jwt_secret=DEV_JWT_SECRET,
            api_key_service_url=siblings,
            metering_service_url=siblings,
            stripe_max_network_retries=0,
            log_level="WARNING",
        )
    finally:
        for child in reversed(children):
            child.stop()
        postgres.stop()
