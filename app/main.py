"""create_app(): routers, middleware, the error handlers and the lifespan's shared clients."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from arq.connections import ArqRedis
from fastapi import APIRouter, FastAPI
from redis.asyncio import ConnectionPool, Redis

from app.analytics.router import router as analytics_router
from app.auth import TokenVerifier
from app.config import Settings, get_settings
from app.consumers.router import router as consumers_router
from app.creators.router import router as creators_router
from app.db import create_engine, create_read_sessionmaker, create_sessionmaker
from app.entitlements.router import router as entitlements_router
from app.entitlements.router import spend_cap_router
from app.entitlements.service import EntitlementService
from app.health.router import router as health_router
from app.http import RequestContextMiddleware, install_error_handlers
from app.idempotency import IdempotencyMiddleware
from app.invoices.router import admin_router as admin_invoices_router
from app.invoices.router import router as invoices_router
from app.logging import configure_logging
from app.payment_methods.router import router as payment_methods_router
from app.plans.router import router as plans_router
from app.stripe import StripeGateway
from app.subscriptions.router import router as subscriptions_router
from app.webhooks.router import router as webhooks_router

API_PREFIX = "/api/v1"


def create_redis(settings: Settings) -> ArqRedis:
    """A lazily connecting client: the API starts (and stores webhooks) even while Redis is down."""
    pool = ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
    return ArqRedis(connection_pool=pool)


def create_entitlements_redis(settings: Settings) -> Redis:
    """The check path's own client: it connects within the entitlement timeout, and each call is
    bounded by it as a whole (a per-read socket timeout would cost a timer per pipelined reply)."""
    timeout = settings.entitlements_redis_timeout_seconds
    pool = ConnectionPool.from_url(settings.redis_url, socket_connect_timeout=timeout)
    return Redis(connection_pool=pool)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        http = httpx.AsyncClient(timeout=settings.sibling_timeout_seconds)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        app.state.read_sessionmaker = create_read_sessionmaker(engine)
        app.state.redis = create_redis(settings)
        app.state.http = http
        app.state.verifier = TokenVerifier(settings, http)
        app.state.stripe = StripeGateway(settings)
        app.state.draining = False
        app.state.entitlements_redis = create_entitlements_redis(settings)
        app.state.entitlements = EntitlementService(
            app.state.entitlements_redis, app.state.read_sessionmaker, settings
        )
        # Everything loaded so far lives as long as the process: keep the collector off it,
        # so full collections stay short and do not show up as latency spikes.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            app.state.draining = True
            await app.state.redis.aclose()
            await app.state.entitlements_redis.aclose()
            await http.aclose()
            await engine.dispose()

    app = FastAPI(
        title="billing",
        version="0.1.0",
        summary="Payments and subscriptions of the API marketplace",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(IdempotencyMiddleware)  # inside RequestContextMiddleware: needs the request id
    app.add_middleware(RequestContextMiddleware)

    api = APIRouter(prefix=API_PREFIX)
    api.include_router(consumers_router)
    api.include_router(plans_router)
    api.include_router(payment_methods_router)
    api.include_router(subscriptions_router)
    api.include_router(invoices_router)
    api.include_router(admin_invoices_router)
    api.include_router(analytics_router)
    api.include_router(creators_router)
    api.include_router(entitlements_router)
    api.include_router(spend_cap_router)
    app.include_router(api)
    app.include_router(health_router)
    app.include_router(webhooks_router)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn's factory for `billing api`."""
    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
