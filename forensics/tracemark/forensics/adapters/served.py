"""Black-box suspects behind a tracemark server (``tracemark:ADDR``: ``TeacherService.Generate``, gRPC)."""

from __future__ import annotations

import os
from typing import Any

import grpc
from tracemark.forensics.adapters.base import ENV_TOKEN, Sample, SuspectAdapter, SuspectError, _Retryable
from tracemark.v1 import teacher_pb2, teacher_pb2_grpc


class TracemarkSuspect(SuspectAdapter):
    """A model behind a tracemark server's ``TeacherService.Generate``.

    The prompt is sent as the problem; each completion is one ``Generate`` call (seeded per sample). The
    bearer token is ``token`` (the server: the variable its ``[forensics]`` config names for this endpoint;
    "" for none) or, when None (the command line), ``$TRACEMARK_TOKEN``. ``connect_to`` (a checked IP and
    port) pins the channel to that address: no re-resolution, no proxy.
    """

    kind = "tracemark"
    max_n_per_request = 1

    def __init__(
        self,
        spec: str,
        address: str,
        *,
        channel: Any = None,
        token: str | None = None,
        connect_to: tuple[str, int] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(spec, **kw)
        self.address = address
        self._channel = channel
        self._connect_to = connect_to
        self._stub = None
        self._info: dict | None = None
        token = (os.environ.get(ENV_TOKEN, "") if token is None else token).strip()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _get_stub(self) -> Any:
        if self._stub is None:
            if self._channel is None and self._connect_to is not None:
                ip, port = self._connect_to
                target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                options = [("grpc.enable_http_proxy", 0), ("grpc.default_authority", self.address)]
                self._channel = grpc.insecure_channel(target, options=options)
            elif self._channel is None:
                self._channel = grpc.insecure_channel(self.address)
            self._stub = teacher_pb2_grpc.TeacherServiceStub(self._channel)
        return self._stub

    def identity(self) -> dict:
        if self._info is None:
            self._info = {}
            try:
                info = self._get_stub().GetTeacherInfo(
                    teacher_pb2.GetTeacherInfoRequest(), timeout=self.timeout, metadata=self._metadata
                )
                self._info = {
                    "model_id": info.model_id,
                    "backend": info.backend,
                    "quantization": info.quantization,
                }
            except Exception as exc:  # identity is best-effort; queries report real failures
                self._info = {"info_error": type(exc).__name__}
        return {"kind": self.kind, "address": self.address, **self._info}

    def _sample(
        self, prompt: str, n: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> tuple[list[Sample], dict]:
        stub = self._get_stub()
        out: list[Sample] = []
        for i in range(n):
            params = teacher_pb2.GenerationParams(
                max_new_tokens=max_new_tokens,
                temperature=max(0.0, temperature),
                seed=(seed + i) % (2**63) if seed is not None else 0,
            )
            request = teacher_pb2.GenerateRequest(problem=prompt, params=params)
            try:
                reply = stub.Generate(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                retry = {
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.ABORTED,
                }
                detail = exc.details() if hasattr(exc, "details") else ""
                if code in retry:
                    raise _Retryable(f"gRPC {code.name}: {detail}") from None
                raise SuspectError(f"Generate failed: {code.name if code else 'error'}: {detail}") from None
            out.append(Sample(text=reply.trace))
        return out, {}

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None
