"""SIGTERM on real `billing api` and `billing worker` processes loses no request and no job."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import JobStatus

from app.config import Settings
from app.dev.processes import free_port, wait_for_port
from tests.support.factories import JWT_SECRET, WEBHOOK_SECRET

SLOW_API = Path(__file__).parents[1] / "support" / "slow_api.py"


def _env(settings: Settings, port: int, drain_seconds: float) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        STRIPE_SECRET_KEY="sk_test_lifecycle",
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        JWT_SECRET=JWT_SECRET,
        API_KEY_SERVICE_URL="http://127.0.0.1:9",
        METERING_SERVICE_URL="http://127.0.0.1:9",
        HOST="127.0.0.1",
        PORT=str(port),
        LOG_LEVEL="INFO",
        SHUTDOWN_DRAIN_SECONDS=str(drain_seconds),
        SHUTDOWN_GRACEFUL_TIMEOUT_SECONDS="10",
    )
    return env


def _start_api(
    settings: Settings, port: int, drain_seconds: float, output: Path | None
) -> subprocess.Popen[bytes]:
    """`billing api` (with the slow route) in a child process."""
    sink = output.open("wb") if output is not None else None
    try:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, str(SLOW_API), "api"],
            env=_env(settings, port, drain_seconds),
            stdout=sink or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
    finally:
        if sink is not None:
            sink.close()


@contextmanager
def _reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """`process`, killed on the way out if it is still running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _wait_ready(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (await http.get("/ready")).status_code == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the API never became ready")


@asynccontextmanager
async def _ready_api(
    settings: Settings, drain_seconds: float, output: Path | None
) -> AsyncIterator[tuple[subprocess.Popen[bytes], httpx.AsyncClient, int]]:
    """`billing api` in a child process, ready: (the process, a client of it, its port); killed on
    the way out if it is still running."""
    port = free_port()
    with _reaped(_start_api(settings, port, drain_seconds, output)) as process:
        await asyncio.to_thread(wait_for_port, port, 30, process)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as http:
            await _wait_ready(http)
            yield process, http, port


async def test_sigterm_turns_readiness_false_then_finishes_the_request_in_flight_and_exits_0(
    settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "api.log"
    async with _ready_api(settings, 1.0, log_path) as (process, http, port):
        slow = asyncio.create_task(http.get("/test/slow", params={"seconds": 2.5}))
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)

        # Still listening during the drain delay, but no longer ready; still alive.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as probe:
            ready = await probe.get("/ready")
            health = await probe.get("/health")
        assert ready.status_code == 503
        assert ready.json()["code"] == "draining"
        assert health.status_code == 200

        response = await slow
        assert response.status_code == 200
        assert response.json() == {"slept": 2.5}
        assert await asyncio.to_thread(process.wait, 15) == 0
    assert b"draining: readiness is false" in log_path.read_bytes()


async def test_after_the_drain_delay_new_connections_are_refused(settings: Settings) -> None:
    async with _ready_api(settings, 0.2, None) as (process, http, port):
        slow = asyncio.create_task(http.get("/test/slow", params={"seconds": 2}))
        await asyncio.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.8)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as late:
            try:
                refused = (await late.get("/health")).status_code != 200
            except httpx.ConnectError:
                refused = True
        assert refused
        assert (await slow).status_code == 200
        assert await asyncio.to_thread(process.wait, 15) == 0


SLOW_WORKER = Path(__file__).parents[1] / "support" / "slow_worker.py"


def _start_worker(settings: Settings, completion_wait: int | None) -> subprocess.Popen[bytes]:
    env = _env(settings, 8080, 0)
    if completion_wait is not None:
        env["SLOW_WORKER_COMPLETION_WAIT"] = str(completion_wait)
    return subprocess.Popen(  # noqa: S603
        [sys.executable, str(SLOW_WORKER), "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_for_key(redis: ArqRedis, key: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await redis.exists(key):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never appeared")


async def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(process.wait, 30)


async def test_sigterm_lets_the_running_job_finish_before_the_worker_exits(settings: Settings) -> None:
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    marker = f"lifecycle:{uuid.uuid4().hex}"
    try:
        with _reaped(_start_worker(settings, completion_wait=None)) as worker:
            await redis.enqueue_job("slow_job", 1.5, marker)
            await _wait_for_key(redis, f"{marker}:started", 20)
            assert await _stop(worker) == 0
            assert await redis.get(f"{marker}:done") == b"1"
    finally:
        await redis.aclose()


def _worker_check(settings: Settings) -> int:
    return subprocess.run(
        [sys.executable, "-m", "app", "worker", "--check"],
        env=_env(settings, 8080, 0),
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


async def test_worker_check_follows_the_worker_heartbeat(settings: Settings) -> None:
    assert await asyncio.to_thread(_worker_check, settings) == 1  # no worker yet
    with _reaped(_start_worker(settings, completion_wait=None)) as worker:
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(_worker_check, settings) != 0:
            assert time.monotonic() < deadline, "the worker never reported healthy"
            await asyncio.sleep(0.2)
        assert await _stop(worker) == 0
        assert await asyncio.to_thread(_worker_check, settings) == 1  # heartbeat removed on exit


async def test_a_job_still_running_when_the_wait_ends_is_requeued_and_run_again(settings: Settings) -> None:
    redis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    marker = f"lifecycle:{uuid.uuid4().hex}"
    first = _start_worker(settings, completion_wait=1)
    second: subprocess.Popen[bytes] | None = None
    try:
        job = await redis.enqueue_job("slow_job", 4, marker)
        assert job is not None
        await _wait_for_key(redis, f"{marker}:started", 20)
        assert await _stop(first) == 0
        assert not await redis.exists(f"{marker}:done")
        assert await job.status() == JobStatus.queued  # back in the queue, not lost

        second = _start_worker(settings, completion_wait=None)
        await _wait_for_key(redis, f"{marker}:done", 20)
        assert await redis.lrange(f"{marker}:started", 0, -1) == [b"1", b"2"]  # type: ignore[misc]
        assert await _stop(second) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        await redis.aclose()
