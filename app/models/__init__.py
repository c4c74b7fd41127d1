"""SQLAlchemy tables, one module per aggregate. Importing this package registers them all."""

from app.models.consumer import Consumer, PaymentMethod
from app.models.custom_invoice import CustomInvoice
from app.models.earning import Earning, InvoiceReversal
from app.models.event import StripeEvent
from app.models.idempotency import IdempotencyKey
from app.models.invoice import Invoice, InvoiceNumberSequence
from app.models.job_run import JobRun
from app.models.marketplace_event import MarketplaceEvent, MarketplaceEventDelivery
from app.models.outbox import OutboxMessage
from app.models.payout import CreatorAccount, Payout
from app.models.plan import Api, PricingPlan, PricingPlanVersion
from app.models.reconcile import ReconcileDrift, ReconcileRun, ReconcileSeen
from app.models.subscription import Subscription
from app.models.sync_run import SyncRun
from app.models.usage import UsageDay, UsagePeriodSettlement, UsageRecord

__all__ = [
    "Api",
    "Consumer",
    "CreatorAccount",
    "CustomInvoice",
    "Earning",
    "IdempotencyKey",
    "Invoice",
    "InvoiceNumberSequence",
    "InvoiceReversal",
    "JobRun",
    "MarketplaceEvent",
    "MarketplaceEventDelivery",
    "OutboxMessage",
    "PaymentMethod",
    "Payout",
    "PricingPlan",
    "PricingPlanVersion",
    "ReconcileDrift",
    "ReconcileRun",
    "ReconcileSeen",
    "StripeEvent",
    "Subscription",
    "SyncRun",
    "UsageDay",
    "UsagePeriodSettlement",
    "UsageRecord",
]
