"""Clients of the sibling services: the API key service and the metering service."""
