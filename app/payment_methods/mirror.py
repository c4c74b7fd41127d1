"""A Stripe card as our `payment_methods` row: the one mirror, used when a card is attached
through the API and by `billing sync`."""

from __future__ import annotations

import uuid

from app.models import PaymentMethod
from app.stripe.payment_methods import StripeCard


def card_row(consumer_id: uuid.UUID, card: StripeCard, *, is_default: bool) -> PaymentMethod:
    """A new row mirroring `card` for the consumer."""
    row = PaymentMethod(
        id=uuid.uuid4(),
        consumer_id=consumer_id,
        stripe_payment_method_id=card.id,
        type=card.type,
        is_default=is_default,
    )
    mirror_card(row, card)
    return row


def mirror_card(row: PaymentMethod, card: StripeCard) -> bool:
    """Bring the row to the card's details as Stripe holds them (a renewed card has a new expiry);
    True if any changed."""
    details = (card.brand, card.last4, card.exp_month, card.exp_year)
    if (row.brand, row.last4, row.exp_month, row.exp_year) == details:
        return False
    row.brand, row.last4, row.exp_month, row.exp_year = details
    return True
