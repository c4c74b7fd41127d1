"""Dev-only additions to localstripe for what it lacks, answering in Stripe's documented shapes.

- Prices (`/v1/prices`): backed by a localstripe Plan with the same id, so its subscriptions,
  invoices and items work with `price` ids as with Stripe (which treats a Plan as a Price).
- Billing Meters (`/v1/billing/meters`) and meter events (`/v1/billing/meter_events`), with
  Stripe's identifier de-duplication.
- Subscriptions and invoice previews sent as today's Stripe takes them (`items[][price]`,
  `default_payment_method`, `proration_behavior`, `trial_period_days`, the
  `latest_invoice.confirmation_secret` expansion), translated onto localstripe's plan-based ones.
- Checkout Sessions (`/v1/checkout/sessions`) whose `url` is a dev page that pays the session
  (subscription created, `checkout.session.completed` sent), and billing-portal sessions.
- Connect: Express accounts (`/v1/accounts`), onboarding links (`/v1/account_links`; opening the
  link completes onboarding at once and redirects to `return_url`) and transfers
  (`/v1/transfers`), which replay their answer for a repeated Idempotency-Key as Stripe does.
- Invoice payments (`/v1/invoice_payments`, the PaymentIntent -> invoice link since API
  2025-03-31) and refunds that send `refund.created` as Stripe does; `automatic_tax` is accepted
  on subscriptions (the emulator has no Stripe Tax: nothing is taxed).
Objects are kept in localstripe's store, so they persist with it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast
from urllib.parse import urlencode

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError
from localstripe.webhooks import schedule_webhook

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


async def create_price(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    recurring = data.get("recurring") or {}
    decimal_text = data.get("unit_amount_decimal")
    unit_amount = data.get("unit_amount")
    if decimal_text is None and unit_amount is None:
        raise UserError(400, "Missing required param: unit_amount or unit_amount_decimal")
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
        "billing_scheme": "per_unit",
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
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": int(amount) if amount == amount.to_integral_value() else None,
        "unit_amount_decimal": format(amount.normalize(), "f"),
    }
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


def _prices_as_plans(items: Any) -> list[dict[str, Any]]:
    """Stripe's `items[][price]` as localstripe's `items[][plan]` (our prices are its plans)."""
    mapped = []
    for item in items or []:
        item = dict(item)
        if "price" in item:
            item["plan"] = item.pop("price")
        mapped.append(item)
    return mapped


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
    data["items"] = _prices_as_plans(data.get("items"))
    trial_days = data.get("trial_period_days")
    subscription = resources.Subscription._api_create(**data)
    if trial_days:
        _start_trial(subscription, int(trial_days))
    return _json(_with_confirmation_secret(subscription))


async def update_subscription(request: web.Request, path: dict[str, str]) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    data.pop("expand", None)
    data.pop("proration_behavior", None)
    data.pop("payment_behavior", None)
    data.pop("automatic_tax", None)
    if "items" in data:
        data["items"] = _prices_as_plans(data["items"])
    subscription = resources.Subscription._api_update(path["id"], **data)
    return _json(_with_confirmation_secret(subscription))


async def create_invoice_preview(request: web.Request, path: dict[str, str]) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    details = dict(data.get("subscription_details") or {})
    details.pop("proration_behavior", None)
    if "items" in details:
        details["items"] = _prices_as_plans(details["items"])
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
        if data.get("mode") != "subscription" or not data.get("customer") or len(line_items) != 1:
            raise UserError(400, "Dev checkout supports mode=subscription, a customer and one line item")
        resources.Customer._api_retrieve(data["customer"])
        price = line_items[0].get("price")
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
        self._price = price
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
        subscription = resources.Subscription(
            customer=session.customer,
            items=[{"plan": session._price}],
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


# Routes localstripe already has, answered here first in today's Stripe shapes.
_OVERRIDES: list[tuple[str, re.Pattern[str], Override]] = [
    ("POST", re.compile(r"^/v1/refunds$"), create_refund),
    ("POST", re.compile(r"^/v1/subscriptions$"), create_subscription),
    ("POST", re.compile(r"^/v1/subscriptions/(?P<id>sub_\w+)$"), update_subscription),
    ("POST", re.compile(r"^/v1/invoices/create_preview$"), create_invoice_preview),
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


def install_extensions(app: web.Application) -> None:
    """Register the extra routes on localstripe's aiohttp app (before it starts)."""
    app.middlewares.insert(1, hosted_pages)  # after the error middleware, before auth
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
    app.router.add_post("/v1/accounts", create_account)
    app.router.add_get("/v1/accounts/{id}", retrieve_account)
    app.router.add_post("/v1/account_links", create_account_link)
    app.router.add_get("/_config/connect/{id}/onboard", complete_onboarding)
    app.router.add_post("/v1/transfers", create_transfer)
    app.router.add_get("/v1/transfers/{id}", retrieve_transfer)
    app.router.add_get("/v1/invoice_payments", list_invoice_payments)
