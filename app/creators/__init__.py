"""Creators' Stripe Connect accounts: onboarding and status."""
