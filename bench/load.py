"""Load without errors: real HTTP against `billing dev`, every answer must be a 2xx.

Starts `billing dev` on a fresh data folder and a free port (127.0.0.1 only), then:
- GET /api/v1/subscriptions as the demo consumer, 64 connections for 30 s;
- POST /api/v1/consumers/register, each request a new user (a new Stripe customer in the
  emulator), 16 connections for 20 s.
Prints requests, throughput, p50/p99 and the non-2xx count per phase; exits 1 if any request
was not a 2xx. Every loop ends at its deadline (and at a request cap).

    python -m bench.load [--get-seconds 30] [--register-seconds 20]

`closed_loop` is the lean loader the figures use (bench/entitlements.py): raw HTTP/1.1 keep-alive
connections, each sending its next request from the callback that read the last answer. It costs
the shared cores a small fraction of what a full client would, so the server, not the loader, is
what gets measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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
from bench.harness import Figure, LoadResult

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


def raw_request(
    method: str, path: str, *, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 keep-alive request, ready to be written as is."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Run:
    """What the connections of one closed loop share: the clock marks and what they measured."""

    def __init__(self, connections: int, record_from: float, deadline: float) -> None:
        self.record_from = record_from
        self.deadline = deadline
        self.latencies: list[float] = []
        self.completed = 0
        self.failures: dict[str, int] = {}
        self.active = connections
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stop_one(self) -> None:
        self.active -= 1
        if self.active == 0 and not self.finished.done():
            self.finished.set_result(None)

    def fail(self, what: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1


class _LoadConnection(asyncio.Protocol):
    """One keep-alive connection: send, read the whole answer (Content-Length), send again."""

    def __init__(self, request: bytes, run: _Run) -> None:
        self._request = request
        self._run = run
        self._buffer = b""
        self._sent = 0.0
        self._transport: asyncio.Transport | None = None
        self._stopped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent = time.perf_counter()
        self._transport.write(self._request)

    def _stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._run.stop_one()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self._buffer[:head_end].lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0:
            self._run.fail("no content-length")
            self._close()
            return
        value_start = marker + len(b"\r\ncontent-length:")
        value_end = head.find(b"\r\n", value_start)
        length = int(head[value_start : value_end if value_end >= 0 else len(head)])
        total = head_end + 4 + length
        if len(self._buffer) < total:
            return
        status = head[9:12]
        self._buffer = self._buffer[total:]
        done = time.perf_counter()
        run = self._run
        if run.record_from <= done <= run.deadline:
            if status[:1] != b"2":
                run.fail(status.decode())
            else:
                run.completed += 1
                if self._sent >= run.record_from:
                    run.latencies.append(done - self._sent)
        if done >= run.deadline:
            self._close()
            return
        self._send()

    def _close(self) -> None:
        self._stop()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._stopped:
            self._run.fail("connection lost")
        self._stop()


async def closed_loop(
    host: str, port: int, request: bytes, *, connections: int, seconds: float, warmup: float = 0.5
) -> tuple[LoadResult, dict[str, int]]:
    """`connections` keep-alive connections sending `request` back to back for `warmup` + `seconds`;
    the answers within the measured `seconds` count for throughput, and those of requests also
    sent within them for latency. Returns the 2xx answers' figures and the failures by kind
    (status, lost connection)."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    run = _Run(connections, started + warmup, started + warmup + seconds)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the loader's own pauses would read as the server's latency
    try:
        transports = [
            (await loop.create_connection(lambda: _LoadConnection(request, run), host, port))[0]
            for _ in range(connections)
        ]
        await asyncio.wait_for(run.finished, warmup + seconds + 30)
    finally:
        if gc_was_enabled:
            gc.enable()
    for transport in transports:
        transport.close()
    latencies = sorted(run.latencies) or [0.0]
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return LoadResult(run.completed, seconds, p50, p99), run.failures


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


def main(argv: list[str] | None = None) -> list[Figure]:
    """Runs the phases and returns one figure per phase: its non-2xx answers (goal 0)."""
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
    return [
        Figure(
            f"load: {phase.name} non-2xx",
            float(phase.non_2xx),
            0,
            at_least=False,
            detail=phase.line().split("  ", 1)[-1].strip(),
        )
        for phase in phases
    ]


if __name__ == "__main__":
    sys.exit(0 if all(figure.passed for figure in main()) else 1)
