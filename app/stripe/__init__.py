"""The only package that talks to Stripe."""

from app.stripe.gateway import StripeCustomer, StripeGateway, StripePrice

__all__ = ["StripeCustomer", "StripeGateway", "StripePrice"]
