"""Client of the metering service (CONTRACT.md): call counts per subscription and day range."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

import httpx

from app.config import Settings
from app.errors import UpstreamError


class MeteringUnavailable(UpstreamError):
    code = "metering_unavailable"


@dataclass(frozen=True, slots=True)
class UsageSummary:
    subscription_id: str
    start: date
    end: date
    total_calls: int
    successful_calls: int
    failed_calls: int


class MeteringClient:
    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self._http = http
        self._base = settings.metering_service_url
        self._timeout = settings.sibling_timeout_seconds

    async def get_usage(self, subscription_id: uuid.UUID, start: date, end: date) -> UsageSummary:
        """Calls of the subscription from `start` to `end`, both days included (UTC).

        Raises MeteringUnavailable when the service is down, slow or answers nonsense; the
        caller retries later, so nothing is recorded from a failed answer.
        """
        try:
            response = await self._http.get(
                f"{self._base}/api/v1/usage/subscription/{subscription_id}",
                params={"start": start.isoformat(), "end": end.isoformat()},
                timeout=self._timeout,
            )
            response.raise_for_status()
            summary = response.json()["summary"]
            return UsageSummary(
                subscription_id=str(subscription_id),
                start=start,
                end=end,
                total_calls=int(summary["total_calls"]),
                successful_calls=int(summary["successful_calls"]),
                failed_calls=int(summary["failed_calls"]),
            )
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise MeteringUnavailable(f"metering service failed: {type(exc).__name__}") from exc
