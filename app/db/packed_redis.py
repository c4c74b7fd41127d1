"""The entitlement path's Redis: commands packed by hiredis (C), and, for the check and track
calls, written together with those of every concurrent caller.

redis-py's asyncio connection packs every argument in Python; on the check and track path that
packing costs more than Redis itself. hiredis, whose reply parser redis-py already uses, packs
the same RESP bytes.

`PipelinedRedis` goes further for the calls made on every check: redis-py checks a connection
out of its pool per command (a lock, a liveness probe that raises and catches a timeout) and
writes each command in its own system call, which costs a check several times what Redis spends
on its script. Here the commands issued in one turn of the event loop go out in one write on one
connection, and the replies (Redis answers in order) resolve the callers' futures in that order,
parsed by hiredis: what Redis clients call implicit pipelining. Every batch is bounded by the
timeout as a whole: one timer per batch, not one per command. A batch still unanswered then
fails, with every command in flight, and the connection is dropped (the next call opens a new
one), so a hung Redis costs each caller at most the timeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis._parsers import BaseParser
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection, parse_url
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.typing import EncodableT
from redis.utils import HIREDIS_AVAILABLE

_PACKER = HiredisRespSerializer()
# What a pipelined command's arguments may be (hiredis packs them).
Arg = str | int | float | bytes


def _pack(command: tuple[Arg, ...]) -> bytes:
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub types a 1-tuple
    return packed


class _HiredisPackedConnection(Connection):
    def pack_command(self, *args: EncodableT) -> list[bytes]:
        packed: list[bytes] = _PACKER.pack(*args)  # type: ignore[arg-type]  # redis-py types each arg as a list
        return packed


# Without hiredis (a declared dependency, so only in an odd install) the Python packer still works.
PackedConnection: type[Connection] = _HiredisPackedConnection if HIREDIS_AVAILABLE else Connection


def _error(reply: ResponseError) -> Exception:
    """An error reply as redis-py raises it (NOSCRIPT as NoScriptError, ...)."""
    error: Exception = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return error


class _Many:
    """Several commands sent together, answered by one future with all their replies."""

    __slots__ = ("expected", "future", "replies")

    def __init__(self, future: asyncio.Future[Any], expected: int) -> None:
        self.future = future
        self.expected = expected
        self.replies: list[Any] = []


_Waiter = asyncio.Future[Any] | _Many


def _future(waiter: _Waiter) -> asyncio.Future[Any]:
    return waiter.future if type(waiter) is _Many else waiter  # type: ignore[return-value]


class _Replies(asyncio.Protocol):
    """One connection's reading side: each reply resolves the oldest waiting future."""

    def __init__(self, on_lost: Any) -> None:
        self.waiting: deque[_Waiter] = deque()
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # a stream's (uvloop's is no subclass)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self.waiting[0]
            if type(waiter) is _Many:
                waiter.replies.append(reply)
                if len(waiter.replies) < waiter.expected:
                    continue
                reply = waiter.replies
            future = _future(self.waiting.popleft())
            if future.done():
                continue  # its caller gave up (the batch timed out): the reply is dropped in order
            if isinstance(reply, ResponseError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self, RedisConnectionError(f"Redis closed the connection: {exc or 'EOF'}"))


class PipelinedRedis:
    """One connection shared by all callers; see the module docstring. `call` returns a future."""

    def __init__(self, url: str, *, timeout: float) -> None:
        options = parse_url(url)
        self._host = str(options.get("host", "localhost"))
        self._port = int(options.get("port", 6379))
        self._path = options.get("path")
        self._ssl = options.get("connection_class") is SSLConnection
        self._handshake: list[tuple[Arg, ...]] = []
        password, user = options.get("password"), options.get("username")
        if password:
            self._handshake.append(("AUTH", user, password) if user else ("AUTH", password))
        if options.get("db"):
            self._handshake.append(("SELECT", options["db"]))
        self._timeout = timeout
        self._replies: _Replies | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Commands of this turn of the loop, not yet written; then batches waiting for the connection.
        self._out: list[bytes] = []
        self._queued: list[_Waiter] = []
        self._unsent: list[tuple[bytes, list[_Waiter]]] = []

    def call(self, *args: Arg) -> asyncio.Future[Any]:
        """Send one command with the others of this turn of the event loop; its reply, undecoded."""
        future = self._future()
        self._queue(_pack(args), future)
        return future

    async def call_many(self, commands: list[tuple[Arg, ...]]) -> list[Any]:
        """Send the commands together (one write, one future); their replies in order, or the
        first error reply raised once all are in (every command still ran)."""
        if not commands:
            return []
        future = self._future()
        self._queue(b"".join([_pack(command) for command in commands]), _Many(future, len(commands)))
        replies: list[Any] = await future
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise _error(reply)
        return replies

    def _future(self) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None and not self._loop.is_closed():
                self._drop(RedisConnectionError("event loop changed"))
            # A closed loop's connection and callers are gone with it: nothing left to touch.
            self._replies, self._connecting, self._unsent = None, None, []
            self._out, self._queued = [], []
            self._loop = loop
        return loop.create_future()

    def _queue(self, packed: bytes, waiter: _Waiter) -> None:
        if not self._out:
            assert self._loop is not None  # noqa: S101  (set by _future)
            self._loop.call_soon(self._flush)
        self._out.append(packed)
        self._queued.append(waiter)

    def _flush(self) -> None:
        if not self._queued:
            return  # dropped with the event loop that scheduled this
        data, batch = b"".join(self._out), self._queued
        self._out, self._queued = [], []
        assert self._loop is not None  # noqa: S101  (set by the call that scheduled this)
        last = _future(batch[-1])
        timer = self._loop.call_later(self._timeout, self._expire, last)
        last.add_done_callback(lambda _f: timer.cancel())
        replies = self._replies
        if replies is not None and replies.transport is not None and not replies.transport.is_closing():
            replies.waiting.extend(batch)
            replies.transport.write(data)
            return
        self._unsent.append((data, batch))
        if self._connecting is None:
            self._connecting = self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        assert self._loop is not None  # noqa: S101
        try:
            if self._path:
                _t, replies = await self._loop.create_unix_connection(
                    lambda: _Replies(self._lost), str(self._path)
                )
            else:
                _t, replies = await self._loop.create_connection(
                    lambda: _Replies(self._lost),
                    self._host,
                    self._port,
                    ssl=ssl.create_default_context() if self._ssl else None,
                )
            assert replies.transport is not None  # noqa: S101
            try:
                for command in self._handshake:
                    answer: asyncio.Future[Any] = self._loop.create_future()
                    replies.waiting.append(answer)
                    replies.transport.write(_pack(command))
                    await answer
            except BaseException:
                replies.transport.close()
                raise
        except (OSError, RedisConnectionError, ResponseError) as exc:
            self._connecting = None
            self._fail_unsent(exc)
            return
        self._connecting = None
        self._replies = replies
        for data, batch in self._unsent:
            replies.waiting.extend(batch)
            replies.transport.write(data)
        self._unsent = []

    def _fail_unsent(self, exc: BaseException) -> None:
        for _data, batch in self._unsent:
            for waiter in batch:
                future = _future(waiter)
                if not future.done():
                    future.set_exception(exc)
        self._unsent = []

    def _expire(self, last: asyncio.Future[Any]) -> None:
        if not last.done():
            self._drop(TimeoutError(f"Redis did not answer within {self._timeout} s"))

    def _lost(self, replies: _Replies, exc: Exception) -> None:
        if replies is self._replies:
            self._replies = None
        self._fail(replies, exc)

    @staticmethod
    def _fail(replies: _Replies, exc: BaseException) -> None:
        while replies.waiting:
            future = _future(replies.waiting.popleft())
            if not future.done():
                future.set_exception(exc)

    def _drop(self, exc: BaseException) -> None:
        """Fail everything in flight and close the connection (the next call opens another)."""
        replies, self._replies = self._replies, None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self._fail_unsent(exc)
        if replies is not None:
            self._fail(replies, exc)
            if replies.transport is not None:
                replies.transport.close()

    def close(self) -> None:
        self._drop(RedisConnectionError("closed"))


class EntitlementsRedis(Redis):
    """The check path's client: redis-py for everything, plus `pipelined` for the hot calls."""

    def __init__(self, connection_pool: ConnectionPool, pipelined: PipelinedRedis) -> None:
        super().__init__(connection_pool=connection_pool)
        self.pipelined = pipelined

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        self.pipelined.close()
        await super().aclose(close_connection_pool)
