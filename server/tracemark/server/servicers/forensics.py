"""ForensicsService: investigations (streamed progress), evidence reports and their verification.

Only callers with the ``compliance`` role reach these handlers (:mod:`tracemark.server.auth`). Suspects are
built under the server's ``[forensics]`` policy (allowlisted endpoints and model roots, checked before any
connection); reports are looked up by their full id only (no prefixes, no ``latest``).
"""

from __future__ import annotations

import queue as queue_mod
import re
import threading
from collections.abc import Iterator

import grpc
from tracemark.forensics.adapters import parse_suspect
from tracemark.forensics.adapters.policy import SuspectPolicy
from tracemark.forensics.investigate import InvestigationParams, run_investigation
from tracemark.forensics.reports import load_report, verify_envelope, verify_stored_report
from tracemark.server.decoding import load_json
from tracemark.server.errors import RequestError, grpc_errors, grpc_stream_errors, invalid
from tracemark.server.runtime import Runtime
from tracemark.v1 import forensics_pb2, forensics_pb2_grpc

_VERDICT = {
    "detected": forensics_pb2.VERDICT_DETECTED,
    "not_detected": forensics_pb2.VERDICT_NOT_DETECTED,
    "inconclusive": forensics_pb2.VERDICT_INCONCLUSIVE,
}
_DONE = object()
MAX_SUSPECT_CHARS = 2048
MAX_REPORT_ID_CHARS = 64
REPORT_ID = re.compile(r"^tmr-[0-9a-f]{16}$")  # tracemark.forensics.reports.new_report_id


def verdict_enum(verdict: str) -> int:
    return _VERDICT.get(verdict, forensics_pb2.VERDICT_UNSPECIFIED)


class ForensicsServicer(forensics_pb2_grpc.ForensicsServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        settings = getattr(runtime, "settings", None)
        # no settings (a bare runtime): an empty policy, which allows no suspect
        self.policy = settings.forensics.policy() if settings is not None else SuspectPolicy()

    def _require_ledger(self) -> None:
        if self.rt.engine is None or self.rt.master is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "this server runs without a ledger")

    @grpc_stream_errors
    def Investigate(self, request, context) -> Iterator[forensics_pb2.InvestigateResponse]:
        self._require_ledger()
        # proto3 zero values mean "default"; InvestigationParams validates (InvestigationError and
        # SuspectSpecError -> INVALID_ARGUMENT)
        params = InvestigationParams(
            alpha=request.alpha or 1e-3,
            mode=request.mode or "auto",
            correction=request.correction or "holm",
            query_budget=request.query_budget or 200,
            accounts=list(request.accounts) or None,
        )
        if len(request.suspect) > MAX_SUSPECT_CHARS:
            raise invalid(f"suspect spec longer than {MAX_SUSPECT_CHARS} characters")
        # SuspectNotAllowed -> PERMISSION_DENIED, before any connection and before the ledger is touched
        suspect = parse_suspect(request.suspect, policy=self.policy)
        events: queue_mod.Queue = queue_mod.Queue()
        outcome: dict = {}

        def progress(stage: str, done: int, total: int, message: str = "") -> None:
            events.put(
                forensics_pb2.InvestigateProgress(stage=stage, done=done, total=total, message=message)
            )

        def work() -> None:
            try:
                outcome["result"] = run_investigation(
                    suspect=suspect,
                    params=params,
                    engine=self.rt.engine,
                    master=self.rt.master,
                    progress=progress,
                    # the vocabulary the channel was decoded over, for suspects without it (None: those
                    # suspects' investigations are refused with INVALID_ARGUMENT while the channel is logged)
                    channel_tokenizer=getattr(self.rt, "channel_tokenizer", None),
                )
            except Exception as exc:  # re-raised in the RPC thread, mapped to a status there
                outcome["error"] = exc
            finally:
                events.put(_DONE)

        threading.Thread(target=work, name="investigation", daemon=True).start()
        while True:
            event = events.get()
            if event is _DONE:
                break
            if context.is_active():
                yield forensics_pb2.InvestigateResponse(progress=event)
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        provider = result.provider or {}
        yield forensics_pb2.InvestigateResponse(
            result=forensics_pb2.InvestigateResult(
                report_id=result.report_id,
                verdict=verdict_enum(result.verdict),
                attributed_account=result.attributed_account or "",
                p_value=result.p_value,
                detail=result.detail or "",
                registration_seq=result.report["registration"]["log_seq"],
                prior_registrations=len(result.report["registration"]["prior"]),
                provider_tested=result.provider is not None,
                distilled_from_us=bool(result.distilled_from_us),
                provider_p_value=float(provider.get("p_value") or 0.0) if provider else 1.0,
                provider_adjusted_p_value=float(provider.get("adjusted_p_value", 1.0)) if provider else 1.0,
                accounts=[
                    forensics_pb2.AccountResult(
                        account=a.account,
                        p_value=a.p_value,
                        adjusted_p_value=a.adjusted_p_value,
                        rejected=a.rejected,
                        pairs=a.pairs,
                        channel_tested=a.channel is not None,
                        channel_p_value=float(a.channel["p_value"]) if a.channel is not None else 1.0,
                        pair_p_value=a.pair_p_value if a.pair_p_value is not None else a.p_value,
                    )
                    for a in result.accounts
                ],
            )
        )

    @grpc_errors
    def GetReport(self, request, context):
        self._require_ledger()
        stored = self._stored(request.report_id)
        return forensics_pb2.GetReportResponse(
            report_id=stored.report_id,
            envelope_json=stored.envelope_json,
            verdict=verdict_enum(stored.verdict),
            created_at=stored.created_at,
        )

    @grpc_errors
    def VerifyReport(self, request, context):
        self._require_ledger()
        public_key = self.rt.master  # trusts every key version, so pre-rotation reports verify
        if request.envelope_json:
            # A DSSE envelope is shallow (its payload is base64); its size is bounded by the message limit.
            limit = self.rt.settings.server.max_message_bytes
            envelope = load_json(request.envelope_json, what="envelope_json", max_chars=limit)
            if not isinstance(envelope, dict):
                raise invalid("envelope_json must be a JSON object")
            result = verify_envelope(envelope, public_key=public_key, engine=self.rt.engine)
        elif request.report_id:
            report_id = self._stored(request.report_id).report_id
            result = verify_stored_report(self.rt.engine, report_id, public_key=public_key)
        else:
            raise invalid("give report_id or envelope_json")
        return forensics_pb2.VerifyReportResponse(
            valid=result.valid,
            signature_valid=result.signature_valid,
            chain_valid=result.chain_valid,
            problems=list(result.problems),
            key_id=result.key_id or "",
        )

    def _stored(self, report_id: str):
        """The stored report with exactly this id: over gRPC no prefixes and no ``latest`` (they would let a
        reader enumerate reports); the command line keeps those conveniences."""
        if not report_id:
            raise invalid("report_id must not be empty")
        if len(report_id) > MAX_REPORT_ID_CHARS or not report_id.isprintable():
            raise invalid(f"report_id must be at most {MAX_REPORT_ID_CHARS} printable characters")
        stored = load_report(self.rt.engine, report_id) if REPORT_ID.match(report_id) else None
        if stored is None or stored.report_id != report_id:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no report {report_id!r}")
        return stored
