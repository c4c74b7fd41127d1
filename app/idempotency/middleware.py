"""Pure ASGI middleware: `Idempotency-Key` on every authenticated POST, once for all routes.

Same user + same key + same request (method, path, query, body bytes) -> the stored answer
(status and JSON body) is replayed with `Idempotent-Replayed: true`; the same key with another
request -> 422; a duplicate while the first is still running -> 409. Only 2xx answers are stored:
a failed request releases its key so it may be retried. Keys expire after 24 h.

The route keeps its own request-scoped transaction (app/db/session.py): the key is claimed in a
short transaction before the route runs and the answer stored in another after the route's
commit. If the process dies between those two commits, the claim stays unanswered; after
IN_FLIGHT_LEASE a retry runs the request again (our POSTs are themselves safe to repeat: unique
rows and Stripe idempotency keys derived from our ids).

POSTs without the header or without a bearer token (the webhook) pass straight through; other
methods cost one comparison.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.availability import MAYBE_UNAVAILABLE
from app.dependencies import api_state
from app.errors import DomainError
from app.http import error_response
from app.idempotency.store import Claimed, IdempotencyStore, request_fingerprint

log = logging.getLogger(__name__)
HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key: bytes | None = None
        authorization: bytes | None = None
        for name, value in scope["headers"]:
            if name == HEADER:
                key = value
            elif name == b"authorization":
                authorization = value
        if key is None or authorization is None or authorization[:7].lower() != b"bearer ":
            await self.app(scope, receive, send)
            return
        await self._keyed(scope, receive, send, key, authorization[7:].decode("latin-1").strip())

    async def _keyed(self, scope: Scope, receive: Receive, send: Send, raw_key: bytes, token: str) -> None:
        request = Request(scope)
        key = raw_key.decode("latin-1")
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            message = f"must be 1-{MAX_KEY_LENGTH} printable characters"
            await error_response(
                request,
                422,
                "validation_error",
                f"Invalid request: Idempotency-Key: {message}",
                [{"field": "Idempotency-Key", "message": message}],
            )(scope, receive, send)
            return
        resources = api_state(scope["app"]).resources
        try:
            principal = await resources.verifier.verify(token)
        except DomainError:
            await self.app(scope, receive, send)  # the route answers 401/403 itself
            return

        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        store = IdempotencyStore(resources.engine)
        fingerprint = request_fingerprint("POST", scope["path"], scope.get("query_string", b""), body)
        try:
            claim = await store.claim(principal.user_id, key, "POST", scope["path"], fingerprint)
        except MAYBE_UNAVAILABLE:
            log.exception("idempotency store unavailable")
            await error_response(
                request, 503, "service_unavailable", "Temporarily unavailable, retry with the same key"
            )(scope, receive, send)
            return
        if not isinstance(claim, Claimed):
            if claim.request_hash != fingerprint:
                response = error_response(
                    request,
                    422,
                    "idempotency_key_reused",
                    "This Idempotency-Key was already used with a different request",
                )
            elif claim.status is None:
                response = error_response(
                    request,
                    409,
                    "idempotency_key_in_use",
                    "A request with this Idempotency-Key is still in progress",
                )
            else:
                await _replay(claim.status, claim.body, send)
                return
            await response(scope, receive, send)
            return
        await self._run_and_store(scope, body, receive, send, store, claim)

    async def _run_and_store(
        self, scope: Scope, body: bytes, receive: Receive, send: Send, store: IdempotencyStore, claim: Claimed
    ) -> None:
        body_sent = False

        async def replay_body() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        # The answer is held back until it is stored, so an immediate retry finds it answered.
        start: Message | None = None
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        keep_claim = False
        try:
            await self.app(scope, replay_body, capture)
            if start is None:
                raise RuntimeError("the app sent no response")
            content = b"".join(parts)
            keep_claim = await _store(store, claim, start["status"], content)
        finally:
            if not keep_claim:
                await _release(store, claim)
        await send(start)
        await send({"type": "http.response.body", "body": content, "more_body": False})


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), False


async def _store(store: IdempotencyStore, claim: Claimed, status: int, content: bytes) -> bool:
    """Store a 2xx JSON answer; False (release the key) for anything else."""
    if not 200 <= status < 300:
        return False
    try:
        parsed: Any = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return False
    try:
        await store.complete(claim.claim_id, status, parsed)
    except MAYBE_UNAVAILABLE:
        # The route has committed; the claim stays unanswered until its lease runs out.
        log.exception("could not store the idempotent answer")
    return True


async def _release(store: IdempotencyStore, claim: Claimed) -> None:
    try:
        await store.release(claim.claim_id)
    except MAYBE_UNAVAILABLE:
        log.exception("could not release an idempotency key")


async def _replay(status: int, body: Any, send: Send) -> None:
    content = b"" if body is None else orjson.dumps(body)
    headers = [(b"idempotent-replayed", b"true"), (b"content-length", str(len(content)).encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})
