"""Domain errors: raised by services, turned into the contract's error body by one handler."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]
        self.details = details


class BadRequest(DomainError):
    status = 400
    code = "bad_request"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class PaymentRequired(DomainError):
    status = 402
    code = "payment_required"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class Unprocessable(DomainError):
    status = 422
    code = "validation_error"


class InvalidField(Unprocessable):
    """A rule across fields that the schema alone cannot state; names the field like a 422 does."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            f"Invalid request: {field}: {message}", details=[{"field": field, "message": message}]
        )


class UpstreamError(DomainError):
    status = 502
    code = "upstream_error"


class ServiceUnavailable(DomainError):
    status = 503
    code = "service_unavailable"
