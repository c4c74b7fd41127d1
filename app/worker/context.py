"""What every job receives: `job_context(ctx)` turns arq's ctx dict into one typed object.

arq calls a job with its ctx dict (`redis`, `job_id`, `job_try`, and the `resources` our start-up
put there); a job reads it only through `job_context`, never by string keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from app.resources import Resources

RESOURCES = "resources"


@dataclass(frozen=True)
class JobContext:
    resources: Resources
    # arq's own pool (None when a job runs outside a worker, e.g. a command calling it directly).
    redis: ArqRedis | None
    job_id: str | None
    job_try: int


def job_context(ctx: dict[str, Any]) -> JobContext:
    """The typed view of arq's ctx for a job."""
    resources: Resources = ctx[RESOURCES]
    return JobContext(
        resources=resources,
        redis=ctx.get("redis"),
        job_id=ctx.get("job_id"),
        job_try=int(ctx.get("job_try") or 1),
    )
