"""The one validation layer in front of every route: what no route can store, refused up front.

- Request bodies are bounded: above the limit (the webhook endpoint has its own, sized for
  Stripe's largest events) the answer is 413 `payload_too_large`, and the body is not read into
  memory (refused on its Content-Length, or as soon as a streamed body passes the limit).
- Text that PostgreSQL cannot store, or that no field needs, is a 422 naming the field: a NUL
  character or a lone surrogate anywhere in the path, the query or a JSON body (keys too), a
  string longer than any field takes, JSON nested deeper than any field takes.
- `bounded_json` bounds free-form JSON fields (a plan's `features`) in size and depth.

Routes keep their own schemas (types, per-field lengths, patterns); this layer only removes
what would otherwise reach the database and fail there as a 500. JWT claims are checked where
tokens are read (`app.auth.TokenVerifier`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import AfterValidator
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http import error_response

WEBHOOK_PATH = "/webhooks/stripe"
MAX_STRING_CHARS = 4096  # in a JSON body: longer than any field we store (each field has its own limit)
MAX_PARAM_CHARS = 1024  # a path segment or a query value
MAX_JSON_DEPTH = 16
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class InvalidInput(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def check_text(field: str, value: str, max_chars: int) -> None:
    """Raise InvalidInput if PostgreSQL could not store `value` or it is longer than `max_chars`."""
    if "\x00" in value:
        raise InvalidInput(field, "must not contain a NUL character")
    if len(value) > max_chars:
        raise InvalidInput(field, f"must be at most {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(field, "must be valid Unicode (no lone surrogates)") from None


def _key_name(key: str) -> str:
    return key.replace("\x00", "\\u0000")[:64]


def _walk(value: Any, field: str, depth: int, max_depth: int) -> Iterator[tuple[str, Any, int]]:
    """Every (field, key or value, depth) in a JSON document, fields named like pydantic's 422s;
    below `max_depth` only the first deeper node is yielded (the walk stays shallow)."""
    if depth > max_depth:
        yield field, None, depth
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{field}.{_key_name(key)}" if field else _key_name(key)
            yield name, key, depth + 1
            yield from _walk(item, name, depth + 1, max_depth)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{field}.{index}" if field else str(index), depth + 1, max_depth)
    else:
        yield field, value, depth


def check_json(document: Any, *, max_chars: int, max_depth: int) -> None:
    """Raise InvalidInput for the first string (key or value) or nesting that is out of bounds."""
    for field, value, depth in _walk(document, "", 0, max_depth):
        if depth > max_depth:
            raise InvalidInput(field or "body", f"is nested deeper than {max_depth} levels")
        if isinstance(value, str):
            check_text(field or "body", value, max_chars)


def bounded_json(*, max_items: int, max_depth: int, max_chars: int) -> AfterValidator:
    """A pydantic validator for a free-form JSON object: at most `max_items` keys and values in
    all, nested at most `max_depth` deep, each string at most `max_chars`."""

    def validate(value: Any) -> Any:
        for items, (field, item, depth) in enumerate(_walk(value, "", 0, max_depth), start=1):
            if items > max_items:
                raise ValueError(f"has more than {max_items} keys and values")
            if depth > max_depth:
                raise ValueError(f"{field} is nested deeper than {max_depth} levels")
            if isinstance(item, str) and len(item) > max_chars:
                raise ValueError(f"{field}: strings must be at most {max_chars} characters")
        return value

    return AfterValidator(validate)


class InputGuardMiddleware:
    """Pure ASGI: bounded bodies (413) and storable text (422) for every route, before any runs."""

    def __init__(self, app: ASGIApp, *, api_max_body: int, webhook_max_body: int) -> None:
        self.app = app
        self.api_max_body = api_max_body
        self.webhook_max_body = webhook_max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            _check_path_and_query(scope)
        except InvalidInput as exc:
            await _invalid(scope, receive, send, exc)
            return
        headers = dict(scope["headers"])
        if scope["method"] not in _BODY_METHODS and b"content-length" not in headers:
            await self.app(scope, receive, send)
            return
        webhook = scope["path"] == WEBHOOK_PATH
        limit = self.webhook_max_body if webhook else self.api_max_body
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            await _too_large(scope, receive, send, limit)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(scope, receive, send, limit)
                return
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        if body and not webhook and _is_json(headers.get(b"content-type")):
            try:
                check_json(_parse(body), max_chars=MAX_STRING_CHARS, max_depth=MAX_JSON_DEPTH)
            except InvalidInput as exc:
                await _invalid(scope, receive, send, exc)
                return
            except UnicodeDecodeError:
                await _invalid(scope, receive, send, InvalidInput("body", "must be JSON in UTF-8"))
                return
            except (ValueError, RecursionError):
                pass  # not JSON: the route answers its own 422 for a body it cannot parse
        await self.app(scope, _replay(body, receive), send)


def _check_path_and_query(scope: Scope) -> None:
    path: str = scope["path"]
    for segment in path.split("/"):
        try:
            check_text("path", segment, MAX_PARAM_CHARS)
        except InvalidInput as exc:
            raise InvalidInput(_path_param_name(scope, segment), exc.message) from None
    query = scope.get("query_string", b"")
    # Without an escape or a NUL the decoded text is the bytes themselves, none longer than the
    # whole: nothing to refuse, nothing to parse.
    if query and (len(query) > MAX_PARAM_CHARS or b"%" in query or b"\x00" in query):
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="utf-8"):
            check_text(_key_name(name), name, MAX_PARAM_CHARS)
            check_text(_key_name(name), value, MAX_PARAM_CHARS)


def _path_param_name(scope: Scope, segment: str) -> str:
    """The route's name for a refused path segment (e.g. `api_id`), else `path`.

    Found from the documented path templates, only for a request that is being refused anyway.
    """
    app = scope.get("app")
    paths = app.openapi().get("paths", {}) if app is not None and hasattr(app, "openapi") else {}
    for template in paths:
        names = _PARAM.findall(template)
        if not names:
            continue
        pattern = (
            "^" + _PARAM.sub("([^/]*)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}")) + "$"
        )
        match = re.match(pattern, scope["path"])
        if match:
            for name, value in zip(names, match.groups(), strict=True):
                if value == segment:
                    return str(name)
    return "path"


_PARAM = re.compile(r"{(\w+)}")


def _is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return True  # FastAPI reads a body without a content type as JSON
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses lone surrogates that Python's json (what the routes use) lets through.
        return json.loads(body.decode("utf-8"))


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _invalid(scope: Scope, receive: Receive, send: Send, exc: InvalidInput) -> None:
    response = error_response(
        Request(scope),
        422,
        "validation_error",
        f"Invalid request: {exc.field}: {exc.message}",
        [{"field": exc.field, "message": exc.message}],
    )
    await response(scope, receive, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = error_response(
        Request(scope), 413, "payload_too_large", f"The request body is larger than {limit} bytes"
    )
    await response(scope, receive, send)
