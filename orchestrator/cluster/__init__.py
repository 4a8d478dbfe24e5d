"""The agents as a cluster: the bus (one ROUTER, reliable delivery), the supervisor (launch,
watch, stop, reap), the launchers, and the resource sampler."""
