"""`billing simulate`: a seeded marketplace played through our API, webhooks and worker, with faults,
checked to the cent against an oracle that knows only the scenario."""
