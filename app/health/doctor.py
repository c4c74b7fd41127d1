"""`billing doctor`: is this deployment able to run? Config, PostgreSQL, migrations, Redis, Stripe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from alembic.script import ScriptDirectory
from sqlalchemy import make_url, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import ConfigError, Settings, load_settings
from app.db.migrate import alembic_config
from app.db.session import create_probe_engine
from app.errors import DomainError
from app.resources import Resources, opened

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skip" if self.skipped else "ok" if self.ok else "FAIL"


class CheckFailed(Exception):
    """A check that ran and found something wrong; its message is the whole explanation."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CheckFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_SECONDS:.0f}s"
    if isinstance(exc, DomainError):
        return f"{exc.code}: {exc.message}"
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {message}"[:160]


async def _run(name: str, probe: Callable[[], Awaitable[str]], target: str | None = None) -> Check:
    """Run one probe; a failure names the `target` it tried (host:port or socket) first."""
    try:
        detail = await asyncio.wait_for(probe(), TIMEOUT_SECONDS)
    except Exception as exc:
        return Check(name, False, f"{target}: {_describe(exc)}" if target else _describe(exc))
    return Check(name, True, detail)


def database_target(database_url: str) -> str:
    """Where a PostgreSQL URL points: `host:port/db`, or `socket DIR/.s.PGSQL.PORT` for a unix socket."""
    url = make_url(database_url)
    port = url.port or 5432
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, tuple):
        socket_dir = socket_dir[0] if socket_dir else None
    if socket_dir and str(socket_dir).startswith("/"):
        return f"socket {socket_dir}/.s.PGSQL.{port}"
    return f"{url.host or 'localhost'}:{port}/{url.database or ''}"


def redis_target(redis_url: str) -> str:
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        return f"socket {parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def stripe_target(settings: Settings) -> str:
    parts = urlsplit(settings.stripe_api_base or "https://api.stripe.com")
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


async def migration_state(engine: AsyncEngine, database_url: str) -> str:
    """ "at head <rev>" when the database's Alembic revision is the code's head, else CheckFailed."""
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    async with engine.connect() as connection:
        try:
            rows = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
        except ProgrammingError:
            rows = []
    current = {row[0] for row in rows}
    if current == heads:
        return f"at head {', '.join(sorted(heads))}"
    shown = ", ".join(sorted(current)) or "none"
    raise CheckFailed(f"database at {shown}, code expects {', '.join(sorted(heads))}: run `billing migrate`")


async def wait_for_head(database_url: str, timeout_seconds: float, poll_seconds: float = 2.0) -> str:
    """Poll until the database is migrated to head (an init container's gate); CheckFailed on timeout."""
    engine = create_probe_engine(database_url, connect_timeout=TIMEOUT_SECONDS)
    deadline = time.monotonic() + timeout_seconds
    try:
        while True:
            try:
                return await migration_state(engine, database_url)
            except Exception as exc:
                if time.monotonic() + poll_seconds > deadline:
                    raise CheckFailed(_describe(exc)) from None
            await asyncio.sleep(poll_seconds)
    finally:
        await engine.dispose()


async def _database_and_migrations(res: Resources) -> list[Check]:
    settings, engine = res.settings, res.engine

    async def database() -> str:
        async with engine.connect() as connection:
            version = (await connection.execute(text("SHOW server_version"))).scalar_one()
        return f"PostgreSQL {version}"

    database_check = await _run("database", database, database_target(settings.database_url))
    if not database_check.ok:
        return [database_check, Check("migrations", False, "database unreachable", skipped=True)]

    async def migrations() -> str:
        return await migration_state(engine, settings.database_url)

    return [database_check, await _run("migrations", migrations)]


async def _redis(res: Resources) -> Check:
    async def ping() -> str:
        await res.redis.ping()
        return "PONG"

    return await _run("redis", ping, redis_target(res.settings.redis_url))


async def _stripe(res: Resources) -> Check:
    async def reachable() -> str:
        await res.stripe.check_reachable()
        return res.settings.stripe_api_base or "api.stripe.com"

    return await _run("stripe", reachable, stripe_target(res.settings))


async def diagnose(environ_overrides: dict[str, object] | None = None) -> list[Check]:
    """Every check, in order; the later ones are skipped when the configuration is invalid."""
    try:
        settings = load_settings(**(environ_overrides or {}))
    except ConfigError as exc:
        skipped = [Check(name, False, "invalid configuration", skipped=True) for name in _LATER]
        return [Check("config", False, str(exc)), *skipped]
    mode = (
        "live" if settings.stripe_secret_key.get_secret_value().startswith(("sk_live", "rk_live")) else "test"
    )
    config = Check("config", True, f"valid (Stripe {mode} mode)")
    # The API's engine: its connect and statement timeouts are what `/ready` lives with.
    async with opened(settings, jobs=False) as res:
        database_checks, redis_check, stripe_check = await asyncio.gather(
            _database_and_migrations(res), _redis(res), _stripe(res)
        )
    return [config, *database_checks, redis_check, stripe_check]


_LATER = ("database", "migrations", "redis", "stripe")


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check'.ljust(width)}  status  detail"]
    lines += [f"{c.name.ljust(width)}  {c.status:<6}  {c.detail}" for c in checks]
    failed = [c.name for c in checks if c.status == "FAIL"]
    lines.append(f"{len(failed)} problem(s): {', '.join(failed)}" if failed else "all checks passed")
    return "\n".join(lines)
