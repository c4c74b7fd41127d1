"""Redis: the clients of the API, the worker's commands and the entitlement checks, and arq's
enqueue for many jobs in one Redis round trip, for hot paths.

`ArqRedis.enqueue_job` uses WATCH / EXISTS / MULTI (three round trips on a dedicated
connection per job). This Lua script does the same atomically per job: nothing if a job or a
result with the id exists, else the serialized job with its expiry and its place in the queue.
The job is exactly what arq writes, so any arq worker runs it. One call carries a whole batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import default_queue_name, expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.exceptions import NoScriptError

from app.config import Settings
from app.db.packed_redis import Arg, EntitlementsRedis, PackedConnection, PipelinedRedis


def create_redis(settings: Settings) -> ArqRedis:
    """A lazily connecting client: the API starts (and stores webhooks) even while Redis is down."""
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0, connection_class=PackedConnection
    )
    return ArqRedis(connection_pool=pool)


def create_entitlements_redis(settings: Settings) -> EntitlementsRedis:
    """The check path's own client: it connects within the entitlement timeout, and each call is
    bounded by it as a whole (a per-read socket timeout would cost a timer per pipelined reply);
    its `pipelined` side carries the calls of every check and track batch."""
    timeout = settings.entitlements_redis_timeout_seconds
    pool = ConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=timeout, connection_class=PackedConnection
    )
    return EntitlementsRedis(pool, PipelinedRedis(settings.redis_url, timeout=timeout))


# KEYS: the queue, then each job's key and result key; ARGV: the jobs' expiry (ms), their score,
# then each job's serialized bytes and id. Returns 1 per job it enqueued, 0 per job that existed.
_ENQUEUE_UNIQUE = """
local added = {}
for i = 1, (#KEYS - 1) / 2 do
  if redis.call('exists', KEYS[2 * i], KEYS[2 * i + 1]) > 0 then
    added[i] = 0
  else
    redis.call('psetex', KEYS[2 * i], ARGV[1], ARGV[2 * i + 1])
    redis.call('zadd', KEYS[1], ARGV[2], ARGV[2 * i + 2])
    added[i] = 1
  end
end
return added
"""
_ENQUEUE_UNIQUE_SHA = hashlib.sha1(_ENQUEUE_UNIQUE.encode(), usedforsecurity=False).hexdigest()


async def enqueue_unique_many(
    redis: ArqRedis | PipelinedRedis, function: str, jobs: Sequence[tuple[str, tuple[Any, ...]]]
) -> list[bool]:
    """Enqueue `function(*args)` as job `job_id` for each (job_id, args) unless that job exists,
    all in one script call (one round trip, one command for Redis to run).

    On a `PipelinedRedis` (webhook ingest's) the call is packed by hiredis and written with the
    other commands of its turn of the event loop, bounded by that client's timeout; jobs go to
    arq's default queue, serialized as arq's default does.

    Returns, per job, whether this call enqueued it.
    """
    if not jobs:
        return []
    command = _enqueue_command(redis, function, jobs)
    try:
        added = await _execute(redis, command)
    except NoScriptError:
        # First use on this Redis (or after a restart): load the script and send again.
        await _execute(redis, ("SCRIPT", "LOAD", _ENQUEUE_UNIQUE))
        added = await _execute(redis, command)
    return [bool(flag) for flag in added]


def _enqueue_command(
    redis: ArqRedis | PipelinedRedis, function: str, jobs: Sequence[tuple[str, tuple[Any, ...]]]
) -> tuple[Arg, ...]:
    queue, serializer = default_queue_name, None
    if isinstance(redis, ArqRedis):
        queue, serializer = redis.default_queue_name or default_queue_name, redis.job_serializer
    now = timestamp_ms()
    keys: list[Arg] = [queue]
    args: list[Arg] = [expires_extra_ms, now]
    for job_id, job_args in jobs:
        keys += (job_key_prefix + job_id, result_key_prefix + job_id)
        args += (serialize_job(function, job_args, {}, None, now, serializer=serializer), job_id)
    return ("EVALSHA", _ENQUEUE_UNIQUE_SHA, len(keys), *keys, *args)


async def _execute(redis: ArqRedis | PipelinedRedis, command: tuple[Arg, ...]) -> Any:
    if isinstance(redis, PipelinedRedis):
        return await redis.call(*command)
    return await redis.execute_command(*command)  # type: ignore[no-untyped-call]
