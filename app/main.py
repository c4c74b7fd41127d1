"""create_app(): routers, middleware, the error handlers and the lifespan's shared clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline

from app import __version__
from app.analytics.router import EarningsRoute
from app.analytics.router import router as analytics_router
from app.config import Settings, get_settings
from app.consumers.router import router as consumers_router
from app.creators.router import router as creators_router
from app.dependencies import ApiState
from app.entitlements.router import router as entitlements_router
from app.entitlements.router import spend_cap_router
from app.health.router import router as health_router
from app.http import RequestContextMiddleware, error_responses, install_error_handlers
from app.idempotency import IdempotencyMiddleware
from app.invoices.router import admin_router as admin_invoices_router
from app.invoices.router import router as invoices_router
from app.logging import configure_logging
from app.payment_methods.router import router as payment_methods_router
from app.plans.router import router as plans_router
from app.resources import freeze_startup_heap
from app.subscriptions.router import SubscriptionListRoute
from app.subscriptions.router import router as subscriptions_router
from app.validation import InputGuardMiddleware
from app.webhooks.router import StripeWebhookRoute
from app.webhooks.router import router as webhooks_router

API_PREFIX = "/api/v1"
API_DESCRIPTION = """\
Every route under `/api/v1` takes `Authorization: Bearer <JWT>`.

**Units.** `amount_*`, `subtotal`, `tax`, `total`, `gross`, `commission` and `net` fields are integers
in the currency's minor unit (cents for `usd`), with a lowercase ISO `currency` beside them. Plan
prices (`monthly_price`, `price_per_call`) are JSON numbers in major units (`29`, `0.0015`).
Days are UTC days.

**Errors.** Every status >= 400 answers `{"error", "code", "request_id"}` (plus `details` on 422);
each route lists the `code` values it can return under its error responses. A POST sent with an
`Idempotency-Key` header may also answer 409 `idempotency_key_in_use` (the first request is still
running) or 422 `idempotency_key_reused` (the key came with another body).
"""
# The tags' descriptions on /docs and in the OpenAPI document.
OPENAPI_TAGS = [
    {
        "name": "consumers",
        "description": "Register the caller as a consumer (a Stripe customer) and open the billing portal.",
    },
    {
        "name": "payment methods",
        "description": "The consumer's cards, mirrored from Stripe; the default one pays new subscriptions.",
    },
    {
        "name": "plans",
        "description": "Creators' pricing plans per API; prices are JSON numbers in major units (29 = 29.00)",
    },
    {
        "name": "entitlements",
        "description": "The gateway's check, track and cache snapshot (service token, not a consumer JWT).",
    },
    {
        "name": "subscriptions",
        "description": "Subscribe, cancel, change plan (with a preview), read the usage; minor units.",
    },
    {
        "name": "invoices",
        "description": "Invoices mirrored from Stripe, with lines and a PDF. Amounts in integer minor units.",
    },
    {
        "name": "analytics",
        "description": "A creator's usage and earnings per API over UTC days; amounts in minor units.",
    },
    {
        "name": "creators",
        "description": "Stripe Connect onboarding and status for creator payouts.",
    },
    {
        "name": "entitlements",
        "description": (
            "The gateway's questions, with a service token (not a consumer JWT): may this key call now"
            " (check, optionally counting), count calls in batches (track), and a snapshot to warm its"
            " cache. Counts are calls; spend caps are integer minor units."
        ),
    },
    {
        "name": "operations",
        "description": "Liveness, readiness and Prometheus metrics; no token needed.",
    },
    {
        "name": "webhooks",
        "description": "Stripe's webhook deliveries, verified by their Stripe-Signature header; no token.",
    },
]


# Descriptions of the path, query and header parameters that routes leave undescribed, by
# (location, name): one place instead of a copy per route.
PARAMETER_DESCRIPTIONS = {
    ("path", "consumer_id"): "A consumer id (UUID)",
    ("path", "plan_id"): "A plan id (UUID) of this API",
    ("path", "subscription_id"): "A subscription id (UUID) of the caller",
    ("path", "invoice_id"): "An invoice id (UUID) of the caller",
    ("query", "subscription_id"): "Only those of this subscription (UUID)",
    ("query", "status"): "Only those in this status",
    ("query", "cursor"): "The `next_cursor` of the previous page",
    ("query", "limit"): "Page size, 1-100 (default 20)",
    ("query", "new_pricing_plan_id"): "The plan to change to: another plan of the same API (UUID)",
    ("header", "Idempotency-Key"): (
        "Any unique string (at most 255 printable characters): a retry with the same key and body "
        "replays the first answer instead of acting twice"
    ),
}


def describe_parameters(app: FastAPI) -> None:
    """Fill in PARAMETER_DESCRIPTIONS where a route's parameter has no description of its own."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                for parameter in operation.get("parameters", []):
                    key = (parameter["in"], parameter["name"])
                    if not parameter.get("description") and key in PARAMETER_DESCRIPTIONS:
                        parameter["description"] = PARAMETER_DESCRIPTIONS[key]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# FastAPI's native OpenTelemetry off (`Settings.opentelemetry`): with it on, every request asks
# the global providers whether an SDK was configured.
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The composition root: every client of the process, read by the typed dependencies.
        state = ApiState.open(settings)
        app.state.api = state
        freeze_startup_heap()
        try:
            yield
        finally:
            state.draining = True
            await state.resources.close()

    # /docs and /redoc serve their scripts and styles from the fastapi-offline package, not a CDN.
    app = FastAPIOffline(
        title="billing",
        version=__version__,
        summary="Payments and subscriptions of the API marketplace",
        description=API_DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        swagger_ui_parameters={"validatorUrl": None},
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    install_error_handlers(app)
    app.add_middleware(IdempotencyMiddleware)  # inside RequestContextMiddleware: needs the request id
    # Bounded bodies and storable text before anything reads the body (the idempotency key included).
    app.add_middleware(
        InputGuardMiddleware,
        api_max_body=settings.api_max_body_bytes,
        webhook_max_body=settings.webhook_max_body_bytes,
    )
    app.add_middleware(RequestContextMiddleware)

    # Any route may meet a body over the limit or a stalled database (app/validation.py, app/db/).
    api = APIRouter(prefix=API_PREFIX, responses=error_responses(413, 503))
    # First: routes are matched one by one in order, and the gateway's check is the hottest path.
    api.include_router(entitlements_router)
    # Next: the earnings report's path is measured against its bare SQL (bench/analytics.py).
    api.include_router(analytics_router)
    api.include_router(consumers_router)
    api.include_router(plans_router)
    api.include_router(payment_methods_router)
    api.include_router(subscriptions_router)
    api.include_router(invoices_router)
    api.include_router(admin_invoices_router)
    api.include_router(creators_router)
    api.include_router(spend_cap_router)
    # Stripe's deliveries first: routes are matched one by one, and each router's are walked in turn.
    app.include_router(webhooks_router)
    app.include_router(api)
    app.include_router(health_router)
    # Ahead of the declared routes: the subscription list and Stripe's deliveries, answered
    # without the routing walk.
    app.router.routes.insert(0, SubscriptionListRoute(API_PREFIX))
    app.router.routes.insert(0, StripeWebhookRoute())
    # Ahead of every route: the earnings report's path, answered without the routing walk.
    app.router.routes.insert(0, EarningsRoute(API_PREFIX))
    describe_parameters(app)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn's factory for `billing api`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
