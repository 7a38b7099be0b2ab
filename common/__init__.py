"""Code every Fleet tier shares: TLS and peer identity, the guarded gRPC handler layer,
typed errors, backoff, durations, input validation."""
