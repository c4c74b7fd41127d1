"""The one mapping from Stripe subscription state to ours: ordering, terminal states, key intents."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.models import Subscription
from app.outbox.service import Outbox
from app.stripe.subscriptions import StripeSubscriptionState
from app.subscriptions.lifecycle import apply_stripe_state


class RecordingOutbox(Outbox):
    def __init__(self) -> None:
        super().__init__(session=None, redis=None)  # type: ignore[arg-type]
        self.intents: list[str] = []
        self.events: list[str] = []

    async def create_api_key(self, subscription: Subscription) -> None:
        self.intents.append("create")

    async def revoke_api_key(self, subscription: Subscription) -> None:
        self.intents.append("revoke")

    async def publish_event(
        self, subscription: Subscription, type: str, dedupe: str, payload: dict[str, Any] | None = None
    ) -> None:
        self.events.append(type)


def _subscription(status: str = "incomplete") -> Subscription:
    return Subscription(id=uuid.uuid4(), status=status, api_id="a", cancel_at_period_end=False)


def _state(status: str, **extra: Any) -> StripeSubscriptionState:
    payload = {
        "id": "sub_1",
        "status": status,
        "customer": "cus_1",
        "items": {"data": [{"id": "si_1", "price": {"id": "price_1"}, "current_period_start": 1_700_000_000,
                            "current_period_end": 1_702_592_000}]},
    } | extra  # fmt: skip
    return StripeSubscriptionState.from_payload(payload)


async def test_activation_requests_one_key() -> None:
    outbox, subscription = RecordingOutbox(), _subscription()
    assert await apply_stripe_state(outbox, subscription, _state("active"), observed_at=10)
    assert not await apply_stripe_state(outbox, subscription, _state("active"), observed_at=10)
    assert subscription.status == "active"
    assert subscription.stripe_subscription_item_id == "si_1"
    assert subscription.current_period_end is not None
    assert outbox.intents == ["create"]


async def test_an_older_snapshot_never_moves_state_back() -> None:
    outbox, subscription = RecordingOutbox(), _subscription()
    await apply_stripe_state(outbox, subscription, _state("past_due"), observed_at=20)
    assert not await apply_stripe_state(outbox, subscription, _state("active"), observed_at=10)
    assert subscription.status == "past_due"


async def test_cancelled_is_final_even_for_newer_snapshots() -> None:
    outbox, subscription = RecordingOutbox(), _subscription("active")
    await apply_stripe_state(
        outbox, subscription, _state("canceled", canceled_at=1_700_000_500), observed_at=5
    )
    await apply_stripe_state(outbox, subscription, _state("active"), observed_at=50)
    assert subscription.status == "cancelled"
    assert subscription.cancelled_at is not None
    assert outbox.intents == ["revoke"]


@pytest.mark.parametrize(
    ("stripe_status", "ours"),
    [("trialing", "trial"), ("unpaid", "past_due"), ("incomplete_expired", "incomplete_expired")],
)
async def test_stripe_statuses_map_to_the_contracts(stripe_status: str, ours: str) -> None:
    subscription = _subscription()
    await apply_stripe_state(RecordingOutbox(), subscription, _state(stripe_status), observed_at=1)
    assert subscription.status == ours


def test_period_is_read_from_the_subscription_on_older_api_versions() -> None:
    state = StripeSubscriptionState.from_payload(
        {"id": "sub_2", "status": "active", "current_period_end": 1_702_592_000, "items": {"data": []}}
    )
    assert state.current_period_end is not None
    assert state.item_id is None


async def test_a_same_second_incomplete_snapshot_never_undoes_a_started_trial() -> None:
    outbox, subscription = RecordingOutbox(), _subscription("trial")
    subscription.stripe_state_at = 100
    await apply_stripe_state(outbox, subscription, _state("incomplete"), observed_at=100)
    assert subscription.status == "trial"
    assert outbox.intents == []


async def test_a_terminal_snapshot_older_than_our_own_stamp_still_ends_the_subscription() -> None:
    outbox, subscription = RecordingOutbox(), _subscription("active")
    subscription.stripe_subscription_id = "sub_1"
    subscription.stripe_state_at = 1_000  # stamped by our clock, ahead of Stripe's
    canceled = _state("canceled", canceled_at=990, ended_at=990)
    assert await apply_stripe_state(outbox, subscription, canceled, observed_at=990)
    assert subscription.status == "cancelled"
    assert subscription.stripe_state_at == 1_000
    assert outbox.intents == ["revoke"]


async def test_a_snapshot_without_trial_end_keeps_the_known_one() -> None:
    outbox, subscription = RecordingOutbox(), _subscription()
    trialing = _state("trialing", trial_end=1_701_000_000)
    await apply_stripe_state(outbox, subscription, trialing, observed_at=10)
    known = subscription.trial_end
    await apply_stripe_state(outbox, subscription, _state("trialing"), observed_at=12)
    assert known is not None
    assert subscription.trial_end == known
