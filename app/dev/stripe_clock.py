"""Dev-only Stripe Test Clocks for the emulator: simulated time that bills like Stripe.

`/v1/test_helpers/test_clocks` creates, advances, retrieves, lists and deletes clocks, in Stripe's
shapes (`frozen_time`, status `advancing` then `ready`, `deletes_after`). A customer created with
`test_clock` lives on its clock's time (at most three per clock, as at Stripe): every object made
for it (subscriptions, invoices, meter events, events) is stamped with the clock's time, not ours.

Advancing a clock walks every subscription of its customers through what happens meanwhile, in
time order, as Stripe does:
- at each period end the renewal invoice: the licensed price for the new period, plus metered
  usage summed from the meter events stamped in the period that ended, plus pending prorations;
  `invoice.created` as a draft, then about an hour later `invoice.finalized` (usage is summed again
  then, so events reported before finalization count) and a payment attempt with the customer's
  default card: `charge.succeeded`, `payment_intent.succeeded`, `invoice.paid` and
  `invoice.payment_succeeded`, or `charge.failed`, `payment_intent.payment_failed`,
  `invoice.payment_failed` and the subscription `past_due`;
- failed payments are retried on a schedule (by default 3, 5 and 7 days after the previous
  attempt); after the last one the subscription is cancelled, marked `unpaid` or left `past_due`
  as configured (`POST /_config/test_clocks/dunning`: `retry_days`, `after`);
- trials: `customer.subscription.trial_will_end` three days before the end, then the first invoice;
- `cancel_at_period_end`: cancelled at the period end, with a last invoice for metered usage;
- a meter event identifier is forgotten 24 h (of clock time) after it was first seen, so a resent
  event then counts again.
For subscriptions on a clock, a price change with `proration_behavior=always_invoice` invoices the
credit for unused time and the debit for the rest of the period at once (a negative total becomes
customer credit, taken by the next invoices), with the usage so far of a metered item the change
deletes or moves to another price (an item that gets a metered price mid-period counts its usage
from then); a tiered price's usage line is priced through its tiers; and cancelling with
`invoice_now` (and `prorate`) issues the final invoice. `POST /v1/test_helpers/charges/{id}/dispute`
opens a dispute on a charge (`charge.dispute.created`), `POST /v1/test_helpers/disputes/{id}/close`
closes it won or lost.
Subscriptions of customers without a clock keep the emulator's behaviour. Events are signed with
the real time of delivery (Stripe's signature timestamp), whatever their `created`, and
`GET /v1/events` lists them newest first, as Stripe does.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.utils import formatdate
from typing import Any, cast

import aiohttp
from aiohttp import web
from localstripe import resources, server, webhooks
from localstripe.errors import UserError
from localstripe.webhooks import schedule_webhook

from app.dev import stripe_extensions
from app.dev.stripe_extensions import _next_number, _with_confirmation_secret
from app.dev.stripe_store import objects_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CUSTOMERS_PER_CLOCK = 3
CLOCK_LIFETIME = 30 * 86400  # Stripe deletes a test clock 30 days after it was created
FINALIZE_AFTER = 3600  # a subscription's draft invoice is finalized about an hour after it is made
TRIAL_WARNING = 3 * 86400
IDENTIFIER_MEMORY = 86400  # Stripe de-duplicates meter events by identifier over 24 hours
DEFAULT_RETRY_DAYS = (3, 5, 7)
LIVE = ("trialing", "active", "past_due")

log = logging.getLogger("app.dev.stripe_clock")

# The clock time the current request (or advance step) runs at; None is real time.
_frozen: ContextVar[int | None] = ContextVar("stripe_clock_frozen", default=None)


class _ClockTime:
    """`time` for localstripe and our extensions: a customer's clock time while serving it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        frozen = _frozen.get()
        return float(frozen) if frozen is not None else time.time()  # real time off the clocks


@contextmanager
def _at(moment: int | None) -> Iterator[None]:
    token = _frozen.set(moment)
    try:
        yield
    finally:
        _frozen.reset(token)


def _now() -> int:
    return int(_ClockTime().time())


def _json(body: dict[str, Any]) -> web.Response:
    return cast("web.Response", server.json_response(body))


def _event(kind: str, obj: Any) -> None:
    schedule_webhook(resources.Event(kind, obj))


# ---- clocks ---------------------------------------------------------------------------------


def _clock(clock_id: str) -> dict[str, Any]:
    found = resources.store.get(f"test_clock:{clock_id}")
    if found is None:
        raise UserError(404, f"No such test_clock: '{clock_id}'")
    return cast("dict[str, Any]", found)


class _ClockSnapshot(resources.StripeObject):  # type: ignore[misc]
    """A clock as an event's `data.object` (events export StripeObjects)."""

    object = "test_helpers.test_clock"

    def __init__(self, clock: dict[str, Any]) -> None:  # not stored: no super().__init__
        self._clock = dict(clock)

    def _export(self, expand: Any = None) -> dict[str, Any]:
        return dict(self._clock)


def _clock_event(kind: str, clock: dict[str, Any]) -> None:
    with _at(clock["frozen_time"]):
        _event(kind, _ClockSnapshot(clock))


def _members(clock_id: str) -> dict[str, list[str]]:
    """What lives on a clock (customers, their subscriptions, open invoices), so that advancing a
    clock reads only its own objects, however big the store."""
    key = f"test_clock_members:{clock_id}"
    found = resources.store.get(key)
    if found is None:
        found = {"customers": [], "subscriptions": [], "invoices": []}
        resources.store[key] = found
    return cast("dict[str, list[str]]", found)


def _objects(kind: str, ids: list[str]) -> list[Any]:
    return [obj for obj in (resources.store.get(f"{kind}:{i}") for i in ids) if obj is not None]


def _customers_on(clock_id: str) -> list[Any]:
    return _objects("customer", _members(clock_id)["customers"])


def _attach(customer: Any, clock_id: str) -> None:
    customer.test_clock = clock_id
    _members(clock_id)["customers"].append(customer.id)


def _clock_of_customer(customer_id: Any) -> dict[str, Any] | None:
    if not isinstance(customer_id, str):
        return None
    customer = resources.store.get(f"customer:{customer_id}")
    clock_id = getattr(customer, "test_clock", None)
    return resources.store.get(f"test_clock:{clock_id}") if clock_id else None


async def create_clock(request: web.Request) -> web.Response:
    data = await server.get_post_data(request) or {}
    frozen = resources.try_convert_to_int(data.get("frozen_time"))
    if not isinstance(frozen, int):
        raise UserError(400, "Missing required param: frozen_time.")
    customer = resources.Customer._api_retrieve(data["customer"]) if data.get("customer") else None
    if customer is not None and getattr(customer, "test_clock", None):
        raise UserError(400, f"Customer {customer.id} is already on test clock {customer.test_clock}.")
    created = int(time.time())  # real time: when the clock was made
    clock: dict[str, Any] = {
        "id": "clock_" + secrets.token_hex(12),
        "object": "test_helpers.test_clock",
        "created": created,
        "deletes_after": created + CLOCK_LIFETIME,
        "frozen_time": frozen,
        "livemode": False,
        "name": data.get("name"),
        "status": "ready",
        "status_details": {},
    }
    resources.store[f"test_clock:{clock['id']}"] = clock
    if customer is not None:  # an existing customer attached to the new clock
        _attach(customer, clock["id"])
    _clock_event("test_helpers.test_clock.created", clock)
    return _json(clock)


async def retrieve_clock(request: web.Request) -> web.Response:
    return _json(_clock(request.match_info["id"]))


async def list_clocks(request: web.Request) -> web.Response:
    clocks = list(objects_of("test_clock"))
    clocks.sort(key=lambda c: c["created"], reverse=True)
    return _json({"object": "list", "url": "/v1/test_helpers/test_clocks", "has_more": False, "data": clocks})


async def delete_clock(request: web.Request) -> web.Response:
    """Stripe deletes the clock's customers, and so their subscriptions, with it."""
    clock = _clock(request.match_info["id"])
    with _at(clock["frozen_time"]):
        for subscription in _objects("subscription", _members(clock["id"])["subscriptions"]):
            if subscription.status not in ("canceled", "incomplete_expired"):
                _end_subscription(subscription, clock["frozen_time"])
        for customer in _customers_on(clock["id"]):
            resources.Customer._api_delete(customer.id)
    del resources.store[f"test_clock:{clock['id']}"]
    del resources.store[f"test_clock_members:{clock['id']}"]
    return _json({"id": clock["id"], "object": "test_helpers.test_clock", "deleted": True})


async def advance_clock(request: web.Request) -> web.Response:
    """Answer `advancing` at once; the clock is `ready` at its new time once everything due is done."""
    clock = _clock(request.match_info["id"])
    data = await server.get_post_data(request) or {}
    target = resources.try_convert_to_int(data.get("frozen_time"))
    if not isinstance(target, int):
        raise UserError(400, "Missing required param: frozen_time.")
    if clock["status"] == "advancing":
        raise UserError(400, f"Test clock {clock['id']} is already advancing; wait until it is ready.")
    if target <= clock["frozen_time"]:
        raise UserError(400, "The frozen_time must be after the test clock's current frozen_time.")
    clock["status"] = "advancing"
    clock["status_details"] = {"advancing": {"target_frozen_time": target}}
    _clock_event("test_helpers.test_clock.advancing", clock)
    asyncio.get_running_loop().call_soon(_finish_advance, clock["id"], target)
    return _json(clock)


def _finish_advance(clock_id: str, target: int) -> None:
    clock: dict[str, Any] | None = resources.store.get(f"test_clock:{clock_id}")
    if clock is None:
        return
    try:
        run_clock_until(clock_id, target)
    except Exception:
        log.exception("test clock advance failed")
        clock.update(status="internal_failure", status_details={})
        return
    clock.update(frozen_time=target, status="ready", status_details={})
    _clock_event("test_helpers.test_clock.ready", clock)
    resources.store.dump_to_disk()


def run_clock_until(clock_id: str, target: int) -> None:
    """Everything due on the clock's subscriptions up to `target`, earliest first."""
    while True:
        due = _next_due(clock_id, target)
        if due is None:
            return
        moment, step = due
        with _at(moment):
            step()


def _next_due(clock_id: str, target: int) -> tuple[int, Callable[[], None]] | None:
    candidates: list[tuple[int, int, Callable[[], None]]] = []
    members = _members(clock_id)
    for subscription in _objects("subscription", members["subscriptions"]):
        candidates.extend(_subscription_steps(subscription))
    unsettled = [i for i in _objects("invoice", members["invoices"]) if i.status in ("draft", "open")]
    members["invoices"] = [i.id for i in unsettled]  # settled invoices have nothing left to do
    for invoice in unsettled:
        candidates.extend(_invoice_steps(invoice))
    due = [c for c in candidates if c[0] <= target]
    if not due:
        return None
    moment, _, step = min(due, key=lambda c: (c[0], c[1]))
    return moment, step


# ---- periods --------------------------------------------------------------------------------


def _on_clock(subscription: Any) -> bool:
    return _clock_of_customer(subscription.customer) is not None


def _add_months(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def _shift(moment: datetime, plan: Any, cycles: int) -> datetime:
    unit = getattr(plan, "interval", "month")
    every = int(getattr(plan, "interval_count", 1) or 1) * cycles
    if unit == "day":
        return moment + timedelta(days=every)
    if unit == "week":
        return moment + timedelta(weeks=every)
    return _add_months(moment, every * 12 if unit == "year" else every)


def _period_from(anchor: int, plan: Any, cycle: int) -> dict[str, int]:
    """The `cycle`-th period after the billing cycle anchor (month ends stay anchored, as at Stripe)."""
    start = datetime.fromtimestamp(anchor, UTC)
    return {
        "start": int(_shift(start, plan, cycle).timestamp()),
        "end": int(_shift(start, plan, cycle + 1).timestamp()),
    }


def _period(subscription: Any) -> dict[str, int] | None:
    """A clock subscription's current period: its trial while trialing, then from its anchor."""
    if subscription.status == "trialing" and subscription.trial_end:
        return {
            "start": int(subscription.trial_start or subscription.start_date),
            "end": subscription.trial_end,
        }
    anchor = getattr(subscription, "_clock_anchor", None)
    if anchor is None:
        return None
    return _period_from(anchor, subscription.plan, getattr(subscription, "_clock_cycle", 0))


_stock_current_period = resources.SubscriptionItem._current_period


def _current_period(item: Any) -> dict[str, int]:
    subscription_id = getattr(item, "_subscription", None)
    subscription = resources.store.get(f"subscription:{subscription_id}") if subscription_id else None
    if subscription is not None and _on_clock(subscription):
        found = _period(subscription)
        if found is not None:
            return found
    return cast("dict[str, int]", _stock_current_period(item))


_stock_calculate_amount = resources.SubscriptionItem._calculate_amount


def _calculate_amount(item: Any) -> int:
    """A metered item bills its usage in arrears, never an amount up front (a clock's first invoice)."""
    subscription_id = getattr(item, "_subscription", None)
    subscription = resources.store.get(f"subscription:{subscription_id}") if subscription_id else None
    price = _price(item.plan.id)
    metered = price is not None and (price.get("recurring") or {}).get("usage_type") == "metered"
    if metered and subscription is not None and _on_clock(subscription):
        return 0
    return cast("int", _stock_calculate_amount(item))


def _subscription_steps(subscription: Any) -> list[tuple[int, int, Callable[[], None]]]:
    if subscription.status not in LIVE:
        return []
    steps: list[tuple[int, int, Callable[[], None]]] = []
    if subscription.status == "trialing" and subscription.trial_end:
        if not getattr(subscription, "_clock_trial_warned", False):
            warn_at = max(int(subscription.trial_start or 0), subscription.trial_end - TRIAL_WARNING)
            steps.append((warn_at, 0, lambda: _warn_trial_end(subscription)))
        steps.append((subscription.trial_end, 1, lambda: _end_trial(subscription)))
        return steps
    period = _period(subscription)
    if period is None:
        return []
    if subscription.cancel_at and subscription.cancel_at < period["end"]:
        steps.append((subscription.cancel_at, 2, lambda: _cancel(subscription, final_usage=True)))
    elif subscription.cancel_at_period_end or subscription.cancel_at == period["end"]:
        steps.append((period["end"], 2, lambda: _cancel(subscription, final_usage=True)))
    else:
        steps.append((period["end"], 2, lambda: _renew(subscription)))
    return steps


def _warn_trial_end(subscription: Any) -> None:
    subscription._clock_trial_warned = True
    _event("customer.subscription.trial_will_end", subscription)


def _end_trial(subscription: Any) -> None:
    subscription.status = "active"
    subscription._clock_anchor = subscription.trial_end
    subscription._clock_cycle = 0
    _event("customer.subscription.updated", subscription)
    _cycle_invoice(subscription, ended=None, reason="subscription_cycle")


def _renew(subscription: Any) -> None:
    ended = _period(subscription)
    subscription._clock_cycle = getattr(subscription, "_clock_cycle", 0) + 1
    _event("customer.subscription.updated", subscription)
    _cycle_invoice(subscription, ended=ended, reason="subscription_cycle")


def _end_subscription(subscription: Any, moment: int) -> None:
    subscription.status = "canceled"
    subscription.canceled_at = subscription.canceled_at or moment
    subscription.ended_at = moment
    _event("customer.subscription.deleted", subscription)


def _cancel(subscription: Any, *, final_usage: bool) -> None:
    moment = _now()
    period = _period(subscription)
    if final_usage and period is not None and _metered_items(subscription):
        ended = {"start": period["start"], "end": min(moment, period["end"])}
        # A scheduled cancellation's final invoice is a subscription invoice like a renewal: a
        # draft for about an hour (usage reported meanwhile counts), then finalized and charged.
        _cycle_invoice(subscription, ended=ended, reason="subscription_cycle", licensed=False)
    _end_subscription(subscription, moment)


# ---- usage ----------------------------------------------------------------------------------


def _price(price_id: str) -> dict[str, Any] | None:
    found = resources.store.get(f"price:{price_id}")
    return found if isinstance(found, dict) else None


def _metered_items(subscription: Any) -> list[tuple[Any, dict[str, Any]]]:
    metered = []
    for item in subscription.items._list:
        price = _price(item.plan.id)
        if price is not None and (price.get("recurring") or {}).get("usage_type") == "metered":
            metered.append((item, price))
    return metered


def _meter_events(customer_id: str) -> list[dict[str, Any]]:
    """The meter events a clock customer sent (forgotten identifiers included: they counted)."""
    return cast("list[dict[str, Any]]", resources.store.get(f"test_clock_meter_events:{customer_id}", []))


def _remember_meter_event(customer_id: str, response: web.StreamResponse) -> None:
    body = getattr(response, "text", None)
    if response.status != 200 or not body:
        return
    stored = resources.store.get(f"meter_event:{json.loads(body)['identifier']}")
    key = f"test_clock_meter_events:{customer_id}"
    known = resources.store.get(key, [])
    # A request replayed under its Idempotency-Key answers the first event again: it counts once.
    if stored is not None and not any(event is stored for event in known):
        resources.store[key] = [*known, stored]


def _usage(customer_id: str, price: dict[str, Any], start: int, end: int) -> int:
    """The meter's `sum` of the customer's events stamped in [start, end)."""
    meter_id = (price.get("recurring") or {}).get("meter")
    meter = resources.store.get(f"meter:{meter_id}") if meter_id else None
    if meter is None:
        return 0
    value_key = (meter.get("value_settings") or {}).get("event_payload_key", "value")
    customer_key = (meter.get("customer_mapping") or {}).get("event_payload_key", "stripe_customer_id")
    total = Decimal(0)
    for event in _meter_events(customer_id):
        payload = event.get("payload") or {}
        if (
            event.get("event_name") == meter["event_name"]
            and payload.get(customer_key) == customer_id
            and start <= int(event["timestamp"]) < end
        ):
            total += Decimal(str(payload.get(value_key, 0)))
    return int(total)


def _usage_amount(price: dict[str, Any], quantity: int) -> tuple[int, str | None]:
    """The usage line's amount, and its unit amount (a tiered price's line has none: its tiers
    price it, as `stripe_extensions.tiered_amount` computes)."""
    tiers = stripe_extensions.price_tiers(price["id"])
    if tiers is not None:
        return stripe_extensions.tiered_amount(tiers, str(price.get("tiers_mode")), quantity), None
    unit = Decimal(str(price.get("unit_amount_decimal") or price.get("unit_amount") or 0))
    return int((unit * quantity).to_integral_value(ROUND_HALF_UP)), format(unit.normalize(), "f")


def _usage_item(
    subscription: Any, item: Any, price: dict[str, Any], window: dict[str, int], since: int | None = None
) -> Any:
    """The pending usage line of a metered item on `price` for `window`; an item that got this
    price mid-period (a plan change, at `since`, by default the item's) counts its usage from then."""
    since = getattr(item, "_usage_since", None) if since is None else since
    if since is not None and since > window["start"]:
        window = {"start": min(since, window["end"]), "end": window["end"]}
    quantity = _usage(subscription.customer, price, window["start"], window["end"])
    amount, unit = _usage_amount(price, quantity)
    line_item = resources.InvoiceItem(
        subscription=subscription.id,
        plan=price["id"],
        amount=amount,
        currency=price.get("currency") or item.plan.currency,
        customer=subscription.customer,
        period_start=window["start"],
        period_end=window["end"],
        description=f"{quantity} x {price.get('nickname') or price['id']} (usage)",
        metadata=dict(price.get("metadata") or {}),
    )
    line_item.quantity = quantity
    line_item.pricing = {
        "type": "price_details",
        "price_details": {"price": price["id"]},
        "unit_amount_decimal": unit,
    }
    line_item._clock_usage = {"subscription_item": item.id, "price": price["id"], "window": window}
    return line_item


# ---- invoices -------------------------------------------------------------------------------


class CycleInvoice(resources.Invoice):  # type: ignore[misc]
    """An invoice Stripe makes for a clock subscription (renewal, proration, final), with Stripe's
    money fields: `total` may be negative (a credit), `amount_due` takes the customer balance."""

    def __init__(
        self, subscription: Any, items: list[Any], *, reason: str, ended: dict[str, int] | None
    ) -> None:
        super().__init__(
            customer=subscription.customer, subscription=subscription.id, items=items, simulation=True
        )
        customer = resources.Customer._api_retrieve(subscription.customer)
        # A pending item made for another subscription of the customer waits for that one's invoice.
        self.lines._list = [
            line
            for line in self.lines._list
            if line.type != "invoiceitem"
            or resources.InvoiceItem._api_retrieve(line.invoice_item).subscription in (None, subscription.id)
        ]
        for line in self.lines._list:  # claim the pending items it took, as a real invoice does
            if line.type == "invoiceitem":
                resources.InvoiceItem._api_retrieve(line.invoice_item).invoice = self.id
                line.invoice = self.id
        self.currency = subscription.plan.currency
        self.billing_reason = reason
        self.starting_balance = -int(customer.account_balance or 0)  # Stripe's sign: negative is credit
        self.attempt_count = 0
        self.attempted = False
        self.auto_advance = True
        self.number: str | None = None
        self.hosted_invoice_url = None
        self.invoice_pdf = None
        self.automatic_tax = {"enabled": False, "liability": None, "status": None}
        moment = _now()
        self.date = moment
        window = ended or {"start": moment, "end": moment}
        self.period_start, self.period_end = window["start"], window["end"]
        self.webhooks_delivered_at = moment
        self._paid = False
        self._retry_at: int | None = None
        self._finalize_at: int | None = moment + FINALIZE_AFTER
        subscription.latest_invoice = self.id
        clock = _clock_of_customer(subscription.customer)
        if clock is not None:
            _members(clock["id"])["invoices"].append(self.id)

    @property
    def total(self) -> int:
        return int(self.subtotal + self.tax)

    @property
    def amount_due(self) -> int:
        return max(0, self.total + int(self.starting_balance))

    @property
    def ending_balance(self) -> int | None:
        if self._draft:
            return None
        return min(0, int(self.starting_balance) + self.total)

    @ending_balance.setter
    def ending_balance(self, value: Any) -> None:
        pass  # derived: localstripe's constructor assigns its own

    @property
    def amount_paid(self) -> int:
        return self.amount_due if self._paid else 0

    @property
    def amount_remaining(self) -> int:
        return self.amount_due - self.amount_paid

    @property
    def status(self) -> str:
        if self._draft:
            return "draft"
        if self._voided:
            return "void"
        if self._paid:
            return "paid"
        if getattr(self, "_uncollectible", False):
            return "uncollectible"
        return "open"

    @property
    def next_payment_attempt(self) -> int | None:
        if self._draft:
            return self._finalize_at
        return self._retry_at if not self._paid else None


def _cycle_invoice(
    subscription: Any,
    *,
    ended: dict[str, int] | None,
    reason: str,
    licensed: bool = True,
    pay_now: bool = False,
) -> CycleInvoice:
    """The subscription's invoice now: licensed items for the new period, usage for the one ended."""
    lines: list[Any] = []
    metered = {item.id for item, _ in _metered_items(subscription)}
    if licensed:
        lines.extend(item for item in subscription.items._list if item.id not in metered)
    if ended is not None:
        for item, price in _metered_items(subscription):
            _usage_item(subscription, item, price, ended)
    invoice = CycleInvoice(subscription, lines, reason=reason, ended=ended)
    _event("invoice.created", invoice)
    if pay_now:
        _finalize_and_pay(invoice)
    return invoice


def _invoice_steps(invoice: CycleInvoice) -> list[tuple[int, int, Callable[[], None]]]:
    if invoice.status == "draft" and invoice.auto_advance and invoice._finalize_at is not None:
        return [(invoice._finalize_at, 3, lambda: _finalize_and_pay(invoice))]
    if invoice.status == "open" and invoice._retry_at is not None:
        return [(invoice._retry_at, 4, lambda: _attempt_payment(invoice))]
    return []


def _refresh_usage(invoice: CycleInvoice) -> None:
    """Usage reported before finalization counts (Stripe's grace period for meter events)."""
    for line in invoice.lines._list:
        if line.type != "invoiceitem":
            continue
        item = resources.InvoiceItem._api_retrieve(line.invoice_item)
        usage = getattr(item, "_clock_usage", None)
        if usage is None:
            continue
        price = _price(usage["price"])
        if price is None:
            continue
        window = usage["window"]
        quantity = _usage(invoice.customer, price, window["start"], window["end"])
        amount, _ = _usage_amount(price, quantity)
        item.quantity = line.quantity = quantity
        item.amount = line.amount = amount
        item.description = line.description = f"{quantity} x {price.get('nickname') or price['id']} (usage)"
        line.pricing = item.pricing


def _finalize_and_pay(invoice: CycleInvoice) -> None:
    _refresh_usage(invoice)
    customer = resources.Customer._api_retrieve(invoice.customer)
    # The customer's balance as it stands now applies, as Stripe applies it at finalization.
    invoice.starting_balance = -int(customer.account_balance or 0)
    invoice._finalize()
    invoice._finalize_at = None
    invoice.number = _next_number(invoice.customer)
    customer.account_balance = -int(invoice.ending_balance or 0)  # credit left, or used up
    _event("invoice.finalized", invoice)
    _attempt_payment(invoice)


def _dunning() -> dict[str, Any]:
    found = resources.store.get("test_clock_config:dunning")
    return found if isinstance(found, dict) else {"retry_days": list(DEFAULT_RETRY_DAYS), "after": "canceled"}


def _attempt_payment(invoice: CycleInvoice) -> None:
    moment = _now()
    invoice._retry_at = None
    subscription = resources.store.get(f"subscription:{invoice.subscription}")
    if invoice.amount_due <= 0:
        _mark_paid(invoice, subscription, moment)
        return
    customer = resources.Customer._api_retrieve(invoice.customer)
    method = customer._get_default_payment_method_or_source()
    invoice.attempt_count += 1  # an attempt without a card counts too, as at Stripe
    invoice.attempted = True
    charge = None
    if method is not None:
        intent = (
            resources.store.get(f"payment_intent:{invoice.payment_intent}")
            if invoice.payment_intent
            else None
        )
        if intent is None:
            intent = resources.PaymentIntent(
                amount=invoice.amount_due,
                currency=invoice.currency,
                customer=invoice.customer,
                payment_method=method.id,
            )
            intent.invoice = invoice.id
            invoice.payment_intent = intent.id
        intent.payment_method = method.id
        charge = resources.Charge(
            amount=invoice.amount_due, currency=invoice.currency, customer=invoice.customer, source=method.id
        )
        charge.payment_intent = intent.id
        charge.invoice = invoice.id
        intent.latest_charge = charge
        charge._initialize_charge()
        if charge.status == "succeeded":
            _event("charge.succeeded", charge)
            _event("payment_intent.succeeded", intent)
            _mark_paid(invoice, subscription, moment)
            return
        _event("charge.failed", charge)
        _event("payment_intent.payment_failed", intent)
    _payment_failed(invoice, subscription, moment)


def _mark_paid(invoice: CycleInvoice, subscription: Any, moment: int) -> None:
    invoice._paid = True
    invoice.status_transitions["paid_at"] = moment
    _event("invoice.paid", invoice)
    _event("invoice.payment_succeeded", invoice)
    if subscription is not None and subscription.status in ("past_due", "unpaid", "incomplete"):
        subscription.status = "active"
        _event("customer.subscription.updated", subscription)


def _payment_failed(invoice: CycleInvoice, subscription: Any, moment: int) -> None:
    schedule = _dunning()
    retry_days = list(schedule["retry_days"])
    retries_done = invoice.attempt_count - 1
    if retries_done < len(retry_days):
        invoice._retry_at = moment + int(retry_days[retries_done]) * 86400
    _event("invoice.payment_failed", invoice)
    if subscription is None or subscription.status not in LIVE:
        return
    if invoice._retry_at is None and invoice.billing_reason == "subscription_cycle":
        after = schedule["after"]
        if after == "canceled":
            _end_subscription(subscription, moment)
        elif after == "unpaid":
            subscription.status = "unpaid"
            _event("customer.subscription.updated", subscription)
        return
    if subscription.status != "past_due":
        subscription.status = "past_due"
        _event("customer.subscription.updated", subscription)


async def configure_dunning(request: web.Request) -> web.Response:
    """What Stripe's "Manage failed payments" settings say: retry days, then cancel / unpaid / past_due."""
    data = await server.get_post_data(request) or {}
    days = data.get("retry_days") or list(DEFAULT_RETRY_DAYS)
    days = [resources.try_convert_to_int(d) for d in (days if isinstance(days, list) else [days])]
    after = data.get("after", "canceled")
    if not all(isinstance(d, int) and d > 0 for d in days) or after not in ("canceled", "unpaid", "past_due"):
        raise UserError(400, "retry_days: positive days; after: canceled, unpaid or past_due")
    config = {"retry_days": days, "after": after}
    resources.store["test_clock_config:dunning"] = config
    return _json(config)


# ---- changes on clock subscriptions ---------------------------------------------------------


def _day(moment: int) -> str:
    return f"{datetime.fromtimestamp(moment, UTC):%d %b %Y}"


def _proration_items(subscription: Any, old_plan: Any, new_plan: Any | None, moment: int) -> list[Any]:
    """Credit for the unused time on the old price, debit for the rest of the period on the new
    (none when cancelling)."""
    period = _period(subscription)
    if period is None or moment >= period["end"]:
        return []
    remaining = Decimal(period["end"] - moment) / Decimal(period["end"] - period["start"])
    items = []
    changes = [(old_plan, -1, "Unused time on")] + ([(new_plan, 1, "Remaining time on")] if new_plan else [])
    for plan, sign, label in changes:
        price = _price(plan.id)
        if price is not None and (price.get("recurring") or {}).get("usage_type") == "metered":
            continue  # usage is billed in arrears: nothing to prorate
        amount = int(
            (Decimal(plan.amount * subscription.quantity) * remaining).to_integral_value(ROUND_HALF_UP)
        )
        if amount == 0:
            continue
        items.append(
            resources.InvoiceItem(
                subscription=subscription.id,
                plan=plan.id,
                amount=sign * amount,
                currency=plan.currency,
                customer=subscription.customer,
                period_start=moment,
                period_end=period["end"],
                proration=True,
                description=f"{label} {plan.nickname or plan.id} after {_day(moment)}",
                metadata=dict((price or {}).get("metadata") or {}),
            )
        )
    return items


def _usage_until(subscription: Any, ended: list[tuple[Any, Any, int | None]], moment: int) -> list[Any]:
    """Usage lines of items whose metered price stopped billing at `moment` (their usage so far)."""
    period = _period(subscription)
    lines = []
    for item, plan, since in ended:
        price = _price(plan.id)
        if period is None or price is None or (price.get("recurring") or {}).get("usage_type") != "metered":
            continue
        window = {"start": period["start"], "end": min(moment, period["end"])}
        lines.append(_usage_item(subscription, item, price, window, since=since))
    return lines


async def update_clock_subscription(request: web.Request, subscription: Any) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    behavior = data.get("proration_behavior", "create_prorations")
    items = stripe_extensions._prices_as_plans(data.get("items"))
    moment = _now()
    if "cancel_at_period_end" in data:
        subscription.cancel_at_period_end = (
            resources.try_convert_to_bool(data["cancel_at_period_end"]) is True
        )
    if "cancel_at" in data:
        subscription.cancel_at = resources.try_convert_to_int(data["cancel_at"]) or None
    if "metadata" in data and isinstance(data["metadata"], dict):
        subscription.metadata = {**(subscription.metadata or {}), **data["metadata"]}
    if items:
        if not items[0].get("plan"):
            raise UserError(400, "The dev emulator changes the first item's price (items[0][price])")
        item = subscription.items._list[0]
        old_plan, new_plan = item.plan, resources.Plan._api_retrieve(items[0]["plan"])
        if new_plan.id != old_plan.id or len(items) > 1:
            prorations = (
                _proration_items(subscription, old_plan, new_plan, moment)
                if behavior != "none" and new_plan.id != old_plan.id
                else []
            )
            item.plan = new_plan
            ended = stripe_extensions.change_other_items(subscription, items[1:], moment)
            # A metered item deleted or moved to another price bills its usage until now: on
            # the invoice made now with `always_invoice`, else on the next one (a pending item).
            usage = _usage_until(subscription, ended, moment)
            _event("customer.subscription.updated", subscription)
            if behavior == "always_invoice" and (prorations or usage):
                _cycle_invoice(
                    subscription, ended=None, reason="subscription_update", licensed=False, pay_now=True
                )
            return _json(_with_confirmation_secret(subscription))
    _event("customer.subscription.updated", subscription)
    return _json(_with_confirmation_secret(subscription))


async def cancel_clock_subscription(request: web.Request, subscription: Any) -> web.Response:
    data = dict(await server.get_post_data(request) or {})
    data.update(server.unflatten_data(request.query))
    if subscription.status in ("canceled", "incomplete_expired"):
        return _json(_with_confirmation_secret(subscription))
    moment = _now()
    prorate = resources.try_convert_to_bool(data.get("prorate", False)) is True
    invoice_now = resources.try_convert_to_bool(data.get("invoice_now", False)) is True
    if subscription.status != "trialing":
        prorations = _proration_items(subscription, subscription.plan, None, moment) if prorate else []
        period = _period(subscription)
        if invoice_now and period is not None and (prorations or _metered_items(subscription)):
            ended = {"start": period["start"], "end": moment}
            _cycle_invoice(
                subscription, ended=ended, reason="subscription_cycle", licensed=False, pay_now=True
            )
    _end_subscription(subscription, moment)
    return _json(_with_confirmation_secret(subscription))


# ---- meter events, disputes -----------------------------------------------------------------


def _forget_old_identifier(identifier: str) -> None:
    """Stripe remembers an identifier for 24 hours: past that, the event may come again and count."""
    first = resources.store.get(f"meter_event:{identifier}")
    if first is None or _now() - int(first["created"]) < IDENTIFIER_MEMORY:
        return
    resources.store[f"meter_event_forgotten:{identifier}:{first['created']}"] = first
    del resources.store[f"meter_event:{identifier}"]


def _dispute_of(dispute_id: str) -> dict[str, Any]:
    found = resources.store.get(f"dispute:{dispute_id}")
    if found is None:
        raise UserError(404, f"No such dispute: '{dispute_id}'")
    return cast("dict[str, Any]", found)


class _Snapshot(resources.StripeObject):  # type: ignore[misc]
    def __init__(self, body: dict[str, Any]) -> None:  # not stored: no super().__init__
        self._body = dict(body)

    def _export(self, expand: Any = None) -> dict[str, Any]:
        return dict(self._body)


async def open_dispute(request: web.Request) -> web.Response:
    """Dev test helper: the cardholder disputes the charge (`charge.dispute.created`)."""
    charge = resources.Charge._api_retrieve(request.match_info["id"])
    data = await server.get_post_data(request) or {}
    amount = resources.try_convert_to_int(data.get("amount", charge.amount))
    if not isinstance(amount, int) or not 0 < amount <= charge.amount:
        raise UserError(400, "Invalid amount: at most the charge's amount")
    with _at(_moment_of_customer(charge.customer)):
        moment = _now()
        dispute = {
            "id": "dp_" + secrets.token_hex(12),
            "object": "dispute",
            "amount": amount,
            "balance_transactions": [],
            "charge": charge.id,
            "created": moment,
            "currency": charge.currency,
            "evidence_details": {"due_by": moment + 7 * 86400, "has_evidence": False, "past_due": False},
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": charge.payment_intent,
            "reason": data.get("reason", "fraudulent"),
            "status": "needs_response",
        }
        resources.store[f"dispute:{dispute['id']}"] = dispute
        _event("charge.dispute.created", _Snapshot(dispute))
    return _json(dispute)


async def close_dispute(request: web.Request) -> web.Response:
    """Dev test helper: the bank decides, `won` or `lost` (`charge.dispute.closed`)."""
    dispute = _dispute_of(request.match_info["id"])
    data = await server.get_post_data(request) or {}
    status = data.get("status", "lost")
    if status not in ("won", "lost"):
        raise UserError(400, "Invalid status: won or lost")
    charge = resources.Charge._api_retrieve(dispute["charge"])
    with _at(_moment_of_customer(charge.customer)):
        dispute["status"] = status
        _event("charge.dispute.closed", _Snapshot(dispute))
    return _json(dispute)


async def retrieve_dispute(request: web.Request) -> web.Response:
    return _json(_dispute_of(request.match_info["id"]))


# ---- requests on a clock's time -------------------------------------------------------------


def _moment_of_customer(customer_id: Any) -> int | None:
    clock = _clock_of_customer(customer_id)
    return int(clock["frozen_time"]) if clock is not None else None


_OWNER_ID = re.compile(r"/((?:cus|sub|in|pi|ch|ii)_\w+)")
_KIND = {
    "cus": "customer",
    "sub": "subscription",
    "in": "invoice",
    "pi": "payment_intent",
    "ch": "charge",
    "ii": "invoiceitem",
}


def _customer_of(object_id: str) -> Any:
    kind = _KIND.get(object_id.split("_", 1)[0])
    if kind is None:
        return None
    if kind == "customer":
        return object_id
    return getattr(resources.store.get(f"{kind}:{object_id}"), "customer", None)


async def _request_customer(request: web.Request) -> tuple[Any, dict[str, Any]]:
    data: dict[str, Any] = {}
    if request.method == "POST":
        data = dict(await server.get_post_data(request) or {})
    found = _OWNER_ID.search(request.path)
    if found:
        return _customer_of(found.group(1)), data
    payload: dict[str, Any] = data["payload"] if isinstance(data.get("payload"), dict) else {}
    for candidate in (data.get("customer"), payload.get("stripe_customer_id")):
        if isinstance(candidate, str):
            return candidate, data
    for key in ("subscription", "invoice"):
        if isinstance(data.get(key), str):
            return _customer_of(data[key]), data
    return None, data


async def create_customer_on_clock(request: web.Request, data: dict[str, Any]) -> web.Response:
    clock = _clock(str(data.pop("test_clock")))
    if len(_customers_on(clock["id"])) >= CUSTOMERS_PER_CLOCK:
        raise UserError(
            400, f"Test clock {clock['id']} already has the maximum of {CUSTOMERS_PER_CLOCK} customers."
        )
    data.pop("expand", None)
    with _at(clock["frozen_time"]):
        customer = resources.Customer._api_create(**data)
    _attach(customer, clock["id"])
    return _json(customer._export())


_SUBSCRIPTION = re.compile(r"^/v1/subscriptions/(?P<id>sub_\w+)$")


_EVENT_LOG = "event_log"  # the store's event ids, oldest first (not an object: no `kind:` prefix)
_event_init = resources.Event.__init__


def _event_log() -> list[str]:
    """Every event id in the order sent, built once from the store (a reloaded one included)."""
    log_ids = resources.store.get(_EVENT_LOG)
    if log_ids is None:
        log_ids = [key.split(":", 1)[1] for key in resources.store if str(key).startswith("event:")]
        resources.store[_EVENT_LOG] = log_ids
    return cast("list[str]", log_ids)


def _logged_event_init(event: Any, *args: Any, **kwargs: Any) -> None:
    _event_init(event, *args, **kwargs)
    _event_log().append(event.id)


def _position(log_ids: list[str], event_id: str) -> int:
    """Where `event_id` is in the log, searched from the newest end (cursors are recent)."""
    for index in range(len(log_ids) - 1, -1, -1):
        if log_ids[index] == event_id:
            return index
    raise UserError(404, f"No such event: '{event_id}'")


def _page_of_events(limit: int, starting_after: str | None, ending_before: str | None) -> dict[str, Any]:
    """A page newest first, from the log rather than a scan of the whole store: the newest
    `limit`, those just older than `starting_after`, or those just newer than `ending_before`."""
    log_ids = _event_log()
    if ending_before is not None:
        newer = log_ids[_position(log_ids, ending_before) + 1 :]
        chosen, more = newer[:limit], len(newer) > limit
    else:
        end = _position(log_ids, starting_after) if starting_after is not None else len(log_ids)
        chosen, more = log_ids[max(0, end - limit) : end], end > limit
    events = [resources.store[f"event:{event_id}"]._export() for event_id in reversed(chosen)]
    return {"object": "list", "url": "/v1/events", "has_more": more, "data": events}


async def list_events(request: web.Request) -> web.Response:
    """Stripe lists events newest first (localstripe oldest first); `starting_after` pages back,
    `ending_before` forward (a relay asks only for what is new)."""
    query = server.unflatten_data(request.query)
    if query.get("type") is None and query.get("created") is None:
        limit = resources.try_convert_to_int(query.get("limit") or 10)
        if not isinstance(limit, int) or not 0 < limit <= 100:
            raise UserError(400, "Invalid limit: must be between 1 and 100.")
        return _json(_page_of_events(limit, query.get("starting_after"), query.get("ending_before")))
    listed = resources.Event._api_list_all(
        "/v1/events",
        type=query.get("type"),
        created=query.get("created"),
        limit=query.get("limit"),
        starting_after=query.get("starting_after"),
    )
    listed._list = list(reversed(listed._list))
    return _json(listed._export())


@web.middleware
async def clock_time(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve a clock customer's request at its clock's time, with clock-aware subscription changes."""
    if request.path.startswith(("/_config/", "/v1/test_helpers/")):
        return await handler(request)
    if request.method == "GET" and request.path == "/v1/events":
        return await list_events(request)
    customer, data = await _request_customer(request)
    if request.method == "POST" and request.path == "/v1/customers" and data.get("test_clock"):
        return await create_customer_on_clock(request, data)
    moment = _moment_of_customer(customer)
    if moment is None:
        return await handler(request)
    with _at(moment):
        response = await _serve_on_clock(request, handler, customer, data)
    # Dated by the clock its objects and events live on, so the answer and the events compare.
    response.headers["Date"] = formatdate(moment, usegmt=True)
    return response


async def _serve_on_clock(
    request: web.Request, handler: Handler, customer: object, data: dict[str, Any]
) -> web.StreamResponse:
    subscription_path = _SUBSCRIPTION.match(request.path)
    if subscription_path:
        subscription = resources.Subscription._api_retrieve(subscription_path["id"])
        if request.method == "DELETE":
            return await cancel_clock_subscription(request, subscription)
        if request.method == "POST":
            return await update_clock_subscription(request, subscription)
    if request.method == "POST" and request.path == "/v1/billing/meter_events" and data.get("identifier"):
        _forget_old_identifier(str(data["identifier"]))
    response = await handler(request)
    if request.method == "POST" and request.path == "/v1/billing/meter_events":
        _remember_meter_event(str(customer), response)
    return response


_stock_subscription_init = resources.Subscription.__init__


def _subscription_init(subscription: Any, *args: Any, **kwargs: Any) -> None:
    """A clock customer's subscription (by the API or Checkout): its periods run from its start,
    it joins the clock, and its first invoice, if paid, sends `invoice.paid` as Stripe's does."""
    _stock_subscription_init(subscription, *args, **kwargs)
    clock = _clock_of_customer(subscription.customer)
    if clock is None:
        return
    subscription._clock_anchor = subscription.start_date
    subscription._clock_cycle = 0
    _members(clock["id"])["subscriptions"].append(subscription.id)
    latest = subscription.latest_invoice
    first = resources.store.get(f"invoice:{latest}") if latest else None
    if first is not None and first.status == "paid":
        _event("invoice.paid", first)


# ---- delivery -------------------------------------------------------------------------------


async def _send_webhook(event: Any) -> None:
    """localstripe's delivery, signed at the real time of sending as Stripe signs (not `created`)."""
    payload = json.dumps(event._export(), indent=2, sort_keys=True).encode()
    await asyncio.sleep(1)
    signed_at = int(time.time())  # real time: the receiver checks the signature's age against its own
    for hook in list(webhooks._webhooks.values()):
        if hook.events is not None and event.type not in hook.events:
            continue
        signature = hmac.new(
            hook.secret.encode(), b"%d.%s" % (signed_at, payload), hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": f"t={signed_at},v1={signature}",
        }
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(hook.url, data=payload, headers=headers),
            ):
                pass
        except aiohttp.ClientError as exc:
            log.info("webhook %s failed: %s", event.type, exc)


def install_test_clocks(app: web.Application) -> None:
    """Register test clocks on the emulator's app, after `install_extensions`."""
    resources.time = _ClockTime()
    stripe_extensions.time = _ClockTime()  # type: ignore[assignment,attr-defined]
    resources.SubscriptionItem._current_period = _current_period
    resources.SubscriptionItem._calculate_amount = _calculate_amount
    resources.Subscription.__init__ = _subscription_init
    resources.Event.__init__ = _logged_event_init
    # Stripe's `customer.balance`: negative is credit the next invoices take (localstripe keeps
    # the opposite sign in `account_balance`).
    resources.Customer.balance = property(lambda customer: -int(customer.account_balance or 0))
    webhooks._send_webhook = _send_webhook
    first_override = next(
        (
            i
            for i, m in enumerate(app.middlewares)
            if m in (stripe_extensions.idempotent_replay, stripe_extensions.stripe_today)
        ),
        len(app.middlewares),
    )
    app.middlewares.insert(first_override, clock_time)
    app.router.add_post("/v1/test_helpers/test_clocks", create_clock)
    app.router.add_get("/v1/test_helpers/test_clocks", list_clocks)
    app.router.add_get("/v1/test_helpers/test_clocks/{id}", retrieve_clock)
    app.router.add_delete("/v1/test_helpers/test_clocks/{id}", delete_clock)
    app.router.add_post("/v1/test_helpers/test_clocks/{id}/advance", advance_clock)
    app.router.add_post("/v1/test_helpers/charges/{id}/dispute", open_dispute)
    app.router.add_post("/v1/test_helpers/disputes/{id}/close", close_dispute)
    app.router.add_get("/v1/disputes/{id}", retrieve_dispute)
    app.router.add_post("/_config/test_clocks/dunning", configure_dunning)
