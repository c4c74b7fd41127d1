"""The `idempotency_keys` table: claim a key, then complete it with the answer or release it.

Each step is one autocommitted statement, outside the route's request transaction:
the claim must be visible to a concurrent duplicate before the route runs (so it gets 409), and
the answer is only known once the route's transaction has committed.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, Uuid, bindparam, column, delete, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app import clock
from app.models import IdempotencyKey

KEY_TTL = timedelta(hours=24)
# A claim without an answer this old is taken to be abandoned (its process died between the
# route's commit and storing the answer); a retry may then run the request again.
IN_FLIGHT_LEASE = timedelta(minutes=2)

# Each step is one autocommitted statement, built once (building it per call cost about as much
# as running it), that turns off synchronous commit for itself (a WAL flush wait halved each
# statement's time). What that risks is small: the claim reaches disk with the route's own
# synchronous commit, and an answer lost in a database crash leaves an unanswered claim, which a
# retry takes over after IN_FLIGHT_LEASE.
# The claim takes the key when it is free, expired or abandoned, and reads who holds it otherwise.
_CLAIM = text(
    """
    WITH claimed AS (
        INSERT INTO idempotency_keys
            (id, user_id, key, method, path, request_hash, created_at, expires_at)
        VALUES (:claim_id, :user_id, :key, :method, :path, :request_hash, :now, :expires_at)
        ON CONFLICT ON CONSTRAINT uq_idempotency_keys_user_key DO UPDATE SET
            id = excluded.id, method = excluded.method, path = excluded.path,
            request_hash = excluded.request_hash, response_status = NULL, response_body = NULL,
            created_at = excluded.created_at, expires_at = excluded.expires_at
        WHERE idempotency_keys.expires_at <= :now
           OR (idempotency_keys.response_status IS NULL AND idempotency_keys.created_at < :abandoned_before)
        RETURNING id
    )
    SELECT (SELECT id FROM claimed) AS claim_id, k.request_hash, k.response_status, k.response_body
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
    LEFT JOIN idempotency_keys AS k ON k.user_id = :user_id AND k.key = :key
    """
).columns(
    column("claim_id", Uuid()),
    column("request_hash", String()),
    column("response_status", Integer()),
    column("response_body", JSONB()),
)
_COMPLETE = text(
    """
    UPDATE idempotency_keys SET response_status = :status, response_body = :body
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
    WHERE idempotency_keys.id = :claim_id
    """
).bindparams(bindparam("body", type_=JSONB()))
_RELEASE = text(
    """
    DELETE FROM idempotency_keys
    USING (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
    WHERE idempotency_keys.id = :claim_id
    """
)


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
        # One statement per step, committed on its own: no BEGIN/COMMIT round trips.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def claim(
        self, user_id: str, key: str, method: str, path: str, request_hash: str
    ) -> Claimed | Existing:
        """Take the key (new, expired or abandoned), or describe who holds it: one statement."""
        for _ in range(3):
            now = clock.now()
            params = {
                "claim_id": uuid.uuid4(),
                "user_id": user_id,
                "key": key,
                "method": method,
                "path": path[:512],
                "request_hash": request_hash,
                "now": now,
                "expires_at": now + KEY_TTL,
                "abandoned_before": now - IN_FLIGHT_LEASE,
            }
            async with self._engine.connect() as connection:
                row = (await connection.execute(_CLAIM, params)).one()
            if row.claim_id is not None:
                return Claimed(row.claim_id)
            if row.request_hash is not None:
                return Existing(
                    request_hash=row.request_hash, status=row.response_status, body=row.response_body
                )
            # Held by a transaction that committed after our snapshot, or released meanwhile.
        raise RuntimeError("idempotency key kept changing hands")

    async def complete(self, claim_id: uuid.UUID, status: int, body: Any) -> None:
        async with self._engine.connect() as connection:
            await connection.execute(_COMPLETE, {"claim_id": claim_id, "status": status, "body": body})

    async def release(self, claim_id: uuid.UUID) -> None:
        """Forget a claim whose request failed, so the client may retry with the same key."""
        async with self._engine.connect() as connection:
            await connection.execute(_RELEASE, {"claim_id": claim_id})


async def purge_expired(session: AsyncSession, now: datetime) -> int:
    """Delete the stored answers whose window ended before `now`; returns how many."""
    result = await session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)
