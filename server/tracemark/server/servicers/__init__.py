"""gRPC servicers for the tracemark.v1 services."""
