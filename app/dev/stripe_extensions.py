"""Dev-only additions to localstripe for what it lacks, answering in Stripe's documented shapes.

- Prices (`/v1/prices`): backed by a localstripe Plan with the same id, so its subscriptions,
  invoices and items work with `price` ids as with Stripe (which treats a Plan as a Price).
- Billing Meters (`/v1/billing/meters`) and meter events (`/v1/billing/meter_events`), with
  Stripe's identifier de-duplication.
- Connect: Express accounts (`/v1/accounts`), onboarding links (`/v1/account_links`; opening the
  link completes onboarding at once and redirects to `return_url`) and transfers
  (`/v1/transfers`), which replay their answer for a repeated Idempotency-Key as Stripe does.
Objects are kept in localstripe's store, so they persist with it.
"""

from __future__ import annotations

import secrets
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, cast
from urllib.parse import urlencode

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError


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
