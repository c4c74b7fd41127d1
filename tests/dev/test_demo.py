"""`billing seed-demo`: a creator's dashboard shows 60 days of numbers on the first start."""

from __future__ import annotations

import io
from datetime import timedelta

import httpx
from pypdf import PdfReader
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import clock
from app.config import Settings
from app.dev.demo import seed
from app.dev.demo_history import DEMO_CONSUMERS, HISTORY_DAYS
from app.models import Earning, Invoice, Subscription, UsageRecord
from tests.support.auth import Auth


async def _counts(engine: AsyncEngine) -> tuple[int, ...]:
    async with engine.connect() as connection:
        return tuple(
            [
                (await connection.execute(select(func.count()).select_from(model))).scalar_one()
                for model in (Subscription, UsageRecord, Invoice, Earning)
            ]
        )


async def test_seed_demo_gives_the_creator_sixty_days_of_usage_and_earnings_once(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, settings: Settings
) -> None:
    lines = await seed(settings)
    assert any(line.startswith("demo consumer demo-alice") for line in lines)
    creator = auth("creator", user_id="demo-creator")
    today = clock.today()
    window = {"from": str(today - timedelta(days=HISTORY_DAYS)), "to": str(today)}

    for api_id in ("demo-weather", "demo-geocoder"):
        usage = await client.get(f"/api/v1/apis/{api_id}/usage", params=window, headers=creator)
        assert usage.status_code == 200, usage.text
        daily = usage.json()["daily"]
        assert len([day for day in daily if day["calls"] > 0]) == HISTORY_DAYS
        assert usage.json()["top_consumers"]
        earnings = await client.get(f"/api/v1/apis/{api_id}/earnings", params=window, headers=creator)
        assert earnings.status_code == 200, earnings.text
        (usd,) = earnings.json()["currencies"]
        assert usd["gross_amount"] > 0
        assert usd["net_amount"] == usd["gross_amount"] - usd["commission_amount"]
        assert len(usd["months"]) >= 2

    before = await _counts(engine)
    assert await seed(settings) == [line for line in lines if not line.startswith("demo consumer")]
    assert await _counts(engine) == before


async def test_demo_consumers_have_paid_invoices_with_numbers_plans_and_bill_to(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, settings: Settings
) -> None:
    await seed(settings)
    numbers: list[str] = []
    for demo in DEMO_CONSUMERS:
        headers = auth("consumer", user_id=demo.user_id)
        invoices = (await client.get("/api/v1/invoices", headers=headers)).json()["invoices"]
        history = [i for i in invoices if i["stripe_invoice_id"].startswith("in_demo_")]
        if demo.plan == "Free":
            assert history == []
            continue
        assert len(history) == 2
        assert all(i["status"] == "paid" and i["number"] for i in history)
        # The subscription's first invoice is Stripe's own, mirrored at seeding.
        assert [i for i in invoices if not i["stripe_invoice_id"].startswith("in_demo_")]
        numbers += [i["number"] for i in invoices if i["number"]]
        detail = (await client.get(f"/api/v1/invoices/{history[0]['id']}", headers=headers)).json()
        assert detail["lines"][0]["plan_name"] == demo.plan
        assert detail["lines"][0]["unit_amount"] is not None
        pdf = await client.get(f"/api/v1/invoices/{history[0]['id']}/pdf", headers=headers)
        assert pdf.status_code == 200
        text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
        for expected in (
            history[0]["number"],
            demo.name,
            demo.address["line1"],
            f"Plan: {demo.plan}",
            "Due date",
        ):
            assert expected in text, expected
    # One sequence for the issuer, without gaps or repeats.
    ours = sorted(int(n.removeprefix("INV-")) for n in numbers if n.startswith("INV-"))
    assert ours == list(range(1, len(ours) + 1))
