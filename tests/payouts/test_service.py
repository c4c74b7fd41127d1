"""Connect onboarding and the payout job; Stripe Connect is answered by respx in Stripe's documented
shapes (the emulator has no Connect), with Stripe's idempotency-key replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.models import CreatorAccount, Earning, Payout
from app.payouts.jobs import pay_out_earnings, run_payouts
from app.payouts.reversals import proportional_shares, reverse_invoice_earnings, reversed_gross
from app.resources import Resources
from tests.support import rows
from tests.support.auth import Auth

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=20)  # past the 14-day refund window
RECENT = NOW - timedelta(days=2)


def _form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode()))


class FakeConnect:
    """Accounts, account links and transfers; a repeated idempotency key replays the first answer."""

    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        self.transfers: dict[str, dict[str, Any]] = {}  # by idempotency key
        self.keys_seen: list[str] = []
        self.lose_next_transfer_response = False

    def install(self, mock: respx.MockRouter) -> dict[str, respx.Route]:
        def create_account(request: httpx.Request) -> httpx.Response:
            form = _form(request)
            account_id = f"acct_{uuid.uuid4().hex[:16]}"
            account: dict[str, Any] = {
                "id": account_id,
                "object": "account",
                "type": "express",
                "email": form.get("email"),
                "details_submitted": False,
                "charges_enabled": False,
                "payouts_enabled": False,
                "metadata": {"creator_id": form.get("metadata[creator_id]")},
            }
            self.accounts[account_id] = account
            return httpx.Response(200, json=account)

        def create_transfer(request: httpx.Request) -> httpx.Response:
            key = request.headers["idempotency-key"]
            self.keys_seen.append(key)
            if key not in self.transfers:
                form = _form(request)
                self.transfers[key] = {
                    "id": f"tr_{uuid.uuid4().hex[:16]}",
                    "object": "transfer",
                    "amount": int(form["amount"]),
                    "currency": form["currency"],
                    "destination": form["destination"],
                    "transfer_group": form["transfer_group"],
                    "metadata": {},
                }
            if self.lose_next_transfer_response:
                self.lose_next_transfer_response = False
                raise httpx.ReadTimeout("the answer was lost", request=request)
            return httpx.Response(200, json=self.transfers[key])

        return {
            "account": mock.post("/v1/accounts").mock(side_effect=create_account),
            "retrieve": mock.get(url__regex=r"/v1/accounts/(?P<account>acct_\w+)$").mock(
                side_effect=lambda request, account: httpx.Response(200, json=self.accounts[account])
            ),
            "link": mock.post("/v1/account_links").mock(
                side_effect=lambda request: httpx.Response(
                    200,
                    json={
                        "object": "account_link",
                        "created": int(NOW.timestamp()),
                        "expires_at": int(NOW.timestamp()) + 300,
                        "url": f"https://connect.stripe.com/setup/e/{_form(request)['account']}/abc",
                    },
                )
            ),
            "transfer": mock.post("/v1/transfers").mock(side_effect=create_transfer),
        }


@pytest.fixture
def connect(settings: Settings) -> Iterator[tuple[FakeConnect, dict[str, respx.Route]]]:
    fake = FakeConnect()
    with respx.mock(base_url=settings.stripe_api_base, assert_all_called=False) as mock:
        yield fake, fake.install(mock)


@pytest.fixture
async def worker_ctx(settings: Settings, engine: AsyncEngine) -> AsyncIterator[dict[str, Any]]:
    res = Resources.open(settings, jobs=True)
    yield {"resources": res}
    await res.close()


async def test_connect_onboarding_makes_one_express_account_and_a_link_each_time(
    client: httpx.AsyncClient, auth: Auth, connect: tuple[FakeConnect, dict[str, respx.Route]]
) -> None:
    fake, routes = connect
    headers = auth("creator", user_id="creator-1")
    body = {
        "return_url": "https://market.example/creator/done",
        "refresh_url": "https://market.example/again",
    }

    assert (await client.get("/api/v1/creators/connect", headers=headers)).json()["status"] == "not_started"
    first = await client.post("/api/v1/creators/connect", json=body, headers=headers)
    second = await client.post("/api/v1/creators/connect", json=body, headers=headers)

    assert first.status_code == 200, first.text
    account_id = first.json()["stripe_account_id"]
    assert second.json()["stripe_account_id"] == account_id
    assert first.json()["url"].startswith("https://connect.stripe.com/setup/")
    assert first.json()["status"] == "onboarding"
    assert routes["account"].call_count == 1
    assert routes["account"].calls.last.request.headers["idempotency-key"] == "connect-account:creator-1"
    assert _form(routes["account"].calls.last.request)["type"] == "express"
    assert routes["link"].call_count == 2

    fake.accounts[account_id].update(details_submitted=True, charges_enabled=True, payouts_enabled=True)
    status = (await client.get("/api/v1/creators/connect", headers=headers)).json()
    assert status["status"] == "active"
    assert status["payouts_enabled"] is True


async def test_consumers_cannot_onboard_to_connect(client: httpx.AsyncClient, auth: Auth) -> None:
    body = {"return_url": "https://market.example/a", "refresh_url": "https://market.example/b"}
    response = await client.post("/api/v1/creators/connect", json=body, headers=auth("consumer"))
    assert response.status_code == 403


async def _seed_ledger(engine: AsyncEngine, *, onboarded: bool = True) -> dict[str, Any]:
    api = rows.api("creator-1", "weather")
    usd_plan, usd_v = rows.plan(api, name="Pro")
    yen_plan, yen_v = rows.plan(api, name="Japan", currency="jpy", monthly_amount=3000)
    other_api = rows.api("creator-2", "maps")
    other_plan, other_v = rows.plan(other_api)
    alice = rows.consumer("alice")
    invoices = [rows.invoice(alice, created_at=OLD) for _ in range(4)]
    yen_invoice = rows.invoice(alice, currency="jpy", created_at=OLD)
    ledger = [
        rows.earning(usd_plan, invoices[0], "creator-1", 2999, 600, earned_at=OLD),
        rows.earning(usd_plan, invoices[1], "creator-1", 2999, 600, earned_at=OLD),
        rows.earning(usd_plan, invoices[1], "creator-1", 1000, 200, earned_at=OLD, kind="reversal"),
        rows.earning(usd_plan, invoices[2], "creator-1", 2999, 600, earned_at=RECENT),  # refund window
        rows.earning(yen_plan, yen_invoice, "creator-1", 3333, 667, earned_at=OLD),
        rows.earning(other_plan, invoices[3], "creator-2", 2999, 600, earned_at=OLD),  # no account
    ]
    extra: list[object] = []
    if onboarded:
        extra.append(
            CreatorAccount(creator_id="creator-1", stripe_account_id="acct_creator1", payouts_enabled=True)
        )
    await rows.add(
        engine, api, other_api, usd_plan, usd_v, yen_plan, yen_v, other_plan, other_v, alice, *invoices,
        yen_invoice, *ledger, *extra,
    )  # fmt: skip
    return {"ledger": ledger}


async def _ledger(engine: AsyncEngine) -> list[Earning]:
    async with engine.connect() as connection:
        result = await connection.execute(select(Earning).order_by(Earning.creator_id, Earning.earned_at))
        return list(result.all())  # type: ignore[arg-type]


async def _payouts(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(Payout).order_by(Payout.currency))).all())


async def test_payout_transfers_available_net_per_currency_and_marks_the_ledger(
    engine: AsyncEngine, worker_ctx: dict[str, Any], connect: tuple[FakeConnect, dict[str, respx.Route]]
) -> None:
    fake, routes = connect
    await _seed_ledger(engine)

    result = await run_payouts(worker_ctx)

    assert result["paid"] == 2
    transfers = sorted(fake.transfers.values(), key=lambda t: t["currency"])
    # JPY: 3333 - 667 = 2666. USD: 2399 + 2399 - 800 (a refund reversed) = 3998; the recent line waits.
    assert [(t["currency"], t["amount"], t["destination"]) for t in transfers] == [
        ("jpy", 2666, "acct_creator1"),
        ("usd", 3998, "acct_creator1"),
    ]
    period = NOW.date().isoformat()
    assert sorted(fake.keys_seen) == [f"payout:creator-1:jpy:{period}", f"payout:creator-1:usd:{period}"]
    payouts = await _payouts(engine)
    assert [(p.currency, p.amount, p.status) for p in payouts] == [
        ("jpy", 2666, "paid"),
        ("usd", 3998, "paid"),
    ]
    by_transfer = {t["currency"]: t["id"] for t in transfers}
    for line in await _ledger(engine):
        if line.creator_id == "creator-2":
            assert (line.status, line.stripe_transfer_id) == ("available", None)  # accrues until onboarding
        elif line.earned_at > NOW - timedelta(days=14):
            assert (line.status, line.stripe_transfer_id) == ("pending", None)
        else:
            assert (line.status, line.stripe_transfer_id) == ("paid_out", by_transfer[line.currency])

    again = await run_payouts(worker_ctx)
    assert again["paid"] == 0
    assert routes["transfer"].call_count == 2


async def test_payout_retried_after_a_lost_stripe_answer_pays_once_with_the_same_key(
    engine: AsyncEngine, worker_ctx: dict[str, Any], connect: tuple[FakeConnect, dict[str, respx.Route]]
) -> None:
    fake, routes = connect
    await _seed_ledger(engine)
    fake.lose_next_transfer_response = True

    first = await run_payouts(worker_ctx)
    retried = await run_payouts(worker_ctx)

    assert first["failed"] == 1
    assert first["paid"] == 1
    assert retried["paid"] == 1
    assert len(fake.transfers) == 2  # Stripe made one transfer per currency, not three
    assert len(fake.keys_seen) == 3
    assert len(set(fake.keys_seen)) == 2  # the retry reused its key
    payouts = await _payouts(engine)
    assert all(p.status == "paid" for p in payouts)
    assert {p.stripe_transfer_id for p in payouts} == {t["id"] for t in fake.transfers.values()}
    assert routes["transfer"].call_count == 3


async def test_creator_without_connect_account_accrues_until_onboarded(
    engine: AsyncEngine, worker_ctx: dict[str, Any], connect: tuple[FakeConnect, dict[str, respx.Route]]
) -> None:
    fake, _ = connect
    await _seed_ledger(engine, onboarded=False)

    assert (await run_payouts(worker_ctx))["paid"] == 0
    assert fake.transfers == {}
    await rows.add(
        engine, CreatorAccount(creator_id="creator-1", stripe_account_id="acct_late", payouts_enabled=True)
    )
    assert (await run_payouts(worker_ctx))["paid"] == 2
    assert {t["destination"] for t in fake.transfers.values()} == {"acct_late"}


async def test_creator_onboards_and_receives_transfers_in_the_stripe_emulator(
    client: httpx.AsyncClient, auth: Auth, engine: AsyncEngine, worker_ctx: dict[str, Any], settings: Settings
) -> None:
    headers = auth("creator", user_id="creator-1")
    body = {
        "return_url": "https://market.example/creator/done",
        "refresh_url": "https://market.example/again",
    }
    onboarding = (await client.post("/api/v1/creators/connect", json=body, headers=headers)).json()
    async with httpx.AsyncClient() as browser:
        visit = await browser.get(onboarding["url"])
    assert visit.status_code == 302
    assert visit.headers["location"] == body["return_url"]
    assert (await client.get("/api/v1/creators/connect", headers=headers)).json()["status"] == "active"
    await _seed_ledger(engine, onboarded=False)

    assert (await run_payouts(worker_ctx))["paid"] == 2

    payouts = await _payouts(engine)
    async with httpx.AsyncClient(base_url=str(settings.stripe_api_base)) as stripe:
        key = (settings.stripe_secret_key.get_secret_value(), "")
        transfers = [
            (await stripe.get(f"/v1/transfers/{p.stripe_transfer_id}", auth=key)).json() for p in payouts
        ]
    assert [(t["currency"], t["amount"]) for t in transfers] == [("jpy", 2666), ("usd", 3998)]
    assert {t["destination"] for t in transfers} == {onboarding["stripe_account_id"]}


# Refunds and lost disputes: reversal lines.


async def _paid_invoice(engine: AsyncEngine, *charges: tuple[int, int]) -> tuple[Any, list[Any]]:
    api = rows.api("creator-1", "weather")
    alice = rows.consumer("alice")
    total = sum(g for g, _ in charges)  # paid in full: the refunds' base is what it collected
    invoice = rows.invoice(alice, total=total, amount_due=total, amount_paid=total, created_at=OLD)
    plans = [rows.plan(api, name=f"Plan {i}") for i in range(len(charges))]
    ledger = [
        rows.earning(plan, invoice, "creator-1", gross, commission, earned_at=OLD)
        for (plan, _), (gross, commission) in zip(plans, charges, strict=True)
    ]
    await rows.add(engine, api, *(x for pair in plans for x in pair), alice, invoice, *ledger)
    return invoice, [plan for plan, _ in plans]


async def _reversals(engine: AsyncEngine) -> list[tuple[int, int, int]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(Earning.gross_amount, Earning.commission_amount, Earning.net_amount)
            .where(Earning.kind == "reversal")
            .order_by(Earning.plan_id)
        )
        return [(g, c, n) for g, c, n in result]


async def _reverse(engine: AsyncEngine, invoice_id: Any, amount: int) -> int:
    async with AsyncSession(engine) as session, session.begin():
        return await reverse_invoice_earnings(session, invoice_id=invoice_id, reversed_total=amount)


def test_proportional_shares_sum_exactly() -> None:
    assert proportional_shares(100, [1, 1, 1]) == [34, 33, 33]
    assert proportional_shares(1000, [2999, 1]) == [1000, 0]
    assert proportional_shares(7, [0, 0]) == [0, 0]
    for amount in range(0, 300, 7):
        assert sum(proportional_shares(amount, [2999, 1500, 1])) == amount


async def test_full_refund_reverses_each_charge_exactly(engine: AsyncEngine) -> None:
    invoice, _ = await _paid_invoice(engine, (2999, 600), (1000, 200))

    assert await _reverse(engine, invoice.id, 3999) == 2

    assert sorted(await _reversals(engine)) == sorted([(2999, 600, 2399), (1000, 200, 800)])


async def _reversed(engine: AsyncEngine) -> tuple[int, int, int]:
    """What the reversal lines take back in all, reinstatements subtracted."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(Earning.kind, Earning.gross_amount, Earning.commission_amount, Earning.net_amount).where(
                Earning.kind != "charge"
            )
        )
        lines = [(1 if kind == "reversal" else -1, g, c, n) for kind, g, c, n in result]
    return (
        sum(s * g for s, g, _, _ in lines),
        sum(s * c for s, _, c, _ in lines),
        sum(s * n for s, _, _, n in lines),
    )


async def test_partial_refunds_append_the_difference_and_repeats_change_nothing(engine: AsyncEngine) -> None:
    invoice, _ = await _paid_invoice(engine, (2999, 600))

    assert await _reverse(engine, invoice.id, 1000) == 1
    assert await _reversals(engine) == [(1000, 200, 800)]
    assert await _reverse(engine, invoice.id, 1500) == 1  # cumulative: 500 more, its own line
    assert await _reverse(engine, invoice.id, 1500) == 0  # a repeat books nothing

    assert sorted(await _reversals(engine)) == [(500, 100, 400), (1000, 200, 800)]
    assert await _reversed(engine) == (1500, 300, 1200)


async def test_a_lower_reversed_total_books_a_reinstatement(engine: AsyncEngine) -> None:
    invoice, _ = await _paid_invoice(engine, (2999, 600))
    await _reverse(engine, invoice.id, 2999)

    assert await _reverse(engine, invoice.id, 1000) == 1  # e.g. a won dispute gave 1999 back

    async with engine.connect() as connection:
        kinds = sorted((await connection.execute(select(Earning.kind, Earning.gross_amount))).all())
    assert kinds == [("charge", 2999), ("reinstatement", 1999), ("reversal", 2999)]
    assert await _reversed(engine) == (1000, 200, 800)


def test_reversed_gross_is_the_refunds_share_of_the_taxed_total() -> None:
    assert reversed_gross(1595, 2900, 3190) == 1450  # half the invoice, half the creator's gross
    assert reversed_gross(3190, 2900, 3190) == 2900
    assert reversed_gross(9999, 2900, 3190) == 2900
    assert reversed_gross(1, 2900, 3190) == 1  # 0.909 rounds half-up to 1
    assert reversed_gross(0, 2900, 3190) == 0
    assert reversed_gross(500, 2900, 0) == 500  # no total to scale by: the amount itself


async def test_every_reversal_line_adds_up_and_the_sum_matches_a_single_reversal(engine: AsyncEngine) -> None:
    invoice, _ = await _paid_invoice(engine, (2999, 600), (1001, 200))
    for cumulative in (1, 7, 333, 1234, 2500, 4000):
        await _reverse(engine, invoice.id, cumulative)
    async with engine.connect() as connection:
        lines = (
            await connection.execute(
                select(Earning.gross_amount, Earning.commission_amount, Earning.net_amount).where(
                    Earning.kind == "reversal"
                )
            )
        ).all()
    assert all(g == c + n and min(g, c, n) >= 0 for g, c, n in lines)
    assert await _reversed(engine) == (4000, 800, 3200)  # everything, exactly the charges


async def test_a_larger_refund_after_a_payout_netted_the_first_is_netted_from_the_next_payout(
    engine: AsyncEngine, worker_ctx: dict[str, Any], connect: tuple[FakeConnect, Any]
) -> None:
    fake, _ = connect
    res = worker_ctx["resources"]
    invoice, plans = await _paid_invoice(engine, (2999, 600))
    bob = rows.consumer("bob")
    later = rows.invoice(bob, total=5000, created_at=OLD)
    await rows.add(
        engine,
        bob,
        later,
        rows.earning(plans[0], later, "creator-1", 5000, 1000, earned_at=OLD),
        CreatorAccount(creator_id="creator-1", stripe_account_id="acct_c1", payouts_enabled=True),
    )
    await _reverse(engine, invoice.id, 1000)  # a partial refund before the first payout
    first = await pay_out_earnings(res.sessionmaker, res.stripe, res.settings, now=NOW)
    carol = rows.consumer("carol")
    third = rows.invoice(carol, total=3000, created_at=OLD)
    await rows.add(engine, carol, third, rows.earning(plans[0], third, "creator-1", 3000, 600, earned_at=OLD))

    await _reverse(engine, invoice.id, 2999)  # then the rest is refunded too
    second = await pay_out_earnings(res.sessionmaker, res.stripe, res.settings, now=NOW + timedelta(days=1))

    assert (first.paid, second.paid) == (1, 1)
    # First: 2399 + 4000 - 800 = 5599. Then carol's 2400 less the 1599 still to take back.
    assert sorted(t["amount"] for t in fake.transfers.values()) == [801, 5599]
    async with engine.connect() as connection:
        unpaid = (await connection.execute(select(Earning.id).where(Earning.status != "paid_out"))).all()
    assert unpaid == []


async def test_refund_of_a_paid_out_invoice_is_netted_from_the_next_payout(
    engine: AsyncEngine, worker_ctx: dict[str, Any], connect: tuple[FakeConnect, Any]
) -> None:
    fake, _ = connect
    res = worker_ctx["resources"]
    invoice, plans = await _paid_invoice(engine, (2999, 600))
    await rows.add(
        engine, CreatorAccount(creator_id="creator-1", stripe_account_id="acct_c1", payouts_enabled=True)
    )
    first = await pay_out_earnings(res.sessionmaker, res.stripe, res.settings, now=NOW)
    assert first.paid == 1
    bob = rows.consumer("bob")
    later = rows.invoice(bob, total=5000, created_at=OLD)
    await rows.add(engine, bob, later, rows.earning(plans[0], later, "creator-1", 5000, 1000, earned_at=OLD))

    await _reverse(engine, invoice.id, 2999)
    second = await pay_out_earnings(res.sessionmaker, res.stripe, res.settings, now=NOW + timedelta(days=1))

    assert second.paid == 1
    # 2399 paid first; then bob's 4000 net less the 2399 taken back.
    assert sorted(t["amount"] for t in fake.transfers.values()) == [1601, 2399]
