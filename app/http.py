"""The one error format, its handlers, and the request-id / access-log / metrics middleware."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.db.availability import MAYBE_UNAVAILABLE, unavailable
from app.errors import DomainError
from app.logging import request_id_var

log = logging.getLogger("app.http")
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()


EARLIEST_DAY, LATEST_DAY = date(2000, 1, 1), date(2100, 12, 31)


def _within_range(value: date) -> date:
    day = value.date() if isinstance(value, datetime) else value
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise ValueError(f"must be between {EARLIEST_DAY} and {LATEST_DAY}")
    return value


# Query dates: far-off days would overflow the date arithmetic behind ranges (a 500, not a 422).
Day = Annotated[date, AfterValidator(_within_range)]
DayOrTime = Annotated[date | datetime, AfterValidator(_within_range)]


def query_parameters(
    scope: Scope, declared: Mapping[str, tuple[TypeAdapter[Any], Any]], errors: list[Any] | None = None
) -> list[Any]:
    """The query parameters `declared` (name: its type and the default when absent), read and
    validated as FastAPI reads a route's declared ones, for routes answered without FastAPI's
    parameter resolution: the last of a repeated parameter counts, each bad one is a 422 naming
    it, all of them at once (after the path's `errors` already found, if given)."""
    query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    values: list[Any] = []
    errors = [] if errors is None else errors
    for name, (adapter, default) in declared.items():
        raw = query.get(name)
        try:
            values.append(default if raw is None else adapter.validate_python(raw))
        except ValidationError as exc:
            errors.extend({**e, "loc": ("query", name, *e["loc"])} for e in exc.errors(include_url=False))
    if errors:
        raise RequestValidationError(errors)
    return values


class ErrorDetail(BaseModel):
    field: str = Field(description="The invalid field, dotted (`lines.0.quantity`), or a header name")
    message: str = Field(description="What is wrong with it")


class ErrorBody(BaseModel):
    error: str = Field(description="A human-readable message, fit to show to the user")
    code: str = Field(description="A stable machine-readable code, listed per route (e.g. `not_found`)")
    request_id: str = Field(description="The request's id (also the `x-request-id` header), for support")
    details: list[ErrorDetail] | None = Field(None, description="Per-field problems, on 422 only")


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or invalid bearer token",
    402: "Payment failed",
    403: "Wrong role or not the owner",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Validation error",
    502: "Stripe or a sibling service failed",
    503: "Temporarily unavailable",
}


# The `code` values any route with that status can return (auth, validation, Stripe, the stores).
# A POST sent with an Idempotency-Key can also answer 409 `idempotency_key_in_use` and 422
# `idempotency_key_reused` (the API description says so once).
DEFAULT_CODES: dict[int, tuple[str, ...]] = {
    400: ("bad_request",),
    401: ("missing_token", "invalid_token", "token_expired"),
    402: ("card_declined", "payment_required"),
    403: ("wrong_role", "unknown_role"),
    404: ("not_found",),
    409: ("conflict",),
    422: ("validation_error",),
    502: ("stripe_unreachable", "stripe_error", "upstream_error"),
    503: ("stripe_rate_limited", "stripe_request_in_progress", "service_unavailable"),
}


def error_responses(
    *statuses: int, codes: Mapping[int, tuple[str, ...]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for a route's failures, all in the one error format, each naming its `code`s.

    `codes` adds a route's own codes to the defaults of their status. A route that calls Stripe
    (502) can also be answered 503 while Stripe rate-limits us.
    """
    extra = dict(codes or {})
    listed = [*statuses, *(s for s in extra if s not in statuses), 422]
    if 502 in listed and 503 not in listed:
        listed.append(503)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in listed:
        names = dict.fromkeys((*extra.get(status, ()), *DEFAULT_CODES.get(status, ("http_error",))))
        description = _DESCRIPTIONS.get(status, "Error") + "; `code`: " + ", ".join(f"`{n}`" for n in names)
        responses[status] = {"model": ErrorBody, "description": description}
    return responses


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id") or request_id_var.get() or "-")


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "code": code, "request_id": request_id_of(request)}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "request")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(request, exc.status, exc.code, exc.message, exc.details, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": _field_name(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
        return error_response(request, 422, "validation_error", f"Invalid request: {summary}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail), headers=exc.headers)

    async def unavailable_or_internal(request: Request, exc: Exception) -> JSONResponse:
        if unavailable(exc):
            log.warning("backing store unavailable", extra={"error": type(exc).__name__})
            return error_response(
                request, 503, "service_unavailable", "Temporarily unavailable, please retry shortly"
            )
        log.error("unhandled error", exc_info=exc)
        return error_response(request, 500, "internal_error", "Internal server error")

    for error_type in MAYBE_UNAVAILABLE:
        app.add_exception_handler(error_type, unavailable_or_internal)  # type: ignore[arg-type]

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(request, 500, "internal_error", "Internal server error")


class RequestContextMiddleware:
    """Gives every request an id (or keeps a sane incoming one), logs it once, and times it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == _REQUEST_ID_KEY:
                incoming = value.decode("latin-1")
                break
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((_REQUEST_ID_KEY, request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path_template = getattr(route, "path", "unmatched")
            metrics.observe_request(scope["method"], path_template, status, elapsed)
            if log.isEnabledFor(logging.INFO):  # the access log's fields only when it is written
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)
