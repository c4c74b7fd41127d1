"""StripeGateway: the one object through which billing talks to Stripe.

Each Stripe area has its own module of calls (customers, catalog, ...); the gateway combines
them. Every call goes through `StripeBase._call`: SDK errors become DomainErrors, timings become
metrics, and mutating calls carry idempotency keys derived from our own row ids.
"""

from __future__ import annotations

from app.stripe.account import AccountCalls
from app.stripe.catalog import CatalogCalls
from app.stripe.checkout import CheckoutCalls
from app.stripe.connect import ConnectCalls
from app.stripe.customers import CustomerCalls
from app.stripe.invoices import InvoiceCalls
from app.stripe.listing import ListingCalls
from app.stripe.meters import MeterCalls
from app.stripe.objects import ObjectCalls
from app.stripe.orphans import OrphanCalls
from app.stripe.payment_methods import PaymentMethodCalls
from app.stripe.payments import PaymentCalls
from app.stripe.reconcile import ReconcileCalls
from app.stripe.subscriptions import SubscriptionCalls
from app.stripe.test_clocks import TestClockCalls


class StripeGateway(
    CustomerCalls,
    CatalogCalls,
    PaymentMethodCalls,
    SubscriptionCalls,
    CheckoutCalls,
    ListingCalls,
    AccountCalls,
    InvoiceCalls,
    ConnectCalls,
    MeterCalls,
    ObjectCalls,
    PaymentCalls,
    OrphanCalls,
    ReconcileCalls,
    TestClockCalls,
):
    """Thin async wrapper over `stripe.StripeClient`; callers never see the SDK or its errors."""
