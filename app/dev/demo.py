"""`billing seed-demo`: a demo creator with two APIs and free / subscription / pay-per-use plans,
and demo consumers subscribed to them with 60 days of history (`app/dev/demo_history.py`)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from app.auth import Principal
from app.config import Settings
from app.db.unit_of_work import unit_of_work
from app.dev.demo_history import seed_history
from app.models import PricingPlan
from app.plans.schemas import PlanCreate
from app.plans.service import PlanService
from app.resources import opened
from app.sync.runner import run_sync

DEMO_CREATOR = Principal(user_id="demo-creator", email="creator@demo.example", role="creator")
DEMO_PLANS: dict[str, list[PlanCreate]] = {
    "demo-weather": [
        PlanCreate(name="Free", type="free", call_limit=1000, rate_limit_per_minute=10),
        PlanCreate(
            name="Pro",
            type="subscription",
            monthly_price=Decimal("29"),
            call_limit=100_000,
            rate_limit_per_minute=600,
            trial_period_days=14,
            features={"priority_support": True, "history_days": 365},
        ),
        PlanCreate(name="Pay as you go", type="pay_per_use", price_per_call=Decimal("0.0015")),
    ],
    "demo-geocoder": [
        PlanCreate(name="Starter", type="free", call_limit=500),
        PlanCreate(
            name="Business",
            type="subscription",
            monthly_price=Decimal("9.99"),
            call_limit=20_000,
            features={"batch_geocoding": True},
        ),
        PlanCreate(
            name="Metered", type="pay_per_use", price_per_call=Decimal("0.002"), rate_limit_per_day=50_000
        ),
    ],
}


async def seed(settings: Settings) -> list[str]:
    """Create what is missing of the demo data; running it again adds nothing."""
    lines: list[str] = []
    async with opened(settings) as res:
        sessionmaker, stripe = res.sessionmaker, res.stripe
        for api_id, plans in DEMO_PLANS.items():
            async with unit_of_work(sessionmaker) as session:
                existing = set(
                    (
                        await session.execute(select(PricingPlan.name).where(PricingPlan.api_id == api_id))
                    ).scalars()
                )
                service = PlanService(session, stripe)
                for plan in plans:
                    if plan.name not in existing:
                        await service.create(DEMO_CREATOR, api_id, plan)
                names = ", ".join(p.name for p in plans)
                lines.append(f"demo API {api_id} (creator {DEMO_CREATOR.user_id}): {names}")
        # Only against an emulator (STRIPE_API_BASE): the history is written here, not in Stripe,
        # and a real test-mode account should not collect demo customers.
        history = (
            await seed_history(settings, sessionmaker, stripe, res.http) if settings.stripe_api_base else []
        )
    if history:
        # What Stripe holds for the new subscriptions (their first invoices), mirrored the way
        # `billing sync` reconciles: the webhook endpoint is not listening yet on a first start.
        await run_sync(settings, dry_run=False)
    return lines + history
