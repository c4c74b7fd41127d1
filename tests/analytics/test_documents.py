"""The earnings report written straight from the query's rows is byte for byte the schema's JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.analytics.router import EarningsRoute
from app.analytics.schemas import EarningsReport
from app.models import Earning
from app.money import split_commission
from tests.support import rows
from tests.support.asgi import fields_named, lean_and_declared
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


# (role, user id) of the caller, or None for no token; the query string.
ASKED = [
    (("creator", "creator-docs"), "from=2026-03-01&to=2026-04-30"),
    (("admin", None), "from=2026-03-01"),
    (("creator", "creator-docs"), ""),
    (("creator", "creator-docs"), "to=2026-04-30&unknown=1"),
    (("creator", "creator-docs"), "from=2026-02-01&from=2026-03-01&to=2026-04-30"),
    (("creator", "creator-docs"), "from=2026-03-10&to=2026-03-01"),
    (("creator", "creator-docs"), "from=2025-01-01&to=2026-03-01"),
    (("creator", "creator-docs"), "from=2026-02-30&to=soon"),
    (("creator", "creator-docs"), "from="),
    (("creator", "creator-docs"), "to=1999-12-31"),
    (("creator", "creator-docs"), "to=2026-04-30T10:00:00"),
    (("creator", "creator-2"), "from=2026-03-01"),
    (("consumer", "creator-docs"), "from=2026-03-01"),
    (("consumer", "creator-docs"), "from=soon"),
    (None, "from=2026-03-01"),
]
PATHS = ["docs-api", "no-such-api", "bad!id", "x" * 65, "docs-api/extra"]


async def test_the_lean_earnings_route_answers_byte_for_byte_what_the_declared_route_answers(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    """The route matched ahead of the others (no routing walk, parameters read by hand) and the
    FastAPI route it stands in for: the same status, headers and bytes for good and bad
    requests alike (422s naming the field, 401, 403 for another creator or a consumer, 404)."""
    await _seed(engine)
    lean = app.router.routes[0]
    assert isinstance(lean, EarningsRoute)

    async def answers() -> list[tuple[int, str | None, bytes]]:
        seen = []
        for api_id in PATHS:
            for caller, query in ASKED:
                headers = {"x-request-id": "compare"}
                if caller is not None:
                    headers |= auth(caller[0], user_id=caller[1])
                response = await client.get(f"/api/v1/apis/{api_id}/earnings?{query}", headers=headers)
                seen.append((response.status_code, response.headers.get("content-type"), response.content))
        return seen

    with_lean, declared = await lean_and_declared(app, lean, answers)

    assert with_lean == declared
    statuses = {status for status, _, _ in with_lean}
    assert statuses == {200, 401, 403, 404, 422}
    assert fields_named(with_lean) == {"api_id", "from", "to"}


@pytest.mark.parametrize(
    ("method", "path", "matched"),
    [
        ("GET", "/api/v1/apis/docs-api/earnings", True),
        ("GET", "/api/v1/apis/a_b-9/earnings", True),
        ("POST", "/api/v1/apis/docs-api/earnings", False),
        ("GET", "/api/v1/apis//earnings", False),
        ("GET", "/api/v1/apis/a/b/earnings", False),
        ("GET", "/api/v1/apis/docs-api/usage", False),
        ("GET", "/api/v1/apis/docs-api/earnings/", False),
    ],
)
def test_the_lean_earnings_route_matches_only_a_get_of_an_apis_earnings(
    app: FastAPI, method: str, path: str, matched: bool
) -> None:
    """Anything else goes on to the declared routes (a POST is their 405, a trailing slash
    their redirect)."""
    lean = app.router.routes[0]
    assert isinstance(lean, EarningsRoute)
    match, _ = lean.matches({"type": "http", "method": method, "path": path})
    assert (match.name == "FULL") is matched
