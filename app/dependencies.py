"""The typed FastAPI dependencies: the one place a route gets its session, clients and services.

`create_app` (`app/main.py`) opens the process's `Resources` in its lifespan and keeps them, with
the services that live as long as the process, in one `ApiState`; the aliases below read it
through `api_state` and build each service from its parts, with the sibling services it uses.
A router only names an alias (`session: DbSession`, `service: Subscriptions`). Every dependency
is `async def`: a plain `def` would cost a hop through the thread pool per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp

from app.analytics.service import AnalyticsService, EarningsReader
from app.auth import Principal, Role
from app.config import Settings
from app.consumers.service import ConsumerService
from app.creators.service import ConnectService
from app.db import read_connection
from app.db.unit_of_work import unit_of_work
from app.entitlements.auth import token_matches
from app.entitlements.service import EntitlementService, SpendCapService
from app.errors import Forbidden, Unauthorized
from app.integrations.metering import MeteringClient
from app.invoices.custom import CustomInvoiceService
from app.invoices.service import InvoiceService
from app.outbox.service import Outbox
from app.payment_methods.service import PaymentMethodService
from app.plans.service import PlanService
from app.resources import Resources
from app.stripe import StripeGateway
from app.subscriptions.service import SubscriptionService
from app.usage.service import UsageService
from app.webhooks.service import WebhookService


@dataclass
class ApiState:
    """What the API process holds while it runs."""

    resources: Resources
    # One per process: it keeps recent entitlement snapshots in memory.
    entitlements: EntitlementService
    # Set by the webhook router's lifespan (its ingest has a connection pool of its own).
    webhooks: WebhookService | None = None
    # Set on SIGTERM: `/ready` answers 503 so the load balancer stops sending requests.
    draining: bool = False
    # The gateway's service tokens, encoded once (the check compares bytes on every call).
    gateway_tokens: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not self.gateway_tokens:
            self.gateway_tokens = tuple(token.encode() for token in self.resources.settings.gateway_tokens)

    @classmethod
    def open(cls, settings: Settings) -> ApiState:
        resources = Resources.open(settings)
        entitlements = EntitlementService(resources.entitlements_redis, resources.read_sessionmaker, settings)
        return cls(resources=resources, entitlements=entitlements)


def api_state(app: FastAPI | ASGIApp) -> ApiState:
    """The one typed read of the app's state (for lifespans, middleware and the webhook hot path)."""
    state: ApiState = app.state.api  # type: ignore[union-attr]
    return state


def running_state(app: FastAPI | ASGIApp) -> ApiState | None:
    """The state, or None before the lifespan has opened it (or after it closed)."""
    state: ApiState | None = getattr(app.state, "api", None)  # type: ignore[union-attr]
    return state


async def get_api_state(request: Request) -> ApiState:
    return api_state(request.app)


async def get_resources(request: Request) -> Resources:
    return api_state(request.app).resources


State = Annotated[ApiState, Depends(get_api_state)]
Res = Annotated[Resources, Depends(get_resources)]


async def get_stripe(resources: Res) -> StripeGateway:
    return resources.stripe


Gateway = Annotated[StripeGateway, Depends(get_stripe)]


# --- sessions -----------------------------------------------------------------------------------


async def get_session(resources: Res) -> AsyncIterator[AsyncSession]:
    """One transaction per request (a unit of work): committed before the response is sent, or
    rolled back; its after-commit hooks run once it committed."""
    async with unit_of_work(resources.sessionmaker) as session:
        yield session


async def get_read_session(resources: Res) -> AsyncIterator[AsyncSession]:
    """A session for routes that only read: nothing to commit, each statement stands alone."""
    async with resources.read_sessionmaker() as session:
        yield session


# scope="function": the commit happens when the route returns, before the response goes out.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSession = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


# --- who is calling -----------------------------------------------------------------------------


class BearerPrincipal(HTTPBearer):
    """The caller from `Authorization: Bearer <JWT>` (the verifier's token cache first) and, when
    `roles` are given, the role check: one dependency per route instead of a chain of four (the
    bearer scheme of OpenAPI stays `HTTPBearer`)."""

    def __init__(self, *roles: Role) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer")
        self.roles = roles

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        credentials = await super().__call__(request)
        if credentials is None:
            raise Unauthorized("Missing bearer token", code="missing_token")
        principal = await api_state(request.app).resources.verifier.verify(credentials.credentials)
        if self.roles and principal.role not in self.roles:
            raise Forbidden(f"This action needs the role {' or '.join(self.roles)}", code="wrong_role")
        return principal


def require_role(*roles: Role) -> Any:
    return Depends(BearerPrincipal(*roles))


CurrentUser = Annotated[Principal, Depends(BearerPrincipal())]


async def get_request_key(request: Request) -> str | None:
    """The request's Idempotency-Key (checked by the idempotency middleware), if it sent one."""
    return request.headers.get("idempotency-key")


RequestKey = Annotated[str | None, Depends(get_request_key)]
CreatorOrAdmin = Annotated[Principal, require_role("creator", "admin")]
AdminOnly = Annotated[Principal, require_role("admin")]


_AUTHORIZATION = b"authorization"


class GatewayToken(HTTPBearer):
    """`Authorization: Bearer <service token>`, checked in this one dependency (a bearer scheme in
    OpenAPI): the header read straight from the request, the configured tokens encoded once per
    process (`ApiState.gateway_tokens`). It is on every entitlement check, so it does no more."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        header: bytes | None = None
        for name, value in request.scope["headers"]:
            if name == _AUTHORIZATION:
                header = value
                break
        scheme, _, credentials = (header or b"").partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials:
            raise Unauthorized("Missing service token", code="missing_token")
        if not token_matches(credentials, api_state(request.app).gateway_tokens):
            raise Unauthorized("Invalid service token", code="invalid_service_token")


GatewayCaller = Depends(
    GatewayToken(
        auto_error=False,
        scheme_name="GatewayServiceToken",
        description="A token from GATEWAY_SERVICE_TOKENS (service to service; consumer JWTs are refused)",
    )
)


# --- services -----------------------------------------------------------------------------------


def _subscriptions(resources: Resources, session: AsyncSession) -> SubscriptionService:
    consumers = ConsumerService(session, resources.stripe)
    settings = resources.settings
    usage = UsageService(resources.sessionmaker, resources.stripe, settings, resources.http)
    return SubscriptionService(
        session,
        resources.stripe,
        Outbox(session, resources.redis),
        MeteringClient(resources.http, settings),
        consumers=consumers,
        cards=PaymentMethodService(session, resources.stripe, consumers),
        automatic_tax=settings.stripe_tax_enabled,
        flush_usage=usage.flush,
    )


async def get_consumers(resources: Res, session: DbSession) -> ConsumerService:
    return ConsumerService(session, resources.stripe)


async def get_payment_methods(resources: Res, session: DbSession) -> PaymentMethodService:
    return PaymentMethodService(session, resources.stripe, ConsumerService(session, resources.stripe))


async def get_plans(resources: Res, session: DbSession) -> PlanService:
    return PlanService(session, resources.stripe)


async def get_connect(resources: Res, session: DbSession) -> ConnectService:
    return ConnectService(session, resources.stripe)


async def get_analytics(resources: Res, session: ReadSession) -> AnalyticsService:
    return AnalyticsService(session, resources.settings)


async def get_earnings_reader(request: Request) -> AsyncIterator[EarningsReader]:
    """A pooled read connection rather than a session (the report is one statement), with no
    sub-dependency: the earnings report's path does only its own work."""
    resources = api_state(request.app).resources
    async with read_connection(resources.engine) as connection:
        yield EarningsReader(connection, resources.settings)


async def get_invoices(resources: Res, session: DbSession) -> InvoiceService:
    return InvoiceService(session, resources.stripe, resources.settings)


async def get_invoice_reader(resources: Res, session: ReadSession) -> InvoiceService:
    return InvoiceService(session, resources.stripe, resources.settings)


async def get_custom_invoices(resources: Res) -> CustomInvoiceService:
    """Its own transactions: the request is committed before Stripe hears of it."""

    def reader(session: AsyncSession) -> InvoiceService:
        return InvoiceService(session, resources.stripe, resources.settings)

    return CustomInvoiceService(resources.sessionmaker, resources.stripe, resources.settings, reader)


async def get_subscriptions(resources: Res, session: DbSession) -> SubscriptionService:
    return _subscriptions(resources, session)


async def get_subscription_reader(resources: Res, session: ReadSession) -> SubscriptionService:
    return _subscriptions(resources, session)


async def get_entitlements(state: State) -> EntitlementService:
    return state.entitlements


async def get_spend_caps(resources: Res, session: DbSession) -> SpendCapService:
    return SpendCapService(session, resources.entitlements_redis)


Consumers = Annotated[ConsumerService, Depends(get_consumers)]
PaymentMethods = Annotated[PaymentMethodService, Depends(get_payment_methods)]
Plans = Annotated[PlanService, Depends(get_plans)]
Connect = Annotated[ConnectService, Depends(get_connect)]
Analytics = Annotated[AnalyticsService, Depends(get_analytics)]
Earnings = Annotated[EarningsReader, Depends(get_earnings_reader, scope="function")]
Invoices = Annotated[InvoiceService, Depends(get_invoices)]
InvoiceReader = Annotated[InvoiceService, Depends(get_invoice_reader)]
CustomInvoices = Annotated[CustomInvoiceService, Depends(get_custom_invoices)]
Subscriptions = Annotated[SubscriptionService, Depends(get_subscriptions)]
SubscriptionReader = Annotated[SubscriptionService, Depends(get_subscription_reader)]
Entitlements = Annotated[EntitlementService, Depends(get_entitlements)]
SpendCaps = Annotated[SpendCapService, Depends(get_spend_caps)]
