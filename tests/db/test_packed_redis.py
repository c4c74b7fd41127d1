"""The entitlement path's Redis connection packs commands in C, byte for byte as redis-py would;
its pipelined calls share one connection and still each get their own reply, or fail in time."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest
import uvloop
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

from app.db.packed_redis import PackedConnection, PipelinedRedis


def test_the_packed_connection_sends_the_same_bytes_as_redis_py() -> None:
    ours, theirs = PackedConnection(), Connection()
    assert type(ours).pack_command is not Connection.pack_command  # hiredis is installed: packed in C
    commands: list[tuple[str | int | bytes, ...]] = [
        ("EVALSHA", "a" * 40, 2, "ent:{sub:1}:period:17", "ent:{sub:1}:minute:9", 1, 2_678_460, 120),
        ("GET", "ent:key:clé-ü"),
        ("SET", b"ent:{sub:2}:snapshot", b'{"v": 1}', "EX", 300),
        ("SCRIPT LOAD", "return 1"),
    ]
    for command in commands:
        assert b"".join(ours.pack_command(*command)) == b"".join(theirs.pack_command(*command))
    assert b"".join(ours.pack_commands(commands)) == b"".join(theirs.pack_commands(commands))


async def _pipelined_scenario(redis_url: str) -> None:
    pipelined = PipelinedRedis(redis_url, timeout=5)
    key = f"pipelined-test:{uuid.uuid4().hex}"
    try:
        # 200 concurrent callers, one write per turn of the loop: each gets its own reply, in order.
        replies = await asyncio.gather(*(pipelined.call("INCR", key) for _ in range(200)))
        assert replies == list(range(1, 201))
        assert await pipelined.call_many([("INCRBY", key, 5), ("GET", key)]) == [205, b"205"]
        with pytest.raises(ResponseError):
            await pipelined.call_many([("INCR", key), ("HGET", key, "field"), ("INCR", key)])
        assert await pipelined.call("GET", key) == b"207"  # the batch's other commands still ran
        with pytest.raises(NoScriptError):
            await pipelined.call("EVALSHA", "0" * 40, 0)
    finally:
        await pipelined.call("DEL", key)
        pipelined.close()


async def _hung_scenario() -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipelined = PipelinedRedis(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(pipelined.call("PING") for _ in range(10)), return_exceptions=True)
        assert all(isinstance(o, TimeoutError) for o in outcomes)
        assert time.monotonic() - started < 1.0
        # The stuck connection was dropped: the next call opens another (and times out again).
        with pytest.raises(TimeoutError):
            await pipelined.call("PING")
        assert len(held) == 2
    finally:
        pipelined.close()
        for writer in held:
            writer.close()
        server.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pipelined_calls_each_get_their_own_reply_in_order(redis_url: str, loop: str) -> None:
    run(_pipelined_scenario(redis_url), loop)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_hung_redis_fails_every_pipelined_call_within_the_timeout(loop: str) -> None:
    run(_hung_scenario(), loop)


def test_a_refused_connection_fails_the_pipelined_call_at_once() -> None:
    async def scenario() -> None:
        pipelined = PipelinedRedis("redis://127.0.0.1:1/0", timeout=5)
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            await pipelined.call("PING")
        assert time.monotonic() - started < 1.0

    run(scenario(), "asyncio")


def run(scenario: Coroutine[Any, Any, None], loop: str) -> None:
    # Its own event loop (uvloop is what `billing api` runs on): not the test session's.
    if loop == "uvloop":
        uvloop.run(scenario)
    else:
        asyncio.run(scenario)


def test_pipelined_calls_go_to_the_urls_database(redis_url: str) -> None:
    other_db = redis_url.rsplit("/", 1)[0] + "/3"
    key = f"pipelined-db:{uuid.uuid4().hex}"

    async def scenario() -> None:
        pipelined = PipelinedRedis(other_db, timeout=5)
        plain = Redis.from_url(other_db)
        try:
            assert await pipelined.call("SET", key, "in-db-3") == b"OK"
            assert await plain.get(key) == b"in-db-3"
        finally:
            await plain.delete(key)
            await plain.aclose()
            pipelined.close()

    run(scenario(), "asyncio")
