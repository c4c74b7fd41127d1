"""JSON logs never carry secrets or card numbers; /metrics shows every named series."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.config import Settings
from app.errors import UpstreamError
from app.logging import JsonFormatter, RedactSecretsFilter, request_id_var
from app.stripe import StripeGateway
from tests.support.settings import make_settings


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("test.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_secrets_and_card_numbers_never_reach_the_log(captured: io.StringIO) -> None:
    log = logging.getLogger("test.observability")
    log.info(
        "calling with %s and %s",
        "sk_live_51Habcdef0123456789",
        "whsec_abcDEF123",
        extra={
            "headers": {
                "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln",
                "Accept": "json",
            },
            "stripe_signature": "t=1,v1=abc",
            "note": "card 4242 4242 4242 4242 and 4000-0000-0000-0002",
            "api_key": "ak_plain_looking_value",
        },
    )
    try:
        raise ValueError("bad key rk_test_ZZZ999")
    except ValueError:
        log.exception("failed")
    out = captured.getvalue()
    for secret in (
        "sk_live_51H",
        "whsec_abc",
        "eyJhbGci",
        "4242 4242",
        "4000-0000",
        "t=1,v1",
        "ak_plain",
        "rk_test",
    ):
        assert secret not in out
    first, second = _lines(captured)
    assert first["message"] == "calling with [redacted] and [redacted]"
    assert first["headers"] == {"Authorization": "[redacted]", "Accept": "json"}
    assert "[redacted]" in second["exc_info"]


def test_ordinary_numbers_and_ids_stay_readable(captured: io.StringIO) -> None:
    log = logging.getLogger("test.observability")
    order = str(uuid.uuid4())
    log.info(
        "paid",
        extra={"amount": 2900, "invoice": "in_4242424242424242", "order": order, "ts": "1234567890123"},
    )
    (line,) = _lines(captured)
    assert line["amount"] == 2900
    assert line["invoice"] == "in_4242424242424242"
    assert line["order"] == order
    assert line["ts"] == "1234567890123"  # 13 digits failing the Luhn check: not a card


def test_log_lines_carry_the_request_id(captured: io.StringIO) -> None:
    token = request_id_var.set("req-123")
    try:
        logging.getLogger("test.observability").info("hello")
    finally:
        request_id_var.reset(token)
    assert _lines(captured)[0]["request_id"] == "req-123"


def _value(body: str, series: str) -> float:
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"{series} not in /metrics")


async def test_metrics_show_every_named_series(client: httpx.AsyncClient) -> None:
    metrics.WEBHOOK_EVENTS.labels("invoice.paid", "processed").inc()
    metrics.STRIPE_CALLS.labels("customers.create", "ok").observe(0.1)
    metrics.STRIPE_ERRORS.labels("customers.create", "APIConnectionError").inc()
    await client.get("/health")
    body = (await client.get("/metrics")).text
    for name in (
        "billing_http_request_duration_seconds_bucket",
        'billing_webhook_events_total{outcome="processed",type="invoice.paid"}',
        "billing_job_duration_seconds",
        "billing_job_failures_total",
        "billing_outbox_backlog",
        "billing_outbox_oldest_pending_age_seconds",
        "billing_stripe_call_duration_seconds_bucket",
        "billing_stripe_call_errors_total",
    ):
        assert name in body


async def _add_outbox(
    engine: AsyncEngine, status: str, age_seconds: int, kind: str = "create_api_key"
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO outbox"
                " (id, kind, dedupe_key, payload, status, attempts, next_attempt_at, created_at)"
                " VALUES (:id, :kind, :key, '{}', :status, 0, now(),"
                " now() - make_interval(secs => :age))"
            ),
            {"id": uuid.uuid4(), "kind": kind, "key": uuid.uuid4().hex, "status": status, "age": age_seconds},
        )


async def test_outbox_backlog_is_counted_from_the_database_at_most_once_per_interval(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    metrics.OUTBOX._refreshed_at = None
    await _add_outbox(engine, "pending", 120)
    await _add_outbox(engine, "pending", 5)
    await _add_outbox(engine, "failed", 10)
    await _add_outbox(engine, "done", 999)
    await _add_outbox(engine, "pending", 999, kind="notify")  # a record, not a call we deliver
    body = (await client.get("/metrics")).text
    assert _value(body, 'billing_outbox_backlog{status="pending"}') == 2
    assert _value(body, 'billing_outbox_backlog{status="failed"}') == 1
    assert 119 <= _value(body, "billing_outbox_oldest_pending_age_seconds") < 180

    await _add_outbox(engine, "pending", 1)
    body = (await client.get("/metrics")).text
    assert _value(body, 'billing_outbox_backlog{status="pending"}') == 2  # cached within the interval

    metrics.OUTBOX._refreshed_at = None
    body = (await client.get("/metrics")).text
    assert _value(body, 'billing_outbox_backlog{status="pending"}') == 3


async def test_instrumented_job_records_duration_and_failures() -> None:
    async def settle_invoice(ctx: dict[str, Any]) -> str:
        if ctx["fail"]:
            raise UpstreamError("metering down")
        return "ok"

    job = metrics.instrument_job(settle_invoice)
    assert job.__name__ == "settle_invoice"
    before_ok = metrics.REGISTRY.get_sample_value(
        "billing_job_duration_seconds_count", {"job": "settle_invoice", "outcome": "ok"}
    )
    assert await job({"fail": False}) == "ok"
    with pytest.raises(UpstreamError):
        await job({"fail": True})
    assert (
        metrics.REGISTRY.get_sample_value(
            "billing_job_duration_seconds_count", {"job": "settle_invoice", "outcome": "ok"}
        )
        == (before_ok or 0) + 1
    )
    assert (
        metrics.REGISTRY.get_sample_value(
            "billing_job_failures_total", {"job": "settle_invoice", "error": "UpstreamError"}
        )
        == 1
    )


async def test_log_lines_of_a_job_carry_its_job_id(captured: io.StringIO) -> None:
    async def send_receipt(ctx: dict[str, Any]) -> None:
        logging.getLogger("test.observability").info("sending")

    await metrics.instrument_job(send_receipt)({"job_id": "abc123"})
    assert _lines(captured)[0]["request_id"] == "job:abc123"
    assert request_id_var.get() is None


async def test_cancelled_job_is_recorded_and_cancellation_propagates() -> None:
    async def long_sync(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(metrics.instrument_job(long_sync)({}))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (
        metrics.REGISTRY.get_sample_value(
            "billing_job_duration_seconds_count", {"job": "long_sync", "outcome": "cancelled"}
        )
        == 1
    )


def test_worker_functions_and_cron_jobs_are_instrumented_under_their_own_names() -> None:
    from app.worker.settings import WorkerSettings

    for function in WorkerSettings.functions:
        assert hasattr(function, "__wrapped__")
    for cron_job in WorkerSettings.cron_jobs:
        assert hasattr(cron_job.coroutine, "__wrapped__")
        assert cron_job.name == f"cron:{cron_job.coroutine.__wrapped__.__name__}"


async def test_each_stripe_call_logs_its_request_id(caplog: pytest.LogCaptureFixture) -> None:
    gateway = StripeGateway(make_settings(stripe_api_base="http://stripe.test"))
    balance = {"object": "balance", "available": [], "pending": [], "livemode": False}
    with respx.mock, caplog.at_level(logging.INFO, logger="app.stripe"):
        respx.get("http://stripe.test/v1/balance").respond(
            200, json=balance, headers={"Request-Id": "req_42"}
        )
        await gateway._call("balance.retrieve", lambda: gateway.client.v1.balance.retrieve_async())
    (record,) = [r for r in caplog.records if r.getMessage() == "stripe call"]
    assert record.__dict__["operation"] == "balance.retrieve"
    assert record.__dict__["stripe_request_id"] == "req_42"


async def test_failed_stripe_calls_are_counted_by_error() -> None:
    gateway = StripeGateway(make_settings(stripe_api_base="http://stripe.test"))
    with respx.mock:
        respx.get("http://stripe.test/v1/balance").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(UpstreamError):
            await gateway._call("balance.retrieve", lambda: gateway.client.v1.balance.retrieve_async())
    assert (
        metrics.REGISTRY.get_sample_value(
            "billing_stripe_call_errors_total",
            {"operation": "balance.retrieve", "error": "APIConnectionError"},
        )
        or 0
    ) >= 1


async def test_the_worker_serves_the_series_its_jobs_count_on_its_own_port(
    client: httpx.AsyncClient, settings: Settings, redis_url: str
) -> None:
    from arq.connections import RedisSettings, create_pool

    from app.dev.processes import free_port
    from app.resources import Resources
    from app.worker.settings import WorkerSettings
    from tests.support.billing_data import event
    from tests.support.worker import send

    payload = event("customer.created", {"id": "cus_metrics_probe", "object": "customer"}, created=1)
    assert (await send(client, payload)).is_success
    (job,) = [f for f in WorkerSettings.functions if getattr(f, "__name__", "") == "process_stripe_event"]
    resources = Resources.open(settings, jobs=True)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        await job({"resources": resources, "redis": redis, "job_try": 1, "job_id": "probe"}, payload["id"])
    finally:
        await redis.aclose()
        await resources.close()

    port = free_port()
    stop = metrics.serve_worker_metrics("127.0.0.1", port)
    assert stop is not None
    try:
        async with httpx.AsyncClient() as http:
            scraped = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        stop()
    assert 'billing_webhook_events_total{outcome="ignored",type="customer.created"}' in scraped
    assert 'billing_job_duration_seconds_count{job="process_stripe_event",outcome="ok"}' in scraped


def test_a_taken_or_disabled_worker_metrics_port_never_stops_the_worker() -> None:
    from app.dev.processes import free_port

    assert metrics.serve_worker_metrics("127.0.0.1", 0) is None
    port = free_port()
    first = metrics.serve_worker_metrics("127.0.0.1", port)
    assert first is not None
    try:
        assert metrics.serve_worker_metrics("127.0.0.1", port) is None
    finally:
        first()


def test_every_series_the_runbook_names_is_registered() -> None:
    from pathlib import Path

    runbook = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = runbook[runbook.index("## Runbook") :]
    named = set(re.findall(r"`(billing_[a-z_]+)", section))
    registered = {
        name
        for family in metrics.REGISTRY.collect()
        for name in (family.name, f"{family.name}_total", f"{family.name}_seconds")
    }
    assert named, "the runbook names the series to watch"
    assert named <= registered
