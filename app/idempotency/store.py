"""The `idempotency_keys` table: claim a key, then complete it with the answer or release it.

Each step is its own short transaction on the engine, outside the route's request transaction:
the claim must be visible to a concurrent duplicate before the route runs (so it gets 409), and
the answer is only known once the route's transaction has committed.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.base import utcnow
from app.models import IdempotencyKey

KEY_TTL = timedelta(hours=24)
# A claim without an answer this old is taken to be abandoned (its process died between the
# route's commit and storing the answer); a retry may then run the request again.
IN_FLIGHT_LEASE = timedelta(minutes=2)


def request_fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Claimed:
    """This request owns the key: run it, then complete or release the claim."""

    claim_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Existing:
    """Another request holds the key, finished (`status` set) or still in flight."""

    request_hash: str
    status: int | None
    body: Any


class IdempotencyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(
        self, user_id: str, key: str, method: str, path: str, request_hash: str
    ) -> Claimed | Existing:
        """Take the key (new, expired or abandoned), or describe who holds it."""
        for _ in range(3):
            now = utcnow()
            claim_id = uuid.uuid4()
            values = {
                "id": claim_id,
                "method": method,
                "path": path[:512],
                "request_hash": request_hash,
                "response_status": None,
                "response_body": None,
                "created_at": now,
                "expires_at": now + KEY_TTL,
            }
            table = IdempotencyKey.__table__
            statement = (
                insert(IdempotencyKey)
                .values(user_id=user_id, key=key, **values)
                .on_conflict_do_update(
                    constraint="uq_idempotency_keys_user_key",
                    set_=values,
                    where=(table.c.expires_at <= now)
                    | (table.c.response_status.is_(None) & (table.c.created_at < now - IN_FLIGHT_LEASE)),
                )
                .returning(IdempotencyKey.id)
            )
            async with self._engine.begin() as connection:
                if (await connection.execute(statement)).scalar_one_or_none() is not None:
                    return Claimed(claim_id)
                row = (
                    await connection.execute(
                        select(
                            IdempotencyKey.request_hash,
                            IdempotencyKey.response_status,
                            IdempotencyKey.response_body,
                        ).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
                    )
                ).one_or_none()
            if row is not None:
                return Existing(request_hash=row[0], status=row[1], body=row[2])
            # Released between our insert and our read: try again.
        raise RuntimeError("idempotency key kept changing hands")

    async def complete(self, claim_id: uuid.UUID, status: int, body: Any) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == claim_id)
                .values(response_status=status, response_body=body)
            )

    async def release(self, claim_id: uuid.UUID) -> None:
        """Forget a claim whose request failed, so the client may retry with the same key."""
        async with self._engine.begin() as connection:
            await connection.execute(delete(IdempotencyKey).where(IdempotencyKey.id == claim_id))
