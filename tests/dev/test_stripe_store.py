"""The emulator's per-kind store index answers every listing exactly as localstripe's scan does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from localstripe import resources

from app.dev.stripe_store import install_store_index, objects_of


def _scanned(kind: str) -> list[Any]:
    """localstripe's own listing: every value whose key starts with `kind:`, in store order."""
    return [value for key, value in dict.items(resources.store) if key.startswith(kind + ":")]


@pytest.fixture
def indexed_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[resources.Store]:
    for name in ("__setitem__", "__delitem__", "clear", "update"):
        monkeypatch.setattr(resources.Store, name, getattr(resources.Store, name))
    monkeypatch.setattr(resources.StripeObject, "_api_list_all", resources.StripeObject._api_list_all)
    monkeypatch.setattr(resources.Store, "dump_to_disk", lambda store: None)
    monkeypatch.setattr(resources, "schedule_webhook", lambda event: None)  # no emulator: nothing to post
    saved = dict(resources.store)
    install_store_index()
    resources.store.clear()
    yield resources.store
    resources.store.clear()
    resources.store.update(saved)


def test_every_kind_lists_what_a_scan_of_the_store_lists_in_the_same_order(
    indexed_store: resources.Store,
) -> None:
    customers = [resources.Customer() for _ in range(4)]
    indexed_store["meter_event:a"] = {"identifier": "a"}
    indexed_store["meter_event_forgotten:a:1"] = {"identifier": "a"}  # another kind
    indexed_store["event_log"] = []  # not an object: no kind
    indexed_store[f"customer:{customers[1].id}"] = customers[1]  # stored again: keeps its place
    del indexed_store[f"customer:{customers[2].id}"]
    indexed_store[f"customer:{customers[2].id}"] = customers[2]  # deleted and added: now last

    for kind in ("customer", "meter_event", "meter_event_forgotten", "refund"):
        assert list(objects_of(kind)) == _scanned(kind)
    listed = resources.Customer._api_list_all("/v1/customers", limit=10)._list
    assert listed == _scanned("customer") == [customers[0], customers[1], customers[3], customers[2]]

    loaded = dict(indexed_store)
    indexed_store.clear()
    assert list(objects_of("customer")) == []
    indexed_store.update(loaded)  # a store loaded from disk is indexed again
    assert list(objects_of("customer")) == _scanned("customer")


def test_a_charge_counts_only_its_own_refunds(indexed_store: resources.Store) -> None:
    card = {"number": "4242424242424242", "exp_month": "12", "exp_year": "2030", "cvc": "123"}
    method = resources.PaymentMethod(type="card", card=card)
    charges = [resources.Charge(amount=1000, currency="usd", source=method.id) for _ in range(2)]
    for charge in charges:
        charge._initialize_charge()
    resources.Refund(charge=charges[0].id, amount=300)
    resources.Refund(charge=charges[0].id, amount=200)

    assert charges[0].amount_refunded == 500
    assert charges[1].amount_refunded == 0
    assert [r.charge for r in charges[0].refunds._list] == [charges[0].id] * 2
