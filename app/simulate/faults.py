"""The faults a simulation injects, each drawn from the scenario's seed.

- `StripeFaults`: a reverse proxy between our gateway and the emulator. On a share of calls it
  answers 503 without forwarding (Stripe down), or forwards the call and then drops the connection
  before answering (a timeout after Stripe acted): the SDK retries with the same idempotency key.
- `crash_before_commit`: the request's commit fails after the service has run (and Stripe has
  answered), as if the process died there; the client retries with its Idempotency-Key.
- `deliveries`: every webhook delivered twice, some three times, shuffled within a window, as
  Stripe's at-least-once delivery may.
- `run_job`: a worker job cancelled at a random await (the worker was killed), then run again, as
  arq re-queues a job whose worker died.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool

T = TypeVar("T")
API_LOGGER = "app.http"  # where the API logs an unhandled error
# Where SQLAlchemy's pool of an async engine logs a connection it could not close.
POOL_LOGGER = f"{AsyncAdaptedQueuePool.__module__}.{AsyncAdaptedQueuePool.__name__}"

# Set (to a one-element list) while a request whose commit must fail runs; cleared once it failed.
_crash_armed: ContextVar[list[bool] | None] = ContextVar("simulate_crash_armed", default=None)


class SimulatedCrash(RuntimeError):
    """The process 'died' between Stripe's answer and our commit."""


@dataclass
class FaultRates:
    stripe_unavailable: float = 0.03  # 503 before Stripe sees the call
    stripe_answer_lost: float = 0.03  # Stripe acts, the answer never arrives
    crash_before_commit: float = 0.05  # of mutating API requests
    duplicate_webhook: float = 0.3  # every webhook twice, this share a third time
    shuffle_window: int = 6  # webhooks reordered within this many
    worker_killed: float = 0.05  # of job runs

    @classmethod
    def none(cls) -> FaultRates:
        return cls(0, 0, 0, 0, 1, 0)


@dataclass
class FaultCounts:
    stripe_unavailable: int = 0
    stripe_answer_lost: int = 0
    crash_before_commit: int = 0
    duplicate_webhooks: int = 0
    workers_killed: int = 0

    def as_rows(self) -> list[tuple[str, int]]:
        return [(name.replace("_", " "), value) for name, value in vars(self).items()]


@dataclass
class Faults:
    rates: FaultRates
    rng: random.Random
    counts: FaultCounts = field(default_factory=FaultCounts)

    def deliveries(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events as Stripe may deliver them: each twice, some three times, shuffled within
        a window (none when webhook faults are off)."""
        sent: list[dict[str, Any]] = []
        window = max(1, self.rates.shuffle_window)
        for first in range(0, len(events), window):
            batch = list(events[first : first + window])
            for item in list(batch):
                if self.rates.duplicate_webhook > 0:
                    batch.append(item)
                    self.counts.duplicate_webhooks += 1
                if self.rng.random() < self.rates.duplicate_webhook:
                    batch.append(item)
                    self.counts.duplicate_webhooks += 1
            self.rng.shuffle(batch)
            sent.extend(batch)
        return sent

    @contextmanager
    def maybe_crash(self) -> Iterator[None]:
        """Run one mutating API request, arming a crash of its commit on a share of them."""
        armed = [self.rng.random() < self.rates.crash_before_commit]
        was_armed = armed[0]
        token = _crash_armed.set(armed)
        try:
            yield
        finally:
            _crash_armed.reset(token)
            if was_armed and not armed[0]:
                self.counts.crash_before_commit += 1

    async def run_job(self, job: Callable[[], Awaitable[T]]) -> T:
        """Run a worker job; on a share of runs kill it at a random await, then run it again."""
        if self.rng.random() < self.rates.worker_killed:
            task = asyncio.ensure_future(job())
            for _ in range(self.rng.randrange(1, 40)):
                if task.done():
                    break
                await asyncio.sleep(0)
            if not task.done():
                task.cancel()
                self.counts.workers_killed += 1
                try:
                    return await task
                except asyncio.CancelledError:
                    pass
            else:
                return task.result()
        return await job()


def crashed_requests_listener(session: Session) -> None:
    """`before_commit`: fail the armed request's commit once (the rollback keeps nothing)."""
    armed = _crash_armed.get()
    if armed and armed[0]:
        armed[0] = False
        raise SimulatedCrash("simulated crash between Stripe's answer and our commit")


def not_an_injected_crash(record: logging.LogRecord) -> bool:
    """A logging filter: the API's "unhandled error" for a crash the run injected is counted in
    the faults table, not logged with its traceback (a year's run would print thousands)."""
    return not (record.exc_info and isinstance(record.exc_info[1], SimulatedCrash))


def not_a_killed_jobs_close(record: logging.LogRecord) -> bool:
    """A logging filter: a job the run killed while its connection was being closed makes the
    pool log the close the kill cancelled; the kill is counted in the faults table instead."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


@contextmanager
def commit_crashes() -> Iterator[None]:
    """Listen for armed requests while a simulation runs, and log the injected faults only in
    the faults table."""
    api_log, pool_log = logging.getLogger(API_LOGGER), logging.getLogger(POOL_LOGGER)
    event.listen(Session, "before_commit", crashed_requests_listener)
    api_log.addFilter(not_an_injected_crash)
    pool_log.addFilter(not_a_killed_jobs_close)
    try:
        yield
    finally:
        pool_log.removeFilter(not_a_killed_jobs_close)
        api_log.removeFilter(not_an_injected_crash)
        event.remove(Session, "before_commit", crashed_requests_listener)


class StripeFaults:
    """A reverse proxy to the emulator that fails a share of our gateway's calls."""

    def __init__(self, upstream: str, faults: Faults) -> None:
        self._upstream = upstream.rstrip("/")
        self._faults = faults
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._http = aiohttp.ClientSession()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        rates, counts, rng = self._faults.rates, self._faults.counts, self._faults.rng
        mutating = request.method in ("POST", "DELETE")
        if rng.random() < rates.stripe_unavailable:
            counts.stripe_unavailable += 1
            return web.json_response(
                {"error": {"type": "api_error", "message": "simulated outage"}},
                status=503,
                headers={"Stripe-Should-Retry": "true"},
            )
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        if self._http is None:
            raise RuntimeError("the fault proxy is not started")
        async with self._http.request(
            request.method, self._upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            content = await answer.read()
            status = answer.status
            content_type = answer.headers.get("Content-Type", "application/json")
        if mutating and rng.random() < rates.stripe_answer_lost:
            counts.stripe_answer_lost += 1
            if request.transport is not None:
                request.transport.close()  # the client sees the connection drop, no answer
            return web.Response(status=502)
        return web.Response(body=content, status=status, headers={"Content-Type": content_type})
