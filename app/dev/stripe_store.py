"""The emulator's store, indexed by kind, so that listing one kind of object reads only those.

localstripe keeps every object in one dict keyed `kind:id` and lists a kind (all refunds, all
invoice items, ...) by scanning the whole dict. Exporting a charge lists its refunds twice, and
every event, invoice and payment intent exports its charge: with a marketplace's year in the
store that scan was most of the emulator's time. The index keeps, per kind, the same objects in
the same (insertion) order as the store, so every listing answers exactly what the scan did.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from localstripe import resources
from localstripe.errors import UserError

_INDEX = "_kinds"  # the index, kept on the store instance (not an item: never listed or pickled)


def _kind(key: Any) -> str | None:
    kind, colon, _ = str(key).partition(":")
    return kind if colon else None


def _index(store: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] | None = store.__dict__.get(_INDEX)
    if found is None:
        found = {}
        for key, value in dict.items(store):
            kind = _kind(key)
            if kind is not None:
                found.setdefault(kind, {})[key] = value
        store.__dict__[_INDEX] = found
    return found


def objects_of(kind: str) -> Iterable[Any]:
    """Every stored object of `kind` (`customer`, `refund`, ...), in the store's order."""
    return list(_index(resources.store).get(kind, {}).values())


def _setitem(store: Any, key: str, value: Any) -> None:
    dict.__setitem__(store, key, value)
    kind = _kind(key)
    if kind is not None:
        _index(store).setdefault(kind, {})[key] = value
    store.dump_to_disk()


def _delitem(store: Any, key: str) -> None:
    dict.__delitem__(store, key)
    kind = _kind(key)
    if kind is not None:
        _index(store).get(kind, {}).pop(key, None)
    store.dump_to_disk()


def _clear(store: Any) -> None:
    dict.clear(store)
    store.__dict__.pop(_INDEX, None)


def _update(store: Any, *args: Any, **kwargs: Any) -> None:
    dict.update(store, *args, **kwargs)
    store.__dict__.pop(_INDEX, None)  # rebuilt from the store on the next read


def _list_all(cls: Any, /, url: Any, limit: Any = None, starting_after: Any = None, **kwargs: Any) -> Any:
    """localstripe's `StripeObject._api_list_all`, from the index instead of a scan."""
    if kwargs:
        raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
    listed = resources.List(url, limit=limit, starting_after=starting_after)
    listed._list = list(objects_of(cls.object))
    return listed


def install_store_index() -> None:
    """Index localstripe's store by kind (before the emulator serves anything)."""
    resources.Store.__setitem__ = _setitem
    resources.Store.__delitem__ = _delitem
    resources.Store.clear = _clear
    resources.Store.update = _update
    resources.StripeObject._api_list_all = classmethod(_list_all)
    resources.store.__dict__.pop(_INDEX, None)
