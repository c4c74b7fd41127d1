"""The windows a batch records or re-queues un-settle each subscription's periods from its earliest
window end: for any windows, that is the least end per subscription, whichever objects carry the
ids and in whatever order the windows come."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from app.usage.repository import _earliest_ends

START = datetime(2026, 1, 1, tzinfo=UTC)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1000)), max_size=60))
def test_each_subscription_gets_the_least_end_of_its_windows(windows: list[tuple[int, int]]) -> None:
    # A fresh UUID object per window: equal ids from separate objects are one subscription.
    pairs = [(uuid.UUID(int=n), START + timedelta(hours=hours)) for n, hours in windows]
    expected: dict[uuid.UUID, datetime] = {}
    for subscription_id, end in pairs:
        expected[subscription_id] = min(end, expected.get(subscription_id, end))
    earliest = _earliest_ends(pairs)
    assert earliest == expected
    assert all(type(key) is uuid.UUID for key in earliest)
