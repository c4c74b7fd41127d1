"""The earnings report written straight from the query's rows is byte for byte the schema's JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analytics.schemas import EarningsReport
from app.models import Earning
from app.money import split_commission
from tests.support import rows
from tests.support.auth import Auth
from tests.support.rows import RATE


def _through_schema(content: bytes) -> tuple[EarningsReport, bytes]:
    """The response read back into the schema (`from` is the alias of `from_`), and its JSON."""
    body = orjson.loads(content)
    body["from_"] = body.pop("from")
    report = EarningsReport.model_validate(body)
    return report, report.model_dump_json(by_alias=True).encode()


def _line(plan: object, invoice: object, status: str, **fields: object) -> Earning:
    commission, net = split_commission(invoice.total, RATE)  # type: ignore[attr-defined]
    return rows.earning(
        plan,  # type: ignore[arg-type]
        invoice,  # type: ignore[arg-type]
        "creator-docs",
        invoice.total,  # type: ignore[attr-defined]
        commission,
        net_amount=net,
        status=status,
        **fields,
    )


async def _seed(engine: AsyncEngine) -> None:
    """Two currencies, two months, two plans, every payout state, a reversal."""
    api = rows.api("creator-docs", "docs-api")
    basic, basic_v = rows.plan(api, name="Basic")
    pro, pro_v = rows.plan(api, name="Pro ✓", monthly_amount=9900)
    yen, yen_v = rows.plan(api, name="Japan", currency="jpy", monthly_amount=3000)
    alice = rows.consumer()
    invoices = [
        (basic, rows.invoice(alice, total=2999, created_at=datetime(2026, 3, 3, tzinfo=UTC)), "paid_out"),
        (pro, rows.invoice(alice, total=9900, created_at=datetime(2026, 3, 9, tzinfo=UTC)), "available"),
        (basic, rows.invoice(alice, total=7, created_at=datetime(2026, 4, 2, tzinfo=UTC)), "pending"),
        (
            yen,
            rows.invoice(alice, currency="jpy", total=3333, created_at=datetime(2026, 4, 5, tzinfo=UTC)),
            "pending",
        ),
    ]
    ledger = [_line(plan, invoice, status) for plan, invoice, status in invoices]
    reversal = rows.earning(
        basic,
        invoices[2][1],
        "creator-docs",
        7,
        1,
        kind="reversal",
        earned_at=datetime(2026, 4, 9, tzinfo=UTC),
    )
    await rows.add(
        engine,
        api,
        basic,
        basic_v,
        pro,
        pro_v,
        yen,
        yen_v,
        alice,
        *(i for _, i, _ in invoices),
        *ledger,
        reversal,
    )


async def test_earnings_json_is_the_schemas_bytes(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    await _seed(engine)

    response = await client.get(
        "/api/v1/apis/docs-api/earnings",
        params={"from": "2026-03-01", "to": "2026-04-30"},
        headers=auth("creator", user_id="creator-docs"),
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    report, schema_bytes = _through_schema(response.content)
    assert [c.currency for c in report.currencies] == ["jpy", "usd"]
    assert [m.month for m in report.currencies[1].months] == ["2026-03", "2026-04"]
    assert [p.plan_name for p in report.currencies[1].plans] == ["Pro ✓", "Basic"]
    assert response.content == schema_bytes


async def test_earnings_of_an_api_without_earnings_is_the_schemas_empty_report(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    await rows.add(engine, rows.api("creator-docs", "quiet-api"))

    response = await client.get(
        "/api/v1/apis/quiet-api/earnings",
        params={"from": "2026-03-01", "to": "2026-03-31"},
        headers=auth("admin"),
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "api_id": "quiet-api",
        "from": "2026-03-01",
        "to": "2026-03-31",
        "commission_rate": "0.20",
        "currencies": [],
    }
    assert response.content == _through_schema(response.content)[1]
