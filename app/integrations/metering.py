"""Client of the metering service: live call counts of a subscription for a period."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx

from app.config import Settings

log = logging.getLogger("app.integrations.metering")

# A user request waits at most about ATTEMPTS * timeout + the backoff for the live count.
ATTEMPTS = 2
BACKOFF_SECONDS = 0.1
# Counts are stored as 64-bit integers; a count outside them is a broken answer, not usage.
MAX_COUNT = 2**63 - 1


class MeteringUnavailable(Exception):
    """The metering service did not answer in time or answered an error."""


def _count(value: Any) -> int:
    count = int(value)
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"call count out of range: {count}")
    return count


@dataclass(frozen=True, slots=True)
class LiveUsage:
    total_calls: int
    successful_calls: int
    failed_calls: int


class MeteringClient:
    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self._http = http
        self._base = settings.metering_service_url
        # Half the sibling budget per attempt, so two attempts stay within "a couple of seconds".
        self._timeout = settings.sibling_timeout_seconds / ATTEMPTS

    async def subscription_usage(self, subscription_id: uuid.UUID, start: date, end: date) -> LiveUsage:
        """Calls of the subscription from `start` to `end` (inclusive days); retries once on failure."""
        url = f"{self._base}/api/v1/usage/subscription/{subscription_id}"
        params = {"start": start.isoformat(), "end": end.isoformat()}
        last_error: Exception | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(BACKOFF_SECONDS * attempt)
            try:
                response = await self._http.get(url, params=params, timeout=self._timeout)
                if response.status_code == 404:
                    return LiveUsage(0, 0, 0)  # no calls recorded yet
                response.raise_for_status()
                summary = response.json()["summary"]
                return LiveUsage(
                    total_calls=_count(summary["total_calls"]),
                    successful_calls=_count(summary.get("successful_calls", 0)),
                    failed_calls=_count(summary.get("failed_calls", 0)),
                )
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                last_error = exc
        log.warning("metering unavailable", extra={"subscription_id": str(subscription_id)})
        raise MeteringUnavailable(str(last_error))
