"""Idempotency-Key on POSTs: the stored answer of a request is replayed to its retries."""

from app.idempotency.middleware import IdempotencyMiddleware

__all__ = ["IdempotencyMiddleware"]
