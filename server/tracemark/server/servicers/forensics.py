"""ForensicsService: investigations, evidence reports."""

from __future__ import annotations

from tracemark.server.runtime import Runtime
from tracemark.v1 import forensics_pb2_grpc


class ForensicsServicer(forensics_pb2_grpc.ForensicsServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
