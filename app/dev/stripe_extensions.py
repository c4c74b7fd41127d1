"""Dev-only additions to localstripe for what it lacks, answering in Stripe's documented shapes.

- Prices (`/v1/prices`): backed by a localstripe Plan with the same id, so its subscriptions,
  invoices and items work with `price` ids as with Stripe (which treats a Plan as a Price);
  tiered prices (`billing_scheme=tiered`, `tiers_mode` graduated or volume, `tiers[]`) keep
  their tiers beside the price (Stripe shows them only when expanded) and bill through them.
- Subscriptions with several items (a licensed price and metered ones), which localstripe lacks:
  it makes the first item, the others are added before any event about it leaves; an update
  may add (`items[][price]`), swap (`items[][id]` and `price`) or delete (`items[][deleted]`)
  the other items.
- Billing Meters (`/v1/billing/meters`) and meter events (`/v1/billing/meter_events`), with
  Stripe's identifier de-duplication, and a meter's event summaries per customer and span.
- Subscriptions and invoice previews sent as today's Stripe takes them (`items[][price]`,
  `default_payment_method`, `proration_behavior`, `trial_period_days`, the
  `latest_invoice.confirmation_secret` expansion), translated onto localstripe's plan-based ones;
  a repeated Idempotency-Key on a subscription or customer create replays the first answer as
  Stripe does (a repeat sent while the first runs is answered 409 `idempotency_key_in_use`).
- Checkout Sessions (`/v1/checkout/sessions`) whose `url` is a dev page that pays the session
  (subscription created, `checkout.session.completed` sent), and billing-portal sessions.
- Connect: Express accounts (`/v1/accounts`), onboarding links (`/v1/account_links`; opening the
  link completes onboarding at once and redirects to `return_url`) and transfers
  (`/v1/transfers`), which replay their answer for a repeated Idempotency-Key as Stripe does.
- Invoice payments (`/v1/invoice_payments`, the PaymentIntent -> invoice link since API
  2025-03-31) and refunds that send `refund.created` as Stripe does; `automatic_tax` is accepted
  on subscriptions and invoices (the emulator has no Stripe Tax: nothing is taxed).
- One-off invoices as today's Stripe makes them: a draft that excludes pending items
  (`collection_method`, `days_until_due`), invoice items added to it by id (`quantity` and
  `unit_amount_decimal` or `unit_amount`), finalize and send, with `invoice.created`,
  `invoiceitem.created`, `invoice.finalized` and `invoice.sent`, and void (with or without a
  payment attempt); invoice items listed as Stripe lists them (pending and invoiced, by customer
  and `created[gte]`, `expand[]=data.invoice`); a repeated Idempotency-Key on
  these calls replays the first answer as Stripe does. The emulator renders no PDF and has no
  hosted invoice page: `invoice_pdf` and `hosted_invoice_url` stay null.
Objects are kept in localstripe's store, so they persist with it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, cast
from urllib.parse import urlencode

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError
from localstripe.webhooks import schedule_webhook

from app.dev.stripe_store import objects_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Override = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]


def _json(body: dict[str, Any]) -> web.Response:
    return cast("web.Response", server.json_response(body))


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _stored(kind: str, object_id: str) -> dict[str, Any]:
    found = resources.store.get(f"{kind}:{object_id}")
    if found is None:
        raise UserError(404, f"No such {kind}: '{object_id}'")
    return dict(found)


def _save(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    resources.store[f"{kind}:{obj['id']}"] = obj
    return obj


def _tax_behavior(value: Any) -> str:
    """Stripe's `tax_behavior` of a price: inclusive, exclusive or (the default) unspecified."""
    behavior = str(value or "unspecified")
    if behavior not in ("inclusive", "exclusive", "unspecified"):
        raise UserError(400, "Invalid tax_behavior: must be one of inclusive, exclusive, unspecified")
    return behavior


def _decimal(value: Any, field: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise UserError(400, f"Invalid {field}: a decimal") from None
    if not amount.is_finite() or amount < 0:
        raise UserError(400, f"Invalid {field}: a non-negative decimal")
    return amount


def _tiers(data: dict[str, Any]) -> list[dict[str, Any]]:
    """`tiers[]` of a tiered price as Stripe's `price_tier` objects, checked as Stripe checks them:
    increasing `up_to`, the last one `inf`, each tier with one of `unit_amount(_decimal)`."""
    if data.get("tiers_mode") not in ("graduated", "volume"):
        raise UserError(400, "Missing required param: tiers_mode (graduated or volume)")
    raw = data.get("tiers")
    if isinstance(raw, dict):  # tiers[0][...], tiers[1][...] unflattened by index
        raw = [raw[key] for key in sorted(raw, key=int)]
    if not isinstance(raw, list) or not raw:
        raise UserError(400, "Missing required param: tiers")
    tiers: list[dict[str, Any]] = []
    previous = 0
    for number, tier in enumerate(raw):
        last = number == len(raw) - 1
        up_to = tier.get("up_to")
        if (up_to == "inf") != last:
            raise UserError(400, "Invalid tiers: only the last tier has up_to=inf")
        bound = None if last else resources.try_convert_to_int(up_to)
        if bound is not None and (not isinstance(bound, int) or bound <= previous):
            raise UserError(400, "Invalid tiers: up_to must increase")
        previous = bound or previous
        if "unit_amount" in tier and "unit_amount_decimal" in tier:
            raise UserError(400, "Invalid tiers: pass unit_amount or unit_amount_decimal, not both")
        unit = _decimal(tier.get("unit_amount_decimal", tier.get("unit_amount", 0)), "tiers[][unit_amount]")
        flat = _decimal(tier.get("flat_amount_decimal", tier.get("flat_amount", 0)), "tiers[][flat_amount]")
        tiers.append(
            {
                "flat_amount": int(flat) if flat == flat.to_integral_value() else None,
                "flat_amount_decimal": format(flat.normalize(), "f"),
                "unit_amount": int(unit) if unit == unit.to_integral_value() else None,
                "unit_amount_decimal": format(unit.normalize(), "f"),
                "up_to": bound,
            }
        )
    return tiers


def price_tiers(price_id: str) -> list[dict[str, Any]] | None:
    """A tiered price's tiers (None for a per-unit price)."""
    found = resources.store.get(f"price_tiers:{price_id}")
    return cast("list[dict[str, Any]]", found) if found is not None else None


def _half_up(value: Decimal) -> int:
    return int(value.to_integral_value(ROUND_HALF_UP))


def tiered_amount(tiers: list[dict[str, Any]], mode: str, quantity: int) -> int:
    """What Stripe bills for `quantity` units of a tiered price, in minor units.

    Graduated: each tier prices the units that fall in it (`units x unit_amount_decimal`, rounded
    half up to the minor unit, plus its flat amount when any unit falls in it), and the tiers are
    summed. Volume: all units at the tier the total falls in.
    """
    if mode == "volume":
        tier = next(t for t in tiers if t["up_to"] is None or quantity <= t["up_to"])
        flat = Decimal(tier["flat_amount_decimal"]) if quantity else Decimal(0)
        return _half_up(Decimal(tier["unit_amount_decimal"]) * quantity) + _half_up(flat)
    total, lower = 0, 0
    for tier in tiers:
        upper = tier["up_to"]
        units = (quantity if upper is None else min(quantity, upper)) - lower
        if units <= 0:
            break
        total += _half_up(Decimal(tier["unit_amount_decimal"]) * units)
        total += _half_up(Decimal(tier["flat_amount_decimal"]))
        if upper is None:
            break
        lower = upper
    return total


async def create_price(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    recurring = data.get("recurring") or {}
    decimal_text = data.get("unit_amount_decimal")
    unit_amount = data.get("unit_amount")
    scheme = data.get("billing_scheme", "per_unit")
    tiers: list[dict[str, Any]] | None = None
    if scheme == "tiered":
        if decimal_text is not None or unit_amount is not None:
            raise UserError(400, "A tiered price takes its amounts from tiers, not unit_amount")
        tiers = _tiers(data)
        amount = Decimal(0)
    elif scheme != "per_unit":
        raise UserError(400, "Invalid billing_scheme: per_unit or tiered")
    elif decimal_text is None and unit_amount is None:
        raise UserError(400, "Missing required param: unit_amount or unit_amount_decimal")
    else:
        amount = Decimal(str(decimal_text if decimal_text is not None else unit_amount))
    usage_type = recurring.get("usage_type", "licensed")
    price_id = _new_id("price_")
    # The localstripe plan bills whole minor units; sub-cent metered prices round there (dev only).
    resources.Plan(
        id=price_id,
        amount=int(amount.to_integral_value(ROUND_HALF_UP)),
        currency=data.get("currency"),
        product=data.get("product"),
        interval=recurring.get("interval", "month"),
        usage_type=usage_type,
        nickname=data.get("nickname"),
        metadata=data.get("metadata") or {},
    )
    price = {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": scheme,
        "created": int(time.time()),
        "currency": data.get("currency"),
        "livemode": False,
        "lookup_key": data.get("lookup_key"),
        "metadata": data.get("metadata") or {},
        "nickname": data.get("nickname"),
        "product": data.get("product"),
        "recurring": {
            "interval": recurring.get("interval", "month"),
            "interval_count": int(recurring.get("interval_count", 1)),
            "meter": recurring.get("meter"),
            "trial_period_days": None,
            "usage_type": usage_type,
        },
        "tax_behavior": _tax_behavior(data.get("tax_behavior")),
        "tiers_mode": data.get("tiers_mode") if tiers is not None else None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": int(amount) if tiers is None and amount == amount.to_integral_value() else None,
        "unit_amount_decimal": format(amount.normalize(), "f") if tiers is None else None,
    }
    if tiers is not None:
        resources.store[f"price_tiers:{price_id}"] = tiers
    return _json(_save("price", price))


async def retrieve_price(request: web.Request) -> web.Response:
    return _json(_stored("price", request.match_info["id"]))


async def update_price(request: web.Request) -> web.Response:
    price = _stored("price", request.match_info["id"])
    data = await server.get_post_data(request) or {}
    if "active" in data:
        price["active"] = str(data["active"]).lower() == "true"
    if "metadata" in data:
        price["metadata"] = {**price["metadata"], **data["metadata"]}
    return _json(_save("price", price))


async def create_meter(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    if not data.get("event_name") or not data.get("display_name"):
        raise UserError(400, "Missing required param: event_name or display_name")
    now = int(time.time())
    meter = {
        "id": _new_id("mtr_"),
        "object": "billing.meter",
        "created": now,
        "customer_mapping": data.get("customer_mapping")
        or {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "default_aggregation": data.get("default_aggregation") or {"formula": "sum"},
        "display_name": data["display_name"],
        "event_name": data["event_name"],
        "event_time_window": None,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now,
        "value_settings": data.get("value_settings") or {"event_payload_key": "value"},
    }
    return _json(_save("meter", meter))


async def retrieve_meter(request: web.Request) -> web.Response:
    return _json(_stored("meter", request.match_info["id"]))


async def create_meter_event(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    payload = data.get("payload") or {}
    if not data.get("event_name") or "stripe_customer_id" not in payload or "value" not in payload:
        raise UserError(
            400, "Missing required param: event_name, payload[stripe_customer_id] or payload[value]"
        )
    identifier = data.get("identifier") or _new_id("")
    if f"meter_event:{identifier}" in resources.store:
        raise UserError(400, f"An event with identifier {identifier} already exists")
    event = {
        "object": "billing.meter_event",
        "created": int(time.time()),
        "event_name": data["event_name"],
        "identifier": identifier,
        "livemode": False,
        "payload": payload,
        "timestamp": int(data.get("timestamp") or time.time()),
    }
    resources.store[f"meter_event:{identifier}"] = event
    return _json(event)


async def list_meter_event_summaries(request: web.Request) -> web.Response:
    """The customer's events on the meter from `start_time` (inclusive) to `end_time` (exclusive),
    summed into one summary (no `value_grouping_window`); both bounds on minute boundaries."""
    meter = _stored("meter", request.match_info["id"])
    query = request.query
    try:
        customer, start, end = query["customer"], int(query["start_time"]), int(query["end_time"])
    except (KeyError, ValueError):
        raise UserError(400, "Missing required param: customer, start_time or end_time") from None
    if start % 60 or end % 60:
        raise UserError(400, "start_time and end_time must be aligned with minute boundaries")
    total = Decimal(0)
    for event in objects_of("meter_event"):
        if event["event_name"] != meter["event_name"]:
            continue
        payload = event["payload"]
        if payload.get("stripe_customer_id") == customer and start <= int(event["timestamp"]) < end:
            total += Decimal(str(payload.get("value") or 0))
    summary = {
        "id": _new_id("mtrusg_"),
        "object": "billing.meter_event_summary",
        "aggregated_value": int(total) if total == total.to_integral_value() else float(total),
        "end_time": end,
        "livemode": False,
        "meter": meter["id"],
        "start_time": start,
    }
    url = f"/v1/billing/meters/{meter['id']}/event_summaries"
    return _json({"object": "list", "url": url, "has_more": False, "data": [summary]})


def _prices_as_plans(items: Any) -> list[dict[str, Any]]:
    """Stripe's `items[][price]` as localstripe's `items[][plan]` (our prices are its plans)."""
    mapped = []
    for item in items or []:
        item = dict(item)
        if "price" in item:
            item["plan"] = item.pop("price")
        mapped.append(item)
    return mapped


@contextmanager
def _events_sent() -> Iterator[list[Any]]:
    """The events localstripe schedules meanwhile (they still leave as usual, later)."""
    sent: list[Any] = []
    schedule = resources.schedule_webhook

    def keep(event: Any) -> None:
        sent.append(event)
        schedule(event)

    resources.schedule_webhook = keep
    try:
        yield sent
    finally:
        resources.schedule_webhook = schedule


def _add_item(subscription: Any, plan_id: str, *, usage_since: int | None) -> Any:
    """Another item on the subscription; `usage_since`: its usage counts from then (None: from the
    period's start)."""
    item = resources.SubscriptionItem(subscription=subscription.id, plan=plan_id, quantity=1)
    item._usage_since = usage_since
    subscription.items._list.append(item)
    return item


def subscribe(items: list[dict[str, Any]], **data: Any) -> Any:
    """A subscription to several prices: localstripe makes it with the first (the licensed price,
    billed up front); the others (metered: nothing up front) are added before its events leave,
    so `customer.subscription.created` shows every item, as Stripe's does."""
    if not items:
        raise UserError(400, "Missing required param: items")
    with _events_sent() as sent:
        subscription = resources.Subscription._api_create(items=items[:1], **data)
    for extra in items[1:]:
        if not extra.get("plan"):
            raise UserError(400, "Missing required param: items[][price]")
        resources.Plan._api_retrieve(extra["plan"])
        _add_item(subscription, extra["plan"], usage_since=None)
    if len(items) > 1:
        for event in sent:  # not yet sent: they export their object when they leave
            if (event.data.get("object") or {}).get("id") == subscription.id:
                event.data = {"object": subscription._export()}
    return subscription


def change_other_items(
    subscription: Any, changes: list[dict[str, Any]], moment: int
) -> list[tuple[Any, Any, int | None]]:
    """Apply `items[]` changes to the items after the first (add, swap the price, delete); returns
    (item, plan, usage since) of the prices that stop billing now: deleted items, and swapped ones
    on their old price."""
    ended: list[tuple[Any, Any, int | None]] = []
    for change in changes:
        found = next((i for i in subscription.items._list[1:] if i.id == change.get("id")), None)
        if change.get("id") and found is None:
            raise UserError(400, f"No such subscription item on this subscription: '{change['id']}'")
        deleted = resources.try_convert_to_bool(change.get("deleted", False)) is True
        if found is not None and deleted:
            subscription.items._list.remove(found)
            ended.append((found, found.plan, getattr(found, "_usage_since", None)))
        elif found is not None and change.get("plan") and change["plan"] != found.plan.id:
            ended.append((found, found.plan, getattr(found, "_usage_since", None)))
            found.plan = resources.Plan._api_retrieve(change["plan"])
            found._usage_since = moment
        elif found is None and change.get("plan"):
            resources.Plan._api_retrieve(change["plan"])
            _add_item(subscription, change["plan"], usage_since=moment)
        elif found is None:
            raise UserError(400, "Missing required param: items[][price] or items[][id]")
    return ended


def _with_confirmation_secret(subscription: Any) -> dict[str, Any]:
    """Export with the first invoice expanded and its `confirmation_secret`, as Stripe does."""
    exported: dict[str, Any] = subscription._export(expand=["latest_invoice"])
    invoice = exported.get("latest_invoice")
    if isinstance(invoice, dict):
        intent_id = invoice.get("payment_intent")
        secret = None
        if isinstance(intent_id, str):
            secret = resources.PaymentIntent._api_retrieve(intent_id).client_secret
        invoice["confirmation_secret"] = (
            {"client_secret": secret, "type": "payment_intent"} if secret else None
        )
    return exported


def _start_trial(subscription: Any, days: int) -> None:
    now = int(time.time())
    subscription.status = "trialing"
    subscription.trial_start = now
    subscription.trial_end = now + days * 86400
    subscription.start_date = now


async def create_subscription(request: web.Request, path: dict[str, str]) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    data.pop("expand", None)
    data.pop("payment_settings", None)
    # No Stripe Tax in the emulator: a taxed subscription is accepted and billed without tax.
    data.pop("automatic_tax", None)
    # localstripe charges the customer's invoice default, which we always set first.
    data.pop("default_payment_method", None)
    items = _prices_as_plans(data.pop("items", None))
    trial_days = data.get("trial_period_days")
    subscription = subscribe(items, **data)
    if trial_days:
        _start_trial(subscription, int(trial_days))
    return _json(_with_confirmation_secret(subscription))


async def update_subscription(request: web.Request, path: dict[str, str]) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    data.pop("expand", None)
    data.pop("proration_behavior", None)
    data.pop("payment_behavior", None)
    data.pop("automatic_tax", None)
    others: list[dict[str, Any]] = []
    if "items" in data:
        items = _prices_as_plans(data["items"])
        data["items"], others = items[:1], items[1:]
    kept = resources.Subscription._api_retrieve(path["id"]).items._list[1:]
    subscription = resources.Subscription._api_update(path["id"], **data)
    for item in kept:  # localstripe rebuilds the items from the first one on a price change
        if item not in subscription.items._list:
            subscription.items._list.append(item)
    change_other_items(subscription, others, int(time.time()))
    return _json(_with_confirmation_secret(subscription))


async def retrieve_subscription(request: web.Request, path: dict[str, str]) -> web.Response:
    """A subscription, with `latest_invoice.confirmation_secret` expanded when asked, as Stripe does."""
    subscription = resources.Subscription._api_retrieve(path["id"])
    expand = [value for key, value in request.query.items() if key.startswith("expand")]
    if "latest_invoice.confirmation_secret" in expand:
        return _json(_with_confirmation_secret(subscription))
    return _json(subscription._export(expand=expand or None))


async def create_invoice_preview(request: web.Request, path: dict[str, str]) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    details = dict(data.get("subscription_details") or {})
    details.pop("proration_behavior", None)
    if "items" in details:
        # The items the subscription would have: deleted ones go, an item sent by id alone keeps
        # its price (localstripe previews from prices only).
        items = []
        for item in _prices_as_plans(details["items"]):
            if resources.try_convert_to_bool(item.pop("deleted", False)) is True:
                continue
            if not item.get("plan") and item.get("id"):
                item["plan"] = resources.SubscriptionItem._api_retrieve(item["id"]).plan.id
            items.append(item)
        details["items"] = items
    invoice = resources.Invoice._api_create_preview_invoice(
        customer=data.get("customer"),
        subscription=data.get("subscription"),
        subscription_details=details or None,
    )
    return _json(invoice._export())


class CheckoutSession(resources.StripeObject):  # type: ignore[misc]
    """Stripe's `checkout.session` in subscription mode (the fields billing reads)."""

    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(self, page_base: str, **data: Any) -> None:
        line_items = data.get("line_items") or []
        if data.get("mode") != "subscription" or not data.get("customer") or not line_items:
            raise UserError(400, "Dev checkout supports mode=subscription, a customer and line items")
        resources.Customer._api_retrieve(data["customer"])
        prices = [item.get("price") for item in line_items]
        for price in prices:
            resources.Plan._api_retrieve(price)
        super().__init__()
        self.mode = "subscription"
        self.customer = data["customer"]
        self.client_reference_id = data.get("client_reference_id")
        self.metadata = data.get("metadata") or {}
        self.success_url = data.get("success_url")
        self.cancel_url = data.get("cancel_url")
        self.status = "open"
        self.payment_status = "unpaid"
        self.subscription = None
        self.expires_at = self.created + 86400
        self.url = f"{page_base}/checkout/{self.id}"
        self._prices = prices
        self._subscription_data = data.get("subscription_data") or {}


async def create_checkout_session(request: web.Request) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    data.pop("expand", None)
    session = CheckoutSession(f"{request.scheme}://{request.host}", **data)
    return _json(session._export())


async def retrieve_checkout_session(request: web.Request) -> web.Response:
    return _json(CheckoutSession._api_retrieve(request.match_info["id"])._export())


async def expire_checkout_session(request: web.Request) -> web.Response:
    session = CheckoutSession._api_retrieve(request.match_info["id"])
    if session.status != "open":
        raise UserError(400, f"This Checkout Session is {session.status} and cannot be expired")
    session.status = "expired"
    schedule_webhook(resources.Event("checkout.session.expired", session))
    return _json(session._export())


async def pay_checkout_session(request: web.Request, path: dict[str, str]) -> web.StreamResponse:
    """The dev stand-in for Stripe's hosted page: pays at once with the customer's default card,
    or with the 4242 test card (as a consumer would type it) when there is none."""
    session = CheckoutSession._api_retrieve(path["id"])
    if session.status == "open":
        customer = resources.Customer._api_retrieve(session.customer)
        if customer._get_default_payment_method_or_source() is None:
            card = resources.PaymentMethod._api_retrieve("pm_card_visa")
            resources.PaymentMethod._api_attach(card.id, customer=customer.id)
            customer.invoice_settings["default_payment_method"] = card.id
        extra = session._subscription_data
        trial_days = extra.get("trial_period_days")
        subscription = subscribe(
            [{"plan": price} for price in session._prices],
            customer=session.customer,
            metadata=extra.get("metadata") or {},
            trial_period_days=int(trial_days) if trial_days else None,
        )
        if trial_days:
            _start_trial(subscription, int(trial_days))
        session.subscription = subscription.id
        session.status = "complete"
        session.payment_status = "no_payment_required" if trial_days else "paid"
        schedule_webhook(resources.Event("checkout.session.completed", session))
    raise web.HTTPFound(session.success_url or "/")


async def create_portal_session(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    customer = data.get("customer")
    if not customer:
        raise UserError(400, "Missing required param: customer")
    resources.Customer._api_retrieve(customer)
    session_id = _new_id("bps_")
    return _json(
        {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": "bpc_dev",
            "created": int(time.time()),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "return_url": data.get("return_url"),
            "url": f"{request.scheme}://{request.host}/portal/{session_id}",
        }
    )


async def portal_page(request: web.Request, path: dict[str, str]) -> web.Response:
    return web.Response(text="Dev billing portal: cards and invoices are managed in billing's API.")


def _invoice_payment(intent: Any) -> dict[str, Any]:
    paid = intent.status == "succeeded"
    return {
        "id": "inpay_" + intent.id.removeprefix("pi_"),
        "object": "invoice_payment",
        "amount_paid": intent.amount if paid else None,
        "amount_requested": intent.amount,
        "created": intent.created,
        "currency": intent.currency,
        "invoice": intent.invoice,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": intent.id},
        "status": "paid" if paid else "open",
        "status_transitions": {"canceled_at": None, "paid_at": intent.created if paid else None},
    }


async def list_invoice_payments(request: web.Request) -> web.Response:
    """By `payment[payment_intent]` or by `invoice`: localstripe links a PaymentIntent to its invoice."""
    intent_id = request.query.get("payment[payment_intent]")
    if intent_id is None and request.query.get("invoice"):
        intent_id = resources.Invoice._api_retrieve(request.query["invoice"]).payment_intent
    intent = resources.store.get(f"payment_intent:{intent_id}") if intent_id else None
    data = [_invoice_payment(intent)] if intent is not None and intent.invoice else []
    return _json({"object": "list", "url": "/v1/invoice_payments", "has_more": False, "data": data})


async def create_refund(request: web.Request, path: dict[str, str]) -> web.Response:
    """localstripe's refund, plus the `refund.created` event Stripe sends for every refund."""
    data = dict(await server.get_post_data(request) or {})
    data.pop("reason", None)
    refund = resources.Refund._api_create(**data)
    schedule_webhook(resources.Event("refund.created", refund))
    return _json(refund._export())


class ManualInvoice(resources.Invoice):  # type: ignore[misc]
    """A one-off invoice as `POST /v1/invoices` makes it today: a draft holding only the items added
    to it by id. It is a localstripe Invoice, so retrieve, list, lines, pay and void work on it."""

    def __init__(
        self,
        customer: Any = None,
        currency: Any = None,
        collection_method: Any = "charge_automatically",
        days_until_due: Any = None,
        auto_advance: Any = None,
        description: Any = None,
        metadata: Any = None,
        **unexpected: Any,
    ) -> None:
        if unexpected:
            raise UserError(400, "Unexpected " + ", ".join(unexpected))
        days = resources.try_convert_to_int(days_until_due)
        if collection_method not in ("charge_automatically", "send_invoice"):
            raise UserError(400, "Invalid collection_method: charge_automatically or send_invoice")
        if collection_method == "send_invoice" and not (isinstance(days, int) and days >= 0):
            raise UserError(400, "Missing required param: days_until_due (collection_method=send_invoice)")
        if collection_method == "charge_automatically" and days is not None:
            raise UserError(400, "days_until_due is only valid when collection_method=send_invoice")
        # localstripe's own set-up as a simulation (no event, no pending item claimed) ...
        super().__init__(customer=customer, description=description, metadata=metadata, simulation=True)
        # ... whose lines would show the pending items: a one-off invoice excludes them.
        for line in self.lines._list:
            del resources.store[f"line_item:{line.id}"]
        self.lines._list = []
        self.ending_balance = max(0, self.starting_balance)
        self.currency = str(currency or "usd").lower()
        self.collection_method = collection_method
        self.days_until_due = days
        self.due_date = self.created + days * 86400 if days is not None else None
        self.auto_advance = resources.try_convert_to_bool(auto_advance) is True
        self.automatic_tax = {"enabled": False, "liability": None, "status": None}
        self.billing_reason = "manual"
        self.attempt_count = 0
        self.attempted = False
        self.number = None
        self.hosted_invoice_url = None
        self.invoice_pdf = None
        # A one-off invoice's period is its creation instant, as Stripe reports it.
        self.period_start = self.period_end = self.created

    @property
    def total_taxes(self) -> list[dict[str, Any]]:
        return [
            {
                "amount": tax["amount"],
                "tax_behavior": "inclusive" if tax["inclusive"] else "exclusive",
                "taxability_reason": None,
                "type": "tax_rate_details",
                "tax_rate_details": {"tax_rate": tax["tax_rate"]},
            }
            for tax in self.total_tax_amounts
        ]

    @property
    def amount_remaining(self) -> int:
        return int(self.amount_due - self.amount_paid)


async def create_invoice(request: web.Request, path: dict[str, str]) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    data.pop("expand", None)
    data.pop("automatic_tax", None)  # no Stripe Tax in the emulator: nothing is taxed
    if data.pop("pending_invoice_items_behavior", "exclude") != "exclude" or data.get("subscription"):
        raise UserError(400, "The dev emulator creates one-off invoices only (pending items excluded)")
    invoice = ManualInvoice(**data)
    schedule_webhook(resources.Event("invoice.created", invoice))
    return _json(invoice._export())


async def void_invoice(request: web.Request, path: dict[str, str]) -> web.Response:
    """Void an open invoice; one with no payment attempt too (localstripe voids only those it
    tried to charge), as Stripe does: its items are then never collected."""
    invoice = resources.Invoice._api_retrieve(path["id"])
    if invoice.payment_intent is not None:
        return _json(resources.Invoice._api_void_invoice(path["id"])._export())
    if invoice.status != "open":
        raise UserError(400, f"You can only void an open invoice (this one is {invoice.status}).")
    invoice._voided = True
    invoice.status_transitions["voided_at"] = int(time.time())
    schedule_webhook(resources.Event("invoice.voided", invoice))
    return _json(invoice._export())


def _unit_amount(data: dict[str, Any], quantity: int) -> Decimal | None:
    """The unit amount asked for (`unit_amount_decimal` or `unit_amount`), pricing `amount` from it."""
    unit = data.pop("unit_amount_decimal", None)
    whole = data.pop("unit_amount", None)
    if unit is None and whole is None:
        return None
    if "amount" in data or (unit is not None and whole is not None):
        raise UserError(400, "Pass one of amount, unit_amount or unit_amount_decimal")
    try:
        amount = Decimal(str(unit if unit is not None else whole))
    except InvalidOperation:
        raise UserError(400, "Invalid unit_amount_decimal or unit_amount") from None
    if not amount.is_finite() or (whole is not None and amount != amount.to_integral_value()):
        raise UserError(400, "Invalid unit_amount_decimal or unit_amount")
    data["amount"] = int((amount * quantity).to_integral_value(ROUND_HALF_UP))
    return amount


async def create_invoice_item(request: web.Request, path: dict[str, str]) -> web.Response:
    """An invoice item, pending or (with `invoice`) added to that draft invoice as a line."""
    data = dict(await server.get_post_data(request) or {})
    quantity = resources.try_convert_to_int(data.pop("quantity", 1))
    if not isinstance(quantity, int) or quantity < 0:
        raise UserError(400, "Invalid quantity: a non-negative integer")
    unit = _unit_amount(data, quantity)
    if unit is None and quantity != 1:
        raise UserError(400, "A quantity needs unit_amount or unit_amount_decimal")
    invoice = None
    if data.get("invoice") is not None:
        invoice = resources.Invoice._api_retrieve(str(data["invoice"]))
        if invoice.status != "draft":
            raise UserError(400, f"Invoice {invoice.id} is {invoice.status}: items go on draft invoices only")
        data.setdefault("currency", invoice.currency)
        if data["currency"] != invoice.currency:
            raise UserError(400, f"The item's currency must be the invoice's ({invoice.currency})")
    item = resources.InvoiceItem(**data)
    item.quantity = quantity
    unit_text = format(unit.normalize(), "f") if unit is not None else str(item.amount)
    item.pricing = {"type": "price_details", "price_details": None, "unit_amount_decimal": unit_text}
    item.parent = None
    if invoice is not None:
        line = resources.InvoiceLineItem(item)
        line.pricing = item.pricing
        line.taxes = []
        line.parent = {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": item.id,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
        }
        invoice.lines._list.append(line)
    schedule_webhook(resources.Event("invoiceitem.created", item))
    return _json(item._export())


async def list_invoice_items(request: web.Request, path: dict[str, str]) -> web.Response:
    """Invoice items as Stripe lists them: pending and invoiced ones alike (localstripe lists only
    pending ones), newest first, by `customer`, `invoice`, `pending` and `created[gte]`, paged by
    `starting_after`, with `expand[]=data.invoice`."""
    query = request.query
    pending = resources.try_convert_to_bool(query["pending"]) if "pending" in query else None
    since = resources.try_convert_to_int(query.get("created[gte]", 0))
    expand = [
        v.removeprefix("data.") for k, v in query.items() if k.startswith("expand") and v.startswith("data.")
    ]
    items = [
        item
        for item in reversed(list(objects_of("invoiceitem")))
        if query.get("customer") in (None, item.customer)
        and query.get("invoice") in (None, item.invoice)
        and pending in (None, item.invoice is None)
        and item.created >= since
    ]
    if query.get("starting_after"):
        ids = [item.id for item in items]
        items = items[ids.index(query["starting_after"]) + 1 :] if query["starting_after"] in ids else []
    limit = resources.try_convert_to_int(query.get("limit", 10))
    data = [item._export(expand=expand) for item in items[:limit]]
    return _json({"object": "list", "url": "/v1/invoiceitems", "has_more": len(items) > limit, "data": data})


def _next_number(customer_id: str) -> str:
    """Stripe's per-customer numbering: the customer's invoice prefix, then a sequence (a count
    kept per customer: counting its numbered invoices in the store would read the whole store)."""
    key = f"invoice_numbers:{customer_id}"
    count = resources.store.get(key)
    if count is None:
        count = sum(
            1
            for name, obj in resources.store.items()
            if name.startswith("invoice:") and obj.customer == customer_id and getattr(obj, "number", None)
        )
    resources.store[key] = count + 1
    return f"{customer_id.removeprefix('cus_')[:8].upper()}-{count + 1:04d}"


def _finalize(invoice: Any) -> None:
    if invoice.status != "draft":
        raise UserError(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.")
    invoice._finalize()
    invoice.number = _next_number(invoice.customer)
    schedule_webhook(resources.Event("invoice.finalized", invoice))


async def finalize_invoice(request: web.Request) -> web.Response:
    invoice = resources.Invoice._api_retrieve(request.match_info["id"])
    data = await server.get_post_data(request) or {}
    _finalize(invoice)
    if "auto_advance" in data:
        invoice.auto_advance = resources.try_convert_to_bool(data["auto_advance"]) is True
    return _json(invoice._export())


async def send_invoice(request: web.Request) -> web.Response:
    """Send (in test mode Stripe emails nothing but sends `invoice.sent`); a draft is finalised first."""
    invoice = resources.Invoice._api_retrieve(request.match_info["id"])
    if invoice.collection_method != "send_invoice":
        raise UserError(
            400, "You can only manually send an invoice if its collection method is 'send_invoice'."
        )
    if invoice.status == "void":
        raise UserError(400, "You can't send a voided invoice.")
    if invoice.status == "draft":
        _finalize(invoice)
    schedule_webhook(resources.Event("invoice.sent", invoice))
    return _json(invoice._export())


# Stripe replays the first answer to a request repeated with the same Idempotency-Key.
_REPLAYED = re.compile(
    r"^/v1/(customers|invoices|invoiceitems|subscriptions|billing/meter_events|invoices/in_\w+/(finalize|send))$"
)
_IN_FLIGHT = web.AppKey("idempotency_in_flight", set[str])


@web.middleware
async def idempotent_replay(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key or not _REPLAYED.match(request.path):
        return await handler(request)
    # A key whose first request is still running: Stripe answers 409 idempotency_key_in_use and
    # saves nothing, so the same request sent again once the first ends gets its answer replayed.
    in_flight = request.app[_IN_FLIGHT]
    if key in in_flight:
        error = {
            "type": "invalid_request_error",
            "code": "idempotency_key_in_use",
            "message": f"There is currently another in-progress request using this Idempotent Key: {key}. "
            "Please try again later.",
        }
        return web.json_response({"error": error}, status=409)
    first = resources.store.get(f"idempotency:{key}")
    if first is not None:
        if first["path"] != request.path:
            raise UserError(400, f"Idempotency key {key} was first used on {first['path']}")
        return web.Response(
            text=first["body"], content_type="application/json", headers={"Idempotent-Replayed": "true"}
        )
    in_flight.add(key)
    try:
        response = await handler(request)
        if response.status == 200 and isinstance(response, web.Response) and response.text is not None:
            resources.store[f"idempotency:{key}"] = {"path": request.path, "body": response.text}
    finally:
        in_flight.discard(key)
    return response


# Routes localstripe already has, answered here first in today's Stripe shapes.
_OVERRIDES: list[tuple[str, re.Pattern[str], Override]] = [
    ("POST", re.compile(r"^/v1/refunds$"), create_refund),
    ("POST", re.compile(r"^/v1/subscriptions$"), create_subscription),
    ("POST", re.compile(r"^/v1/subscriptions/(?P<id>sub_\w+)$"), update_subscription),
    ("GET", re.compile(r"^/v1/subscriptions/(?P<id>sub_\w+)$"), retrieve_subscription),
    ("POST", re.compile(r"^/v1/invoices/create_preview$"), create_invoice_preview),
    ("POST", re.compile(r"^/v1/invoices$"), create_invoice),
    ("POST", re.compile(r"^/v1/invoices/(?P<id>in_\w+)/void$"), void_invoice),
    ("POST", re.compile(r"^/v1/invoiceitems$"), create_invoice_item),
    ("GET", re.compile(r"^/v1/invoiceitems$"), list_invoice_items),
]


# Pages a browser opens without an API key, so they are served before localstripe's auth.
_PAGES: list[tuple[str, re.Pattern[str], Override]] = [
    ("GET", re.compile(r"^/checkout/(?P<id>cs_test_\w+)$"), pay_checkout_session),
    ("GET", re.compile(r"^/portal/(?P<id>bps_\w+)$"), portal_page),
]


async def _dispatch(
    routes: list[tuple[str, re.Pattern[str], Override]], request: web.Request, handler: Handler
) -> web.StreamResponse:
    for method, pattern, override in routes:
        found = pattern.match(request.path)
        if request.method == method and found:
            return await override(request, found.groupdict())
    return await handler(request)


@web.middleware
async def hosted_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await _dispatch(_PAGES, request, handler)


@web.middleware
async def stripe_today(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await _dispatch(_OVERRIDES, request, handler)


async def create_account(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    account = {
        "id": _new_id("acct_"),
        "object": "account",
        "type": data.get("type", "express"),
        "email": data.get("email"),
        "country": data.get("country", "US"),
        "capabilities": dict.fromkeys(data.get("capabilities") or {"transfers": {}}, "inactive"),
        "charges_enabled": False,
        "payouts_enabled": False,
        "details_submitted": False,
        "created": int(time.time()),
        "metadata": data.get("metadata") or {},
        "livemode": False,
    }
    return _json(_save("account", account))


async def retrieve_account(request: web.Request) -> web.Response:
    return _json(_stored("account", request.match_info["id"]))


async def create_account_link(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    account = _stored("account", str(data.get("account")))
    if not data.get("return_url") or not data.get("refresh_url"):
        raise UserError(400, "Missing required param: return_url or refresh_url")
    now = int(time.time())
    query = urlencode({"return_url": data["return_url"]})
    return _json(
        {
            "object": "account_link",
            "created": now,
            "expires_at": now + 300,
            "url": f"{request.scheme}://{request.host}/_config/connect/{account['id']}/onboard?{query}",
        }
    )


async def complete_onboarding(request: web.Request) -> web.Response:
    """What the creator's visit to Stripe's hosted onboarding amounts to, in development."""
    account = _stored("account", request.match_info["id"])
    account.update(details_submitted=True, charges_enabled=True, payouts_enabled=True)
    account["capabilities"] = dict.fromkeys(account["capabilities"], "active")
    _save("account", account)
    raise web.HTTPFound(request.query.get("return_url") or "/")


async def create_transfer(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key")
    if key and f"transfer_key:{key}" in resources.store:
        return _json(_stored("transfer", resources.store[f"transfer_key:{key}"]))
    data = await server.get_post_data(request) or {}
    destination = _stored("account", str(data.get("destination")))
    if not destination["payouts_enabled"]:
        raise UserError(400, "The destination account has not finished onboarding")
    transfer = {
        "id": _new_id("tr_"),
        "object": "transfer",
        "amount": int(data.get("amount") or 0),
        "amount_reversed": 0,
        "currency": data.get("currency"),
        "destination": destination["id"],
        "transfer_group": data.get("transfer_group"),
        "metadata": data.get("metadata") or {},
        "created": int(time.time()),
        "reversed": False,
        "livemode": False,
    }
    _save("transfer", transfer)
    if key:
        resources.store[f"transfer_key:{key}"] = transfer["id"]
    return _json(transfer)


async def retrieve_transfer(request: web.Request) -> web.Response:
    return _json(_stored("transfer", request.match_info["id"]))


# Stripe's documented test PaymentMethod ids that localstripe lacks, by their test card number:
# this one needs 3D Secure on every payment (a subscription comes back `incomplete`).
EXTRA_TEST_CARDS = {"pm_card_authenticationRequired": "4000002500003155"}


def _add_test_cards() -> None:
    canonical = resources.PaymentMethod._try_get_canonical_test_article.__func__

    def with_extra_cards(cls: Any, id: str) -> Any:
        number = EXTRA_TEST_CARDS.get(id)
        if number is None:
            return canonical(cls, id)
        return cls(type="card", card={"number": number, "exp_month": "12", "exp_year": "2030", "cvc": "123"})

    resources.PaymentMethod._try_get_canonical_test_article = classmethod(with_extra_cards)


def _snapshot_customer_on_invoices() -> None:
    """Stripe copies the customer's name and address onto each invoice it creates
    (`customer_name`, `customer_address`); localstripe copies only the email."""
    create = resources.Invoice.__init__
    if getattr(create, "snapshots_customer", False):
        return

    def create_with_customer(self: Any, *args: Any, **kwargs: Any) -> None:
        create(self, *args, **kwargs)
        customer = resources.Customer._api_retrieve(self.customer)
        self.customer_name = getattr(customer, "name", None)
        self.customer_address = getattr(customer, "address", None)

    create_with_customer.snapshots_customer = True  # type: ignore[attr-defined]
    resources.Invoice.__init__ = create_with_customer


def install_extensions(app: web.Application) -> None:
    """Register the extra routes on localstripe's aiohttp app (before it starts)."""
    _add_test_cards()
    _snapshot_customer_on_invoices()
    app.middlewares.insert(1, hosted_pages)  # after the error middleware, before auth
    app[_IN_FLIGHT] = set()
    app.middlewares.append(idempotent_replay)
    app.middlewares.append(stripe_today)
    app.router.add_post("/v1/checkout/sessions", create_checkout_session)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve_checkout_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_checkout_session)
    app.router.add_post("/v1/billing_portal/sessions", create_portal_session)
    app.router.add_post("/v1/prices", create_price)
    app.router.add_get("/v1/prices/{id}", retrieve_price)
    app.router.add_post("/v1/prices/{id}", update_price)
    app.router.add_post("/v1/billing/meters", create_meter)
    app.router.add_get("/v1/billing/meters/{id}", retrieve_meter)
    app.router.add_post("/v1/billing/meter_events", create_meter_event)
    app.router.add_get("/v1/billing/meters/{id}/event_summaries", list_meter_event_summaries)
    app.router.add_post("/v1/accounts", create_account)
    app.router.add_get("/v1/accounts/{id}", retrieve_account)
    app.router.add_post("/v1/account_links", create_account_link)
    app.router.add_get("/_config/connect/{id}/onboard", complete_onboarding)
    app.router.add_post("/v1/transfers", create_transfer)
    app.router.add_get("/v1/transfers/{id}", retrieve_transfer)
    app.router.add_get("/v1/invoice_payments", list_invoice_payments)
    app.router.add_post("/v1/invoices/{id}/finalize", finalize_invoice)
    app.router.add_post("/v1/invoices/{id}/send", send_invoice)
