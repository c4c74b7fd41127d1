from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.money import split_commission
from app.payouts.reversals import reverse_invoice_earnings
from tests.support import rows
from tests.support.auth import Auth
from tests.support.rows import RATE

MARCH = {"from": "2026-03-01", "to": "2026-03-31"}


def _at(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


async def _seed_usage(engine: AsyncEngine) -> dict[str, object]:
    """Creator's API with two plans and three consumers; known calls on 1 and 2 March."""
    api = rows.api("creator-1", "weather")
    basic, basic_v = rows.plan(api, name="Basic")
    pro, pro_v = rows.plan(api, name="Pro")
    alice, bob, carol = rows.consumer("alice"), rows.consumer("bob"), rows.consumer("carol")
    sub_a, sub_b, sub_c = (
        rows.subscription(alice, basic),
        rows.subscription(bob, basic),
        rows.subscription(carol, pro),
    )
    other_api = rows.api("creator-2", "maps")
    other_plan, other_v = rows.plan(other_api)
    other_sub = rows.subscription(alice, other_plan)
    await rows.add(
        engine,
        api,
        other_api,
        basic,
        basic_v,
        pro,
        pro_v,
        other_plan,
        other_v,
        alice,
        bob,
        carol,
        sub_a,
        sub_b,
        sub_c,
        other_sub,
        rows.usage(sub_a, _at(1, 0), 100, 5),
        rows.usage(sub_a, _at(1, 1), 50),
        rows.usage(sub_b, _at(1, 2), 10, 10),
        rows.usage(sub_c, _at(2, 23), 300, 1),
        rows.usage(sub_c, _at(1, 0, month=4), 999),  # after the range
        rows.usage(other_sub, _at(1, 0), 7777),  # another API
    )
    return {"basic": basic, "pro": pro, "alice": alice, "bob": bob, "carol": carol}


async def test_usage_totals_daily_plans_and_top_consumers_match_seeded_rows(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    seeded = await _seed_usage(engine)

    response = await client.get(
        "/api/v1/apis/weather/usage", params=MARCH, headers=auth("creator", user_id="creator-1")
    )

    assert response.status_code == 200
    body = response.json()
    assert body["from"] == "2026-03-01"
    assert body["to"] == "2026-03-31"
    assert body["totals"] == {
        "calls": 476,
        "successful_calls": 460,
        "failed_calls": 16,
        "unique_consumers": 3,
    }
    assert len(body["daily"]) == 31
    assert body["daily"][0] == {
        "date": "2026-03-01",
        "calls": 175,
        "successful_calls": 160,
        "failed_calls": 15,
        "unique_consumers": 2,
    }
    assert body["daily"][1]["calls"] == 301
    assert body["daily"][2]["calls"] == 0
    plans = {p["plan_name"]: p for p in body["plans"]}
    assert plans["Basic"]["calls"] == 175
    assert plans["Basic"]["unique_consumers"] == 2
    assert plans["Pro"]["calls"] == 301
    assert plans["Pro"]["plan_id"] == str(seeded["pro"].id)  # type: ignore[attr-defined]
    assert body["top_consumers"] == [
        {"consumer_id": str(seeded["carol"].id), "calls": 301},  # type: ignore[attr-defined]
        {"consumer_id": str(seeded["alice"].id), "calls": 155},  # type: ignore[attr-defined]
        {"consumer_id": str(seeded["bob"].id), "calls": 20},  # type: ignore[attr-defined]
    ]


async def test_usage_defaults_to_the_last_30_days(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    api = rows.api("creator-1", "recent")
    plan, version = rows.plan(api)
    alice = rows.consumer("alice")
    sub = rows.subscription(alice, plan)
    now = datetime.now(UTC)
    await rows.add(
        engine,
        api,
        plan,
        version,
        alice,
        sub,
        rows.usage(sub, now - timedelta(days=1), 12),
        rows.usage(sub, now - timedelta(days=45), 1000),
    )

    body = (await client.get("/api/v1/apis/recent/usage", headers=auth("admin"))).json()

    assert body["to"] == now.date().isoformat()
    assert body["from"] == (now.date() - timedelta(days=29)).isoformat()
    assert len(body["daily"]) == 30
    assert body["totals"]["calls"] == 12


async def test_earnings_are_paid_times_one_minus_commission_per_currency(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    api = rows.api("creator-1", "weather")
    basic, basic_v = rows.plan(api, name="Basic")
    yen, yen_v = rows.plan(api, name="Japan", currency="jpy", monthly_amount=3000)
    alice = rows.consumer("alice")
    paid = [
        (basic, rows.invoice(alice, total=2999, created_at=_at(3)), "paid_out"),
        (basic, rows.invoice(alice, total=3, created_at=_at(20)), "pending"),
        (basic, rows.invoice(alice, total=1, created_at=_at(2, month=4)), "available"),
        (yen, rows.invoice(alice, currency="jpy", total=3333, created_at=_at(5)), "pending"),
    ]
    ledger = []
    for plan, invoice, status in paid:
        commission, net = split_commission(invoice.total, RATE)
        ledger.append(
            rows.earning(plan, invoice, "creator-1", invoice.total, commission, net_amount=net, status=status)
        )
    refunded = paid[1][1]
    reversal = rows.earning(basic, refunded, "creator-1", 3, 1, kind="reversal", earned_at=_at(25))
    await rows.add(
        engine, api, basic, basic_v, yen, yen_v, alice, *(i for _, i, _ in paid), *ledger, reversal
    )

    response = await client.get(
        "/api/v1/apis/weather/earnings",
        params={"from": "2026-03-01", "to": "2026-04-30"},
        headers=auth("creator", user_id="creator-1"),
    )

    assert response.status_code == 200
    body = response.json()
    assert body["commission_rate"] == "0.20"
    jpy, usd = body["currencies"]  # sorted by code
    # 2999 -> commission 599.8 -> 600, net 2399; 3 -> 0.6 -> 1, net 2 (then refunded); 1 -> 0.2 -> 0, net 1.
    assert (usd["currency"], usd["gross_amount"], usd["commission_amount"], usd["net_amount"]) == (
        "usd",
        2999 + 3 + 1 - 3,
        600 + 1 + 0 - 1,
        2399 + 2 + 1 - 2,
    )
    assert usd["paid_out_amount"] == 2399
    assert usd["available_amount"] == 1
    assert usd["pending_amount"] == 0
    assert [(m["month"], m["net_amount"]) for m in usd["months"]] == [("2026-03", 2399), ("2026-04", 1)]
    assert [(p["plan_name"], p["gross_amount"]) for p in usd["plans"]] == [("Basic", 3000)]
    # 3333 JPY -> commission 666.6 -> 667, net 2666: zero-decimal, never added to USD.
    assert (jpy["currency"], jpy["gross_amount"], jpy["commission_amount"], jpy["net_amount"]) == (
        "jpy",
        3333,
        667,
        2666,
    )
    assert jpy["pending_amount"] == 2666
    assert [p["plan_name"] for p in jpy["plans"]] == ["Japan"]


async def test_earnings_net_a_refund_booked_after_a_payout_and_a_won_disputes_reinstatement(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine
) -> None:
    api = rows.api("creator-1", "weather")
    basic, basic_v = rows.plan(api, name="Basic")
    alice = rows.consumer("alice")
    earned = datetime.now(UTC) - timedelta(days=10)
    invoice = rows.invoice(alice, total=2900, created_at=earned)
    charge = rows.earning(basic, invoice, "creator-1", 2900, 580, status="paid_out", earned_at=earned)
    await rows.add(engine, api, basic, basic_v, alice, invoice, charge)

    async def reverse(total: int) -> None:
        async with AsyncSession(engine) as session, session.begin():
            await reverse_invoice_earnings(session, invoice_id=invoice.id, reversed_total=total)

    await reverse(1000)  # a partial refund, then netted by a payout
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE earnings SET status = 'paid_out' WHERE kind = 'reversal'"))
    await reverse(2900)  # the rest refunded too: its own line, 1900 more
    await reverse(1450)  # a dispute won back half: a reinstatement of 1450

    response = await client.get("/api/v1/apis/weather/earnings", headers=auth("creator", user_id="creator-1"))

    assert response.status_code == 200
    [usd] = response.json()["currencies"]
    # 2900 - 1000 - 1900 + 1450 gross; commission 580 - 200 - 380 + 290; net 2320 - 800 - 1520 + 1160.
    assert (usd["gross_amount"], usd["commission_amount"], usd["net_amount"]) == (1450, 290, 1160)
    assert usd["paid_out_amount"] == 2320 - 800
    assert usd["available_amount"] == -1520 + 1160  # still owed back by the next payout
    assert [(p["plan_name"], p["net_amount"]) for p in usd["plans"]] == [("Basic", 1160)]
    assert sum(m["net_amount"] for m in usd["months"]) == 1160


def test_commission_rounds_half_up_and_net_is_the_rest() -> None:
    assert split_commission(2999, RATE) == (600, 2399)
    assert split_commission(1, RATE) == (0, 1)
    assert split_commission(3, RATE) == (1, 2)
    assert split_commission(25, Decimal("0.10")) == (3, 22)  # 2.5 -> 3
    for gross in range(500):
        commission, net = split_commission(gross, RATE)
        assert commission + net == gross
        assert abs(Decimal(net) - gross * (1 - RATE)) <= Decimal("0.5")


@pytest.mark.parametrize("path", ["usage", "earnings"])
async def test_analytics_of_another_creators_api_is_403(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, path: str
) -> None:
    await rows.add(engine, rows.api("creator-1", "weather"))
    for headers in (auth("creator", user_id="creator-2"), auth("consumer", user_id="creator-1")):
        response = await client.get(f"/api/v1/apis/weather/{path}", headers=headers)
        assert response.status_code == 403
    assert (await client.get(f"/api/v1/apis/weather/{path}", headers=auth("admin"))).status_code == 200


@pytest.mark.parametrize("path", ["usage", "earnings"])
async def test_analytics_of_unknown_api_is_404(client: httpx.AsyncClient, auth: Auth, path: str) -> None:
    response = await client.get(f"/api/v1/apis/nope/{path}", headers=auth("creator"))
    assert response.status_code == 404


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-03-10", "to": "2026-03-01"},
        {"from": "2025-01-01", "to": "2026-03-01"},
        {"from": "2026-02-30"},
        {"to": "soon"},
    ],
)
async def test_analytics_bad_ranges_are_422(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, params: dict[str, str]
) -> None:
    await rows.add(engine, rows.api("creator-1", "weather"))
    for path in ("usage", "earnings"):
        response = await client.get(
            f"/api/v1/apis/weather/{path}", params=params, headers=auth("creator", user_id="creator-1")
        )
        assert response.status_code == 422, (path, params)
        assert response.json()["code"] == "validation_error"
