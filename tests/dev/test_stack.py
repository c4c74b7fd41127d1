"""`billing dev` as a user runs it: a real process tree, stopped, killed and started again."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.dev.processes import EmbeddedPostgres, free_port
from tests.support.auth import bearer
from tests.support.dev_stack import STACK_VARS, children_of, dev_stack


def _logged(log: Path, text: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_for_event(data_dir: Path, event_type: str, object_id: str, timeout: float = 15) -> bool:
    import asyncpg

    uri = EmbeddedPostgres(data_dir / "pg").start()  # the running server, reused

    async def stored() -> bool:
        connection = await asyncpg.connect(uri.replace("postgresql://", "postgres://"))
        try:
            found = await connection.fetchval(
                "SELECT count(*) FROM stripe_events"
                " WHERE type = $1 AND payload->'data'->'object'->>'id' = $2",
                event_type,
                object_id,
            )
        finally:
            await connection.close()
        return bool(found)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(stored()):
            return True
        time.sleep(0.3)
    return False


def test_billing_dev_serves_registers_and_restarts(data_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with dev_stack(data_dir, port) as (process, tokens):
        assert httpx.get(f"{base}/health").json() == {"status": "ok"}
        assert httpx.get(f"{base}/ready").status_code == 200
        headers = bearer(tokens["consumer"])
        first = httpx.post(f"{base}/api/v1/consumers/register", headers=headers, timeout=10)
        assert first.status_code == 201
        assert first.json()["stripe_customer_id"].startswith("cus_")
        plans = httpx.get(f"{base}/api/v1/apis/demo-weather/plans", headers=headers).json()["plans"]
        assert {p["type"] for p in plans} == {"free", "subscription", "pay_per_use"}
        # The emulator posts its events to our webhook endpoint, signed: the register made one.
        assert _wait_for_event(data_dir, "customer.created", first.json()["stripe_customer_id"])
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    time.sleep(0.5)
    assert children_of(data_dir) == []

    # Killed outright: the next start cleans up what was left and the data is still there.
    with dev_stack(data_dir, port) as (process, tokens):
        process.kill()
        process.wait()
    with dev_stack(data_dir, port) as (process, tokens):
        headers = bearer(tokens["consumer"])
        again = httpx.post(f"{base}/api/v1/consumers/register", headers=headers, timeout=10)
        assert again.status_code == 200
        assert again.json() == first.json()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_billing_dev_prints_cards_writes_an_env_file_and_logs_and_shows_demo_history(data_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with dev_stack(data_dir, port) as (process, banner):
        for card in ("pm_card_visa", "pm_card_visa_chargeDeclined", "pm_card_authenticationRequired"):
            assert card in banner["test cards"]
        assert str(data_dir / "api.log") in banner["logs"]
        # The env file drives the other commands against the running stack.
        script = f"set -e; source {data_dir / 'env'}; {sys.executable} -m app doctor"
        doctor = subprocess.run(  # noqa: S603
            ["bash", "-c", script],  # noqa: S607
            env={k: v for k, v in os.environ.items() if k not in STACK_VARS},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        creator = bearer(banner["creator"])
        usage = httpx.get(f"{base}/api/v1/apis/demo-geocoder/usage", headers=creator, timeout=10).json()
        assert sum(day["calls"] > 0 for day in usage["daily"]) >= 29
        # The API's access log went there (a request's line is written once its response is sent).
        assert _logged(data_dir / "api.log", '"message":"request"')
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Short path (the PostgreSQL socket lives inside); whatever runs there is stopped after."""
    path = Path(tempfile.mkdtemp(prefix="bd", dir="/tmp"))
    yield path
    if (path / "pg" / "postmaster.pid").exists():
        server = EmbeddedPostgres(path / "pg")
        server.start()
        server.stop()
    shutil.rmtree(path, ignore_errors=True)
