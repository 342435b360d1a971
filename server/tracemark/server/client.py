"""Client helpers: a channel with bearer-token auth (and optional TLS) and typed stubs."""

from __future__ import annotations

from pathlib import Path

import grpc
from tracemark.v1 import account_pb2_grpc, forensics_pb2_grpc, rewrite_pb2_grpc, teacher_pb2_grpc


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, context, callback):
        callback((("authorization", f"Bearer {self._token}"),), None)


def open_channel(
    address: str,
    *,
    token: str | None = None,
    tls: bool = False,
    ca_file: Path | None = None,
    max_message_bytes: int = 4 << 20,
) -> grpc.Channel:
    """A channel to ``address``. Over plaintext the token travels as call metadata (fine for localhost);
    use TLS across hosts."""
    options = [("grpc.max_receive_message_length", max_message_bytes)]
    if tls:
        creds = grpc.ssl_channel_credentials(ca_file.read_bytes() if ca_file else None)
        if token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(_BearerToken(token))
            )
        return grpc.secure_channel(address, creds, options=options)
    channel = grpc.insecure_channel(address, options=options)
    if token:
        channel = grpc.intercept_channel(channel, _MetadataInterceptor(token))
    return channel


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details):
        return _Details(details, [*(details.metadata or []), self._metadata])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class Stubs:
    """The tracemark.v1 stubs over one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.teacher = teacher_pb2_grpc.TeacherServiceStub(channel)
        self.rewrite = rewrite_pb2_grpc.RewriteServiceStub(channel)
        self.forensics = forensics_pb2_grpc.ForensicsServiceStub(channel)
        self.account = account_pb2_grpc.AccountServiceStub(channel)

    def close(self) -> None:
        self.channel.close()
