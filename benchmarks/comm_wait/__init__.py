"""bench-comm-wait: what the exchange's tracer counts as waited, blocking against overlapped."""
