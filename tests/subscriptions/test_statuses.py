"""Subscription statuses: one enum (app.models.subscription) and the sets the rules read."""

from __future__ import annotations

import re
from typing import get_args

from sqlalchemy import Table

from app.events.schemas import SubscriptionData
from app.models import Subscription
from app.models.subscription import (
    KEYED,
    LIVE_STATUSES,
    STRIPE_STATUS,
    SUBSCRIPTION_STATUSES,
    TERMINAL,
    SubscriptionStatus,
)
from app.subscriptions import schemas


def test_every_status_set_is_made_of_the_enum_statuses() -> None:
    known = set(SubscriptionStatus)
    assert set(SUBSCRIPTION_STATUSES) == known
    assert known >= set(LIVE_STATUSES)
    assert known >= TERMINAL
    assert known >= KEYED
    assert known >= set(STRIPE_STATUS.values())


def test_an_ended_subscription_neither_holds_a_key_nor_its_place_on_the_api() -> None:
    assert not TERMINAL & KEYED
    assert not TERMINAL & set(LIVE_STATUSES)
    assert set(LIVE_STATUSES) | TERMINAL == set(SubscriptionStatus)
    assert set(LIVE_STATUSES) >= KEYED


def test_the_http_and_event_schemas_list_exactly_the_enum_statuses() -> None:
    assert set(get_args(schemas.SubscriptionStatus)) == set(SubscriptionStatus)
    event_status = SubscriptionData.model_fields["status"].annotation
    assert set(get_args(event_status)) == set(SubscriptionStatus)


def test_the_one_live_subscription_index_covers_exactly_the_live_statuses() -> None:
    table = Subscription.__table__
    assert isinstance(table, Table)
    index = next(i for i in table.indexes if i.name == "uq_subscriptions_one_live_per_api")
    where = str(index.dialect_options["postgresql"]["where"])
    assert set(re.findall(r"'(\w+)'", where)) == set(LIVE_STATUSES)
