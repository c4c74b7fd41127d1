"""Keyset pagination cursors: opaque to clients, `(created_at, id)` of the last row inside."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Protocol

from app.errors import InvalidField


class Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


def encode_cursor(last: Keyed) -> str:
    """The cursor of the page that follows `last` (newest-first order by created_at, id)."""
    raw = f"{last.created_at.isoformat()}|{last.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """`(created_at, id)` from a cursor we returned; anything else is a 422 naming `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, last_id = raw.split("|")
        parsed = datetime.fromisoformat(created_at)
        if parsed.tzinfo is None:
            raise ValueError("naive timestamp")
        return parsed, uuid.UUID(last_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidField("cursor", "not a cursor from a previous page") from None
