"""The tracemark gRPC runtime: teacher backends, servicers, auth, health, config (``tracemark.server``)."""
