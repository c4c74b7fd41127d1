"""The end of a run: our tables and the emulator's objects against the oracle, per invariant.

Each invariant is checked per subject (a consumer's invoice, a consumer, a creator); a subject
drifts when the two sides differ, and its drift is the difference in minor units (cents; yen
for JPY). Any drifting subject fails the run.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Consumer, Earning, Invoice, PricingPlanVersion, Subscription
from app.models.earning import NEGATIVE_KINDS
from app.simulate.driver import RunRecord
from app.simulate.faults import FaultCounts
from app.simulate.oracle import Expected, ExpectedInvoice

LIVE = frozenset({"active", "trial", "past_due"})


@dataclass
class Check:
    name: str
    checked: int = 0
    drifting: list[tuple[str, str]] = field(default_factory=list)  # (subject, what differs)
    drift: int = 0  # minor units

    def compare(self, subject: str, expected: Any, actual: Any, *, cents: int | None = None) -> None:
        self.checked += 1
        if expected != actual:
            self.drifting.append((subject, f"expected {expected}, got {actual}"))
            self.drift += abs(cents) if cents is not None else 0


@dataclass
class Report:
    checks: list[Check]
    platform: dict[str, tuple[int, int, int]]  # currency -> collected, creators' net, platform keeps
    faults: FaultCounts
    steps: int
    webhooks: int
    seconds: dict[str, float] = field(default_factory=dict)
    webhooks_redelivered: int = 0
    jobs_failed: int = 0

    @property
    def clean(self) -> bool:
        return all(not check.drifting for check in self.checks)

    def render(self, console: Console, *, examples: int = 5) -> None:
        table = Table(title="Invariants")
        for column in ("invariant", "checked", "drifting", "drift (minor units)"):
            table.add_column(column, justify="left" if column == "invariant" else "right")
        for check in self.checks:
            style = "red" if check.drifting else "green"
            table.add_row(
                check.name, str(check.checked), str(len(check.drifting)), str(check.drift), style=style
            )
        console.print(table)
        money = Table(title="Money (from the scenario)")
        for column in ("currency", "collected", "creators earn", "platform keeps"):
            money.add_column(column, justify="right")
        for currency, (collected, earned, kept) in sorted(self.platform.items()):
            money.add_row(currency, str(collected), str(earned), str(kept))
        console.print(money)
        faults = Table(
            title=f"Faults injected ({self.steps} steps, {self.webhooks} webhook deliveries,"
            f" {self.webhooks_redelivered} sent again after a 5xx, {self.jobs_failed} worker jobs"
            " failed and taken up by a later run)"
        )
        faults.add_column("fault")
        faults.add_column("count", justify="right")
        for name, count in self.faults.as_rows():
            faults.add_row(name, str(count))
        console.print(faults)
        if self.seconds:
            parts = ", ".join(f"{part} {seconds:.1f}s" for part, seconds in self.seconds.items())
            console.print(f"wall time: {parts}")
        for check in self.checks:
            for subject, what in check.drifting[:examples]:
                console.print(f"[red]drift[/red] {check.name}: {subject}: {what}")


async def build_report(
    session: AsyncSession,
    stripe: httpx.AsyncClient,
    siblings: httpx.AsyncClient,
    record: RunRecord,
    expected: Expected,
    faults: FaultCounts,
) -> Report:
    ours = {s.id.hex: s for s in (await session.execute(select(Subscription))).scalars()}
    by_sub: dict[str, list[Invoice]] = defaultdict(list)
    our_invoices: dict[str, Invoice] = {}
    for invoice in (await session.execute(select(Invoice))).scalars():
        our_invoices[invoice.stripe_invoice_id] = invoice
        if invoice.subscription_id is not None:
            by_sub[invoice.subscription_id.hex].append(invoice)
    metered_prices: set[str] = set()
    for v in (await session.execute(select(PricingPlanVersion))).scalars():
        if v.price_per_call is not None:
            metered_prices.add(str(v.stripe_price_id))
        if v.stripe_overage_price_id is not None:
            metered_prices.add(v.stripe_overage_price_id)
    stripe_side = {key: await _stripe_objects(stripe, run.customer) for key, run in record.consumers.items()}

    totals = Check("invoices per consumer and period = oracle")
    usage = Check("usage billed = usage metered")
    mirror = Check("our invoices = Stripe's")
    once = Check("zero double charges (collected per consumer = oracle)")
    orphans = Check("zero Stripe subscriptions without a row of ours")
    keys = Check("an API key exists exactly while its subscription is live")
    for key, run in record.consumers.items():
        invoices, subscriptions, charges = stripe_side[key]
        wanted = expected.invoices.get(key, [])
        _compare_invoices(totals, usage, wanted, invoices, our_invoices, metered_prices)
        for listed in invoices:
            row_of = our_invoices.get(listed["id"])
            theirs = _money(listed)
            mirror.compare(
                f"{key} {listed['id']}",
                theirs,
                _money_of_row(row_of) if row_of is not None else None,
                cents=theirs[0] if row_of is None else abs(theirs[0] - row_of.total),
            )
        charged = sum(int(c["amount"]) for c in charges if c["status"] == "succeeded")
        once.compare(key, expected.collected_by(key), charged, cents=charged - expected.collected_by(key))
        known = {s.stripe_subscription_id for s in ours.values()}
        for subscription in subscriptions:
            collected = sum(
                int(i["amount_paid"]) for i in invoices if i.get("subscription") == subscription["id"]
            )
            orphans.compare(f"{key} {subscription['id']}", True, subscription["id"] in known, cents=collected)
        held = ours.get(run.subscription_id.replace("-", ""))
        live = held is not None and held.status in LIVE
        key_alive = await _key_exists(siblings, held)
        keys.compare(f"{key} status", expected.live[key], live)
        keys.compare(f"{key} key", live, key_alive)
    listed_ids = {i["id"] for objs in stripe_side.values() for i in objs[0]}
    for invoice_id, row in our_invoices.items():
        if invoice_id not in listed_ids:
            mirror.compare(f"our {invoice_id}", None, _money_of_row(row), cents=row.total)

    per_consumer = Check("earnings = collected x (1 - commission) - reversals, per consumer")
    lines = (await session.execute(select(Earning))).scalars().all()
    # Each line counts for the consumer its invoice billed (by their Stripe customer), whichever
    # of their subscriptions the line names, or none.
    billed = select(Invoice.id, Consumer.stripe_customer_id).join(
        Consumer, Invoice.consumer_id == Consumer.id
    )
    customer_of: dict[uuid.UUID, str | None] = {}
    for billed_id, customer in (await session.execute(billed)).all():
        customer_of[billed_id] = customer
    net_of: dict[str, int] = defaultdict(int)
    for line in lines:
        net_of[str(customer_of.get(line.invoice_id))] += _sign(line) * line.net_amount
    for key, run in record.consumers.items():
        got = net_of.get(run.customer, 0)
        per_consumer.compare(
            key, expected.earned_by.get(key, 0), got, cents=got - expected.earned_by.get(key, 0)
        )
    earnings = Check("earnings = collected x (1 - commission) - reversals, per creator")
    platform = Check("platform keeps its commission, per creator")
    platform_table: dict[str, tuple[int, int, int]] = {}
    for creator, book in expected.creators.items():
        booked = [line for line in lines if line.creator_id == creator]
        net = sum(_sign(line) * line.net_amount for line in booked)
        kept = sum(_sign(line) * line.commission_amount for line in booked)
        earnings.compare(creator, book.earned, net, cents=net - book.earned)
        platform.compare(creator, book.platform, kept, cents=kept - book.platform)
        platform_table[book.currency] = (book.collected, book.earned, book.platform)
    return Report(
        [totals, usage, mirror, per_consumer, earnings, platform, once, orphans, keys],
        platform_table,
        faults,
        record.steps,
        record.webhooks,
        record.seconds,
        record.webhooks_redelivered,
        record.jobs_failed,
    )


def _compare_invoices(
    totals: Check,
    usage: Check,
    wanted: list[ExpectedInvoice],
    invoices: list[dict[str, Any]],
    ours: dict[str, Invoice],
    metered_prices: set[str],
) -> None:
    by_moment: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for invoice in invoices:
        by_moment[int(invoice["created"])].append(invoice)
    for expected in wanted:
        found = by_moment.pop(expected.created, [])
        total = sum(int(i["total"]) for i in found)
        paid = sum(int(i["amount_paid"]) for i in found)
        totals.compare(
            expected.label,
            (expected.total, expected.amount_paid),
            (total, paid) if found else None,
            cents=abs(expected.total - total) + abs(expected.amount_paid - paid),
        )
        if expected.usage is not None and expected.reason != "subscription_create":
            billed = 0
            for invoice in found:
                row = ours.get(invoice["id"])
                for line in row.lines if row is not None else []:
                    if str(line.get("price_id")) in metered_prices and not line.get("proration"):
                        billed += int(line.get("quantity") or 0)
            unit_cents = expected.total / expected.usage if expected.usage else 0
            usage.compare(
                expected.label, expected.usage, billed, cents=round((expected.usage - billed) * unit_cents)
            )
    for moment, extra in by_moment.items():
        for invoice in extra:
            if int(invoice["total"]) or int(invoice["amount_paid"]):
                subject = f"{wanted[0].consumer if wanted else '?'} unexpected {invoice['id']} at {moment}"
                totals.compare(subject, None, _money(invoice), cents=int(invoice["total"]))


def _sign(line: Earning) -> int:
    return -1 if line.kind in NEGATIVE_KINDS else 1


def _money(invoice: dict[str, Any]) -> tuple[int, int, int, str]:
    return (
        int(invoice["total"]),
        int(invoice["amount_paid"]),
        int(invoice["amount_due"]),
        str(invoice["status"]),
    )


def _money_of_row(row: Invoice) -> tuple[int, int, int, str]:
    return row.total, row.amount_paid, row.amount_due, row.status


async def _stripe_objects(
    stripe: httpx.AsyncClient, customer: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    async def listing(path: str, **params: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            query = {
                "customer": customer,
                "limit": 100,
                **params,
                **({"starting_after": after} if after else {}),
            }
            page = (await stripe.get(path, params=query)).json()
            found.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                return found
            after = page["data"][-1]["id"]

    return (
        await listing("/v1/invoices"),
        await listing("/v1/subscriptions", status="all"),
        await listing("/v1/charges"),
    )


async def _key_exists(siblings: httpx.AsyncClient, row: Subscription | None) -> bool:
    if row is None or row.api_key_id is None or row.api_key_suspended:
        return False
    return (await siblings.get(f"/api/v1/keys/{row.api_key_id}")).status_code == 200
