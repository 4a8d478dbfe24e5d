"""The agents as a cluster: `Cluster` (one typed handle per agent; launch, watch, stop, reap),
the bus it owns (one ROUTER, reliable delivery), the launchers, and the resource sampler."""
