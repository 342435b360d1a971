"""RewriteService: rewrite a caller's trace; list discovered rewriter plugins."""

from __future__ import annotations

import json
import time

from tracemark.plugins.answers import extract_final_answer
from tracemark.server.auth import current_account
from tracemark.server.errors import grpc_errors, invalid
from tracemark.server.runtime import Runtime
from tracemark.server.servicers.convert import rewriter_runs
from tracemark.v1 import rewrite_pb2, rewrite_pb2_grpc

_STATUS = {
    "loaded": rewrite_pb2.PLUGIN_STATUS_LOADED,
    "failed": rewrite_pb2.PLUGIN_STATUS_FAILED,
    "disabled": rewrite_pb2.PLUGIN_STATUS_DISABLED,
}


class RewriteServicer(rewrite_pb2_grpc.RewriteServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @grpc_errors
    def Rewrite(self, request, context):
        trace = request.trace
        limit = self.rt.settings.server.max_trace_chars
        if not trace.strip():
            raise invalid("trace must not be empty")
        if len(trace) > limit:
            raise invalid(f"trace is {len(trace)} characters; the limit is {limit}")
        names, options = self.rt.resolve_pipeline(
            list(request.rewriters), dict(request.rewriter_options_json)
        )
        start = time.perf_counter()
        trace_id, result = self.rt.rewrite(
            trace,
            problem=request.problem,
            names=names,
            options=options,
            account=current_account(),
            seed=request.seed or None,
        )
        return rewrite_pb2.RewriteResponse(
            trace_id=trace_id,
            trace=result.trace,
            original_answer=result.original_answer or "",
            final_answer=extract_final_answer(result.trace) or "",
            answer_preserved=bool(result.answer_preserved),
            rewriters=rewriter_runs(result),
            rewrite_seconds=time.perf_counter() - start,
        )

    def _public_schema(self, record) -> dict:
        """The options schema, with the options the server's policy sets marked read-only."""
        schema = record.options_schema or {}
        if record.status != "loaded":
            return schema
        owned = getattr(self.rt.registry.get(record.name), "host_owned_options", frozenset())
        properties = schema.get("properties") or {}
        if not owned & set(properties):
            return schema
        schema = {**schema, "properties": dict(properties)}
        for key in owned & set(properties):
            schema["properties"][key] = {**properties[key], "readOnly": True}
        return schema

    @grpc_errors
    def ListRewriters(self, request, context):
        return rewrite_pb2.ListRewritersResponse(
            rewriters=[
                rewrite_pb2.RewriterDescription(
                    name=r.name,
                    distribution=r.distribution or "",
                    version=r.version or "",
                    status=_STATUS.get(r.status, rewrite_pb2.PLUGIN_STATUS_UNSPECIFIED),
                    error=r.caller_error or "",
                    options_schema_json=json.dumps(self._public_schema(r), sort_keys=True),
                    entry_point=r.entry_point or "",
                    description=r.description or "",
                )
                for r in self.rt.registry.records
            ]
        )
