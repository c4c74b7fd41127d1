"""Load without errors: real HTTP against `billing dev`, every answer must be a 2xx.

Starts `billing dev` on a fresh data folder and a free port (127.0.0.1 only), then:
- GET /api/v1/subscriptions as the demo consumer, 64 connections for 30 s;
- POST /api/v1/consumers/register, each request a new user (a new Stripe customer in the
  emulator), 16 connections for 20 s.
Prints requests, throughput, p50/p99 and the non-2xx count per phase; exits 1 if any request
was not a 2xx. Every loop ends at its deadline (and at a request cap).

    python -m bench.load [--get-seconds 30] [--register-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt

from app.dev.processes import EmbeddedPostgres, free_port
from app.dev.stack import DEV_JWT_SECRET

MAX_REQUESTS_PER_PHASE = 2_000_000
STACK_VARS = ("DATABASE_URL", "REDIS_URL", "STRIPE_SECRET_KEY", "STRIPE_API_BASE", "API_KEY_SERVICE_URL")


@dataclass
class Phase:
    name: str
    connections: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.failures.values())

    @property
    def non_2xx(self) -> int:
        return sum(self.failures.values())

    def line(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        throughput = self.requests / self.elapsed if self.elapsed else 0.0
        failures = f" {self.failures}" if self.failures else ""
        return (
            f"{self.name:<34} {self.connections:>3} conn {self.elapsed:5.1f} s  {self.requests:>7} req "
            f"{throughput:8.1f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  non-2xx {self.non_2xx}{failures}"
        )


def user_token(user_id: str, role: str = "consumer", secret: str = DEV_JWT_SECRET) -> str:
    claims = {
        "sub": user_id,
        "email": f"{user_id}@load.example",
        "custom:user_type": role,
        "exp": datetime.now(UTC) + timedelta(hours=1),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


async def run_phase(
    base_url: str, phase: Phase, method: str, path: str, headers_for: Callable[[], dict[str, str]]
) -> Phase:
    """`phase.connections` loops sending the request until `phase.seconds` have passed."""
    limits = httpx.Limits(max_connections=phase.connections, max_keepalive_connections=phase.connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        started = time.perf_counter()
        deadline = started + phase.seconds

        async def loop() -> None:
            while time.perf_counter() < deadline and phase.requests < MAX_REQUESTS_PER_PHASE:
                sent = time.perf_counter()
                try:
                    response = await client.request(method, path, headers=headers_for())
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    phase.failures[key] = phase.failures.get(key, 0) + 1
                    continue
                if response.is_success:
                    phase.latencies.append(time.perf_counter() - sent)
                else:
                    key = str(response.status_code)
                    phase.failures[key] = phase.failures.get(key, 0) + 1

        await asyncio.gather(*(loop() for _ in range(phase.connections)))
        phase.elapsed = time.perf_counter() - started
    return phase


async def run_load(
    base_url: str, consumer_token: str, *, get_seconds: float, register_seconds: float
) -> list[Phase]:
    reader = {"Authorization": f"Bearer {consumer_token}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as warm:
        for _ in range(20):
            (await warm.get("/api/v1/subscriptions", headers=reader)).raise_for_status()
    listing = await run_phase(
        base_url,
        Phase("GET /api/v1/subscriptions", 64, get_seconds),
        "GET",
        "/api/v1/subscriptions",
        lambda: reader,
    )
    registering = await run_phase(
        base_url,
        Phase("POST /api/v1/consumers/register (new)", 16, register_seconds),
        "POST",
        "/api/v1/consumers/register",
        lambda: {"Authorization": f"Bearer {user_token(f'load-{uuid.uuid4().hex[:16]}')}"},
    )
    return [listing, registering]


@contextmanager
def dev_stack() -> Iterator[tuple[str, str]]:
    """`billing dev` on a fresh folder and port: (base URL, the demo consumer's token)."""
    data_dir = Path(tempfile.mkdtemp(prefix="bl", dir="/tmp"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and k != "METERING_SERVICE_URL"}
    env["LOG_LEVEL"] = "WARNING"  # an access log line per request would cost the API more than the request
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "app", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        token = None
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip().startswith("consumer token:"):
                token = line.split("consumer token:", 1)[1].strip()
            if "Ctrl-C" in line:
                break
        if token is None:
            raise RuntimeError("billing dev did not start")
        yield f"http://127.0.0.1:{port}", token
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if (data_dir / "pg" / "postmaster.pid").exists():
            server = EmbeddedPostgres(data_dir / "pg")
            server.start()
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--get-seconds", type=float, default=30.0)
    parser.add_argument("--register-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    with dev_stack() as (base_url, token):
        phases = asyncio.run(
            run_load(base_url, token, get_seconds=args.get_seconds, register_seconds=args.register_seconds)
        )
    for phase in phases:
        print(phase.line(), flush=True)
    failed = sum(phase.non_2xx for phase in phases)
    print("zero non-2xx" if not failed else f"{failed} requests were not a 2xx", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
