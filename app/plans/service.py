from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import Principal
from app.errors import Conflict, Forbidden, InvalidField, NotFound
from app.models import Api, PricingPlan, PricingPlanVersion
from app.money import chargeable_problem, exponent, from_minor, minor_decimal, to_minor
from app.plans.repository import PlanRepository
from app.plans.schemas import PlanCreate, PlanOut, PlanUpdate, plan_out
from app.stripe import StripeGateway

MONEY_FIELDS = ("monthly_price", "price_per_call", "call_limit", "overage_price_per_call")


def meter_event_name(api_id: str) -> str:
    return f"api_calls_{api_id}"


def check_prices(
    plan_type: str,
    currency: str,
    monthly_price: Decimal | None,
    price_per_call: Decimal | None,
    trial_period_days: int | None,
) -> None:
    """The price fields a plan type needs, and no others."""
    if plan_type == "subscription":
        if monthly_price is None or monthly_price <= 0:
            raise InvalidField("monthly_price", "a subscription plan needs a monthly_price above 0")
        if -int(monthly_price.normalize().as_tuple().exponent) > exponent(currency):
            places = exponent(currency)
            raise InvalidField(
                "monthly_price", f"{currency.upper()} prices have at most {places} decimal places"
            )
        problem = chargeable_problem(to_minor(monthly_price, currency), currency)
        if problem is not None:
            raise InvalidField("monthly_price", problem)
        if price_per_call is not None:
            raise InvalidField("price_per_call", "only pay_per_use plans have a price per call")
    elif plan_type == "pay_per_use":
        if price_per_call is None:
            raise InvalidField("price_per_call", "a pay_per_use plan needs a price_per_call")
        if monthly_price not in (None, Decimal(0)):
            raise InvalidField("monthly_price", "pay_per_use plans have no monthly price")
    else:
        if (monthly_price or 0) != 0 or price_per_call is not None:
            raise InvalidField("monthly_price", "a free plan has no price")
        if trial_period_days is not None:
            raise InvalidField("trial_period_days", "a free plan has no trial")


def check_overage(plan_type: str, call_limit: int | None, overage_price_per_call: Decimal | None) -> None:
    """Overage is a subscription plan's option: included calls (`call_limit`), then a price per call."""
    if overage_price_per_call is None:
        return
    if plan_type != "subscription":
        raise InvalidField("overage_price_per_call", "only subscription plans bill overage")
    if call_limit is None:
        raise InvalidField("overage_price_per_call", "overage needs a call_limit (the included calls)")


class PlanService:
    def __init__(self, session: AsyncSession, stripe: StripeGateway) -> None:
        self._repo = PlanRepository(session)
        self._stripe = stripe

    async def create(self, principal: Principal, api_id: str, data: PlanCreate) -> PlanOut:
        """Add a plan to an API; the first creator to add one claims the API."""
        check_prices(
            data.type, data.currency, data.monthly_price, data.price_per_call, data.trial_period_days
        )
        check_overage(data.type, data.call_limit, data.overage_price_per_call)
        if principal.is_admin:
            # An admin acts on a creator's API, but never becomes the owner of an unclaimed one
            # (its earnings and payouts would go to the admin).
            claimed = await self._repo.get_api(api_id, for_update=True)
            if claimed is None:
                raise Conflict(
                    "No creator has claimed this API yet: its creator adds the first plan",
                    code="api_unclaimed",
                )
            api = claimed
        else:
            api = await self._repo.claim_api(api_id, principal.user_id)
        self._require_owner(principal, api)
        plan = PricingPlan(
            id=uuid.uuid4(),
            api_id=api_id,
            name=data.name,
            type=data.type,
            rate_limit_per_minute=data.rate_limit_per_minute,
            rate_limit_per_day=data.rate_limit_per_day,
            rate_limit_per_month=data.rate_limit_per_month,
            trial_period_days=data.trial_period_days,
            features=data.features or {},
            is_active=True,
            current_version=1,
        )
        version = PricingPlanVersion(
            plan_id=plan.id,
            version=1,
            currency=data.currency,
            monthly_amount=to_minor(data.monthly_price, data.currency) if data.monthly_price else None,
            price_per_call=data.price_per_call,
            call_limit=data.call_limit,
            overage_price_per_call=data.overage_price_per_call,
        )
        await self._publish_price(api, plan, version)
        self._repo.add(plan, version)
        await self._repo.flush()
        return plan_out(plan, version)

    async def list(self, principal: Principal, api_id: str, *, include_inactive: bool) -> list[PlanOut]:
        """Active plans for everyone; inactive ones too for the API's owner or an admin."""
        if include_inactive:
            api = await self._repo.get_api(api_id)
            include_inactive = api is not None and self._is_owner(principal, api)
        rows = await self._repo.list_current(api_id, include_inactive=include_inactive)
        return [plan_out(plan, version) for plan, version in rows]

    async def get(self, api_id: str, plan_id: uuid.UUID) -> PlanOut:
        found = await self._repo.get_current(plan_id, api_id=api_id)
        if found is None:
            raise NotFound("Plan not found")
        plan, version = found
        return plan_out(plan, version)

    async def update(
        self, principal: Principal, api_id: str, plan_id: uuid.UUID, data: PlanUpdate
    ) -> PlanOut:
        """Change a plan. A changed price or call limit makes a new version with a new Stripe price;
        existing subscribers keep the version they bought."""
        api = await self._owned_api(principal, api_id)
        found = await self._repo.get_current(plan_id, api_id=api_id, for_update=True)
        if found is None:
            raise NotFound("Plan not found")
        plan, current = found
        sent = data.model_fields_set
        for field in ("rate_limit_per_minute", "rate_limit_per_day", "rate_limit_per_month"):
            if field in sent:
                setattr(plan, field, getattr(data, field))
        if data.name is not None:
            plan.name = data.name
        if data.is_active is not None:
            plan.is_active = data.is_active
        if "features" in sent:
            plan.features = data.features or {}
        if "trial_period_days" in sent:
            if plan.type == "free" and data.trial_period_days is not None:
                raise InvalidField("trial_period_days", "a free plan has no trial")
            plan.trial_period_days = data.trial_period_days

        if not sent.intersection(MONEY_FIELDS):
            return plan_out(plan, current)
        currency = current.currency
        monthly = data.monthly_price if "monthly_price" in sent else self._monthly_price(current)
        per_call = data.price_per_call if "price_per_call" in sent else current.price_per_call
        call_limit = data.call_limit if "call_limit" in sent else current.call_limit
        overage = current.overage_price_per_call
        if "overage_price_per_call" in sent:
            overage = data.overage_price_per_call
        check_prices(plan.type, currency, monthly, per_call, plan.trial_period_days)
        check_overage(plan.type, call_limit, overage)
        monthly_amount = to_minor(monthly, currency) if plan.type == "subscription" and monthly else None
        if (monthly_amount, per_call, call_limit, overage) == (
            current.monthly_amount,
            current.price_per_call,
            current.call_limit,
            current.overage_price_per_call,
        ):
            return plan_out(plan, current)
        version = PricingPlanVersion(
            plan_id=plan.id,
            version=current.version + 1,
            currency=currency,
            monthly_amount=monthly_amount,
            price_per_call=per_call,
            call_limit=call_limit,
            overage_price_per_call=overage,
        )
        await self._publish_price(api, plan, version)
        plan.current_version = version.version
        self._repo.add(version)
        await self._repo.flush()
        if current.stripe_price_id and current.stripe_price_id != version.stripe_price_id:
            # New subscriptions can no longer buy the old price; existing ones keep billing on it.
            await self._stripe.deactivate_price(current.stripe_price_id)
        if current.stripe_overage_price_id:
            await self._stripe.deactivate_price(current.stripe_overage_price_id)
        return plan_out(plan, version)

    async def deactivate(self, principal: Principal, api_id: str, plan_id: uuid.UUID) -> None:
        """Stop selling a plan: new subscriptions are refused, existing ones run on."""
        await self._owned_api(principal, api_id)
        found = await self._repo.get_current(plan_id, api_id=api_id, for_update=True)
        if found is None:
            raise NotFound("Plan not found")
        found[0].is_active = False

    async def _owned_api(self, principal: Principal, api_id: str) -> Api:
        api = await self._repo.get_api(api_id, for_update=True)
        if api is None:
            raise NotFound("Plan not found")
        self._require_owner(principal, api)
        return api

    @staticmethod
    def _is_owner(principal: Principal, api: Api) -> bool:
        return principal.is_admin or api.creator_id == principal.user_id

    def _require_owner(self, principal: Principal, api: Api) -> None:
        if not self._is_owner(principal, api):
            raise Forbidden("This API belongs to another creator", code="not_api_owner")

    @staticmethod
    def _monthly_price(version: PricingPlanVersion) -> Decimal | None:
        if version.monthly_amount is None:
            return None
        return from_minor(version.monthly_amount, version.currency)

    async def _publish_price(self, api: Api, plan: PricingPlan, version: PricingPlanVersion) -> None:
        """Create the Stripe product (once per API), meter (once per API, pay-per-use) and price."""
        if plan.type == "free":
            return
        if api.stripe_product_id is None:
            api.stripe_product_id = await self._stripe.create_product(
                name=f"API {api.api_id}",
                metadata={"api_id": api.api_id, "creator_id": api.creator_id},
                idempotency_key=f"product-create:{api.api_id}",
            )
        meter: str | None = None
        if plan.type == "pay_per_use":
            meter = await self._meter(api)
            assert version.price_per_call is not None  # noqa: S101  (checked by check_prices)
            unit_amount = minor_decimal(version.price_per_call, version.currency)
        else:
            unit_amount = Decimal(version.monthly_amount or 0)
        price = await self._stripe.create_price(
            product=api.stripe_product_id,
            currency=version.currency,
            unit_amount_decimal=unit_amount,
            nickname=f"{plan.name} v{version.version}",
            metadata={"plan_id": str(plan.id), "plan_version": str(version.version), "api_id": api.api_id},
            idempotency_key=f"price-create:{plan.id}:v{version.version}",
            meter=meter,
        )
        version.stripe_price_id = price.id
        if version.overage_price_per_call is not None and version.call_limit is not None:
            overage = await self._stripe.create_overage_price(
                product=api.stripe_product_id,
                currency=version.currency,
                meter=await self._meter(api),
                included=version.call_limit,
                unit_amount_decimal=minor_decimal(version.overage_price_per_call, version.currency),
                nickname=f"{plan.name} v{version.version} overage",
                metadata={
                    "plan_id": str(plan.id),
                    "plan_version": str(version.version),
                    "api_id": api.api_id,
                    "kind": "overage",
                },
                idempotency_key=f"overage-price-create:{plan.id}:v{version.version}",
            )
            version.stripe_overage_price_id = overage.id

    async def _meter(self, api: Api) -> str:
        """The API's Billing Meter (made once): pay-per-use prices and overage prices bill from it."""
        if api.stripe_meter_id is None:
            api.stripe_meter_id = await self._stripe.create_meter(
                display_name=f"Calls to {api.api_id}",
                event_name=meter_event_name(api.api_id),
                idempotency_key=f"meter-create:{api.api_id}",
            )
        return api.stripe_meter_id
