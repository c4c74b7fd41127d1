"""Real-time entitlements for the marketplace's gateway: check/track, Redis counters, snapshots."""
