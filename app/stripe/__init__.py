"""The only package that imports `stripe`."""

from app.stripe.catalog import StripePrice
from app.stripe.customers import StripeCustomer
from app.stripe.gateway import StripeGateway

__all__ = ["StripeCustomer", "StripeGateway", "StripePrice"]
