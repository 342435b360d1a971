"""TeacherService: protected generation."""

from __future__ import annotations

import queue as queue_mod
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext

import grpc
from tracemark.plugins.answers import extract_final_answer
from tracemark.server.auth import current_account
from tracemark.server.errors import RequestError, grpc_errors, grpc_stream_errors, invalid
from tracemark.server.runtime import Runtime
from tracemark.server.servicers.convert import rewriter_runs, text_chunks
from tracemark.server.teacher.base import GenerationParams
from tracemark.v1 import teacher_pb2, teacher_pb2_grpc

PASS_THROUGH = {"identity"}


def _remaining(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline already expired")
    return remaining


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def _prepare(self, request, context):
        problem = request.problem.strip()
        limits = self.rt.settings.server
        if not problem:
            raise invalid("problem must not be empty")
        if len(problem) > limits.max_problem_chars:
            raise invalid(f"problem is {len(problem)} characters; the limit is {limits.max_problem_chars}")
        p = request.params
        if p.max_new_tokens < 0 or p.temperature < 0:
            raise invalid("max_new_tokens and temperature must not be negative")
        cap = self.rt.settings.teacher.max_new_tokens
        if p.max_new_tokens > cap:
            raise invalid(f"max_new_tokens {p.max_new_tokens} exceeds the server limit {cap}")
        names, options = self.rt.resolve_pipeline(
            list(request.rewriters), dict(request.rewriter_options_json)
        )
        self.rt.require_ready()
        params = GenerationParams(
            max_new_tokens=p.max_new_tokens or cap, temperature=p.temperature, seed=p.seed or None
        )
        messages = [
            {"role": "system", "content": self.rt.settings.teacher.system_prompt},
            {"role": "user", "content": problem},
        ]
        return problem, names, options, params, messages

    def _wait(self, future, context):
        try:
            return future.result(timeout=_remaining(context))
        except FutureTimeout:
            future.cancel()
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded during generation"
            ) from None

    def _protect(self, generation, problem, names, options, seed) -> teacher_pb2.GenerateResponse:
        start = time.perf_counter()
        trace_id, result = self.rt.rewrite(
            generation.text,
            problem=problem,
            names=names,
            options=options,
            account=current_account(),
            seed=seed,
        )
        return teacher_pb2.GenerateResponse(
            trace_id=trace_id,
            trace=result.trace,
            final_answer=extract_final_answer(result.trace) or "",
            rewriters=rewriter_runs(result),
            answer_preserved=bool(result.answer_preserved),
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            generation_seconds=generation.seconds,
            rewrite_seconds=time.perf_counter() - start,
        )

    def _admitting(self):
        """The queue counts this request as on its way until it is submitted (see ``admitting``)."""
        queue = self.rt.queue
        return queue.admitting() if queue is not None else nullcontext()

    @grpc_errors
    def Generate(self, request, context):
        with self._admitting():
            problem, names, options, params, messages = self._prepare(request, context)
            account = current_account()
            self.rt.decoding_for(account)
            future = self.rt.queue.submit(messages, params, account=account)
        generation = self._wait(future, context)
        _remaining(context)
        with self.rt.queue.rewriting():
            return self._protect(generation, problem, names, options, params.seed)

    @grpc_stream_errors
    def GenerateStream(self, request, context) -> Iterator[teacher_pb2.GenerateStreamResponse]:
        with self._admitting():
            problem, names, options, params, messages = self._prepare(request, context)
            # Raw teacher text is streamed only when nothing rewrites it; otherwise the caller sees
            # progress counts, then the protected text once the pipeline has run.
            live = set(names) <= PASS_THROUGH
            events: queue_mod.Queue[str] = queue_mod.Queue()
            account = current_account()
            self.rt.decoding_for(account)
            future = self.rt.queue.submit(messages, params, on_text=events.put, account=account)
        produced = 0
        while True:
            remaining = _remaining(context)
            try:
                delta = events.get(timeout=0.05 if remaining is None else min(0.05, remaining))
            except queue_mod.Empty:
                if future.done() and events.empty():
                    break
                if not context.is_active():
                    future.cancel()
                    return
                continue
            produced += 1
            if live:
                yield teacher_pb2.GenerateStreamResponse(text_delta=delta, completion_tokens=produced)
            elif produced % 8 == 0:
                yield teacher_pb2.GenerateStreamResponse(completion_tokens=produced)
        generation = self._wait(future, context)
        with self.rt.queue.rewriting():
            final = self._protect(generation, problem, names, options, params.seed)
        if not live:
            for chunk in text_chunks(final.trace):
                yield teacher_pb2.GenerateStreamResponse(text_delta=chunk, completion_tokens=produced)
        yield teacher_pb2.GenerateStreamResponse(done=final, completion_tokens=final.completion_tokens)

    @grpc_errors
    def GetTeacherInfo(self, request, context):
        self.rt.require_ready()
        info = self.rt.teacher.info
        return teacher_pb2.GetTeacherInfoResponse(
            model_id=info.model_id,
            backend=info.backend,
            quantization=info.quantization,
            quantization_note=info.quantization_note,
            device=info.device,
            dtype=info.dtype,
            parameter_bytes=info.parameter_bytes,
            max_batch_size=info.max_batch_size,
            default_rewriters=list(self.rt.settings.rewrite.default_pipeline),
            # e.g. "standard; channel(gamma=0.25, ...)": the decoding and the watermark channel in effect
            decoding=f"{info.decoding}; {self.rt.channel_description()}",
        )
