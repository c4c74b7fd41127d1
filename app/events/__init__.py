"""Events for the marketplace: an outbox of facts delivered as signed webhooks, in order per subscription."""
