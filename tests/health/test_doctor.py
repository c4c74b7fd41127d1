"""`billing doctor` against the embedded stack: a table of checks, exit 1 when any fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from alembic.script import ScriptDirectory

from app.config import Settings
from app.db.migrate import alembic_config, upgrade
from app.dev.processes import free_port
from tests.support.factories import JWT_SECRET, WEBHOOK_SECRET

# The code's head revision (it moves with every new migration).
HEAD = ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()


def _doctor(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in _CONFIG}
    return subprocess.run(
        [sys.executable, "-m", "app", "doctor"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


_CONFIG = (
    "DATABASE_URL",
    "REDIS_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_API_BASE",
    "JWT_SECRET",
    "API_KEY_SERVICE_URL",
    "METERING_SERVICE_URL",
)


def _env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "STRIPE_SECRET_KEY": "sk_test_doctor",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": settings.stripe_api_base or "",
        "JWT_SECRET": JWT_SECRET,
        "API_KEY_SERVICE_URL": "http://127.0.0.1:9",
        "METERING_SERVICE_URL": "http://127.0.0.1:9",
    }
    env.update(overrides)
    return env


def _rows(output: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in output.splitlines()[1:]:
        parts = line.split(maxsplit=2)
        if len(parts) >= 2 and parts[1] in ("ok", "FAIL", "skip"):
            rows[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else "")
    return rows


def test_doctor_passes_against_a_healthy_stack(settings: Settings) -> None:
    result = _doctor(**_env(settings))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout)
    assert list(rows) == ["config", "database", "migrations", "redis", "stripe"]
    assert all(status == "ok" for status, _ in rows.values())
    assert rows["migrations"][1].startswith(f"at head {HEAD}")
    assert rows["database"][1].startswith("PostgreSQL")
    assert result.stdout.rstrip().endswith("all checks passed")


def test_doctor_names_each_broken_dependency_and_exits_1(settings: Settings, postgres_uri: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    result = _doctor(
        **_env(
            settings,
            DATABASE_URL=postgres_uri,  # reachable, but never migrated
            REDIS_URL=f"redis://{dead}/0",
            STRIPE_API_BASE=f"http://{dead}",
        )
    )
    assert result.returncode == 1
    rows = _rows(result.stdout)
    assert rows["config"][0] == "ok"
    assert rows["database"][0] == "ok"
    assert rows["migrations"] == ("FAIL", f"database at none, code expects {HEAD}: run `billing migrate`")
    assert rows["redis"][0] == "FAIL"
    assert rows["redis"][1].startswith(f"{dead}: ")  # names the address it tried
    assert rows["stripe"] == ("FAIL", f"{dead}: stripe_unreachable: Stripe could not be reached")
    assert "3 problem(s): migrations, redis, stripe" in result.stdout


def test_doctor_names_the_unix_socket_of_an_unreachable_database(settings: Settings, tmp_path: Path) -> None:
    result = _doctor(**_env(settings, DATABASE_URL=f"postgresql://billing@/billing?host={tmp_path}"))
    assert result.returncode == 1
    status, detail = _rows(result.stdout)["database"]
    assert status == "FAIL"
    assert detail.startswith(f"socket {tmp_path}/.s.PGSQL.5432: ")


def test_doctor_reports_invalid_configuration_without_a_traceback_or_secret(settings: Settings) -> None:
    env = _env(settings, JWT_SECRET="short", STRIPE_SECRET_KEY="sk_test_doctor_secret_value")
    del env["METERING_SERVICE_URL"]
    result = _doctor(**env)
    assert result.returncode == 1
    rows = _rows(result.stdout)
    assert rows["config"][0] == "FAIL"
    assert "METERING_SERVICE_URL is required" in rows["config"][1]
    assert "JWT_SECRET must be at least 16 characters" in rows["config"][1]
    assert rows["database"] == ("skip", "invalid configuration")
    assert "1 problem(s): config" in result.stdout
    assert "Traceback" not in result.stderr
    assert "sk_test_doctor_secret_value" not in result.stdout + result.stderr


def _migrate_check(database_url: str, *extra: str) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if k not in _CONFIG}
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "app", "migrate", "--check", *extra],
        env={**base, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fresh_database(postgres_uri: str) -> str:
    import asyncio

    import asyncpg

    name = f"billing_gate_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        connection = await asyncpg.connect(postgres_uri.replace("postgresql://", "postgres://"))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    return postgres_uri.replace("/postgres?", f"/{name}?")


def test_migrate_check_passes_at_head_and_fails_on_an_unmigrated_database(
    database_url: str, postgres_uri: str
) -> None:
    at_head = _migrate_check(database_url)
    out, _ = at_head.communicate(timeout=60)
    assert at_head.returncode == 0
    assert out.strip() == f"at head {HEAD}"

    behind = _migrate_check(_fresh_database(postgres_uri))
    _, err = behind.communicate(timeout=60)
    assert behind.returncode == 1
    assert f"database at none, code expects {HEAD}: run `billing migrate`" in err


def test_migrate_check_with_wait_returns_once_the_migration_job_has_run(postgres_uri: str) -> None:
    url = _fresh_database(postgres_uri)
    gate = _migrate_check(url, "--wait", "60")
    time.sleep(1.5)
    assert gate.poll() is None  # still waiting, as an init container would
    upgrade(url)
    out, _ = gate.communicate(timeout=30)
    assert gate.returncode == 0
    assert out.strip() == f"at head {HEAD}"


def test_migrate_check_with_wait_replaces_a_connection_the_server_ended_between_polls(
    postgres_uri: str,
) -> None:
    import asyncio

    import asyncpg

    url = _fresh_database(postgres_uri)
    name = url.split("?", 1)[0].rsplit("/", 1)[1]
    gate = _migrate_check(url, "--wait", "60")
    time.sleep(1.5)
    assert gate.poll() is None

    async def end_its_connections() -> int:
        """End the gate's connection once it has one (a slow start under load opens it later)."""
        connection = await asyncpg.connect(postgres_uri.replace("postgresql://", "postgres://"))
        try:
            for _ in range(300):
                ended = await connection.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
                )
                if ended:
                    return len(ended)
                await asyncio.sleep(0.1)
        finally:
            await connection.close()
        return 0

    # The poll's pooled connection, ended by the server (a restart, an idle timeout): with no
    # pre-ping the next checkout sees it closed and opens a new one.
    assert asyncio.run(end_its_connections()) >= 1
    upgrade(url)
    out, err = gate.communicate(timeout=30)
    assert gate.returncode == 0, err
    assert out.strip() == f"at head {HEAD}"
