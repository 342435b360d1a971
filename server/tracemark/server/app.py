"""Assemble and run the gRPC server: servicers, auth, health, reflection, graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tracemark.server.auth import AuthInterceptor, TokenStore
from tracemark.server.config import Settings
from tracemark.server.decoding import DecodeGuardInterceptor
from tracemark.server.runtime import Runtime
from tracemark.server.servicers.account import AccountServicer
from tracemark.server.servicers.forensics import ForensicsServicer
from tracemark.server.servicers.rewrite import RewriteServicer
from tracemark.server.servicers.teacher import TeacherServicer
from tracemark.server.teacher.base import GenerationParams, TeacherBackend
from tracemark.server.teacher.factory import build_teacher
from tracemark.v1 import (
    account_pb2,
    account_pb2_grpc,
    forensics_pb2,
    forensics_pb2_grpc,
    rewrite_pb2,
    rewrite_pb2_grpc,
    teacher_pb2,
    teacher_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name,
    rewrite_pb2.DESCRIPTOR.services_by_name["RewriteService"].full_name,
    forensics_pb2.DESCRIPTOR.services_by_name["ForensicsService"].full_name,
    account_pb2.DESCRIPTOR.services_by_name["AccountService"].full_name,
]


class TracemarkServer:
    """A tracemark server. ``start()`` binds and serves at once; the teacher loads in the background and
    health reports NOT_SERVING until it has answered a warm-up request."""

    def __init__(
        self,
        settings: Settings,
        *,
        teacher: TeacherBackend | None = None,
        tokens: TokenStore | None = None,
        open_ledger: bool = True,
    ) -> None:
        self.settings = settings
        self.runtime = Runtime(settings)
        self._preloaded_teacher = teacher
        if tokens is None:
            path = settings.auth.tokens_file
            tokens = TokenStore.load(path) if path else TokenStore()
        self.tokens = tokens
        self.runtime.load_plugins()
        if open_ledger:
            self.runtime.open_ledger()
            # Every customer account is a candidate in attribution, even before its first trace
            # (compliance and admin accounts receive no traces).
            for account in tokens.accounts_with_role("customer"):
                self.runtime.issuer.ensure_account(account)
        s = settings.server
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", max(s.max_message_bytes, 4 << 20)),
            ("grpc.so_reuseport", 0),
        ]
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=s.max_workers, thread_name_prefix="rpc"),
            # Decoding first (outermost): undecodable bytes are INVALID_ARGUMENT for everyone, never INTERNAL.
            interceptors=[
                DecodeGuardInterceptor(),
                AuthInterceptor(tokens, allow_anonymous=settings.auth.allow_anonymous),
            ],
            options=options,
        )
        teacher_pb2_grpc.add_TeacherServiceServicer_to_server(TeacherServicer(self.runtime), self.grpc_server)
        rewrite_pb2_grpc.add_RewriteServiceServicer_to_server(RewriteServicer(self.runtime), self.grpc_server)
        forensics_pb2_grpc.add_ForensicsServiceServicer_to_server(
            ForensicsServicer(self.runtime), self.grpc_server
        )
        account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(self.runtime), self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port: int | None = None
        self._loader: threading.Thread | None = None

    def _set_health(self, status) -> None:
        for name in ["", *SERVICE_NAMES]:
            self.health.set(name, status)

    def _load_teacher(self) -> None:
        try:
            teacher = self._preloaded_teacher
            if teacher is None:
                teacher = build_teacher(self.settings.teacher)
            self.runtime.attach_teacher(teacher)
            warm = [{"role": "user", "content": "1+1?"}]
            self.runtime.queue.generate(warm, GenerationParams(max_new_tokens=2), timeout=600)
            info = teacher.info
            log.info(
                "teacher ready: model=%s backend=%s quantization=%s%s device=%s dtype=%s bytes=%d",
                info.model_id,
                info.backend,
                info.quantization,
                f" ({info.quantization_note})" if info.quantization_note else "",
                info.device,
                info.dtype,
                info.parameter_bytes,
            )
            self.runtime.ready.set()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
        except Exception as exc:
            self.runtime.load_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.error("teacher failed to load: %s", self.runtime.load_error)

    def start(self) -> int:
        """Bind, start serving, begin loading the teacher; return the bound port."""
        s = self.settings.server
        if s.tls_cert and s.tls_key:
            creds = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())])
            self.port = self.grpc_server.add_secure_port(s.address, creds)
        else:
            self.port = self.grpc_server.add_insecure_port(s.address)
        if not self.port:
            raise OSError(f"could not bind {s.address}")
        self.grpc_server.start()
        log.info("listening on port %d (tls=%s)", self.port, bool(s.tls_cert and s.tls_key))
        self._loader = threading.Thread(target=self._load_teacher, name="teacher-loader", daemon=True)
        self._loader.start()
        return self.port

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the teacher is warm (True) or failed/timed out (False)."""
        if self._loader is not None:
            self._loader.join(timeout)
        return self.runtime.ready.is_set()

    def stop(self, grace: float | None = None) -> None:
        """Refuse new RPCs, give in-flight ones ``grace`` seconds, then release the teacher."""
        grace = self.settings.server.grace_period_s if grace is None else grace
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_server.stop(grace).wait()
        if self.runtime.queue is not None:
            self.runtime.queue.close(timeout=grace)
        if self.runtime.teacher is not None:
            self.runtime.teacher.close()
        if self.runtime.engine is not None:
            self.runtime.engine.dispose()
        self.runtime.close()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT, then shut down gracefully."""
        done = threading.Event()

        def _handle(signum, frame):
            log.info("signal %d: shutting down (grace %.1fs)", signum, self.settings.server.grace_period_s)
            done.set()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)
        done.wait()
        self.stop()
