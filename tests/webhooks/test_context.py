"""What a webhook handler receives is given to it by the composition, never built from it."""

from __future__ import annotations

import dataclasses
import typing

from app.dunning.service import DunningService
from app.outbox.service import Outbox
from app.usage.service import UsageService
from app.webhooks.context import EventContext


def test_every_service_of_the_event_context_comes_from_the_composition() -> None:
    computed = [name for name, value in vars(EventContext).items() if isinstance(value, property)]
    assert computed == []
    types = typing.get_type_hints(EventContext)
    given = {field.name: types[field.name] for field in dataclasses.fields(EventContext)}
    assert {"outbox": Outbox, "usage": UsageService, "dunning": DunningService}.items() <= given.items()
